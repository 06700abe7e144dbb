//! The servers a stage depends on, started from the machine's own binaries.
//!
//! When a stage needs Redis, PostgreSQL, Memcached or DynamoDB and no URL is
//! given, it runs its own private server ([`redis::RedisServer`],
//! [`postgres::PostgresCluster`], [`memcached::MemcachedServer`],
//! [`dynamodb::DynamoServer`]):
//! free port, temporary directory, stopped when the launcher stops. Tests
//! use the same code to get a real server they can pause, kill and restart.
//!
//! [`ManagedProcess`] is the part every such server shares: spawn, tie the
//! child's life to ours, read its log when it fails, stop it politely and
//! then firmly.
//!
//! Why not containers? The workshop runs on machines without Docker, and a
//! learner can read `ps` output and a log file in a temporary folder. Why not
//! the system's own service (`systemctl start redis-server`)? It is shared by
//! everything on the machine, needs root, and outlives the demo.

pub mod dynamodb;
pub mod memcached;
pub mod postgres;
pub mod redis;

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The binary is not on this machine. The message says how to get it,
    /// or how to use a server that is already running instead.
    #[error(
        "`{program}` was not found on PATH. Install it (Debian/Ubuntu: `apt-get install {package}`), or set {variable} to use a server that is already running"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
        variable: &'static str,
    },
    /// A server installed from npm (at a version pinned in the repository)
    /// is not installed yet.
    #[error(
        "`{program}` is not installed. Install it from the repository's root: `{install}` (Node and npm from Debian/Ubuntu: `apt-get install nodejs npm`), or set {variable} to a server you run yourself"
    )]
    MissingNpm {
        program: &'static str,
        install: &'static str,
        variable: &'static str,
    },
    /// A balancing engine (nginx, HAProxy) is not on this machine.
    #[error(
        "`{program}` was not found (looked on PATH and in /usr/sbin). Install it (Debian/Ubuntu: `apt-get install {package}`)"
    )]
    MissingEngine {
        program: &'static str,
        package: &'static str,
    },
    /// It started but never became ready; the end of its log says why.
    #[error("{program} did not start: {reason}\n--- the end of its log ({log}) ---\n{tail}")]
    NotReady {
        program: &'static str,
        reason: String,
        log: String,
        tail: String,
    },
    /// A setup command ran past its deadline and was killed.
    #[error("{program} did not finish within {limit_ms} ms and was killed")]
    TimedOut {
        program: &'static str,
        limit_ms: u128,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Finds `program` on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A port that was free a moment ago on 127.0.0.1, for a server we start.
///
/// The server binds it a few milliseconds later, and something else could
/// take it in between. Two things make that rare, and [`launch_on_free_port`]
/// handles the rest:
///
/// - The port is picked at random *below* the kernel's ephemeral range
///   (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default).
///   Ports in that range are what the kernel hands to every `bind(…:0)` and
///   to every outgoing connection: under parallel tests, thousands of those
///   come and go each second, and one of them landing on the port we just
///   let go is how a PostgreSQL test once failed with "Address already in
///   use". Below the range, only another `free_port` can pick it.
/// - The rejected alternative, asking the kernel for port 0 and keeping
///   the socket: `redis-server` and `postgres` cannot be handed an open
///   socket, nor tell us which port they chose.
pub fn free_port() -> std::io::Result<u16> {
    let below = ephemeral_ports_start();
    // 10000 and up: clear of the well-known and commonly configured ports.
    let lowest = 10_000.min(below / 2);
    for _ in 0..64 {
        let mut bytes = [0u8; 2];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let port = lowest + u16::from_le_bytes(bytes) % (below - lowest);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    // A machine whose low ports are all taken: let the kernel choose.
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The first port of the kernel's ephemeral range (32768 unless configured).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&start| start > 2_048)
        .unwrap_or(32_768)
}

/// A server that is started on a port from [`free_port`].
pub(crate) trait OnFreePort {
    /// The port the next [`Self::launch`] binds.
    fn use_port(&mut self, port: u16);
    /// Starts the process on that port and waits until it answers.
    async fn launch(&mut self) -> Result<(), ServiceError>;
}

/// How many ports [`launch_on_free_port`] tries.
const PORT_ATTEMPTS: usize = 4;

/// Launches `server` on a free port, and on another one if the port was
/// taken between [`free_port`] and the server's own bind (its log says
/// "Address already in use"). Any other failure is returned at once.
pub(crate) async fn launch_on_free_port(server: &mut impl OnFreePort) -> Result<(), ServiceError> {
    let mut attempt = 1;
    loop {
        server.use_port(free_port()?);
        match server.launch().await {
            Err(error) if attempt < PORT_ATTEMPTS && port_was_taken(&error) => {
                tracing::debug!(%error, attempt, "the port was taken; trying another");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a server failed to start because its port was in use. Redis,
/// Memcached and PostgreSQL log "Address already in use"; Node logs
/// "EADDRINUSE".
fn port_was_taken(error: &ServiceError) -> bool {
    match error {
        ServiceError::NotReady { tail, .. } => {
            let tail = tail.to_ascii_lowercase();
            tail.contains("address already in use") || tail.contains("eaddrinuse")
        }
        _ => false,
    }
}

/// Every private folder's name starts with this (`myclothes-redis-…`).
const DIR_PREFIX: &str = "myclothes-";
/// The file in each private folder that names the process it belongs to.
const OWNER_FILE: &str = "owner";
/// A folder without an owner file is left alone for this long (it may be
/// one being made right now); older, it is a leftover.
const UNOWNED_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// A new private folder for a server's data and log: in the system's
/// temporary directory, readable by its owner only (0700: a database's
/// files are nobody else's business), and marked with the process that
/// made it.
///
/// Folders are removed when their server stops. A launcher killed with
/// SIGKILL cannot remove them, so each new one first removes the folders
/// whose owner process is gone.
pub fn private_dir(kind: &str) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    remove_stale_dirs(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{kind}-"))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    std::fs::write(
        dir.path().join(OWNER_FILE),
        process_identity(std::process::id())?,
    )?;
    Ok(dir)
}

/// A process as `<pid> <start time>`: the start time tells a live owner
/// from a later process that happens to have been given the same pid.
fn process_identity(pid: u32) -> std::io::Result<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let started = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().nth(19))
        .ok_or_else(|| std::io::Error::other("an unreadable /proc/PID/stat"))?;
    Ok(format!("{pid} {started}"))
}

/// Removes the private folders in `temp` whose owner process is gone.
fn remove_stale_dirs(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(DIR_PREFIX));
        if !is_ours || !path.is_dir() {
            continue;
        }
        let stale = match std::fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(owner) => {
                let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
                pid.is_none_or(|pid| process_identity(pid).ok().as_deref() != Some(owner.trim()))
            }
            // No owner file: a folder being made right now (0700, and
            // marked a moment later), or one left by a version that did not
            // mark its folders (and made them readable by everyone).
            Err(_) => entry.metadata().is_ok_and(|metadata| {
                use std::os::unix::fs::PermissionsExt;
                let legacy = metadata.permissions().mode() & 0o777 != 0o700;
                let old = metadata
                    .modified()
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > UNOWNED_GRACE);
                legacy || old
            }),
        };
        if stale {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a folder its owner left behind")
                }
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "cannot remove a stale folder")
                }
            }
        }
    }
}

