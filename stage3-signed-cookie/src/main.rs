//! `cargo run -p stage3` (same as `stage3 up`), `SHOP_COOKIE_SECRET=… stage3 serve --port 3001 --id i1`, `stage3 demo`.

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage3::Stage3>()
}
