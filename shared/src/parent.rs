//! Children of the launcher die with it, even if it is killed with SIGKILL.
//!
//! SIGKILL cannot be caught, so the launcher gets no chance to stop its
//! instances. Linux has an answer: `prctl(PR_SET_PDEATHSIG)` asks the kernel
//! to send the child a signal when its parent dies. The launcher passes its
//! pid in [`LAUNCHER_PID_ENV`]; a `serve` process that finds it arms the
//! signal, then checks its parent is still that pid (the launcher may have
//! died between `fork` and this call, and the kernel would then never send
//! the signal).
//!
//! One subtlety: "parent" here is the *thread* that spawned the child. The
//! launcher spawns instances from tokio worker threads, which live as long as
//! the runtime; a `spawn_blocking` thread would not do (it exits when idle,
//! and its children would be signalled).
//!
//! The alternatives: a process group killed as a whole (does not survive the
//! parent's SIGKILL either), or the child watching a pipe from the parent for
//! EOF (portable, but more code in every child).

/// Set by the launcher for the instances it starts.
pub const LAUNCHER_PID_ENV: &str = "SHOP_LAUNCHER_PID";

/// Arms the parent-death signal when started by the launcher. Returns
/// `Err` with a reason when the launcher is already gone.
pub fn die_with_launcher() -> Result<(), String> {
    let Some(expected) = std::env::var(LAUNCHER_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("cannot arm the parent-death signal: {e}"))?;
    if nix::unistd::getppid().as_raw() != expected {
        return Err("the launcher that started this instance is gone".to_owned());
    }
    Ok(())
}
