//! Sessions in PostgreSQL (the seeds' relational option; Django's `db`
//! session engine; RDS in AWS): durable, transactional, and slower.
//!
//! * **Where**: three tables (`migrations/0001_sessions.sql`): `sessions`
//!   (one row per session: born, expires_at), `cart_lines` (one row per
//!   SKU) and `applied_changes` (idempotency keys with their answers), all
//!   keyed by the SHA-256 of the session id.
//! * **How a change stays atomic**: one transaction per change. Its first
//!   statement renews the session's expiry (`UPDATE sessions … RETURNING`),
//!   which also locks the session's row until the commit: concurrent
//!   changes to one cart take turns, while other carts go on in parallel.
//!   The change itself is one statement that checks its rule as it writes
//!   (an upsert whose `WHERE` refuses a 100th item or a 201st line), never
//!   a value read into Rust, changed and written back. The answer for an
//!   idempotency key is written in the same transaction, so the change and
//!   its record commit together or not at all.
//! * **Expiry**: a column, checked by every read and change (an expired
//!   row is not a session, whether or not it was deleted yet), and a sweep
//!   every minute that deletes expired rows ([`SWEEP_EVERY`]). A read
//!   renews the expiry only once it has run down by
//!   [`crate::sessions::RENEW_AFTER`], as Redis's does: otherwise every
//!   page view would be a write to the write-ahead log.
//! * **Durability**: every commit is in the write-ahead log before it is
//!   answered: a crash of the server, even `kill -9`, keeps every cart.
//! * **Why the primary, not the replica**: a session read must see the
//!   change the shopper just made, and the replica may be a few
//!   milliseconds behind (stage 5's lesson).
//! * **Failure**: a pool that cannot get a connection, or a server slower
//!   than the store timeout → 503, as for every store.

use std::str::FromStr;
use std::time::Duration;

use shop::cart::{CartOp, MAX_LINES, MAX_QTY};
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::sessions::{
    self, APPLIED_FOR, Answer, Mode, Purpose, SessionSettings, SessionStore, digest,
};

/// How often expired sessions are deleted.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Carts in PostgreSQL, a row per line.
#[derive(Debug, Clone)]
pub struct PostgresSessions {
    pool: PgPool,
    settings: SessionSettings,
}

