//! The data tier across the zones, and the region's services in front of it.
//!
//! [`DataTier::start`] adds the fixed machines to the region (`a-data`,
//! `b-data`, and `region`), starts PostgreSQL there ([`crate::postgres_ha`])
//! and, on a thread inside the `region` machine ([`crate::netns`]), the
//! writer endpoint ([`crate::endpoint`]) and the failover manager
//! ([`crate::failover`]). Instances are given the endpoint's address, never
//! a server's: after a failover the same URL reaches the new primary.
//!
//! Why endpoints and not clients that know every server? sqlx takes one
//! host per URL (libpq's `target_session_attrs=read-write` over a host list
//! has no sqlx equivalent), and the redis crate's Sentinel client would
//! change how stages 4 and 5 connect; an application on RDS and ElastiCache
//! is given one name per role, as here, and the provider moves the name.
//!
//! Taking a zone down ([`DataTier::take_zone_down`]) is the power and the
//! network of a whole zone going at once: every process in its machines
//! is killed (`SIGKILL`, found with `ip netns pids`) and their links to the
//! bridge are cut. Bringing it back ([`DataTier::bring_zone_back`])
//! restores the links and re-joins its servers as standbys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::{Mutex as AsyncMutex, watch};

use crate::endpoint::Endpoint;
use crate::failover::{FailoverManager, Policy, Status};
use crate::netns;
use crate::postgres_ha::{self, NodeName, PostgresHa, Replication};
use crate::redis_ha::{self, RedisHa};
use crate::region::{A_DATA_HOST, B_DATA_HOST, Machine, REGION_HOST, Region, Zone};
use crate::security_groups::Group;

/// The writer endpoint's port on the `region` machine.
pub const WRITER_PORT: u16 = 5432;
/// The sessions endpoint's port on the `region` machine.
pub const SESSIONS_PORT: u16 = 6379;
/// How often the sessions endpoint asks the Sentinels where the primary is.
const FOLLOW_SENTINELS_EVERY: Duration = Duration::from_millis(250);

/// How the data tier behaves on a bad day.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub replication: Replication,
    pub policy: Policy,
}

/// PostgreSQL in two zones, the writer endpoint and the failover manager;
/// all stopped when dropped.
#[derive(Debug)]
pub struct DataTier {
    // Field order matters: the region's services stop first, then the
    // servers, then the namespaces they ran in.
    control: Option<JoinHandle<Option<()>>>,
    shutdown: watch::Sender<bool>,
    manager: Arc<FailoverManager>,
    writer: Arc<Endpoint>,
    sessions: Arc<Endpoint>,
    postgres: Arc<AsyncMutex<PostgresHa>>,
    redis: AsyncMutex<RedisHa>,
    control_machine: Machine,
    region: Arc<Region>,
}

impl DataTier {
    /// Adds the data machines to `region` and starts everything on them.
    pub async fn start(region: Arc<Region>, options: Options) -> Result<Self, shop::BoxError> {
        let control_machine =
            region.add_machine("region", Zone::Region, REGION_HOST, Group::Data)?;
        let a_data = region.add_machine("a-data", Zone::A, A_DATA_HOST, Group::Data)?;
        let b_data = region.add_machine("b-data", Zone::B, B_DATA_HOST, Group::Data)?;
        let redis = RedisHa::start(&a_data, &b_data, &control_machine).await?;
        let postgres = PostgresHa::start(a_data, b_data, options.replication).await?;
        let (host, port) = postgres.address_of(postgres.primary());
        let writer = Arc::new(Endpoint::new(
            "writer",
            Some(SocketAddr::from((host, port))),
        ));
        let sessions = Arc::new(Endpoint::new("sessions", Some(redis.first_primary())));
        let postgres = Arc::new(AsyncMutex::new(postgres));
        let manager =
            Arc::new(FailoverManager::new(postgres.clone(), writer.clone(), options.policy).await);
        let (shutdown, stop) = watch::channel(false);
        let (bound_tx, bound) = tokio::sync::oneshot::channel();
        let address = control_machine.address;
        let control = {
            let (writer, sessions, manager) = (writer.clone(), sessions.clone(), manager.clone());
            let sentinels = redis.sentinels();
            netns::spawn(
                control_machine.netns.as_deref(),
                "stage7-region",
                move || {
                    Box::pin(async move {
                        let bind = |port| TcpListener::bind(SocketAddr::from((address, port)));
                        let (writer_listener, sessions_listener) =
                            match (bind(WRITER_PORT).await, bind(SESSIONS_PORT).await) {
                                (Ok(w), Ok(s)) => {
                                    let _ = bound_tx.send(Ok(()));
                                    (w, s)
                                }
                                (Err(error), _) | (_, Err(error)) => {
                                    let _ = bound_tx.send(Err(error.to_string()));
                                    return;
                                }
                            };
                        tokio::join!(
                            writer.serve(writer_listener, stop.clone()),
                            sessions.serve(sessions_listener, stop.clone()),
                            follow_sentinels(&sessions, &sentinels, stop.clone()),
                            manager.run(stop)
                        );
                    })
                },
            )?
        };
        bound
            .await
            .map_err(|_| "the region's thread stopped")?
            .map_err(|e| format!("the region's endpoints cannot listen on {address}: {e}"))?;
        Ok(Self {
            control: Some(control),
            shutdown,
            manager,
            writer,
            sessions,
            postgres,
            redis: AsyncMutex::new(redis),
            control_machine,
            region,
        })
    }

