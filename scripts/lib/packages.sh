# Installs the Debian/Ubuntu packages given, when missing (sourced by the
# scripts in scripts/): `ensure_packages redis-server nginx`.
ensure_packages() {
  local need=() package
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "error: this needs these packages: ${need[*]} (install them, or run on Debian/Ubuntu)" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
