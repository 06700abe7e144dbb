//! A private PostgreSQL primary and a streaming read replica.
//!
//! ```text
//! initdb -D <tmp>/primary -A trust        (as `postgres` when we are root)
//! postgres -D <tmp>/primary -p <free>     wal_level=replica, max_wal_senders
//! pg_basebackup -D <tmp>/replica -R -X stream     (a copy + standby.signal)
//! postgres -D <tmp>/replica -p <free>     hot_standby=on: read-only queries
//! ```
//!
//! The replica replays the primary's write-ahead log as it streams in, a few
//! milliseconds behind: close enough to serve reads, far enough that a read
//! right after a write can miss it.
//!
//! The binaries: Debian keeps them off `PATH`; `pg_config --bindir` names
//! their folder. `initdb` and `postgres` refuse to run as root, so when we
//! are root they run as the `postgres` system user (through `setpriv`), in
//! a temporary directory handed to that user. Authentication is `trust`, on
//! 127.0.0.1 only: a throwaway server for one learner's machine, never a
//! template for a real one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::{
    ManagedProcess, OnFreePort, ServiceError, find_on_path, launch_on_free_port, private_dir,
    run_to_end,
};

/// The variables that point the shop at databases it did not start.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";
pub const DATABASE_REPLICA_URL_ENV: &str = "DATABASE_REPLICA_URL";

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// One PostgreSQL server process and its data directory.
#[derive(Debug)]
struct Server {
    role: &'static str,
    process: Option<ManagedProcess>,
    data: PathBuf,
    port: u16,
}

/// A primary and its streaming replica, stopped (and deleted) when dropped.
#[derive(Debug)]
pub struct PostgresCluster {
    // Field order matters: the servers stop before their directory goes.
    primary: Server,
    replica: Server,
    bindir: PathBuf,
    user: Option<String>,
    root: TempDir,
}

