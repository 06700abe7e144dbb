//! The failover manager: a small Patroni.
//!
//! Every second it asks the primary about its standby
//! (`pg_stat_replication`: is one streaming, and is it synchronous?). After
//! `--failover-after` failures in a row (3: one lost packet is not a dead
//! zone), and only if the standby was in sync when the primary last
//! answered (else it may lack acknowledged writes, and promoting it would
//! lose them: the manager refuses and says so, as Patroni promotes only a
//! member listed as synchronous), it:
//!
//! 1. **fences** the old primary: the writer endpoint stops forwarding to
//!    it, and its processes are killed, so that it can never accept a
//!    write again even if its zone comes back by itself (two primaries
//!    taking writes, "split brain", is the failure worse than downtime;
//!    Patroni fences with a leader lease and a watchdog, RDS by stopping
//!    the instance);
//! 2. **promotes** the standby (`SELECT pg_promote()`): it finishes
//!    replaying what it received and starts a new timeline;
//! 3. re-points the writer endpoint at it; instances reconnect by
//!    themselves (their pools dial again when the old connections close).
//!
//! With synchronous replication, a primary whose standby is gone would
//! make every commit wait forever. Like Patroni (and unlike its
//! `synchronous_mode_strict`), the manager then **degrades**: after the
//! same number of checks without a standby it clears
//! `synchronous_standby_names`, and commits are acknowledged by one zone
//! until the other returns, when it sets it again. `--strict-sync` keeps
//! the promise instead: no standby, no writes.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

use crate::endpoint::Endpoint;
use crate::postgres_ha::{NodeName, PostgresHa, Replication};

/// How many events the status keeps.
const MAX_EVENTS: usize = 200;

/// How often the primary is asked, and how long an answer may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How an attempt to fail over ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failover {
    /// The standby is the primary now, behind the writer endpoint.
    Promoted,
    /// The old primary is fenced and the standby could not be promoted.
    NotPromoted,
    /// Nothing done: the primary was started again since the failed checks.
    Overtaken,
}

/// What the manager decided and when: the timeline of a failover.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the manager started.
    pub at_ms: u128,
    /// What it saw or did, in a sentence.
    pub what: String,
}

/// The manager's view, for the dashboard, the demo and the tests.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// The server it takes for the primary.
    pub primary: Option<NodeName>,
    /// Synchronous replication is off for want of a standby.
    pub degraded: bool,
    /// Promotions so far.
    pub failovers: u32,
    /// The latest events, oldest first.
    pub events: Vec<Event>,
}

/// Its settings.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Failed checks in a row before a failover (and before degrading).
    pub after: u32,
    /// Never degrade synchronous replication (`--strict-sync`).
    pub strict: bool,
}

/// The manager, shared between its loop and whoever reads its status.
#[derive(Debug)]
pub struct FailoverManager {
    postgres: Arc<AsyncMutex<PostgresHa>>,
    writer: Arc<Endpoint>,
    policy: Policy,
    status: Mutex<Status>,
    started: Instant,
}

impl FailoverManager {
    /// A manager of `postgres` that re-points `writer` on failover.
    pub async fn new(
        postgres: Arc<AsyncMutex<PostgresHa>>,
        writer: Arc<Endpoint>,
        policy: Policy,
    ) -> Self {
        let primary = postgres.lock().await.primary();
        Self {
            postgres,
            writer,
            policy,
            status: Mutex::new(Status {
                primary: Some(primary),
                ..Status::default()
            }),
            started: Instant::now(),
        }
    }

