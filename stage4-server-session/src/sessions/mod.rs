//! Carts in Redis, under a server-side session.
//!
//! The shopper's cookie holds only a session id (`sid`, 22 characters, 128
//! random bits). The cart lives in Redis, which every instance reaches, so
//! any instance serves any request and an instance dying loses nothing.
//!
//! * **Where**: two Redis hashes per session, with one idle lifetime:
//!   `myclothes:session:<sha256(id)>` (when it was born, and the fields a
//!   later stage keeps, such as who is logged in) and
//!   `myclothes:cart:<sha256(id)>` (one field per SKU → quantity). Apart,
//!   the cart's lines are counted without the session's fields, and
//!   emptying the cart does not end the session. The keys are a hash of the
//!   id, so someone who can read Redis (a backup, `MONITOR`, a support
//!   engineer) cannot lift live session ids out of it.
//! * **How**: every change is one Lua script (`cart.lua`), which Redis runs
//!   atomically: fifty concurrent "add one" requests make fifty, never
//!   fewer. The script also renews the idle expiry and returns the whole
//!   cart, so a request costs one round trip. (The alternative, read the
//!   cart, change it in Rust, write it back, loses updates under
//!   concurrency unless wrapped in WATCH/MULTI retries.) A plain read is
//!   `PTTL` + `HGETALL`, pipelined: one round trip, no script, nothing
//!   written; the idle expiry is renewed only once it has run down by a
//!   minute ([`RENEW_AFTER`]). What Redis answers is read into a type once
//!   ([`answer::Answer`]).
//! * **Retries**: a change sent with an `Idempotency-Key` is recorded with
//!   its result for [`APPLIED_FOR`]; the same key again is answered with
//!   that result (`Idempotent-Replayed: true`) and changes nothing.
//! * **New sessions**: only a change starts one (as Django and Rails do):
//!   reading without a session answers the empty cart and stores nothing,
//!   so a flood of cookie-less reads costs Redis nothing. An id the server
//!   does not know (expired, ended, made up) is never adopted: a change
//!   gets a fresh id. Adopting it would let an attacker plant an id in a
//!   victim's browser and then share the victim's session (session
//!   fixation).
//! * **Failure**: Redis unreachable, or slower than the store timeout →
//!   503 `session_store_unavailable` at once, never an empty cart. A change
//!   that timed out was sent, and may still be applied when a frozen Redis
//!   wakes up; the 503 says so, and that retrying with the same key is
//!   safe. Redis at its memory limit (`maxmemory`, `noeviction`) → 503
//!   `session_store_full`. The connection manager reconnects in the
//!   background; service returns by itself when Redis does.
//!
//! A hash has no order, so a stage-4 cart lists its lines in catalog order
//! (the same on every instance) rather than in the order they were added.

mod answer;

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use cookie::{Cookie, CookieJar};
use redis::Script;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use shop::cart::{Cart, CartError, CartLine, CartOp, MAX_LINES, MAX_QTY};
use shop::cookies::shop_cookie;
use shop::{ApiError, CartReply, CartRequest, CartStore, Catalog, IdempotencyKey, ids};

use crate::error::SessionError;
use answer::Answer;

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "sid";
/// Every session's own hash is under this prefix.
pub const SESSION_KEY_PREFIX: &str = "myclothes:session:";
/// Every session's cart is under this prefix.
pub const CART_KEY_PREFIX: &str = "myclothes:cart:";
/// Records of changes already made, by idempotency key.
const APPLIED_KEY_PREFIX: &str = "myclothes:applied:";
/// What happened to the session on this request: `resumed`;
/// `new; reason=missing|malformed|unknown` (a change started one); or
/// `none; reason=…` (a read without one: nothing was stored).
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session");
/// Set on the answer to a change that was made before (same key).
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The field every session has: when it started (Redis's clock, unix
/// seconds). It keeps a session with an empty cart in existence.
const BORN: &str = "born";
/// A read renews the session's idle expiry only once it has run down by
/// this much (or by half, for a lifetime under two minutes): reads stay
/// reads, and the expiry still slides.
pub const RENEW_AFTER: Duration = Duration::from_secs(60);

/// How long a change's idempotency key is remembered. A retry comes within
/// seconds of the first try; a day (Stripe's choice) would cost memory for
/// nothing here.
pub const APPLIED_FOR: Duration = Duration::from_secs(10 * 60);

/// The cart script, loaded once; sent by its SHA-1 (`EVALSHA`) and only
/// sent whole when Redis does not know it yet (after a restart).
static CART_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cart.lua")));
/// The login script: a session moved to a new id.
static ROTATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("rotate.lua")));

