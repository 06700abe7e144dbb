//! `cargo run -p stage1` (same as `stage1 up`), `stage1 serve --port 3001 --id i1`, `stage1 demo`.

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage1::Stage1>()
}
