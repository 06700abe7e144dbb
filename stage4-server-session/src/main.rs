//! `cargo run -p stage4` (same as `stage4 up`), `REDIS_URL=redis://127.0.0.1:6379 stage4 serve --port 3001 --id i1`, `stage4 demo`.

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, cart reads): HTTP parsing and
/// store replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage4::Stage4>()
}
