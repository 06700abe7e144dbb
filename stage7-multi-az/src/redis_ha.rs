//! The sessions' Redis across two zones, watched by three Sentinels; and
//! the cache.
//!
//! ```text
//!   a-data:6379  primary ──async──▶ b-data:6379  replica
//!   a-data:26379 sentinel   b-data:26379 sentinel   region:26379 sentinel
//!   region:6380  the cache (stage 5's: nothing in it is a record)
//! ```
//!
//! Each Sentinel pings the primary; when one has had no answer for
//! `down-after-milliseconds` (1 s here; 30 s by default) it asks the others,
//! and once a **quorum** of 2 agree the primary is down, one of them (elected
//! by a majority of the three) promotes the replica and tells the rest. Three
//! in three places, so that losing any one zone leaves a majority.
//!
//! Redis replication is **asynchronous**: the primary answers a write before
//! the replica has it. A cart written in the last moment before a zone is
//! lost can be lost with it: how many is measured, not promised (the
//! shop's `WAIT 1 <ms>` would close most of that window at a round trip
//! per cart write; ElastiCache's Multi-AZ makes the same trade).
//!
//! Instances reach the primary through the sessions endpoint (see
//! [`crate::endpoint`]), which follows what the Sentinels say: the role of
//! ElastiCache's primary endpoint. Stages 4 and 5 keep their `REDIS_URL`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shop::services::{ManagedProcess, ServiceError, find_on_path, private_dir};
use tempfile::TempDir;

use crate::netns;
use crate::region::Machine;

/// The port of the sessions' Redis on each data machine.
pub const PORT: u16 = 6379;
/// The cache's port (on the `region` machine).
pub const CACHE_PORT: u16 = 6380;
/// Each Sentinel's port.
pub const SENTINEL_PORT: u16 = 26379;
/// The name the Sentinels know the primary by.
pub const MASTER_NAME: &str = "sessions";

const READY_WITHIN: Duration = Duration::from_secs(20);

/// One process of the Redis tier.
#[derive(Debug)]
struct Node {
    /// `redis-a`, `redis-b`, `sentinel-a`, `cache`, …
    name: String,
    machine: Machine,
    port: u16,
    args: Vec<String>,
    process: Option<ManagedProcess>,
}

/// The Redis tier, stopped and deleted when dropped.
#[derive(Debug)]
pub struct RedisHa {
    nodes: Vec<Node>,
    binary: PathBuf,
    dir: TempDir,
}