/// A server process we started and will stop.
///
/// Dropping it stops the process (SIGTERM, then SIGKILL after a grace
/// period), so a panicking test leaves no server behind.
#[derive(Debug)]
pub struct ManagedProcess {
    program: &'static str,
    child: Child,
    log: PathBuf,
    stop_signal: Signal,
}

impl ManagedProcess {
    /// Starts `program` with `args`, its output appended to `log`.
    ///
    /// On Linux the child is started through `setpriv --pdeathsig SIGTERM`
    /// (util-linux), so the kernel stops it if we die without cleaning up,
    /// even by SIGKILL. (`prctl` in the child itself would need `unsafe`
    /// code between fork and exec; `setpriv` does exactly that, and is on
    /// every Debian and Ubuntu machine.) `as_user` runs it as that user,
    /// which PostgreSQL needs when we are root.
    pub fn spawn<I, S>(
        program: &'static str,
        binary: &Path,
        args: I,
        log: &Path,
        as_user: Option<&str>,
    ) -> Result<Self, ServiceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_in(program, binary, args, log, as_user, None)
    }

    /// [`Self::spawn`], inside the network namespace `netns` when given
    /// (`ip netns exec NS …`: the process sees only that namespace's
    /// addresses and firewall; stage 7's zones).
    pub fn spawn_in<I, S>(
        program: &'static str,
        binary: &Path,
        args: I,
        log: &Path,
        as_user: Option<&str>,
        netns: Option<&str>,
    ) -> Result<Self, ServiceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = logged_command(binary, args, log, as_user, netns)?.spawn()?;
        Ok(Self {
            program,
            child,
            log: log.to_owned(),
            stop_signal: Signal::SIGTERM,
        })
    }

    /// Stops with `signal` instead of SIGTERM (PostgreSQL: SIGINT, its "fast"
    /// shutdown; SIGTERM would wait for every client to disconnect).
    pub fn stop_with(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (SIGSTOP and SIGCONT pause and resume it).
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        kill(Pid::from_raw(self.pid_i32()), signal).map_err(std::io::Error::from)
    }

    /// Sends `signal` to the process and every process it started (a
    /// PostgreSQL server is a postmaster and a backend per connection:
    /// freezing only the first would leave open connections answering).
    pub fn signal_tree(&self, signal: Signal) -> std::io::Result<()> {
        // The parent first: a stopped parent starts no new children while
        // the rest are found.
        self.signal(signal)?;
        let mut parents = vec![self.pid()];
        while let Some(parent) = parents.pop() {
            for child in children_of(parent) {
                let pid = Pid::from_raw(i32::try_from(child).unwrap_or(i32::MAX));
                match kill(pid, signal) {
                    // Gone since it was listed: nothing to stop.
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => parents.push(child),
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }

    /// `Some` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's log, for error messages.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `probe` says the server answers, polling every `every`:
    /// an error (with the log's tail) if the process exits first or
    /// `within` passes. `what` completes "it did not … within Ns".
    ///
    /// Why poll and not read the log for "ready to accept connections"? Log
    /// lines change between versions; a real request does not lie.
    pub async fn wait_until_ready<F, Fut>(
        &mut self,
        within: Duration,
        every: Duration,
        what: &str,
        mut probe: F,
    ) -> Result<(), ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Err(self.not_ready(format!("it exited ({status})")));
            }
            if probe().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(
                    self.not_ready(format!("it did not {what} within {}s", within.as_secs()))
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// A [`ServiceError::NotReady`] carrying the log's last lines.
    pub fn not_ready(&self, reason: impl Into<String>) -> ServiceError {
        ServiceError::NotReady {
            program: self.program,
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: self.log_tail(15),
        }
    }

    /// Stops the process: SIGTERM (a clean shutdown: Redis flushes its
    /// append-only file), then SIGKILL if it is still there after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        // A paused process cannot act on SIGTERM: wake it (and anything
        // it started) first.
        let _ = self.signal_tree(Signal::SIGCONT);
        let _ = self.signal(self.stop_signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(program = self.program, "did not stop in time; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn pid_i32(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }
}

/// The process of a server that tests freeze, crash and restart (Redis,
/// Memcached), or the gap where it was: each such server answers `pause`,
/// `resume`, `kill` and `restart` the same way, through this.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    program: &'static str,
    running: Option<ManagedProcess>,
}

impl ServerProcess {
    /// Not started yet.
    pub(crate) fn not_started(program: &'static str) -> Self {
        Self {
            program,
            running: None,
        }
    }

    /// Now running as `process`.
    pub(crate) fn started(&mut self, process: ManagedProcess) {
        self.running = Some(process);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(ManagedProcess::pid)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) -> std::io::Result<()> {
        self.send(Signal::SIGSTOP)
    }

    /// Wakes a paused server (SIGCONT).
    pub(crate) fn resume(&self) -> std::io::Result<()> {
        self.send(Signal::SIGCONT)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.running.take() {
            process.kill();
        }
    }

    /// Stops the server cleanly (SIGTERM), if it runs, before a restart.
    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.running.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    fn send(&self, signal: Signal) -> std::io::Result<()> {
        match &self.running {
            Some(process) => process.signal(signal),
            None => Err(std::io::Error::other(format!(
                "{} is not running",
                self.program
            ))),
        }
    }
}

/// The live processes whose parent is `parent` (from `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the command name in parentheses) is the parent.
            stat.rfind(')').and_then(|end| {
                stat[end + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            }) == Some(parent)
        })
        .collect()
}

/// `ip` (iproute2), on `PATH` or in `/usr/sbin` (off a non-root `PATH`).
pub fn ip_binary() -> Result<PathBuf, ServiceError> {
    find_on_path("ip")
        .or_else(|| Some(PathBuf::from("/usr/sbin/ip")).filter(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/sbin/ip")).filter(|p| p.is_file()))
        .ok_or(ServiceError::MissingEngine {
            program: "ip",
            package: "iproute2",
        })
}

/// `binary`, started through `setpriv --pdeathsig SIGTERM` (and as `as_user`
/// when given): see [`ManagedProcess::spawn`].
fn as_user_command(
    binary: &Path,
    as_user: Option<&str>,
    netns: Option<&str>,
) -> Result<Command, ServiceError> {
    if let Some(netns) = netns {
        let mut command = Command::new(ip_binary()?);
        command.args(["netns", "exec", netns]);
        let setpriv = find_on_path("setpriv").ok_or(ServiceError::Missing {
            program: "setpriv",
            package: "util-linux",
            variable: "the service's URL",
        })?;
        command.arg(setpriv).args(["--pdeathsig", "SIGTERM"]);
        if let Some(user) = as_user {
            command
                .args(["--reuid", user, "--regid", user])
                .arg("--init-groups");
        }
        command.arg("--").arg(binary);
        return Ok(command);
    }
    Ok(match find_on_path("setpriv") {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.arg("--pdeathsig").arg("SIGTERM");
            if let Some(user) = as_user {
                command
                    .args(["--reuid", user, "--regid", user])
                    .arg("--init-groups");
            }
            command.arg("--").arg(binary);
            command
        }
        None if as_user.is_some() => {
            return Err(ServiceError::Missing {
                program: "setpriv",
                package: "util-linux",
                variable: "the service's URL",
            });
        }
        None => Command::new(binary),
    })
}

/// `binary args`, as `as_user`, with stdout and stderr appended to `log`.
fn logged_command<I, S>(
    binary: &Path,
    args: I,
    log: &Path,
    as_user: Option<&str>,
    netns: Option<&str>,
) -> Result<Command, ServiceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut command = as_user_command(binary, as_user, netns)?;
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(command)
}

/// Runs a setup command (`initdb`, `pg_basebackup`) to the end, as
/// `as_user` when given; its output goes to `log`, whose end is shown if it
/// fails.
pub fn run_to_end<I, S>(
    program: &'static str,
    binary: &Path,
    args: I,
    log: &Path,
    as_user: Option<&str>,
) -> Result<(), ServiceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_to_end_in(program, binary, args, log, as_user, None)
}

