//! PostgreSQL: writes to the primary, reads from the streaming replica.
//!
//! Two pools, one per server. The replica answers reads a few milliseconds
//! behind the primary, which is fine for the catalog and wrong for a
//! shopper who has just changed their own profile. So the shop remembers,
//! in the shopper's session, the primary's WAL position (LSN) after their
//! last write, and reads from the replica only once it has replayed that far
//! (`pg_last_wal_replay_lsn() >= lsn`); otherwise from the primary. A
//! position is a *timeline* and an LSN: after a failover (stage 7) the
//! promoted standby starts a new timeline, whose positions continue from
//! the fork and cannot be compared with the old one's (a write the old
//! primary acknowledged may never have reached the new one), so a replica
//! on another timeline than the shopper's last write is not trusted with
//! it. The alternatives: always read your own data from the primary (simple, but
//! the primary takes every profile read), or wait on the replica until it
//! catches up (adds the lag to the response time).
//!
//! Failures: the replica down → the read goes to the primary (logged and
//! counted), and for the next two seconds reads go straight there instead
//! of each waiting for a replica connection (a small circuit breaker); the
//! primary down → writes are refused with 503 while reads carry on from the
//! replica.
//!
//! Every wait has a deadline, `--db-timeout`: for a connection, and for
//! every statement, twice over. On the server, `statement_timeout` stops a
//! query that runs too long; in the client, a timer gives up on a server
//! that does not answer at all (a frozen one cannot enforce its own
//! timeout). So a frozen replica costs a read one `--db-timeout` before it
//! falls back (and trips the breaker), and a frozen primary answers 503
//! within it, rather than holding the request until the balancer's 504.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shop::catalog::{Catalog, Product};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::data_path::Step;
use crate::error::DataError;

/// How long reads skip a replica that just failed before trying it again.
const REPLICA_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A read, given the pool to run on.
pub type Query<'p, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'p>>;

/// What the database layer counts, for `/metrics` and the benchmarks.
#[derive(Debug, Default)]
pub struct DbStats {
    pub replica_reads: AtomicU64,
    pub primary_reads: AtomicU64,
    pub replica_fallbacks: AtomicU64,
    pub writes: AtomicU64,
}

impl DbStats {
    /// Every read and write sent to either database on a request's behalf.
    pub fn queries(&self) -> u64 {
        self.replica_reads.load(Ordering::Relaxed)
            + self.primary_reads.load(Ordering::Relaxed)
            + self.writes.load(Ordering::Relaxed)
    }
}

/// A position in the primary's write-ahead log: its timeline and LSN
/// (stored as `2:0/3000148`). A replica on the same timeline that has
/// replayed this far has every write committed before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalPosition {
    /// `None` for a position stored before timelines were kept (the LSN
    /// alone is then compared).
    timeline: Option<i32>,
    lsn: String,
}

impl WalPosition {
    /// A position as stored (in the shopper's session).
    pub fn from_stored(text: &str) -> Self {
        match text.split_once(':') {
            Some((timeline, lsn)) => Self {
                timeline: timeline.parse().ok(),
                lsn: lsn.to_owned(),
            },
            None => Self {
                timeline: None,
                lsn: text.to_owned(),
            },
        }
    }

    /// The later of two positions, either of which may be missing: the
    /// one on the later timeline (a failover's primary is newer than the
    /// one it replaced), else the one further along the WAL.
    pub fn later<'a>(a: Option<&'a Self>, b: Option<&'a Self>) -> Option<&'a Self> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let a_first = match (a.timeline, b.timeline) {
                    (Some(ta), Some(tb)) if ta != tb => ta > tb,
                    _ => a.offset() >= b.offset(),
                };
                Some(if a_first { a } else { b })
            }
            (a, b) => a.or(b),
        }
    }

    /// The LSN as the byte offset it names (`0/3000148` is 0x3000148);
    /// 0 for text that is no LSN, so any real position is later.
    fn offset(&self) -> u64 {
        self.lsn
            .split_once('/')
            .and_then(|(high, low)| {
                let high = u64::from_str_radix(high, 16).ok()?;
                let low = u64::from_str_radix(low, 16).ok()?;
                Some(high << 32 | low)
            })
            .unwrap_or(0)
    }

    /// How it is stored: `timeline:lsn`.
    pub fn to_stored(&self) -> String {
        match self.timeline {
            Some(timeline) => format!("{timeline}:{}", self.lsn),
            None => self.lsn.clone(),
        }
    }
}

