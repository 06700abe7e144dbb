//! Waiting for the signals that mean "stop": Ctrl-C (SIGINT) and SIGTERM
//! (what `kill`, systemd and container runtimes send). The stages' launcher
//! and instances use this too.

/// Completes when the process receives SIGINT or SIGTERM.
pub async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        // Installing a handler only fails if the runtime has no signal
        // driver; fall back to Ctrl-C alone rather than never stopping.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
