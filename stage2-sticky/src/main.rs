//! `cargo run -p stage2` (same as `stage2 up`), `stage2 serve --port 3001 --id i1`, `stage2 demo`.

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage2::Stage2>()
}
