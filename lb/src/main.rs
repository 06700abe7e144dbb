//! `lb --listen 127.0.0.1:8080 --backend i1=http://127.0.0.1:3001 --backend i2=http://127.0.0.1:3002 --policy least-conn`
//!
//! With HTTPS: `lb --listen 127.0.0.1:8443 --tls --tls-cert-out /tmp/lb.pem
//! --redirect-http 127.0.0.1:8080 --backend …`, then `curl --cacert
//! /tmp/lb.pem https://localhost:8443/healthz`.

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
    let balancer = match lb::Balancer::new(config) {
        Ok(balancer) => balancer,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(path), Some(pem)) = (&args.tls_cert_out, balancer.tls_certificate_pem()) {
        // The certificate only: it is public. The key never leaves.
        if let Err(error) = std::fs::write(path, pem) {
            eprintln!(
                "error: cannot write the certificate to {}: {error}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(listen = %args.listen, scheme = balancer.scheme(), backends = args.backends.len(), policy = ?args.policy, workers, "balancing");
    match lb::serve_threaded(balancer, args.listen, workers, args.redirect_http) {
        Ok(()) => ExitCode::SUCCESS,
        Err(lb::RunError::Io(error)) if error.kind() == std::io::ErrorKind::AddrInUse => {
            match args.redirect_http {
                Some(redirect) => eprintln!(
                    "error: {} or {redirect} is already in use; choose others with --listen and --redirect-http",
                    args.listen
                ),
                None => eprintln!(
                    "error: {} is already in use; choose another address with --listen",
                    args.listen
                ),
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
