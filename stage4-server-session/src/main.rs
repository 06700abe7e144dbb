//! `cargo run -p stage4` (same as `stage4 up`), `REDIS_URL=redis://127.0.0.1:6379 stage4 serve --port 3001 --id i1`, `stage4 demo`.

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage4::Stage4>()
}
