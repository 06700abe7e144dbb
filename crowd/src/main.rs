//! `cargo run --release -p crowd -- --stage all --format markdown`

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free
/// took about 15% of an instance's CPU (perf, cart reads): HTTP parsing and
/// store replies make many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The instances crowd starts are this binary too (see the crate docs).
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return crowd::serve_stage_instance();
    }
    let cli = crowd::Cli::parse();
    shop::telemetry::init("error");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crowd::run(&cli)) {
        Ok(reports) => {
            println!("{}", crowd::report::render(&reports, cli.format));
            if let Some(path) = &cli.chart {
                if let Err(error) = std::fs::write(path, crowd::chart::svg(&reports.carts)) {
                    eprintln!("error: cannot write {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