    /// Milliseconds since the manager started: the clock of its events.
    pub fn clock_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// A copy of the status now.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn record(&self, what: String) {
        tracing::warn!(target: "failover", "{what}");
        let mut status = lock(&self.status);
        // The latest events only: a failing failover records one a second.
        if status.events.len() >= MAX_EVENTS {
            status.events.remove(0);
        }
        status.events.push(Event {
            at_ms: self.started.elapsed().as_millis(),
            what,
        });
    }

    /// Checks every second until `shutdown` turns true. Runs inside the
    /// `region` machine (see [`crate::netns`]).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut primary_failures = 0u32;
        let mut standby_missing = 0u32;
        // What the primary said of its standby when it last answered: a
        // standby that was not in sync then may lack acknowledged writes.
        let mut last_seen = StandbySeen::default();
        let mut refused = false;
        // Whether this busy spell is in the timeline already (once per
        // spell: a full server refuses every check).
        let mut busy_told = false;
        // The primary's start count at the last check: failures counted
        // before it was started again say nothing of the server now.
        let mut starts_seen = None;
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        // After a stall (the tier's lock held through a long rejoin), the
        // next checks come a second apart, not all at once: three instant
        // failures would be no evidence of a dead zone.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let (primary, url, address, replication, primary_starts) = {
                let pg = self.postgres.lock().await;
                let (host, port) = pg.address_of(pg.primary());
                (
                    pg.primary(),
                    pg.url_of(pg.primary()),
                    SocketAddr::from((host, port)),
                    pg.replication(),
                    pg.primary_starts(),
                )
            };
            if starts_seen.replace(primary_starts) != Some(primary_starts) {
                primary_failures = 0;
                refused = false;
            }
            let probe = tokio::time::timeout(PROBE_EVERY, check(&url)).await;
            if let Ok(Err(sqlx::Error::Database(error))) = &probe
                && is_busy(error.code().as_deref())
            {
                // The server answered, with a refusal: "too many clients"
                // when the shop's pools have every connection, "starting
                // up" just after a restart. A busy primary is not a dead
                // one, and failing it over would throw away a working
                // server (and, with an asynchronous standby, writes).
                // What it says of its standby stays what it last said.
                primary_failures = 0;
                if !busy_told {
                    self.record(format!(
                        "{} refused the check ({}): busy, not dead",
                        primary.as_str(),
                        error.message()
                    ));
                    busy_told = true;
                }
                continue;
            }
            let Ok(Ok(seen)) = probe else {
                primary_failures += 1;
                self.record(format!(
                    "{} did not answer ({primary_failures}/{})",
                    primary.as_str(),
                    self.policy.after
                ));
                if primary_failures < self.policy.after {
                    continue;
                }
                let degraded = lock(&self.status).degraded;
                let safe = match replication {
                    Replication::Synchronous => last_seen.synchronous && !degraded,
                    Replication::Asynchronous => last_seen.streaming,
                };
                if !safe {
                    if !refused {
                        self.record(format!(
                            "not promoting: the standby was not {} when {} last answered, so it may lack acknowledged writes; writes stay down until {} returns",
                            if replication == Replication::Synchronous { "a synchronous standby in sync" } else { "streaming" },
                            primary.as_str(),
                            primary.as_str()
                        ));
                        refused = true;
                    }
                    continue;
                }
                match self.fail_over(primary, primary_starts).await {
                    Failover::Promoted => {
                        primary_failures = 0;
                        standby_missing = 0;
                        last_seen = StandbySeen::default();
                    }
                    // Tried again at the next check.
                    Failover::NotPromoted => {}
                    Failover::Overtaken => primary_failures = 0,
                }
                continue;
            };
            primary_failures = 0;
            refused = false;
            busy_told = false;
            last_seen = seen;
            // The primary answers, so the writer endpoint leads to it. This
            // changes nothing, except after a promotion that failed: the
            // endpoint was shut when the old primary was fenced, and when
            // that server is brought back (still the primary: nobody else
            // was promoted), writes must reach it again.
            self.writer.point_at(Some(address));
            if replication == Replication::Synchronous && !self.policy.strict {
                standby_missing = if seen.streaming {
                    0
                } else {
                    standby_missing + 1
                };
                self.keep_sync_honest(&url, seen.streaming, standby_missing)
                    .await;
            }
        }
    }

    /// Fences `old`, promotes the standby, re-points the writer endpoint;
    /// unless the primary was started again since the checks that decided
    /// it (`starts_seen`), when it does nothing.
    async fn fail_over(&self, old: NodeName, starts_seen: u64) -> Failover {
        // Held from fencing to promotion: a zone brought back meanwhile
        // must not restart the old primary as a primary.
        let mut pg = self.postgres.lock().await;
        if pg.primary_starts() != starts_seen {
            // The zone came back between the last check and this lock, and
            // `old` was started again as the primary: fencing it now would
            // kill a server that just came back for nothing.
            drop(pg);
            self.record(format!(
                "not failing over: {} was started again since it last failed to answer",
                old.as_str()
            ));
            return Failover::Overtaken;
        }
        self.writer.point_at(None);
        pg.kill(old);
        let standby = pg.standby();
        let (host, port) = pg.address_of(standby);
        let (standby_url, standby_address, replication) = (
            pg.url_of(standby),
            SocketAddr::from((host, port)),
            pg.replication(),
        );
        self.record(format!(
            "fenced {}: the writer endpoint refuses connections and its processes are killed",
            old.as_str()
        ));
        let promoted = tokio::time::timeout(Duration::from_secs(30), promote(&standby_url)).await;
        if let Err(error) = promoted.map_err(|_| "timed out".to_owned()).and_then(|r| r) {
            self.record(format!(
                "cannot promote {}: {error}; writes stay down until a server is back",
                standby.as_str()
            ));
            return Failover::NotPromoted;
        }
        pg.promoted(standby);
        drop(pg);
        self.writer.point_at(Some(standby_address));
        {
            let mut status = lock(&self.status);
            status.primary = Some(standby);
            status.failovers += 1;
        }
        self.record(format!(
            "promoted {}; the writer endpoint points at {standby_address}",
            standby.as_str()
        ));
        if replication == Replication::Synchronous && !self.policy.strict {
            // Its standby was the old primary, which is gone.
            self.set_sync(&standby_url, false).await;
        }
        Failover::Promoted
    }

    /// Degrades when the standby has been missing too long; restores
    /// synchronous commits when it streams again.
    async fn keep_sync_honest(&self, url: &str, streaming: bool, missing: u32) {
        let degraded = lock(&self.status).degraded;
        if streaming && degraded {
            self.set_sync(url, true).await;
        } else if !streaming && !degraded && missing >= self.policy.after {
            self.set_sync(url, false).await;
        }
    }

    async fn set_sync(&self, url: &str, on: bool) {
        let names = if on { "ANY 1 (pg_a, pg_b)" } else { "" };
        let result = tokio::time::timeout(PROBE_EVERY * 5, async {
            let mut connection = connect(url).await?;
            sqlx::query(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
            ))
            .execute(&mut connection)
            .await?;
            sqlx::query("SELECT pg_reload_conf()")
                .execute(&mut connection)
                .await?;
            connection.close().await
        })
        .await;
        match result {
            Ok(Ok(())) => {
                lock(&self.status).degraded = !on;
                self.record(if on {
                    "the standby streams again: commits wait for it (synchronous)".to_owned()
                } else {
                    "no standby: commits are acknowledged by one zone only (degraded, not strict)"
                        .to_owned()
                });
            }
            Ok(Err(error)) => {
                self.record(format!("cannot change synchronous_standby_names: {error}"))
            }
            Err(_) => self.record("cannot change synchronous_standby_names: timed out".to_owned()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::from_str(url)?
        .disable_statement_logging()
        .connect()
        .await
}

/// What the primary says of its standby (`pg_stat_replication`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StandbySeen {
    /// A standby (pg_a or pg_b) streams from it.
    streaming: bool,
    /// ... and the primary waits for it (`sync_state` sync or quorum):
    /// every commit acknowledged is on it.
    synchronous: bool,
}

