//! PostgreSQL across two zones: a primary, a synchronous standby, and
//! stage 5's asynchronous read replica.
//!
//! ```text
//!   a-data:5432  pg_a  primary ──sync──▶ b-data:5432  pg_b  standby (hot)
//!                                                       │ cascading, async
//!                                                       ▼
//!                                        b-data:5433  pg_replica  (reads)
//! ```
//!
//! **Synchronous** means the primary does not tell a client "committed"
//! until the standby has written the transaction's WAL to its disk
//! (`synchronous_commit = on`, `synchronous_standby_names = 'ANY 1 (pg_a,
//! pg_b)'`: whichever of the two is the standby at the time). So every
//! acknowledged write exists in two zones, and promoting the standby loses
//! none: RDS Multi-AZ's promise. The price is a network round trip to the
//! other zone on every commit (measured by `scripts/bench-stage7`).
//! `--async-standby` turns it off to show the difference: commits return
//! at once, and whatever the standby had not received when the primary
//! died is gone after the promotion.
//!
//! The read replica streams from the standby, not the primary, so that it
//! follows whichever of the two is promoted (a cascading standby follows a
//! timeline switch by itself).
//!
//! Every server has the same port on its own machine; `node.conf` (included
//! from `postgresql.conf`) holds what differs per server, and is written
//! again before every start, because a base backup or `pg_rewind` copies
//! the other server's.
//!
//! When a failed zone returns, its old primary cannot simply start again:
//! its WAL holds writes the new primary never saw (the ones nobody was told
//! were committed, in synchronous mode). `pg_rewind` winds it back to where
//! the two timelines forked (it needs `wal_log_hints = on`), and it starts
//! as the new primary's standby; when that fails, a fresh base backup.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shop::services::postgres::{find_bindir, hand_over, server_user};
use tokio::process::Command;

use shop::services::{ManagedProcess, ServiceError, private_dir, run_to_end_in, run_to_end_within};
use tempfile::TempDir;

use crate::region::Machine;

/// The port of every PostgreSQL server on its machine (the replica: 5433).
pub const PORT: u16 = 5432;
pub const REPLICA_PORT: u16 = 5433;

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Whether a commit waits for the standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// The commit waits until the standby has the WAL on disk.
    Synchronous,
    /// The commit returns at once; the standby follows when it can.
    Asynchronous,
}

impl Replication {
    /// `synchronous_standby_names` for a primary with a standby in place.
    fn standby_names(self) -> &'static str {
        match self {
            Self::Synchronous => "ANY 1 (pg_a, pg_b)",
            Self::Asynchronous => "",
        }
    }
}

/// Which server a node is: the two that take turns as primary, or the
/// read replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum NodeName {
    #[serde(rename = "pg_a")]
    A,
    #[serde(rename = "pg_b")]
    B,
    #[serde(rename = "pg_replica")]
    Replica,
}

impl NodeName {
    /// Its `application_name` in replication, and its folder.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "pg_a",
            Self::B => "pg_b",
            Self::Replica => "pg_replica",
        }
    }
}

/// One server: its machine, its folder, its process when running.
#[derive(Debug)]
struct Node {
    name: NodeName,
    machine: Machine,
    port: u16,
    data: PathBuf,
    sockets: PathBuf,
    process: Option<ManagedProcess>,
}

impl Node {
    fn address(&self) -> Ipv4Addr {
        self.machine.address
    }
}

/// How long `pg_rewind` and `pg_basebackup` wait for a connection.
const CONNECT_TIMEOUT_S: u32 = 10;

/// How long a rejoin's `pg_rewind` or `pg_basebackup` may run in all. The
/// connect timeout covers a primary that is gone; one *frozen* half-way
/// through the copy keeps the connection open, and without this the copy
/// (and the tier's lock, which the failover manager needs to act on that
/// very primary) would wait for as long as the freeze lasts. A teaching
/// cluster's data copies in seconds; a real one's would need far more.
const COPY_WITHIN: Duration = Duration::from_secs(60);

/// The three servers, stopped and deleted when dropped.
#[derive(Debug)]
pub struct PostgresHa {
    // Field order matters: the servers stop before their folder goes.
    nodes: Vec<Node>,
    /// Which of `A` and `B` is the primary now.
    primary: NodeName,
    /// How often the primary's server has been started: a failover
    /// decided before it was started again must not go ahead (see
    /// [`Self::primary_starts`]).
    primary_starts: u64,
    replication: Replication,
    bindir: PathBuf,
    user: Option<String>,
    root: TempDir,
}