impl RedisHa {
    /// Starts the primary in `a_data`, its replica in `b_data`, a Sentinel
    /// in each of the three machines, and the cache in `region`.
    pub async fn start(
        a_data: &Machine,
        b_data: &Machine,
        region: &Machine,
    ) -> Result<Self, ServiceError> {
        let binary = find_on_path("redis-server").ok_or(ServiceError::Missing {
            program: "redis-server",
            package: "redis-server",
            variable: "(stage 7 always starts its own servers)",
        })?;
        let dir = private_dir("stage7-redis")?;
        let mut ha = Self {
            nodes: Vec::new(),
            binary,
            dir,
        };
        let primary = a_data.address;
        ha.add_server("redis-a", a_data, None)?;
        ha.add_server("redis-b", b_data, Some(primary))?;
        for (name, machine) in [
            ("sentinel-a", a_data),
            ("sentinel-b", b_data),
            ("sentinel-region", region),
        ] {
            ha.add_sentinel(name, machine, primary)?;
        }
        ha.add_cache(region)?;
        let names: Vec<String> = ha.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            ha.launch(&name).await?;
        }
        ha.wait_for_replica(b_data).await?;
        Ok(ha)
    }

    /// Returns once the replica has its first full copy and streams
    /// (`ROLE` says `connected`): until then it has nothing to promote.
    async fn wait_for_replica(&self, replica: &Machine) -> Result<(), ServiceError> {
        let address = SocketAddr::from((replica.address, PORT));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let role = netns::run(replica.netns.as_deref(), move || {
                Box::pin(async move {
                    let ask = async {
                        let client = redis::Client::open(format!("redis://{address}/"))?;
                        let mut connection = client.get_multiplexed_async_connection().await?;
                        redis::cmd("ROLE")
                            .query_async::<redis::Value>(&mut connection)
                            .await
                    };
                    tokio::time::timeout(Duration::from_secs(1), ask).await
                })
            })
            .await;
            if let Ok(Ok(Ok(redis::Value::Array(role)))) = role
                && role.get(3) == Some(&redis::Value::BulkString(b"connected".to_vec()))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Io(std::io::Error::other(
                    "the Redis replica in zone b did not finish its first copy within 20s",
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the primary was when the tier started (the endpoint's first
    /// target; the Sentinels say where it is later).
    pub fn first_primary(&self) -> SocketAddr {
        self.address_of("redis-a")
    }

    /// Every Sentinel's address.
    pub fn sentinels(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.name.starts_with("sentinel"))
            .map(|n| SocketAddr::from((n.machine.address, n.port)))
            .collect()
    }

    /// The cache's URL.
    pub fn cache_url(&self) -> String {
        let cache = self.address_of("cache");
        format!("redis://{cache}/")
    }

    fn address_of(&self, name: &str) -> SocketAddr {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| SocketAddr::from((n.machine.address, n.port)))
            .unwrap_or_else(|| unreachable!("{name} is made in start"))
    }

    fn node_dir(&self, name: &str) -> Result<String, ServiceError> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir.to_string_lossy().into_owned())
    }

    fn add_server(
        &mut self,
        name: &str,
        machine: &Machine,
        replica_of: Option<Ipv4Addr>,
    ) -> Result<(), ServiceError> {
        let mut args = common_args(machine.address, PORT, &self.node_dir(name)?);
        // A record, as stage 4's: durable, bounded, never evicting.
        args.extend(
            [
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory",
                "256mb",
                "--maxmemory-policy",
                "noeviction",
                // Redis waits 5 s by default before a full copy to a new
                // replica, in case more ask: a zone lost in those seconds
                // would take every cart with it.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned),
        );
        // Say our own address: on loopback the kernel would otherwise
        // connect (and so announce us) from 127.0.0.1, whoever we are.
        args.extend([
            "--replica-announce-ip".to_owned(),
            machine.address.to_string(),
        ]);
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".to_owned(),
                primary.to_string(),
                PORT.to_string(),
            ]);
        }
        self.nodes.push(Node {
            name: name.to_owned(),
            machine: machine.clone(),
            port: PORT,
            args,
            process: None,
        });
        Ok(())
    }

    fn add_sentinel(
        &mut self,
        name: &str,
        machine: &Machine,
        primary: Ipv4Addr,
    ) -> Result<(), ServiceError> {
        let dir = self.node_dir(name)?;
        // A Sentinel rewrites its own configuration file as it learns (the
        // other Sentinels, the replicas, a new primary): it must be a file.
        let config = PathBuf::from(&dir).join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {SENTINEL_PORT}\nbind {address}\nprotected-mode no\ndir {dir}\n\
                 sentinel announce-ip {address}\n\
                 sentinel monitor {MASTER_NAME} {primary} {PORT} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                address = machine.address
            ),
        )?;
        self.nodes.push(Node {
            name: name.to_owned(),
            machine: machine.clone(),
            port: SENTINEL_PORT,
            args: vec![
                config.to_string_lossy().into_owned(),
                "--sentinel".to_owned(),
            ],
            process: None,
        });
        Ok(())
    }

    fn add_cache(&mut self, region: &Machine) -> Result<(), ServiceError> {
        let mut args = common_args(region.address, CACHE_PORT, &self.node_dir("cache")?);
        args.extend(
            [
                "--appendonly",
                "no",
                "--maxmemory",
                "64mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ]
            .map(str::to_owned),
        );
        self.nodes.push(Node {
            name: "cache".to_owned(),
            machine: region.clone(),
            port: CACHE_PORT,
            args,
            process: None,
        });
        Ok(())
    }

    /// Starts process `name` in its machine and waits for its PONG.
    async fn launch(&mut self, name: &str) -> Result<(), ServiceError> {
        let log = self.dir.path().join(format!("{name}.log"));
        let binary = self.binary.clone();
        let Some(node) = self.nodes.iter_mut().find(|n| n.name == name) else {
            return Ok(());
        };
        if node.process.is_some() {
            return Ok(());
        }
        let mut process = ManagedProcess::spawn_in(
            "redis-server",
            &binary,
            &node.args,
            &log,
            None,
            node.machine.netns.as_deref(),
        )?;
        let address = SocketAddr::from((node.machine.address, node.port));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = process.exited() {
                return Err(process.not_ready(format!("{name} exited ({status})")));
            }
            if ping(node.machine.netns.as_deref(), address).await {
                node.process = Some(process);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(process.not_ready(format!(
                    "{name} did not answer PING within {}s",
                    READY_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forgets the processes of machines in `zone` (already killed with
    /// the zone).
    pub fn zone_lost(&mut self, zone: crate::region::Zone) {
        for node in self.nodes.iter_mut().filter(|n| n.machine.zone == zone) {
            if let Some(mut process) = node.process.take() {
                process.kill();
            }
        }
    }

    /// Restarts the processes of a zone that came back. Its server starts as
    /// a replica of `primary` (where the Sentinels say the primary is now):
    /// a former primary must not come back claiming the role and take
    /// writes; its Sentinel rejoins the other two.
    pub async fn zone_back(
        &mut self,
        zone: crate::region::Zone,
        primary: SocketAddr,
    ) -> Result<Vec<String>, ServiceError> {
        let mut done = Vec::new();
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.machine.zone == zone && n.process.is_none())
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            if let Some(node) = self
                .nodes
                .iter_mut()
                .find(|n| n.name == name && n.port == PORT)
            {
                if let Some(at) = node.args.iter().position(|a| a == "--replicaof") {
                    node.args.truncate(at);
                }
                let here = SocketAddr::from((node.machine.address, node.port));
                if here != primary {
                    node.args.extend([
                        "--replicaof".to_owned(),
                        primary.ip().to_string(),
                        primary.port().to_string(),
                    ]);
                }
            }
            self.launch(&name).await?;
            done.push(format!("{name}: restarted"));
        }
        Ok(done)
    }
}

fn common_args(address: Ipv4Addr, port: u16, dir: &str) -> Vec<String> {
    [
        "--bind",
        &address.to_string(),
        "--port",
        &port.to_string(),
        "--dir",
        dir,
        "--save",
        "",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether the Redis (or Sentinel) at `address` answers PING, asked from
/// inside `netns`.
async fn ping(netns: Option<&str>, address: SocketAddr) -> bool {
    netns::run(netns, move || {
        Box::pin(async move {
            let ask = async {
                let client = redis::Client::open(format!("redis://{address}/"))?;
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut connection).await
            };
            matches!(tokio::time::timeout(Duration::from_secs(1), ask).await, Ok(Ok(pong)) if pong == "PONG")
        })
    })
    .await
    .unwrap_or(false)
}

/// Where the Sentinels say the primary is now: the address a majority of
/// them name (2 of 3). Not the first that answers: a Sentinel that has just
/// come back with its zone still names the old primary until the others'
/// hello messages correct it. Runs inside the `region` machine.
pub async fn primary_from_sentinels(sentinels: &[SocketAddr]) -> Option<SocketAddr> {
    let mut named: Vec<SocketAddr> = Vec::new();
    for sentinel in sentinels {
        let ask = async {
            let client = redis::Client::open(format!("redis://{sentinel}/"))?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER_NAME)
                .query_async::<Option<(String, u16)>>(&mut connection)
                .await
        };
        if let Ok(Ok(Some((host, port)))) =
            tokio::time::timeout(Duration::from_millis(500), ask).await
            && let Ok(ip) = host.parse::<Ipv4Addr>()
        {
            named.push(SocketAddr::from((ip, port)));
        }
    }
    let majority = sentinels.len() / 2 + 1;
    named
        .iter()
        .find(|candidate| named.iter().filter(|n| n == candidate).count() >= majority)
        .copied()
}
