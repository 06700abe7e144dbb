//! Sessions in Redis: the default store, and the one stages 5 to 7 keep.
//!
//! * **Where**: two Redis hashes per session, with one idle lifetime:
//!   `myclothes:session:<sha256(id)>` (when it was born, and the fields a
//!   later stage keeps, such as who is logged in) and
//!   `myclothes:cart:<sha256(id)>` (one field per SKU → quantity). Apart,
//!   the cart's lines are counted without the session's fields, and
//!   emptying the cart does not end the session.
//! * **How a change stays atomic**: every change is one Lua script
//!   (`cart.lua`), which Redis runs to completion before it serves anyone
//!   else: fifty concurrent "add one" requests make fifty, never fewer.
//!   The script also renews the idle expiry, records the idempotency key
//!   and returns the whole cart, so a change costs one round trip. (The
//!   alternative, read the cart, change it in Rust, write it back, loses
//!   updates under concurrency unless wrapped in WATCH/MULTI retries: what
//!   the Memcached store has to do, with `gets`/`cas`.) A plain read is
//!   `PTTL` + `HGETALL`, pipelined: one round trip, no script, nothing
//!   written; the idle expiry is renewed only once it has run down by a
//!   minute ([`crate::sessions::RENEW_AFTER`]). What Redis answers is read
//!   into a type once ([`Answer`]).
//! * **Durability**: the private server appends every write to its AOF
//!   ([`shop::services::redis`]): a restart, even after `kill -9`, keeps
//!   every cart.
//! * **Failure**: Redis unreachable, or slower than the store timeout →
//!   503 at once. Redis at its memory limit (`maxmemory`, `noeviction`) →
//!   503 `session_store_full`: it never evicts a session. The connection
//!   manager reconnects in the background; service returns by itself when
//!   Redis does.

use std::collections::HashMap;
use std::sync::LazyLock;

use cookie::{Cookie, CookieJar};
use redis::Script;
use redis::aio::ConnectionManager;
use shop::cart::{CartOp, MAX_LINES, MAX_QTY};
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};

use crate::sessions::{
    self, APPLIED_FOR, Answer, Mode, Purpose, SessionSettings, SessionStore, digest, new_id,
    presented_id,
};

/// Every session's own hash is under this prefix.
pub const SESSION_KEY_PREFIX: &str = "myclothes:session:";
/// Every session's cart is under this prefix.
pub const CART_KEY_PREFIX: &str = "myclothes:cart:";
/// Records of changes already made, by idempotency key.
const APPLIED_KEY_PREFIX: &str = "myclothes:applied:";
/// Where a session moved at login, kept under its old id's digest for a
/// retry of that login whose answer was lost (see [`RedisSessions::rotate`]).
const MOVED_KEY_PREFIX: &str = "myclothes:moved:";
/// How long that note is kept: a retry comes within seconds.
const MOVED_NOTE_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// The field every session has: when it started (Redis's clock, unix
/// seconds). It keeps a session with an empty cart in existence.
const BORN: &str = "born";

/// The cart script, loaded once; sent by its SHA-1 (`EVALSHA`) and only
/// sent whole when Redis does not know it yet (after a restart).
static CART_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cart.lua")));
/// The login script: a session moved to a new id.
static ROTATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("rotate.lua")));

/// Sets fields on a session only while it exists. A plain `HSET` on a
/// session that ended a moment before (logged out in another tab, or
/// expired) would bring its key back with no expiry, kept for ever by a
/// Redis that never evicts.
static SET_FIELDS_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
         redis.call('HSET', KEYS[1], unpack(ARGV))
         return 1",
    )
});

/// Why the session store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot use Redis at {url}: {source}")]
pub struct ConnectError {
    url: String,
    source: redis::RedisError,
}

/// A session Redis knows, with the session fields that were asked for.
#[derive(Clone, Debug)]
pub struct Session {
    id: String,
    fields: HashMap<String, String>,
}

impl Session {
    /// The value of a session field, if it is set.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// Where this session and its cart are kept (for a later stage's own
    /// scripts that work on the cart, such as a checkout).
    pub fn keys(&self) -> SessionKeys {
        RedisSessions::keys_for(&self.id)
    }
}

/// The Redis keys of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    /// The session's own hash.
    pub session: String,
    /// Its cart.
    pub cart: String,
    digest: String,
}