/// How long an instance's start keeps trying to prepare the primary.
const PREPARE_WITHIN: Duration = Duration::from_secs(30);

/// Whether `error` says the primary could not be reached (no connection in
/// time, or a broken one) rather than that it refused the work.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Migrate(migrate) => matches!(
            &**migrate,
            sqlx::migrate::MigrateError::Execute(inner) if is_unreachable(inner)
        ),
        _ => false,
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The primary and the replica.
#[derive(Clone, Debug)]
pub struct Database {
    primary: PgPool,
    replica: PgPool,
    /// The deadline of every connection and statement.
    timeout: Duration,
    stats: Arc<DbStats>,
    /// Until when the replica is skipped after a failure (a circuit
    /// breaker): without it, every read during a replica outage would
    /// first wait for a connection that cannot come.
    replica_skipped_until: Arc<Mutex<Option<Instant>>>,
}

impl Database {
    /// Pools for both servers. They connect on first use, so an instance
    /// starts (and serves reads) while one of the servers is down.
    pub fn connect(
        primary_url: &str,
        replica_url: &str,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let pool = |url: &str| -> Result<PgPool, sqlx::Error> {
            let options = PgConnectOptions::from_str(url)?.options([(
                "statement_timeout",
                format!("{}ms", timeout.as_millis().max(1)),
            )]);
            Ok(PgPoolOptions::new()
                .max_connections(8)
                // A server that is down should cost a request a second
                // (`--db-timeout`), not the default thirty: sqlx keeps retrying
                // a refused connection until this runs out.
                .acquire_timeout(timeout)
                // No ping before every query (a round trip each); a dead
                // connection fails its query, which falls back or gives 503.
                .test_before_acquire(false)
                .connect_lazy_with(options))
        };
        Ok(Self {
            primary: pool(primary_url)?,
            replica: pool(replica_url)?,
            timeout,
            stats: Arc::default(),
            replica_skipped_until: Arc::new(Mutex::new(None)),
        })
    }

