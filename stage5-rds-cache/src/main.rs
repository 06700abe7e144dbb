//! `cargo run -p stage5` (same as `stage5 up`), `stage5 serve --port 3001 --id i1` (with `REDIS_URL`, `CACHE_URL`, `DATABASE_URL`, `DATABASE_REPLICA_URL`), `stage5 demo`.

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, cart reads): HTTP parsing and
/// store replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage5::Stage5>()
}
