//! Running code of this process inside a machine's network namespace.
//!
//! A network namespace belongs to a thread, not to a process: a thread that
//! joins one with `setns(2)` sees only that namespace's interfaces,
//! addresses and firewall, and every socket it creates stays in that
//! namespace for good, whichever thread uses it later. So the region's
//! services that this launcher runs itself (the writer endpoint, the
//! failover manager) each get a thread of their own, joined to the
//! `region` machine's namespace, with a single-threaded tokio runtime on
//! it: every socket they open (listeners, sqlx and Redis connections) is
//! the region's. The tests probe the security groups the same way, from
//! inside a machine.
//!
//! The alternative, a helper binary started with `ip netns exec`, would
//! need a way to talk to it (files, a port); a thread shares memory with
//! the launcher and stops with it.

use std::fs::File;
use std::future::Future;
use std::thread::JoinHandle;

/// Where `ip netns add` puts the namespaces it names.
const NETNS_DIR: &str = "/run/netns";

/// Runs `work` to its end on a new thread inside network namespace
/// `netns` (or in ours, for `None`: the loopback layout), on a runtime of
/// its own. Returns the thread (join it for the result), or why it could
/// not join the namespace.
pub fn spawn<F, T>(
    netns: Option<&str>,
    name: &str,
    work: F,
) -> std::io::Result<JoinHandle<Option<T>>>
where
    F: FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    T: Send + 'static,
{
    let namespace = netns
        .map(|ns| File::open(format!("{NETNS_DIR}/{ns}")))
        .transpose()?;
    // The thread joins the namespace and builds its runtime first, then
    // says so: a failure is this function's error, not a panic on a
    // thread nobody watches. (A wait of microseconds.)
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let prepared = (|| {
                if let Some(namespace) = namespace {
                    // Only this thread moves: the rest of the process stays put.
                    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })();
            match prepared {
                Ok(runtime) => {
                    let _ = ready_tx.send(Ok(()));
                    Some(runtime.block_on(work()))
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    None
                }
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("the namespace thread stopped"))??;
    Ok(thread)
}

/// Runs `work` inside `netns` and waits for its result without blocking
/// the caller's runtime (a short task: a probe, a query).
pub async fn run<F, T>(netns: Option<&str>, work: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(netns, "stage7-netns", move || {
        Box::pin(async move {
            let _ = tx.send(work().await);
        })
    })?;
    rx.await
        .map_err(|_| std::io::Error::other("the task in the namespace panicked"))
}
