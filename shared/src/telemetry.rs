//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG`.
//!
//! Instances log at `info` by default (start, stop, warnings); set
//! `RUST_LOG=debug` to see every request. Test helpers start instances with
//! logs captured and only show them when a test fails to start something or
//! when `TEST_LOG=1` is set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .try_init();
}

/// Whether test helpers should show the logs of what they start.
pub(crate) fn test_logs_wanted() -> bool {
    std::env::var_os("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0")
}
