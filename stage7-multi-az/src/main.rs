//! `sudo -E cargo run -p stage7` (same as `stage7 up`): the shop in two
//! zones; `stage7 serve …` is one instance (started by `up` inside its zone).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shop::cli::main::<stage7::Stage7>()
}