impl SessionKeys {
    /// Where a login that moved this session away left its forwarding note.
    fn moved(&self) -> String {
        format!("{MOVED_KEY_PREFIX}{}", self.digest)
    }

    /// Where a change with this idempotency key is recorded.
    fn applied(&self, key: &IdempotencyKey) -> String {
        format!("{APPLIED_KEY_PREFIX}{}:{}", self.digest, key.as_str())
    }
}

/// Carts in Redis, one hash per session.
#[derive(Clone)]
pub struct RedisSessions {
    redis: ConnectionManager,
    settings: SessionSettings,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// A store using the Redis at `url`, through one reconnecting
    /// connection shared by every request of this instance (see
    /// [`shop::services::redis::client`]). Redis need not be up yet; a
    /// malformed URL fails here.
    pub fn connect(url: &str, settings: SessionSettings) -> Result<Self, ConnectError> {
        let redis = shop::services::redis::client(url, settings.timeout).map_err(|source| {
            ConnectError {
                url: url.to_owned(),
                source,
            }
        })?;
        Ok(Self { redis, settings })
    }

    /// The Redis keys of a session: named by a SHA-256 of its id, never
    /// the id.
    pub fn keys_for(session_id: &str) -> SessionKeys {
        let digest = digest(session_id);
        SessionKeys {
            session: format!("{SESSION_KEY_PREFIX}{digest}"),
            cart: format!("{CART_KEY_PREFIX}{digest}"),
            digest,
        }
    }

