//! `cargo run -p stage6` (same as `stage6 up`), `stage6 serve --port 3001 --id i1`, `stage6 demo`.

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, cart reads): HTTP parsing and
/// store replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage6::Stage6>()
}