/// How sessions behave.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Idle lifetime, renewed by every change, and by a read once it has
    /// run down by [`RENEW_AFTER`].
    pub ttl: Duration,
    /// How long a request waits for Redis before answering 503.
    pub timeout: Duration,
    /// Mark the `sid` cookie `Secure`.
    pub secure_cookies: bool,
}

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
    /// Where a change with this idempotency key is recorded.
    fn applied(&self, key: &IdempotencyKey) -> String {
        format!("{APPLIED_KEY_PREFIX}{}:{}", self.digest, key.as_str())
    }
}

/// Why this request had no session of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoSession {
    Missing,
    Malformed,
    Unknown,
}

impl NoSession {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
        }
    }

    /// `new; reason=…` when a change started a session, `none; reason=…`
    /// when a read found none.
    fn header(self, started: bool) -> HeaderValue {
        let state = if started { "new" } else { "none" };
        HeaderValue::from_str(&format!("{state}; reason={}", self.reason()))
            .unwrap_or_else(|_| HeaderValue::from_static("none"))
    }
}

/// Whether a cart operation may start a session or must find one.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The session must exist.
    Resume,
    /// The session must not exist yet.
    Create,
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
        let digest = hex::encode(Sha256::digest(session_id.as_bytes()));
        SessionKeys {
            session: format!("{SESSION_KEY_PREFIX}{digest}"),
            cart: format!("{CART_KEY_PREFIX}{digest}"),
            digest,
        }
    }

    /// Ends the session the request names, for good: its data is deleted,
    /// and the same id will be treated as unknown from now on. Returns the
    /// cookie that removes `sid` from the browser.
    pub async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        if let Some(id) = presented_id(cookies) {
            let keys = Self::keys_for(id);
            let mut redis = self.redis.clone();
            let mut command = redis::cmd("DEL");
            command.arg(&keys.session).arg(&keys.cart);
            self.within_timeout(command.query_async::<i64>(&mut redis), Purpose::Change)
                .await?;
            tracing::info!(session = %ids::redacted(id), "session ended");
        }
        let mut cookie = shop_cookie(SESSION_COOKIE, String::new(), self.settings.secure_cookies);
        cookie.make_removal();
        Ok(cookie)
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

    /// Sets session fields on a known session.
    pub async fn set_fields(
        &self,
        session: &Session,
        pairs: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("HSET");
        command.arg(Self::keys_for(&session.id).session);
        for (field, value) in pairs {
            command.arg(*field).arg(*value);
        }
        self.within_timeout(command.query_async::<i64>(&mut redis), Purpose::Change)
            .await
            .map(drop)
    }

    /// Moves the request's session (its cart included) to a new id and sets
    /// `pairs` on it, atomically (`rotate.lua`); returns the new `sid`
    /// cookie. Called at login: whoever knew the old id (planted before
    /// login, the oldest session-fixation trick) knows nothing now. Without
    /// a session, a new one is started.
    pub async fn rotate(
        &self,
        cookies: &CookieJar,
        pairs: &[(&str, &str)],
    ) -> Result<Cookie<'static>, ApiError> {
        // Without a session, "old" keys that cannot exist.
        let old = Self::keys_for(presented_id(cookies).unwrap_or(""));
        let id = new_id()?;
        let new = Self::keys_for(&id);
        let mut invocation = ROTATE_SCRIPT.key(old.session);
        invocation
            .key(old.cart)
            .key(new.session)
            .key(new.cart)
            .arg(self.ttl_ms());
        for (field, value) in pairs {
            invocation.arg(*field).arg(*value);
        }
        let mut redis = self.redis.clone();
        self.within_timeout(invocation.invoke_async::<i64>(&mut redis), Purpose::Change)
            .await?;
        Ok(self.new_cookie(id))
    }

    /// The `sid` cookie for a new id.
    fn new_cookie(&self, id: String) -> Cookie<'static> {
        let mut cookie = shop_cookie(SESSION_COOKIE, id, self.settings.secure_cookies);
        // No Max-Age: the browser forgets the id when it closes; the server
        // forgets the session after the idle TTL, whichever comes first.
        cookie.set_max_age(None);
        cookie
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
    /// [`RENEW_AFTER`] (a second round trip, at most once a minute per
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
        let renew_after = u64::try_from(RENEW_AFTER.as_millis())
            .unwrap_or(u64::MAX)
            .min(ttl / 2);
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

    /// Waits for Redis at most the store timeout; any failure becomes 503,
    /// worded for what was asked (a change may still land later).
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
        purpose: Purpose,
    ) -> Result<T, ApiError> {
        let unavailable = || match purpose {
            Purpose::Read => SessionError::StoreUnavailable,
            Purpose::Change => SessionError::ChangeUnconfirmed,
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.code() == Some("OOM") => {
                tracing::error!(%error, "session store is full (maxmemory)");
                Err(SessionError::StoreFull.into())
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "session store failed");
                Err(unavailable().into())
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.settings.timeout.as_millis(),
                    "session store did not answer in time"
                );
                Err(unavailable().into())
            }
        }
    }
}

