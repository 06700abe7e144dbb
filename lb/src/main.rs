//! `lb --listen 127.0.0.1:8080 --backend i1=http://127.0.0.1:3001 --backend i2=http://127.0.0.1:3002 --policy least-conn`

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = lb::Args::parse();
    if let Err(error) = lb::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error} (--sticky-key)");
            return ExitCode::FAILURE;
        }
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(listen = %args.listen, backends = args.backends.len(), policy = ?args.policy, workers, "balancing");
    match lb::run_threaded(args.listen, config, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(lb::RunError::Io(error)) if error.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!(
                "error: {} is already in use; choose another address with --listen",
                args.listen
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
