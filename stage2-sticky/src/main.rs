//! `cargo run -p stage2` (same as `stage2 up`), `stage2 serve --port 3001 --id i1`, `stage2 demo`.

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, cart reads): HTTP parsing and
/// store replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage2::Stage2>()
}