/// What a call to Redis was for, which decides what a failure means.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    /// Nothing was changed, whatever happened.
    Read,
    /// A change was sent; if no answer came, it may still be applied.
    Change,
}

/// The id the request's cookie names, if it has the shape of one.
fn presented_id(cookies: &CookieJar) -> Option<&str> {
    cookies
        .get(SESSION_COOKIE)
        .map(Cookie::value)
        .filter(|id| ids::is_well_formed(id))
}

/// A new session id, from the OS random source.
fn new_id() -> Result<String, ApiError> {
    ids::random_id().map_err(|error| {
        tracing::error!(%error, "no session id");
        ApiError::Internal
    })
}

impl CartStore for RedisSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        let CartRequest { cookies, op, key } = request;
        let presented = cookies.get(SESSION_COOKIE).map(Cookie::value);
        let mut missing = match presented {
            None => Some(NoSession::Missing),
            Some(id) if !ids::is_well_formed(id) => Some(NoSession::Malformed),
            Some(_) => None,
        };
        // The common case: a known session, one round trip.
        if missing.is_none()
            && let Some(id) = presented
        {
            let answer = if op == CartOp::View {
                self.read_and_renew(id).await?
            } else {
                self.run_script(id, Mode::Resume, &op, key).await?
            };
            if answer != Answer::Unknown {
                return reply(answer, Resumed::Yes);
            }
            tracing::debug!(session = %ids::redacted(id), "unknown session id");
            missing = Some(NoSession::Unknown);
        }
        let why = missing.unwrap_or(NoSession::Missing);
        // A read needs no session: the empty cart, and nothing stored.
        if op == CartOp::View {
            return reply(Answer::Cart(Vec::new()), Resumed::No(why, None));
        }
        // A change starts a session, under an id we make, never one the
        // client chose.
        let id = new_id()?;
        let answer = self.run_script(&id, Mode::Create, &op, key).await?;
        let cookie = self.new_cookie(id);
        reply(answer, Resumed::No(why, Some(cookie)))
    }
}

/// Whether the request had a session of its own.
enum Resumed {
    Yes,
    /// No: why not, and the cookie of the one a change started.
    No(NoSession, Option<Cookie<'static>>),
}

/// Turns the script's answer into a reply, or the refusal into an error.
fn reply(answer: Answer, resumed: Resumed) -> Result<CartReply, ApiError> {
    let (answer, replayed) = match answer {
        Answer::Replayed(first) => (*first, true),
        answer => (answer, false),
    };
    let lines = match answer {
        Answer::Cart(lines) => lines,
        Answer::CartFull => return Err(CartError::CartFull.into()),
        Answer::LineFull(total) => {
            return Err(ApiError::BadQuantity(format!(
                "that would make {total} of one item: each line holds at most {MAX_QTY}"
            )));
        }
        Answer::Unknown | Answer::Taken | Answer::Replayed(_) => {
            tracing::error!(?answer, "the cart script refused a new session");
            return Err(ApiError::Internal);
        }
    };
    let mut reply = CartReply::new(cart_from_lines(lines)?);
    if replayed {
        reply
            .headers
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    match resumed {
        Resumed::Yes => {
            reply
                .headers
                .insert(SESSION_HEADER, HeaderValue::from_static("resumed"));
        }
        Resumed::No(why, started) => {
            reply
                .headers
                .insert(SESSION_HEADER, why.header(started.is_some()));
            if why == NoSession::Unknown {
                reply.notices.push(
                    "Your session had ended or expired, so your cart starts empty again."
                        .to_owned(),
                );
            }
            reply.cookies.extend(started);
        }
    }
    Ok(reply)
}

/// Builds the cart from the cart hash's fields (SKU → quantity). A line
/// whose SKU has left the catalog is skipped (and logged).
fn cart_from_lines(fields: Vec<(String, String)>) -> Result<Cart, ApiError> {
    let catalog = Catalog::get();
    let mut lines = Vec::new();
    for (field, value) in fields {
        match (catalog.position(&field), value.parse::<u8>()) {
            (Some(position), Ok(qty)) if (1..=MAX_QTY).contains(&qty) => {
                lines.push((position, CartLine { sku: field, qty }));
            }
            _ => tracing::warn!(
                sku = field,
                value,
                "skipping a stored line that is no longer valid"
            ),
        }
    }
    lines.sort_by_key(|(position, _)| *position);
    // The script enforces the rules, so this cannot fail unless someone
    // edited the hash by hand; then say so rather than show an empty cart.
    Cart::from_lines(lines.into_iter().map(|(_, line)| line)).map_err(|error| {
        tracing::error!(%error, "a stored cart breaks the cart rules");
        ApiError::Internal
    })
}