    /// Ends the session the request names, for good (see
    /// [`sessions::end`]). Returns the cookie that removes `sid`.
    pub async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        sessions::end(self, cookies).await
    }

    /// The session the request names, if Redis knows it, with the values of
    /// the session fields `fields`. No session, or an unknown one, is
    /// `None`: nothing is created.
    pub async fn session(
        &self,
        cookies: &CookieJar,
        fields: &[&str],
    ) -> Result<Option<Session>, ApiError> {
        let Some(id) = presented_id(cookies) else {
            return Ok(None);
        };
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("HMGET");
        command
            .arg(Self::keys_for(id).session)
            .arg(BORN)
            .arg(fields);
        let values: Vec<Option<String>> = self
            .within_timeout(command.query_async(&mut redis), Purpose::Read)
            .await?;
        let mut values = values.into_iter();
        // `born` is in every session: without it, there is no session.
        if values.next().flatten().is_none() {
            return Ok(None);
        }
        let fields = fields
            .iter()
            .zip(values)
            .filter_map(|(field, value)| Some(((*field).to_owned(), value?)))
            .collect();
        Ok(Some(Session {
            id: id.to_owned(),
            fields,
        }))
    }

    /// Sets session fields on a known session, if it still exists; says
    /// whether it did (a session that ended since it was read is left
    /// ended).
    pub async fn set_fields(
        &self,
        session: &Session,
        pairs: &[(&str, &str)],
    ) -> Result<bool, ApiError> {
        let mut redis = self.redis.clone();
        let mut invocation = SET_FIELDS_SCRIPT.key(Self::keys_for(&session.id).session);
        for (field, value) in pairs {
            invocation.arg(*field).arg(*value);
        }
        self.within_timeout(invocation.invoke_async::<i64>(&mut redis), Purpose::Change)
            .await
            .map(|set| set == 1)
    }

    /// Moves the request's session (its cart included) to a new id and sets
    /// `pairs` on it, atomically (`rotate.lua`); returns the new `sid`
    /// cookie. Called at login: whoever knew the old id (planted before
    /// login, the oldest session-fixation trick) knows nothing now. Without
    /// a session, a new one is started.
    ///
    /// A login is retried when its answer is lost; the browser still holds
    /// the old id, whose session has just moved. So the move leaves a note
    /// under the old id for a minute: which account moved it, and the new
    /// id *sealed with the old one* (Redis holds no usable id, only
    /// digests, and the seal opens only with the old id). The same
    /// `owner` logging in again from the old id gets the same session,
    /// cart and all; anyone else, a fresh one.
    pub async fn rotate(
        &self,
        cookies: &CookieJar,
        owner: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Cookie<'static>, ApiError> {
        let presented = presented_id(cookies);
        // Without a session, "old" keys that cannot exist.
        let old = Self::keys_for(presented.unwrap_or(""));
        let id = new_id()?;
        let new = Self::keys_for(&id);
        let sealed = presented.map_or_else(String::new, |old_id| seal(&id, old_id));
        let mut invocation = ROTATE_SCRIPT.key(old.session.as_str());
        invocation
            .key(old.cart.as_str())
            .key(new.session)
            .key(new.cart)
            .key(old.moved())
            .arg(self.ttl_ms())
            .arg(owner)
            .arg(sealed)
            .arg(u64::try_from(MOVED_NOTE_FOR.as_millis()).unwrap_or(u64::MAX));
        for (field, value) in pairs {
            invocation.arg(*field).arg(*value);
        }
        let mut redis = self.redis.clone();
        let forwarded: Option<String> = self
            .within_timeout(invocation.invoke_async(&mut redis), Purpose::Change)
            .await?;
        let id = match (forwarded, presented) {
            (None, _) => id,
            (Some(note), Some(old_id)) => unseal(&note, old_id).ok_or_else(|| {
                tracing::error!("a login's forwarding note does not open");
                ApiError::Internal
            })?,
            (Some(_), None) => return Err(ApiError::Internal),
        };
        Ok(sessions::new_cookie(&self.settings, id))
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// A read of a known session: `PTTL` of the session and `HGETALL` of
    /// the cart, pipelined (one round trip, and nothing written). Reads are
    /// most requests, and plain commands cost Redis about half what the
    /// script does, which is needed only where a rule must be checked and
    /// applied atomically.
    ///
    /// The idle expiry is renewed only when it has run down by more than
    /// [`crate::sessions::RENEW_AFTER`] (a second round trip, at most once a minute per
    /// session): renewing on every read made every read a write, which
    /// Redis appends to its AOF and sends to its replicas. Django, by
    /// default, renews only when the session changes; this keeps the
    /// sliding expiry, to within a minute.
    async fn read_and_renew(&self, session_id: &str) -> Result<Answer, ApiError> {
        let keys = Self::keys_for(session_id);
        let mut redis = self.redis.clone();
        let (left_ms, lines): (i64, Vec<(String, String)>) = self
            .within_timeout(
                redis::pipe()
                    .cmd("PTTL")
                    .arg(&keys.session)
                    .cmd("HGETALL")
                    .arg(&keys.cart)
                    .query_async(&mut redis),
                Purpose::Read,
            )
            .await?;
        // -2: no session key: unknown, ended or expired.
        if left_ms == -2 {
            return Ok(Answer::Unknown);
        }
        let ttl = self.ttl_ms();
        // A lifetime shorter than two minutes (a test's, a demo's) renews
        // once half of it has run down.
        let renew_after =
            u64::try_from(self.settings.renew_after().as_millis()).unwrap_or(u64::MAX);
        // -1 (no expiry at all) counts as run down too.
        let run_down =
            u64::try_from(left_ms).map_or(true, |left| left.saturating_add(renew_after) < ttl);
        if run_down {
            let _: (bool, bool) = self
                .within_timeout(
                    redis::pipe()
                        .cmd("PEXPIRE")
                        .arg(&keys.session)
                        .arg(ttl)
                        .cmd("PEXPIRE")
                        .arg(&keys.cart)
                        .arg(ttl)
                        .query_async(&mut redis),
                    Purpose::Read,
                )
                .await?;
        }
        Ok(Answer::Cart(lines))
    }

    /// Runs the cart script for one change to one session.
    async fn run_script(
        &self,
        session_id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        let (name, sku, qty) = match op {
            CartOp::View => ("view", "", 0),
            CartOp::Add(sku, qty) => ("add", sku.as_str(), qty.get()),
            CartOp::Set(sku, qty) => ("set", sku.as_str(), qty.get()),
            CartOp::Remove(sku) => ("remove", sku.as_str(), 0),
            CartOp::Clear => ("clear", "", 0),
        };
        let mode = match mode {
            Mode::Resume => "resume",
            Mode::Create => "create",
        };
        let keys = Self::keys_for(session_id);
        let mut redis = self.redis.clone();
        let mut invocation = CART_SCRIPT.key(&keys.session);
        invocation.key(&keys.cart);
        if let Some(key) = key {
            invocation.key(keys.applied(key));
        }
        invocation
            .arg(mode)
            .arg(name)
            .arg(sku)
            .arg(qty)
            .arg(self.ttl_ms())
            .arg(MAX_LINES)
            .arg(MAX_QTY)
            .arg(u64::try_from(APPLIED_FOR.as_millis()).unwrap_or(u64::MAX));
        self.within_timeout(
            invocation.invoke_async::<Answer>(&mut redis),
            Purpose::Change,
        )
        .await
    }

    /// Waits for Redis at most the store timeout ([`sessions::within_timeout`]);
    /// `OOM` is Redis at `maxmemory`.
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
        purpose: Purpose,
    ) -> Result<T, ApiError> {
        // Every call here is one command or one pipeline: one round trip.
        sessions::round_trip();
        sessions::within_timeout(self.settings.timeout, purpose, call, |error| {
            error.code() == Some("OOM")
        })
        .await
    }
}