/// [`run_to_end`], inside the network namespace `netns` when given.
pub fn run_to_end_in<I, S>(
    program: &'static str,
    binary: &Path,
    args: I,
    log: &Path,
    as_user: Option<&str>,
    netns: Option<&str>,
) -> Result<(), ServiceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let status = logged_command(binary, args, log, as_user, netns)?.status()?;
    if status.success() {
        return Ok(());
    }
    Err(failed(program, format!("it failed ({status})"), log))
}

/// [`run_to_end_in`] with a deadline, for a command that copies from
/// another server while the caller holds something others wait for (a
/// `pg_basebackup` or `pg_rewind` of a rejoining zone). A connect timeout
/// covers a source that is gone, but one *frozen* half-way keeps its TCP
/// connection open and the copy waits forever; so past `limit` the command
/// is killed and this fails with [`ServiceError::TimedOut`]. Awaited, not
/// blocking: the caller's runtime keeps serving everything else meanwhile.
///
/// The command runs in a process group of its own, and the whole group is
/// killed: `pg_basebackup -X stream` forks a second process that streams
/// the WAL, and that one is stopped only by its parent's exit handler,
/// which a SIGKILL skips. Killing the parent alone would leave it writing
/// into the folder the next try removes.
pub async fn run_to_end_within<I, S>(
    program: &'static str,
    binary: &Path,
    args: I,
    log: &Path,
    (as_user, netns): (Option<&str>, Option<&str>),
    limit: Duration,
) -> Result<(), ServiceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = logged_command(binary, args, log, as_user, netns)?;
    // `ip netns exec` and `setpriv` each exec the next, so the group is
    // the program's own.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = tokio::process::Command::from(command).spawn()?;
    let group = child
        .id()
        .map(|pid| Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)));
    // Kills the group however this ends early: the deadline, or the
    // caller dropping this future.
    let mut guard = KillGroup(group);
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if status.code().is_some() {
                // Exited by itself: its exit handler stopped what it
                // started. (Killed by a signal, it ran no handler, and the
                // guard kills what is left.)
                guard.0 = None;
            }
            if status.success() {
                return Ok(());
            }
            Err(failed(program, format!("it failed ({status})"), log))
        }
        Err(_) => {
            drop(guard);
            let _ = child.wait().await;
            tracing::warn!(program, log = %log.display(), "killed at its deadline; its log says how far it got");
            Err(ServiceError::TimedOut {
                program,
                limit_ms: limit.as_millis(),
            })
        }
    }
}