impl PostgresSessions {
    /// A store using the database at `url`. The pool connects on first
    /// use; [`Self::prepare`] makes the tables.
    pub fn connect(url: &str, settings: SessionSettings) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.options([(
            "statement_timeout",
            format!("{}ms", settings.timeout.as_millis().max(1)),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A server that is down should cost a request the store
            // timeout, not sqlx's default thirty seconds.
            .acquire_timeout(settings.timeout)
            // No ping before every query: a dead connection fails its
            // query, which gives 503.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(Self { pool, settings })
    }

    /// Applies the migrations (every instance may; sqlx takes an advisory
    /// lock, so they take turns) and starts this instance's sweep.
    pub async fn prepare(&self) -> Result<(), sqlx::Error> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                match sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
                    .execute(&pool)
                    .await
                {
                    Ok(done) if done.rows_affected() > 0 => {
                        tracing::info!(swept = done.rows_affected(), "expired sessions deleted");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "the session sweep failed"),
                }
            }
        });
        Ok(())
    }

    fn ttl_s(&self) -> f64 {
        self.settings.ttl.as_secs_f64()
    }

    /// One change, in one transaction (see the module's notes).
    async fn change_in(
        &self,
        session: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, sqlx::Error> {
        // Round trips: BEGIN, each statement, COMMIT.
        sessions::round_trip();
        let mut tx = self.pool.begin().await?;
        let found = match mode {
            // Renews the expiry, and locks the row until the commit.
            Mode::Resume => sqlx::query(
                "UPDATE sessions SET expires_at = now() + make_interval(secs => $2)
                 WHERE digest = $1 AND expires_at > now() RETURNING digest",
            ),
            Mode::Create => sqlx::query(
                "INSERT INTO sessions (digest, expires_at)
                 VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT DO NOTHING RETURNING digest",
            ),
        }
        .bind(session)
        .bind(self.ttl_s())
        .fetch_optional(&mut *tx)
        .await?;
        sessions::round_trip();
        if found.is_none() {
            return Ok(match mode {
                Mode::Resume => Answer::Unknown,
                Mode::Create => Answer::Taken,
            });
        }
        if let Some(key) = key {
            let first: Option<(String,)> = sqlx::query_as(
                "SELECT answer FROM applied_changes
                 WHERE session = $1 AND key = $2 AND expires_at > now()",
            )
            .bind(session)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            sessions::round_trip();
            if let Some((first,)) = first {
                sessions::round_trip();
                tx.commit().await?;
                let first = serde_json::from_str(&first)
                    .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
                return Ok(Answer::Replayed(Box::new(first)));
            }
        }
        let answer = match apply_op(&mut tx, session, op).await? {
            Some(refusal) => refusal,
            None => cart_of(&mut tx, session).await?,
        };
        if let Some(key) = key {
            let recorded = serde_json::to_string(&answer)
                .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
            sqlx::query(
                "INSERT INTO applied_changes (session, key, answer, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (session, key)
                 DO UPDATE SET answer = EXCLUDED.answer, expires_at = EXCLUDED.expires_at",
            )
            .bind(session)
            .bind(key.as_str())
            .bind(recorded)
            .bind(APPLIED_FOR.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            sessions::round_trip();
        }
        sessions::round_trip();
        tx.commit().await?;
        Ok(answer)
    }

    /// Waits at most the store timeout ([`sessions::within_timeout`]); a
    /// full disk is a failure like any other here.
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
        purpose: Purpose,
    ) -> Result<T, ApiError> {
        sessions::within_timeout(self.settings.timeout, purpose, call, |_| false).await
    }
}

impl SessionStore for PostgresSessions {
    fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn label(&self) -> &'static str {
        "postgres; durable (write-ahead log), atomic by transaction and row lock"
    }

    /// One query: the session's lines if it is live, and whether its
    /// expiry has run down far enough to renew (a second query, at most
    /// once a minute per session).
    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        let session = digest(id);
        let renew_after = self.settings.renew_after().as_secs_f64();
        sessions::round_trip();
        let rows: Vec<(bool, Option<String>, Option<i16>)> = self
            .within_timeout(
                sqlx::query_as(
                    "SELECT s.expires_at < now() + make_interval(secs => $2 - $3), l.sku, l.qty
                     FROM sessions s LEFT JOIN cart_lines l ON l.session = s.digest
                     WHERE s.digest = $1 AND s.expires_at > now()
                     ORDER BY l.position",
                )
                .bind(&session)
                .bind(self.ttl_s())
                .bind(renew_after)
                .fetch_all(&self.pool),
                Purpose::Read,
            )
            .await?;
        let Some((run_down, _, _)) = rows.first() else {
            return Ok(Answer::Unknown);
        };
        if *run_down {
            sessions::round_trip();
            self.within_timeout(
                sqlx::query(
                    "UPDATE sessions SET expires_at = now() + make_interval(secs => $2)
                     WHERE digest = $1 AND expires_at > now()",
                )
                .bind(&session)
                .bind(self.ttl_s())
                .execute(&self.pool),
                Purpose::Read,
            )
            .await?;
        }
        Ok(Answer::Cart(
            rows.into_iter()
                .filter_map(|(_, sku, qty)| Some((sku?, qty?.to_string())))
                .collect(),
        ))
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        // The transaction runs in a task of its own, to its commit or its
        // rollback, even when this request stops waiting for it (and
        // answers 503: the change may still land, so a retry must carry
        // the same key). Rejected: letting the timeout drop the
        // transaction in the middle of a statement: sqlx may then hand the
        // connection back still inside it, and the next request's BEGIN
        // would join a stranger's transaction.
        let (store, session, op, key) = (self.clone(), digest(id), *op, key.cloned());
        let task =
            tokio::spawn(async move { store.change_in(&session, mode, &op, key.as_ref()).await });
        let finished = async {
            task.await.map_err(|error| {
                sqlx::Error::Protocol(format!("the change's task failed: {error}"))
            })?
        };
        self.within_timeout(finished, Purpose::Change).await
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        sessions::round_trip();
        self.within_timeout(
            sqlx::query("DELETE FROM sessions WHERE digest = $1")
                .bind(digest(id))
                .execute(&self.pool),
            Purpose::Change,
        )
        .await
        .map(drop)
    }
}