/// Whether a refusal (its SQLSTATE) means "alive, but busy": too many
/// connections (53300), or starting up (57P03). Any other error, such as a
/// server stuck in recovery or refusing logins, is no answer.
fn is_busy(sqlstate: Option<&str>) -> bool {
    matches!(sqlstate, Some("53300" | "57P03"))
}

/// Asks the primary whether it answers, and what it says of its standby.
async fn check(url: &str) -> Result<StandbySeen, sqlx::Error> {
    let mut connection = connect(url).await?;
    let (streaming, synchronous): (bool, bool) = sqlx::query_as(
        "SELECT count(*) > 0, coalesce(bool_or(sync_state IN ('sync', 'quorum')), false)
           FROM pg_stat_replication
          WHERE application_name IN ('pg_a', 'pg_b') AND state = 'streaming'",
    )
    .fetch_one(&mut connection)
    .await?;
    connection.close().await?;
    Ok(StandbySeen {
        streaming,
        synchronous,
    })
}

/// `pg_promote()`: ends recovery and waits until the server takes writes;
/// then a checkpoint, so that its new timeline is on record.
pub async fn promote(url: &str) -> Result<(), String> {
    let mut connection = connect(url).await.map_err(|e| e.to_string())?;
    // Safe to repeat: a server already promoted (by an earlier try whose
    // answer was lost) is not promoted again.
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    let promoted = !in_recovery
        || sqlx::query_scalar::<_, bool>("SELECT pg_promote(true, 30)")
            .fetch_one(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
    if !promoted {
        return Err("pg_promote() returned false".to_owned());
    }
    // The new timeline reaches the control file only at the next
    // checkpoint; until then `pg_rewind` of the old primary would compare
    // timelines, find them equal, and rewind nothing (Patroni does the same).
    sqlx::query("CHECKPOINT")
        .execute(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