/// Kills a process group when dropped, unless emptied first.
struct KillGroup(Option<Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
    }
}

/// The error of a setup command that failed, with the end of its log.
fn failed(program: &'static str, reason: String, log: &Path) -> ServiceError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    ServiceError::NotReady {
        program,
        reason,
        log: log.display().to_string(),
        tail: lines[lines.len().saturating_sub(15)..].join("\n"),
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_setup_command_that_hangs_is_killed_at_its_deadline() {
        let dir = private_dir("test").expect("a private folder");
        let log = dir.path().join("sleep.log");
        let sleep = find_on_path("sleep").expect("sleep is on PATH");
        // A length no other process has, to find it by afterwards; run by
        // a child of the command, as `pg_basebackup -X stream` runs its
        // WAL streamer, which a kill of the command alone leaves running.
        let length = format!("30.{}", std::process::id());
        let shell = find_on_path("sh").expect("sh is on PATH");
        let script = format!("{} {length} & wait", sleep.display());
        let started = Instant::now();
        let outcome = run_to_end_within(
            "sh",
            &shell,
            ["-c", &script],
            &log,
            (None, None),
            Duration::from_millis(300),
        )
        .await;
        let error = outcome.expect_err("a command past its deadline fails");
        assert!(
            matches!(error, ServiceError::TimedOut { .. }),
            "the error says why: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "it was stopped at the deadline, not waited for"
        );
        // And it is gone, what it started too: soon no process runs that
        // sleep (a killed process takes a moment to go).
        let running = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
                .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
                .filter(|line| line.contains("sleep") && line.contains(&length))
                .collect()
        };
        let mut left = running();
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = running();
        }
        assert!(
            left.is_empty(),
            "the command was killed, yet {left:?} remain"
        );
    }

    #[test]
    fn private_folders_are_private_and_a_dead_owners_are_removed() {
        // A process that has exited: its folder is a leftover.
        let mut gone = Command::new("true").spawn().expect("true runs");
        let gone_pid = gone.id();
        gone.wait().expect("exits");
        let leftover = std::env::temp_dir().join(format!("{DIR_PREFIX}test-{gone_pid}-left"));
        std::fs::create_dir_all(&leftover).expect("a leftover");
        std::fs::write(leftover.join(OWNER_FILE), format!("{gone_pid} 12345")).expect("owner");
        // One whose owner lives (this test) stays.
        let alive = private_dir("test").expect("a private folder");

        let fresh = private_dir("test").expect("another");
        assert!(!leftover.exists(), "a dead owner's folder is removed");
        assert!(alive.path().exists(), "a live owner's folder stays");
        let mode = std::fs::metadata(fresh.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "readable by its owner only");
    }

    #[test]
    fn free_ports_are_below_the_range_the_kernel_hands_out() {
        let start = ephemeral_ports_start();
        for _ in 0..20 {
            let port = free_port().expect("a free port");
            assert!(
                port < start,
                "{port} is in the ephemeral range from {start}"
            );
            assert!(
                TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
                "{port} is free"
            );
        }
    }

    /// A "server" that binds its port with a real socket; on its first
    /// launch another program takes the port a moment before it does.
    struct Raced {
        port: u16,
        taken_by_another: Option<TcpListener>,
        listening: Option<TcpListener>,
        launches: usize,
    }

    impl OnFreePort for Raced {
        fn use_port(&mut self, port: u16) {
            self.port = port;
        }

        async fn launch(&mut self) -> Result<(), ServiceError> {
            self.launches += 1;
            if self.launches == 1 {
                self.taken_by_another = Some(TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))?);
            }
            match TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)) {
                Ok(listener) => {
                    self.listening = Some(listener);
                    Ok(())
                }
                Err(error) => Err(ServiceError::NotReady {
                    program: "raced",
                    reason: "it exited".to_owned(),
                    log: "-".to_owned(),
                    tail: format!("bind: {error}"),
                }),
            }
        }
    }

    #[tokio::test]
    async fn a_server_whose_port_is_taken_before_it_binds_starts_on_another() {
        let mut server = Raced {
            port: 0,
            taken_by_another: None,
            listening: None,
            launches: 0,
        };
        launch_on_free_port(&mut server)
            .await
            .expect("started on the second port");
        assert_eq!(server.launches, 2, "one retry");
        let taken = server.taken_by_another.expect("the first port was taken");
        let listening = server.listening.expect("the server listens");
        assert_ne!(
            taken.local_addr().expect("addr").port(),
            listening.local_addr().expect("addr").port()
        );
    }
}