impl PostgresHa {
    /// Makes and starts the primary in `a_data`, its standby in `b_data`,
    /// and the read replica beside the standby.
    pub async fn start(
        a_data: Machine,
        b_data: Machine,
        replication: Replication,
    ) -> Result<Self, ServiceError> {
        let bindir = find_bindir().ok_or(ServiceError::Missing {
            program: "initdb",
            package: "postgresql",
            variable: "(stage 7 always starts its own servers)",
        })?;
        let user = server_user()?;
        let root = private_dir("stage7-postgres")?;
        hand_over(root.path(), user.as_deref())?;
        let node = |name: NodeName, machine: &Machine, port: u16| -> Result<Node, ServiceError> {
            let sockets = root.path().join(format!("{}-sockets", name.as_str()));
            std::fs::create_dir(&sockets)?;
            hand_over(&sockets, user.as_deref())?;
            Ok(Node {
                name,
                machine: machine.clone(),
                port,
                data: root.path().join(name.as_str()),
                sockets,
                process: None,
            })
        };
        let nodes = vec![
            node(NodeName::A, &a_data, PORT)?,
            node(NodeName::B, &b_data, PORT)?,
            node(NodeName::Replica, &b_data, REPLICA_PORT)?,
        ];
        let mut ha = Self {
            nodes,
            primary: NodeName::A,
            primary_starts: 0,
            replication,
            bindir,
            user,
            root,
        };
        ha.init_primary()?;
        ha.start_node(NodeName::A).await?;
        ha.clone_from(NodeName::B, NodeName::A).await?;
        ha.start_node(NodeName::B).await?;
        ha.clone_from(NodeName::Replica, NodeName::B).await?;
        ha.start_node(NodeName::Replica).await?;
        Ok(ha)
    }

    /// Whether commits wait for the standby.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// Which server is the primary now.
    pub fn primary(&self) -> NodeName {
        self.primary
    }

    /// The other of `A` and `B`: the standby (if it is running).
    pub fn standby(&self) -> NodeName {
        match self.primary {
            NodeName::A => NodeName::B,
            _ => NodeName::A,
        }
    }

    /// Where node `name` listens.
    pub fn address_of(&self, name: NodeName) -> (Ipv4Addr, u16) {
        let node = self.node(name);
        (node.address(), node.port)
    }

    /// A connection URL for node `name`, as seen from inside the region.
    pub fn url_of(&self, name: NodeName) -> String {
        let (host, port) = self.address_of(name);
        url(host, port)
    }

    /// The machine node `name` runs on.
    pub fn machine_of(&self, name: NodeName) -> &Machine {
        &self.node(name).machine
    }

    /// Whether node `name`'s process is running.
    pub fn is_running(&mut self, name: NodeName) -> bool {
        let node = self.node_mut(name);
        match &mut node.process {
            Some(process) => process.exited().is_none(),
            None => false,
        }
    }

    /// Kills node `name` at once (SIGKILL to the server and every backend):
    /// a crash, or fencing a primary that must never accept a write again.
    pub fn kill(&mut self, name: NodeName) {
        let node = self.node_mut(name);
        if let Some(mut process) = node.process.take() {
            let _ = process.signal_tree(Signal::SIGKILL);
            process.kill();
        }
    }

    /// How often the primary's server has been started. The failover
    /// manager decides on what it saw before it takes this tier's lock; if
    /// the primary was started meanwhile (its zone brought back), what it
    /// saw is out of date.
    pub fn primary_starts(&self) -> u64 {
        self.primary_starts
    }

    /// Records that `name` has been promoted (the failover manager did it).
    pub fn promoted(&mut self, name: NodeName) {
        self.primary = name;
    }

