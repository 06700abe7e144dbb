//! `lb --listen 127.0.0.1:8080 --backend i1=http://127.0.0.1:3001 --backend i2=http://127.0.0.1:3002 --policy least-conn`

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = lb::Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error} (--sticky-key)");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: cannot listen on {}: {error} (choose another address with --listen)",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, backends = args.backends.len(), policy = ?args.policy, "balancing");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match lb::run(listener, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
