# Helpers shared by the benchmark scripts (sourced, not run).

# Installs Debian packages that are missing (as root, or with sudo).
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# The workspace's target directory (shared by every package).
target_dir() {
  cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Waits until URL answers 2xx (10 s at most).
wait_for() {
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: $1 did not come up" >&2
  exit 1
}

# wrk prints latencies as e.g. 812.00us, 1.23ms, 1.01s: convert to ms.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# The median of whitespace-separated numbers on stdin.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { printf "%s", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# One wrk run: sets RPS, P50, P99 (ms). Extra arguments go to wrk.
wrk_run() {
  local out
  out=$(wrk --latency "$@")
  RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
  P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
  P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  WRK_ERRORS=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
  WRK_TOTAL=$(awk '/requests in/ { print $1 }' <<<"$out")
}

machine_line() {
  local cpu
  cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($cpu), $(free -g | awk '/Mem:/ { print $2 }') GiB;"
}

# The scripts below start servers in the background and record their pids
# in the caller's `pids` array; `trap stop_started EXIT INT TERM` stops them.
stop_started() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# Three instances of a stage (release binaries in $bin) behind the lb
# binary. Extra environment comes from the caller's exports. Sets LB_URL and
# INSTANCE_URLS. (Not called as $(...): the servers it starts would hold
# the substitution's pipe open.)
start_stage() {
  local stage=$1 args=() port i
  INSTANCE_URLS=() INSTANCE_PIDS=()
  for i in 1 2 3; do
    port=$(free_port)
    RUST_LOG=warn "$bin/$stage" serve --port "$port" --id "i$i" >/dev/null &
    pids+=($!) INSTANCE_PIDS+=($!)
    wait_for "http://127.0.0.1:$port/healthz"
    args+=(--backend "i$i=http://127.0.0.1:$port")
    INSTANCE_URLS+=("http://127.0.0.1:$port")
  done
  port=$(free_port)
  RUST_LOG=error "$bin/lb" --listen "127.0.0.1:$port" --no-health-checks "${args[@]}" >/dev/null &
  pids+=($!)
  wait_for "http://127.0.0.1:$port/healthz"
  LB_URL="http://127.0.0.1:$port"
}

# Adds SKUs one by one, starting from the cookie in $prev (if any), and prints
# the `NAME=value` cookie the shopper holds afterwards.
cart_cookie() {
  local url=$1 name=$2 cookie="${prev:-}" sku
  shift 2
  for sku in "$@"; do
    # -f: a refused add (413 at the wall) sets no cookie; keep the last one.
    cookie=$(curl -fs -o /dev/null -D - ${cookie:+-H "Cookie: $cookie"} -H 'content-type: application/json' \
      -d "{\"sku\":\"$sku\",\"qty\":2}" "$url/api/cart/items" \
      | awk -v n="$name" 'tolower($1) == "set-cookie:" && index($2, n "=") == 1 { sub(/;.*/, "", $2); print $2 }' | tail -1 || true)
    [ -n "$cookie" ] || cookie=$prev
    prev=$cookie
  done
  echo "$cookie"
}