    /// Brings a node of a zone that came back: the standby and the replica
    /// restart and catch up by themselves; a former primary is wound back
    /// with `pg_rewind` (or copied afresh) and becomes the standby.
    pub async fn rejoin(&mut self, name: NodeName) -> Result<String, ServiceError> {
        if self.is_running(name) {
            return Ok(format!("{} is running", name.as_str()));
        }
        let how = if name == self.primary {
            // The zone went down and nobody was promoted: it stays primary.
            "restarted as the primary (no failover happened)".to_owned()
        } else if name == NodeName::Replica {
            "restarted; catches up from the standby".to_owned()
        } else if self.was_a_primary(name) {
            match self.rewind(name).await {
                Ok(()) => format!(
                    "rewound with pg_rewind onto {}'s timeline",
                    self.primary.as_str()
                ),
                // The primary answered and then stopped (frozen): a base
                // backup from it would wait out another deadline, under
                // the same lock. A rewind cut off half-way leaves a folder
                // no later rewind can trust, so it goes: the next rejoin
                // finds nothing to rewind and copies afresh.
                Err(error @ ServiceError::TimedOut { .. }) => {
                    let _ = tokio::fs::remove_dir_all(&self.node(name).data).await;
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(%error, "pg_rewind failed; taking a fresh base backup");
                    let data = self.node(name).data.clone();
                    // Gone already when an earlier try failed half-way (a
                    // rewind or base backup that fails leaves no folder):
                    // this try makes the copy the earlier one could not.
                    match tokio::fs::remove_dir_all(&data).await {
                        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                            return Err(error.into());
                        }
                        _ => {}
                    }
                    self.clone_from(name, self.primary).await?;
                    "copied afresh from the primary (pg_rewind could not)".to_owned()
                }
            }
        } else {
            "restarted as the standby".to_owned()
        };
        if name != self.primary && name != NodeName::Replica {
            std::fs::write(self.node(name).data.join("standby.signal"), "")?;
        }
        self.start_node(name).await?;
        Ok(format!("{}: {how}", name.as_str()))
    }

    /// A node that was a primary: no `standby.signal` in its folder.
    fn was_a_primary(&self, name: NodeName) -> bool {
        !self.node(name).data.join("standby.signal").exists()
    }

    fn node(&self, name: NodeName) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| unreachable!("every node is made in start"))
    }

    fn node_mut(&mut self, name: NodeName) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| unreachable!("every node is made in start"))
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.log"))
    }

    /// The subnet every server lets in (`trust`: a throwaway teaching
    /// cluster, never a template). With namespaces the security groups
    /// guard it; on the loopback layout any local user can reach it, as
    /// stage 5's servers on 127.0.0.1.
    fn subnet(&self) -> String {
        let [a, b, c, _] = self.node(NodeName::A).address().octets();
        format!("{a}.{b}.{c}.0/24")
    }

    fn init_primary(&self) -> Result<(), ServiceError> {
        let node = self.node(NodeName::A);
        let data = node.data.to_string_lossy().into_owned();
        run_to_end_in(
            "initdb",
            &self.bin("initdb"),
            [
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            &self.log("initdb"),
            self.user.as_deref(),
            None,
        )?;
        let subnet = self.subnet();
        append(
            &node.data.join("pg_hba.conf"),
            &[
                format!("host all all {subnet} trust"),
                format!("host replication all {subnet} trust"),
            ],
        )?;
        append(
            &node.data.join("postgresql.conf"),
            &[
                "# MyClothes stage 7: shared by every server (copied by the base backups)"
                    .to_owned(),
                "wal_level = replica".to_owned(),
                "max_wal_senders = 10".to_owned(),
                "hot_standby = on".to_owned(),
                // pg_rewind needs it to rejoin a failed primary.
                "wal_log_hints = on".to_owned(),
                // Enough WAL kept for a returning zone to catch up from.
                "wal_keep_size = '256MB'".to_owned(),
                "synchronous_commit = on".to_owned(),
                // A standby that is gone is noticed in 5 s, not the default
                // 60: until then it still looks in sync, every synchronous
                // commit waits for it, and the failover manager cannot
                // degrade.
                "wal_sender_timeout = '5s'".to_owned(),
                "wal_receiver_timeout = '5s'".to_owned(),
                format!(
                    "synchronous_standby_names = '{}'",
                    self.replication.standby_names()
                ),
                "shared_buffers = 32MB".to_owned(),
                "max_connections = 60".to_owned(),
                "include_if_exists = 'node.conf'".to_owned(),
            ],
        )
    }

    /// A base backup of `source` into `target`'s folder, streamed from
    /// inside `target`'s machine (so it crosses the zones' network).
    /// A base backup that fails removes what it wrote (one killed at its
    /// deadline cannot, so it is done here).
    async fn clone_from(&self, target: NodeName, source: NodeName) -> Result<(), ServiceError> {
        let (host, port) = self.address_of(source);
        let node = self.node(target);
        let data = node.data.to_string_lossy().into_owned();
        let copied = run_to_end_within(
            "pg_basebackup",
            &self.bin("pg_basebackup"),
            [
                "-h",
                &host.to_string(),
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                &format!("connect_timeout={CONNECT_TIMEOUT_S}"),
                "-D",
                &data,
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
            &self.log(&format!("{}-basebackup", target.as_str())),
            (self.user.as_deref(), node.machine.netns.as_deref()),
            COPY_WITHIN,
        )
        .await;
        if let Err(error) = copied {
            let _ = tokio::fs::remove_dir_all(&node.data).await;
            return Err(error);
        }
        std::fs::write(node.data.join("standby.signal"), "")?;
        Ok(())
    }

    /// The data folder of node `name` (a test may need to look inside).
    pub fn data_dir(&self, name: NodeName) -> &std::path::Path {
        &self.node(name).data
    }

    /// `pg_rewind` of a former primary onto the current one.
    async fn rewind(&self, name: NodeName) -> Result<(), ServiceError> {
        let (host, port) = self.address_of(self.primary);
        let node = self.node(name);
        let data = node.data.to_string_lossy().into_owned();
        // A deadline on the connection: a primary whose zone is cut off
        // again would otherwise hold this (and the tier's lock) for as long
        // as TCP keeps trying. `COPY_WITHIN` covers one frozen half-way.
        let source = format!(
            "host={host} port={port} user=postgres dbname=postgres connect_timeout={CONNECT_TIMEOUT_S}"
        );
        run_to_end_within(
            "pg_rewind",
            &self.bin("pg_rewind"),
            [
                "--target-pgdata",
                &data,
                "--source-server",
                &source,
                "--no-sync",
            ],
            &self.log(&format!("{}-rewind", name.as_str())),
            (self.user.as_deref(), node.machine.netns.as_deref()),
            COPY_WITHIN,
        )
        .await
    }

    /// Writes `node.conf` (what differs per server) and starts the server
    /// in its machine; returns once it accepts connections.
    async fn start_node(&mut self, name: NodeName) -> Result<(), ServiceError> {
        let upstream = match name {
            NodeName::Replica => Some(self.address_of(NodeName::B)),
            other if other == self.primary => None,
            _ => Some(self.address_of(self.primary)),
        };
        let binary = self.bin("postgres");
        let isready = self.bin("pg_isready");
        let log = self.log(name.as_str());
        let user = self.user.clone();
        let node = self.node_mut(name);
        if node.process.is_some() {
            return Ok(());
        }
        if name == self.primary {
            self.primary_starts += 1;
        }
        let node = self.node_mut(name);
        let mut settings = vec![
            format!("listen_addresses = '{}'", node.address()),
            format!("port = {}", node.port),
            format!("unix_socket_directories = '{}'", node.sockets.display()),
        ];
        if let Some((host, port)) = upstream {
            settings.push(format!(
                "primary_conninfo = 'host={host} port={port} user=postgres application_name={}'",
                name.as_str()
            ));
            settings.push("recovery_target_timeline = 'latest'".to_owned());
        }
        let conf = node.data.join("node.conf");
        std::fs::write(&conf, settings.join("\n") + "\n")?;
        hand_over(&conf, user.as_deref())?;
        let data = node.data.to_string_lossy().into_owned();
        let port = node.port.to_string();
        let mut process = ManagedProcess::spawn_in(
            "postgres",
            &binary,
            ["-D", &data],
            &log,
            user.as_deref(),
            node.machine.netns.as_deref(),
        )?
        .stop_with(Signal::SIGINT);
        let host = node.address().to_string();
        let netns = node.machine.netns.clone();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = process.exited() {
                return Err(process.not_ready(format!("{} exited ({status})", name.as_str())));
            }
            if is_ready(&isready, netns.as_deref(), &host, &port).await {
                node.process = Some(process);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(process.not_ready(format!(
                    "{} did not accept connections within {}s",
                    name.as_str(),
                    READY_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `pg_isready`, from inside the server's own machine (the security
/// groups would drop it from the host). Awaited: a start waits on it up to
/// a second at a time, and the tier's other work goes on meanwhile.
async fn is_ready(isready: &Path, netns: Option<&str>, host: &str, port: &str) -> bool {
    let mut command = match (netns, shop::services::ip_binary()) {
        (Some(ns), Ok(ip)) => {
            let mut command = Command::new(ip);
            command.args(["netns", "exec", ns]).arg(isready);
            command
        }
        _ => Command::new(isready),
    };
    command
        .args(["-q", "-h", host, "-p", port, "-U", "postgres", "-t", "1"])
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// `postgres://postgres@host:port/postgres`.
pub fn url(host: Ipv4Addr, port: u16) -> String {
    format!("postgres://postgres@{host}:{port}/postgres")
}

fn append(file: &Path, lines: &[String]) -> Result<(), ServiceError> {
    use std::io::Write;
    let mut out = std::fs::File::options().append(true).open(file)?;
    writeln!(out)?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