impl PostgresCluster {
    /// Makes, starts and connects a primary and a replica.
    pub async fn start() -> Result<Self, ServiceError> {
        let bindir = find_bindir().ok_or(ServiceError::Missing {
            program: "initdb",
            package: "postgresql",
            variable: "DATABASE_URL and DATABASE_REPLICA_URL",
        })?;
        let user = server_user()?;
        let root = private_dir("postgres")?;
        hand_over(root.path(), user.as_deref())?;
        std::fs::create_dir(root.path().join("sockets"))?;
        hand_over(&root.path().join("sockets"), user.as_deref())?;

        let mut cluster = Self {
            primary: Server {
                role: "primary",
                process: None,
                data: root.path().join("primary"),
                port: 0,
            },
            replica: Server {
                role: "replica",
                process: None,
                data: root.path().join("replica"),
                port: 0,
            },
            bindir,
            user,
            root,
        };
        cluster.init_primary()?;
        launch_on_free_port(&mut FirstStart {
            cluster: &mut cluster,
            primary: true,
        })
        .await?;
        cluster.clone_replica()?;
        launch_on_free_port(&mut FirstStart {
            cluster: &mut cluster,
            primary: false,
        })
        .await?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: where writes go.
    pub fn primary_url(&self) -> String {
        url(self.primary.port)
    }

    /// Where reads go: the hot standby.
    pub fn replica_url(&self) -> String {
        url(self.replica.port)
    }

    /// Stops the replica (fast shutdown); reads must fall back.
    pub fn stop_replica(&mut self) {
        stop(&mut self.replica);
    }

    /// Starts the stopped replica again; it catches up from the primary.
    pub async fn start_replica(&mut self) -> Result<(), ServiceError> {
        self.start_server(false).await
    }

    /// Stops the primary (fast shutdown); writes must fail with 503.
    pub fn stop_primary(&mut self) {
        stop(&mut self.primary);
    }

    /// Kills the primary and every one of its processes at once (SIGKILL),
    /// as a crash would. What was committed is in its write-ahead log, and
    /// is replayed when it starts again ([`Self::start_primary`]).
    pub fn kill_primary(&mut self) {
        if let Some(mut process) = self.primary.process.take() {
            if let Err(error) = process.signal_tree(Signal::SIGKILL) {
                tracing::debug!(%error, "the primary's processes were gone already");
            }
            process.kill();
        }
    }

    /// Starts the stopped (or killed) primary again, on the same port and
    /// data: it recovers from its write-ahead log.
    pub async fn start_primary(&mut self) -> Result<(), ServiceError> {
        self.start_server(true).await
    }

    /// Freezes the replica (SIGSTOP to every one of its processes): its
    /// connections stay open and nothing answers, the nastiest outage.
    pub fn freeze_replica(&self) -> std::io::Result<()> {
        signal_server(&self.replica, Signal::SIGSTOP)
    }

    /// Wakes a frozen replica (SIGCONT).
    pub fn thaw_replica(&self) -> std::io::Result<()> {
        signal_server(&self.replica, Signal::SIGCONT)
    }

    /// Freezes the primary, as [`Self::freeze_replica`] does the replica.
    pub fn freeze_primary(&self) -> std::io::Result<()> {
        signal_server(&self.primary, Signal::SIGSTOP)
    }

    /// Wakes a frozen primary.
    pub fn thaw_primary(&self) -> std::io::Result<()> {
        signal_server(&self.primary, Signal::SIGCONT)
    }

    fn server_mut(&mut self, primary: bool) -> &mut Server {
        if primary {
            &mut self.primary
        } else {
            &mut self.replica
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.log"))
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    fn init_primary(&self) -> Result<(), ServiceError> {
        let data = self.primary.data.as_os_str();
        run_to_end(
            "initdb",
            &self.bin("initdb"),
            [
                "-D".as_ref(),
                data,
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ] as [&std::ffi::OsStr; 10],
            &self.log("initdb"),
            self.user.as_deref(),
        )?;
        // `initdb -A trust` already lets 127.0.0.1 connect, replication
        // included. Settings appended to postgresql.conf win over earlier ones.
        append_settings(
            &self.primary.data,
            &[
                "listen_addresses = '127.0.0.1'".to_owned(),
                format!(
                    "unix_socket_directories = '{}'",
                    self.root.path().join("sockets").display()
                ),
                "wal_level = replica".to_owned(),
                "max_wal_senders = 5".to_owned(),
                "hot_standby = on".to_owned(),
                // Small and quick to start: a teaching server, not a tuned one.
                "shared_buffers = 32MB".to_owned(),
                "max_connections = 60".to_owned(),
            ],
        )
    }

    /// `pg_basebackup -R`: a copy of the primary that starts as a standby,
    /// streaming from it (`primary_conninfo` and `standby.signal` written for us).
    fn clone_replica(&self) -> Result<(), ServiceError> {
        let port = self.primary.port.to_string();
        run_to_end(
            "pg_basebackup",
            &self.bin("pg_basebackup"),
            [
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                self.replica.data.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "--no-sync".as_ref(),
            ] as [&std::ffi::OsStr; 12],
            &self.log("pg_basebackup"),
            self.user.as_deref(),
        )
    }

    async fn start_server(&mut self, primary: bool) -> Result<(), ServiceError> {
        let binary = self.bin("postgres");
        let user = self.user.clone();
        let log = self.log(if primary { "primary" } else { "replica" });
        let isready = self.bin("pg_isready");
        let server = self.server_mut(primary);
        if server.process.is_some() {
            return Ok(());
        }
        let port = server.port.to_string();
        // The program's name in errors says which server failed to start.
        let program = if primary {
            "postgres (the primary)"
        } else {
            "postgres (the replica)"
        };
        let mut process = ManagedProcess::spawn(
            program,
            &binary,
            [
                "-D".as_ref(),
                server.data.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
            ] as [&std::ffi::OsStr; 4],
            &log,
            user.as_deref(),
        )?
        .stop_with(Signal::SIGINT);
        process
            .wait_until_ready(
                READY_WITHIN,
                Duration::from_millis(50),
                "accept connections",
                || {
                    let accepts = Command::new(&isready)
                        .args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", "1"])
                        .status()
                        .is_ok_and(|s| s.success());
                    std::future::ready(accepts)
                },
            )
            .await?;
        server.process = Some(process);
        Ok(())
    }
}

/// The first start of one of the cluster's servers, on a port picked then
/// (a restart keeps its port: clients and the replica know it).
struct FirstStart<'a> {
    cluster: &'a mut PostgresCluster,
    primary: bool,
}

impl OnFreePort for FirstStart<'_> {
    fn use_port(&mut self, port: u16) {
        self.cluster.server_mut(self.primary).port = port;
    }

    async fn launch(&mut self) -> Result<(), ServiceError> {
        self.cluster.start_server(self.primary).await
    }
}

fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn signal_server(server: &Server, signal: Signal) -> std::io::Result<()> {
    match &server.process {
        Some(process) => process.signal_tree(signal),
        None => Err(std::io::Error::other(format!(
            "the {} is not running",
            server.role
        ))),
    }
}

fn stop(server: &mut Server) {
    if let Some(mut process) = server.process.take() {
        process.stop(Duration::from_secs(10));
    }
}

/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`, else
/// wherever `initdb` is on `PATH`.
pub fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_initdb(dir))
        .collect();
    versions.sort_by_key(|dir| {
        dir.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .or_else(|| find_on_path("initdb")?.parent().map(Path::to_path_buf))
}

/// The user the servers run as: ourselves, or `postgres` when we are root
/// (PostgreSQL refuses to run as root, so that a compromised server cannot
/// take the machine).
pub fn server_user() -> Result<Option<String>, ServiceError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(_)) => Ok(Some("postgres".to_owned())),
        _ => Err(ServiceError::Missing {
            program: "a `postgres` system user (running as root)",
            package: "postgresql",
            variable: "DATABASE_URL and DATABASE_REPLICA_URL",
        }),
    }
}

/// Gives `path` to the server user (when we run as root).
pub fn hand_over(path: &Path, user: Option<&str>) -> Result<(), ServiceError> {
    let Some(name) = user else {
        return Ok(());
    };
    let user = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| std::io::Error::other(format!("no user `{name}`")))?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    Ok(())
}

pub fn append_settings(data: &Path, settings: &[String]) -> Result<(), ServiceError> {
    use std::io::Write;
    let mut conf = std::fs::File::options()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    writeln!(conf, "\n# MyClothes: a private teaching server")?;
    for line in settings {
        writeln!(conf, "{line}")?;
    }
    Ok(())
}