/// Makes the change as one statement that checks its rule as it writes.
/// `None` when it was made; the refusal otherwise. The session's row is
/// locked by the caller's transaction, so the line count cannot change
/// between this statement's check and its insert.
async fn apply_op(
    tx: &mut Transaction<'_, Postgres>,
    session: &str,
    op: &CartOp,
) -> Result<Option<Answer>, sqlx::Error> {
    let (sku, qty, adds) = match op {
        CartOp::View => return Ok(None),
        CartOp::Add(sku, qty) => (sku, qty, true),
        CartOp::Set(sku, qty) => (sku, qty, false),
        CartOp::Remove(sku) => {
            sessions::round_trip();
            sqlx::query("DELETE FROM cart_lines WHERE session = $1 AND sku = $2")
                .bind(session)
                .bind(sku.as_str())
                .execute(&mut **tx)
                .await?;
            return Ok(None);
        }
        CartOp::Clear => {
            sessions::round_trip();
            sqlx::query("DELETE FROM cart_lines WHERE session = $1")
                .bind(session)
                .execute(&mut **tx)
                .await?;
            return Ok(None);
        }
    };
    // `wanted` works out the line's new total and whether there is room
    // for it; `written` inserts or updates only when there is. The outer
    // select says which happened, so the refusal can name its reason.
    // Rejected: reading the line into Rust and writing it back in a second
    // statement (correct only because of the row lock, and two round trips).
    sessions::round_trip();
    let (total, present, lines, written): (i32, bool, i64, bool) = sqlx::query_as(
        "WITH line AS (
             SELECT qty FROM cart_lines WHERE session = $1 AND sku = $2
         ), wanted AS (
             SELECT CASE WHEN $4 THEN coalesce((SELECT qty FROM line), 0) + $3 ELSE $3 END
                        AS total,
                    EXISTS (SELECT 1 FROM line) AS present,
                    (SELECT count(*) FROM cart_lines WHERE session = $1) AS lines
         ), written AS (
             INSERT INTO cart_lines (session, sku, qty)
             SELECT $1, $2, total FROM wanted
             WHERE total <= $5 AND (present OR lines < $6)
             ON CONFLICT (session, sku) DO UPDATE SET qty = EXCLUDED.qty
             RETURNING qty
         )
         SELECT total, present, lines, EXISTS (SELECT 1 FROM written) FROM wanted",
    )
    .bind(session)
    .bind(sku.as_str())
    .bind(i32::from(qty.get()))
    .bind(adds)
    .bind(i32::from(MAX_QTY))
    .bind(MAX_LINES as i64)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if written {
        None
    } else if !present && lines >= MAX_LINES as i64 {
        // The same order of checks as Redis's `cart.lua`.
        Some(Answer::CartFull)
    } else {
        Some(Answer::LineFull(u32::try_from(total).unwrap_or(u32::MAX)))
    })
}

/// The session's cart, in the order its lines were first added.
async fn cart_of(tx: &mut Transaction<'_, Postgres>, session: &str) -> Result<Answer, sqlx::Error> {
    sessions::round_trip();
    let lines: Vec<(String, i16)> =
        sqlx::query_as("SELECT sku, qty FROM cart_lines WHERE session = $1 ORDER BY position")
            .bind(session)
            .fetch_all(&mut **tx)
            .await?;
    Ok(Answer::Cart(
        lines
            .into_iter()
            .map(|(sku, qty)| (sku, qty.to_string()))
            .collect(),
    ))
}

impl CartStore for PostgresSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}
