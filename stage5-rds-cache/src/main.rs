//! `cargo run -p stage5` (same as `stage5 up`), `stage5 serve --port 3001 --id i1` (with `REDIS_URL`, `CACHE_URL`, `DATABASE_URL`, `DATABASE_REPLICA_URL`), `stage5 demo`.

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage5::Stage5>()
}