    pub fn stats(&self) -> &DbStats {
        &self.stats
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Runs `work` on the primary within the deadline: a primary that does
    /// not answer in time is `database_unavailable`, like one that is down.
    pub async fn on_primary<T>(
        &self,
        work: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, DataError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => Ok(result?),
            Err(_elapsed) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis(),
                    "the primary did not answer in time"
                );
                Err(DataError::DatabaseUnavailable)
            }
        }
    }

    /// Applies the migrations and seeds the catalog, on the primary; tries
    /// again for up to [`PREPARE_WITHIN`] while the primary cannot be
    /// reached in time. An instance starting beside others on a busy
    /// machine may wait longer for its first connection than a shopper's
    /// request may (`--db-timeout`, which the pool's deadline is); failing
    /// its start for that would be the wrong lesson. Both steps are safe to
    /// repeat: the migrations record what they applied, the seed upserts.
    pub async fn prepare(&self) -> Result<(), sqlx::Error> {
        self.prepare_within(PREPARE_WITHIN).await
    }

    /// [`Self::prepare`], giving up after `within`, whatever the primary
    /// does. The deadline bounds each attempt as well as the wait between
    /// them: a primary frozen (SIGSTOP) after the pool took a connection
    /// answers no statement and closes nothing, and neither the pool's
    /// deadline (it bounds only the taking of a connection) nor
    /// `statement_timeout` (the frozen server would have to enforce it)
    /// would end the wait; the instance's start would hang for ever.
    async fn prepare_within(&self, within: Duration) -> Result<(), sqlx::Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.prepare_once()).await;
            match attempt {
                Ok(Err(error))
                    if is_unreachable(&error) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!(%error, "the primary is not reachable yet; preparing it again shortly");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(outcome) => return outcome,
                // Safe to have stopped anywhere: the migrations run in
                // transactions, the seed is one, and the server rolls back
                // what a vanished client left open.
                Err(_elapsed) => {
                    return Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the primary did not finish the migrations and the catalog within {} s",
                            within.as_secs()
                        ),
                    )));
                }
            }
        }
    }

    async fn prepare_once(&self) -> Result<(), sqlx::Error> {
        sqlx::migrate!("./migrations").run(&self.primary).await?;
        let products = Catalog::get().products();
        let column = |f: fn(&Product) -> String| products.iter().map(f).collect::<Vec<_>>();
        let positions: Vec<i32> = (0..products.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let prices: Vec<i32> = products
            .iter()
            .map(|p| i32::try_from(p.price_cents).unwrap_or(i32::MAX))
            .collect();
        // One statement for all 270 rows; running it again changes nothing.
        // Every instance does this at start: an advisory lock makes the
        // instances take turns rather than upsert the same rows at once.
        let mut tx = self.primary.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(20241105)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO products (sku, position, name, garment, colour, size, price_cents)
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[])
             ON CONFLICT (sku) DO UPDATE SET position = EXCLUDED.position, name = EXCLUDED.name,
                 price_cents = EXCLUDED.price_cents",
        )
        .bind(column(|p| p.sku.clone()))
        .bind(positions)
        .bind(column(|p| p.name.clone()))
        .bind(column(|p| p.garment.clone()))
        .bind(column(|p| p.colour.clone()))
        .bind(column(|p| p.size.clone()))
        .bind(prices)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Runs `query` where it may read: the replica, once it has replayed
    /// `min_lsn` (the shopper's last write), else the primary. Records the
    /// server in `path`.
    pub async fn read<T>(
        &self,
        min_lsn: Option<&WalPosition>,
        path: &mut Vec<Step>,
        query: impl for<'p> Fn(&'p PgPool) -> Query<'p, T>,
    ) -> Result<T, DataError> {
        let replica_usable = match min_lsn {
            _ if self.replica_skipped() => {
                count(&self.stats.replica_fallbacks);
                path.push(Step::ReplicaDown);
                Ok(false)
            }
            None => Ok(true),
            // Replayed far enough, on the same timeline: the one it
            // receives from its upstream or, while it receives nothing (its
            // upstream is down), that of its last restartpoint.
            Some(position) => self
                .within(
                    sqlx::query_scalar::<_, Option<bool>>(
                        "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn
                            AND ($2::int IS NULL
                                 OR $2 = COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                                                  (SELECT timeline_id FROM pg_control_checkpoint())))",
                    )
                    .bind(&position.lsn)
                    .bind(position.timeline)
                    .fetch_one(&self.replica),
                )
                .await
                .map(|caught_up| caught_up.unwrap_or(false)),
        };
        match replica_usable {
            Ok(true) => match self.within(query(&self.replica)).await {
                Ok(value) => {
                    count(&self.stats.replica_reads);
                    path.push(Step::Replica);
                    return Ok(value);
                }
                Err(error) => self.replica_failed(&error, path),
            },
            Ok(false) if path.last() == Some(&Step::ReplicaDown) => {}
            Ok(false) => path.push(Step::ReplicaBehind),
            Err(error) => self.replica_failed(&error, path),
        }
        let value = self
            .on_primary(query(&self.primary))
            .await
            .inspect_err(|error| {
                tracing::error!(%error, "read failed on the primary too");
            })?;
        count(&self.stats.primary_reads);
        path.push(Step::Primary);
        Ok(value)
    }

    /// `work` within the deadline; a timeout reads as a failed statement.
    async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within --db-timeout",
                )))
            })
    }

    fn replica_failed(&self, error: &sqlx::Error, path: &mut Vec<Step>) {
        tracing::warn!(%error, "replica unavailable; reading from the primary for {}s", REPLICA_RETRY_AFTER.as_secs());
        count(&self.stats.replica_fallbacks);
        path.push(Step::ReplicaDown);
        *self.skip_lock() = Some(Instant::now() + REPLICA_RETRY_AFTER);
    }

    /// Whether the replica failed a moment ago (and is not to be tried yet).
    fn replica_skipped(&self) -> bool {
        let mut until = self.skip_lock();
        match *until {
            Some(deadline) if Instant::now() < deadline => true,
            Some(_) => {
                // Time to try again: one request probes, the rest follow.
                *until = None;
                false
            }
            None => false,
        }
    }

    fn skip_lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.replica_skipped_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a write transaction that committed on the primary.
    pub fn count_write(&self) {
        count(&self.stats.writes);
    }

    /// The primary's WAL position now: asked right after a commit, a
    /// replica that has replayed this far has the write. The timeline is
    /// the first eight hex digits of the current WAL file's name (exact at
    /// once after a promotion, unlike the last checkpoint's).
    pub async fn wal_position(&self) -> Result<WalPosition, DataError> {
        let (lsn, timeline) = self
            .on_primary(
                sqlx::query_as::<_, (String, String)>(
                    "SELECT pg_current_wal_lsn()::text,
                            substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
                )
                .fetch_one(&self.primary),
            )
            .await?;
        Ok(WalPosition {
            timeline: i32::from_str_radix(&timeline, 16).ok(),
            lsn,
        })
    }

    /// How far the replica is behind the primary, in bytes of WAL; `None`
    /// when either does not answer at once (metrics must not wait).
    pub async fn replica_lag_bytes(&self) -> Option<i64> {
        if self.replica_skipped() {
            return None;
        }
        let measure = async {
            let replayed: String =
                sqlx::query_scalar("SELECT COALESCE(pg_last_wal_replay_lsn(), '0/0')::text")
                    .fetch_one(&self.replica)
                    .await
                    .ok()?;
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint")
                .bind(replayed)
                .fetch_one(&self.primary)
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_millis(300), measure)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shop::services::postgres::PostgresCluster;

    use super::{Database, WalPosition, is_unreachable};

    #[tokio::test]
    async fn a_start_gives_up_on_a_primary_frozen_mid_preparation_instead_of_hanging() {
        let postgres = PostgresCluster::start()
            .await
            .unwrap_or_else(|e| panic!("a private PostgreSQL primary + replica is needed: {e}"));
        let db = Database::connect(
            &postgres.primary_url(),
            &postgres.replica_url(),
            Duration::from_secs(5),
        )
        .expect("pools");
        db.prepare()
            .await
            .expect("a first start prepares the primary");
        // The pool now holds a connection to the primary; frozen, the
        // primary keeps it open and answers nothing on it.
        postgres.freeze_primary().expect("SIGSTOP the primary");
        let second = tokio::time::timeout(
            Duration::from_secs(30),
            db.prepare_within(Duration::from_secs(3)),
        )
        .await;
        postgres.thaw_primary().expect("SIGCONT the primary");
        let outcome = second.expect("the start gave up by its own deadline, not the test's");
        let error = outcome.expect_err("a frozen primary prepares nothing");
        assert!(
            error.to_string().contains("did not finish"),
            "the error says what happened: {error}"
        );
        // Thawed, it is prepared again, as a restarted instance would.
        db.prepare_within(Duration::from_secs(20))
            .await
            .expect("the thawed primary is prepared");
    }

    #[test]
    fn a_primary_out_of_reach_at_start_is_tried_again_and_a_refusal_is_not() {
        // What the busy machine said: no connection within --db-timeout,
        // while applying the migrations.
        let migrating = sqlx::Error::Migrate(Box::new(sqlx::migrate::MigrateError::Execute(
            sqlx::Error::PoolTimedOut,
        )));
        assert!(is_unreachable(&migrating));
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        // A server that answered no is not made to say it again.
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
        let bad_migration =
            sqlx::Error::Migrate(Box::new(sqlx::migrate::MigrateError::VersionMissing(1)));
        assert!(!is_unreachable(&bad_migration));
    }

    #[test]
    fn a_position_is_stored_with_its_timeline() {
        let position = WalPosition::from_stored("2:0/3000148");
        assert_eq!(position.timeline, Some(2));
        assert_eq!(position.to_stored(), "2:0/3000148");
    }

    #[test]
    fn a_position_stored_without_a_timeline_still_reads() {
        let position = WalPosition::from_stored("0/3000148");
        assert_eq!(position.timeline, None);
        assert_eq!(position.to_stored(), "0/3000148");
    }

    fn later_of(a: &str, b: &str) -> String {
        let (a, b) = (WalPosition::from_stored(a), WalPosition::from_stored(b));
        let later = WalPosition::later(Some(&a), Some(&b)).map(WalPosition::to_stored);
        assert_eq!(
            WalPosition::later(Some(&b), Some(&a)).map(WalPosition::to_stored),
            later,
            "the order asked in does not matter"
        );
        later.unwrap_or_default()
    }

    #[test]
    fn the_later_position_is_further_along_the_wal_or_on_a_later_timeline() {
        // Compared as numbers, not text: "0/A000000" is past "0/3000148".
        assert_eq!(later_of("1:0/3000148", "1:0/A000000"), "1:0/A000000");
        assert_eq!(later_of("1:0/FFFFFFFF", "1:1/0"), "1:1/0");
        // A failover's new timeline is later, though it forked further back.
        assert_eq!(later_of("1:0/5000000", "2:0/4000000"), "2:0/4000000");
        assert_eq!(later_of("0/3000148", "1:0/3000200"), "1:0/3000200");
        let one = WalPosition::from_stored("1:0/3000148");
        assert_eq!(WalPosition::later(None, Some(&one)), Some(&one));
        assert_eq!(WalPosition::later(Some(&one), None), Some(&one));
        assert_eq!(WalPosition::later(None, None), None);
    }
}