    /// The region the tier's machines are in.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The `region` machine (the endpoints, the failover manager).
    pub fn control_machine(&self) -> &Machine {
        &self.control_machine
    }

    /// Where instances send writes: the writer endpoint, not a server.
    pub fn writer_url(&self) -> String {
        postgres_ha::url(self.control_machine.address, WRITER_PORT)
    }

    /// Where instances keep sessions and carts: the sessions endpoint.
    pub fn sessions_url(&self) -> String {
        format!("redis://{}:{SESSIONS_PORT}/", self.control_machine.address)
    }

    /// Where the sessions endpoint forwards now: the Redis primary.
    pub fn sessions_target(&self) -> Option<SocketAddr> {
        self.sessions.target()
    }

    /// Stage 5's cache (in the `region` machine).
    pub async fn cache_url(&self) -> String {
        self.redis.lock().await.cache_url()
    }

    /// Where the writer endpoint forwards now (`None` while fenced).
    pub fn writer_target(&self) -> Option<SocketAddr> {
        self.writer.target()
    }

    /// The asynchronous read replica (stage 5's reads).
    pub async fn replica_url(&self) -> String {
        self.postgres.lock().await.url_of(NodeName::Replica)
    }

    /// The servers themselves (tests reach past the endpoint with it).
    pub fn postgres(&self) -> &Arc<AsyncMutex<PostgresHa>> {
        &self.postgres
    }

    /// The failover manager's clock (see [`crate::failover::Event::at_ms`]).
    pub fn clock_ms(&self) -> u128 {
        self.manager.clock_ms()
    }

    /// The failover manager's view.
    pub fn status(&self) -> Status {
        self.manager.status()
    }

    /// Zone `zone` goes dark: every process in its machines is killed and
    /// their links cut. Returns how many processes were killed.
    pub async fn take_zone_down(&self, zone: Zone) -> Result<usize, shop::BoxError> {
        self.region.set_zone_link(zone, false)?;
        let mut killed = 0;
        for machine in self.region.machines().iter().filter(|m| m.zone == zone) {
            for pid in self.region.pids_in(machine) {
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).is_ok()
                {
                    killed += 1;
                }
            }
        }
        self.redis.lock().await.zone_lost(zone);
        let mut postgres = self.postgres.lock().await;
        for node in [NodeName::A, NodeName::B, NodeName::Replica] {
            if postgres.machine_of(node).zone == zone {
                // Already dead: this only collects what is left of it.
                postgres.kill(node);
            }
        }
        Ok(killed)
    }

    /// Cuts zone b's data machine off from the rest (or heals the cut): a
    /// partition between the zones' data tiers, the bad day that comes
    /// before a zone's loss. The standby and the Redis replica stop
    /// receiving; the instances and the endpoints carry on.
    pub fn partition_zone_b_data(&self, cut: bool) -> Result<(), shop::BoxError> {
        let b_data = self.region.machine("b-data").ok_or("no b-data machine")?;
        Ok(self.region.set_machine_link(&b_data, !cut)?)
    }

    /// Which standby this tier runs ("synchronous standby").
    pub async fn standby_kind(&self) -> &'static str {
        match self.postgres.lock().await.replication() {
            Replication::Synchronous => "synchronous standby",
            Replication::Asynchronous => "asynchronous standby",
        }
    }

    /// Zone `zone` comes back: links restored, its servers re-joined (a
    /// former primary as the new primary's standby). Returns what was done
    /// to each server.
    pub async fn bring_zone_back(&self, zone: Zone) -> Result<Vec<String>, shop::BoxError> {
        // The tier's lock first, the link second: a failover the manager
        // decides on checks from the dark spell then waits for the servers
        // to be back, and sees that the primary was started again (so it
        // does not fence a server that just returned). Restoring the link
        // first would leave it the time of a few `ip` commands to win.
        let mut postgres = self.postgres.lock().await;
        self.region.set_zone_link(zone, true)?;
        let mut done = Vec::new();
        for node in [NodeName::A, NodeName::B, NodeName::Replica] {
            if postgres.machine_of(node).zone == zone {
                done.push(postgres.rejoin(node).await?);
            }
        }
        drop(postgres);
        let primary = self
            .sessions
            .target()
            .ok_or("the sessions endpoint has no target")?;
        done.extend(self.redis.lock().await.zone_back(zone, primary).await?);
        Ok(done)
    }
}

impl Drop for DataTier {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

/// Points the sessions endpoint wherever the Sentinels say the primary is.
async fn follow_sentinels(
    sessions: &Endpoint,
    sentinels: &[SocketAddr],
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(FOLLOW_SENTINELS_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Some(primary) = redis_ha::primary_from_sentinels(sentinels).await {
            sessions.point_at(Some(primary));
        }
    }
}