impl SessionStore for RedisSessions {
    fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn label(&self) -> &'static str {
        "redis; durable (AOF), atomic by Lua script"
    }

    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        self.read_and_renew(id).await
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        self.run_script(id, mode, op, key).await
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let keys = Self::keys_for(id);
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("DEL");
        command.arg(&keys.session).arg(&keys.cart);
        self.within_timeout(command.query_async::<i64>(&mut redis), Purpose::Change)
            .await
            .map(drop)
    }
}

impl CartStore for RedisSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}

/// The new id of a moved session, for the note left under its old id:
/// XORed with a SHA-256 of the old id (not the digest Redis names keys
/// by, so the note cannot be opened from what Redis holds), in hex.
fn seal(new_id: &str, old_id: &str) -> String {
    hex::encode(xor_with_pad(new_id.as_bytes(), old_id))
}

/// The id [`seal`] sealed, given the old id; `None` if it is not one.
fn unseal(sealed: &str, old_id: &str) -> Option<String> {
    let bytes = hex::decode(sealed).ok()?;
    let id = String::from_utf8(xor_with_pad(&bytes, old_id)).ok()?;
    shop::ids::is_well_formed(&id).then_some(id)
}

fn xor_with_pad(bytes: &[u8], old_id: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let pad = Sha256::digest(format!("myclothes:moved-to:{old_id}").as_bytes());
    // An id (22 bytes) is shorter than the pad (32).
    bytes.iter().zip(pad.iter()).map(|(b, p)| b ^ p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_sessions_note_opens_only_with_its_old_id() {
        let (old_id, new_id, someone) = (
            shop::ids::random_id().expect("an id"),
            shop::ids::random_id().expect("an id"),
            shop::ids::random_id().expect("an id"),
        );
        let sealed = seal(&new_id, &old_id);
        assert!(!sealed.contains(&new_id), "the id is not in the note");
        assert_eq!(unseal(&sealed, &old_id), Some(new_id));
        assert_eq!(unseal(&sealed, &someone), None, "another id opens nothing");
        assert_eq!(unseal("not hex", &old_id), None);
    }

    #[tokio::test]
    async fn setting_fields_on_a_session_that_just_ended_does_not_bring_it_back() {
        use shop::services::redis::RedisServer;
        let server = RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
        let settings = SessionSettings {
            ttl: std::time::Duration::from_secs(600),
            timeout: std::time::Duration::from_secs(10),
            secure_cookies: false,
        };
        let store = RedisSessions::connect(&server.url(), settings).expect("a client");
        let op = CartOp::Add(
            shop::cart::KnownSku::new("TEE-RED-M").expect("a SKU"),
            shop::cart::Quantity::new(1).expect("a quantity"),
        );
        let id = "a-session-id-for-this-test-only";
        store
            .change(id, Mode::Create, &op, None)
            .await
            .expect("a new session");
        let session = Session {
            id: id.to_owned(),
            fields: HashMap::new(),
        };
        let key = RedisSessions::keys_for(id).session;
        let mut redis = server.connection().await.expect("a connection");

        assert!(
            store
                .set_fields(&session, &[("lsn", "1")])
                .await
                .expect("set")
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "a live session keeps its expiry ({ttl})");

        // The shopper logs out in another tab between a read and the write.
        store.delete(id).await.expect("ended");
        assert!(
            !store
                .set_fields(&session, &[("lsn", "2")])
                .await
                .expect("set")
        );
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("EXISTS");
        assert_eq!(exists, 0, "no key without an expiry comes back");
    }
}
