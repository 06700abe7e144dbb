//! Carts in Redis, under a server-side session: stages 4 and 5.
//!
//! The shopper's cookie holds only a session id (`sid`, 22 characters, 128
//! random bits). The cart lives in Redis, which every instance reaches, so
//! any instance serves any request and an instance dying loses nothing.
//!
//! * **Where**: one Redis hash per session, `myclothes:session:<sha256(id)>`,
//!   holding `_born` and one field per SKU → quantity. The key is a hash of
//!   the id, so someone who can read Redis (a backup, `MONITOR`, a support
//!   engineer) cannot lift live session ids out of it.
//! * **How**: every change is one Lua script (`cart.lua`), which Redis runs
//!   atomically: fifty concurrent "add one" requests make fifty, never
//!   fewer. The script also renews the idle expiry and returns the whole
//!   cart, so a request costs one round trip. (The alternative, read the
//!   cart, change it in Rust, write it back, loses updates under
//!   concurrency unless wrapped in WATCH/MULTI retries.) A plain read is
//!   `HGETALL` + `PEXPIRE`, pipelined: one round trip, no script.
//! * **New sessions**: an id the server does not know (expired, ended,
//!   made up) is never adopted: the shopper gets a fresh id. Adopting it
//!   would let an attacker plant an id in a victim's browser and then share
//!   the victim's session (session fixation).
//! * **Failure**: Redis unreachable, or slower than the store timeout →
//!   503 `session_store_unavailable` at once, never an empty cart. The
//!   connection manager reconnects in the background; service returns by
//!   itself when Redis does. One caution: a write that timed out was sent,
//!   and may still be applied when a frozen Redis wakes up.
//!
//! A hash has no order, so a stage-4 cart lists its lines in catalog order
//! (the same on every instance) rather than in the order they were added.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::delete;
use cookie::{Cookie, CookieJar};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::cart::{Cart, CartLine, CartOp, MAX_LINES, MAX_QTY};
use crate::catalog::Catalog;
use crate::cookies::{request_jar, shop_cookie};
use crate::error::ApiError;
use crate::http::Shop;
use crate::http::api::append_reply_headers;
use crate::ids;
use crate::services::ServiceError;
use crate::services::redis::{REDIS_URL_ENV, RedisServer};
use crate::stage::{BoxError, Services};
use crate::store::{CartReply, CartStore};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "sid";
/// Every session key starts with this.
pub const SESSION_KEY_PREFIX: &str = "myclothes:session:";
/// What happened to the session on this request: `resumed`, or
/// `new; reason=missing|malformed|unknown`.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session");

/// The cart script, loaded once; sent by its SHA-1 (`EVALSHA`) and only
/// sent whole when Redis does not know it yet (after a restart).
static CART_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("cart.lua")));

/// How sessions behave.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Idle lifetime, renewed by every request.
    pub ttl: Duration,
    /// How long a request waits for Redis before answering 503.
    pub timeout: Duration,
    /// Mark the `sid` cookie `Secure`.
    pub secure_cookies: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30 * 60),
            timeout: Duration::from_millis(500),
            secure_cookies: false,
        }
    }
}

/// The flags of a stage that keeps sessions in Redis (stages 4 and 5). Each
/// has an environment fallback, which is also how `up` hands them to its
/// instances.
#[derive(Clone, Debug, clap::Args)]
pub struct SessionArgs {
    /// The Redis that holds the sessions. Unset: a private `redis-server`
    /// is started (and stopped on exit).
    #[arg(long, env = REDIS_URL_ENV)]
    pub redis_url: Option<String>,
    /// Idle lifetime of a session; every request renews it.
    #[arg(long, env = "SHOP_SESSION_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// How long a request waits for Redis before answering 503.
    #[arg(long, env = "SHOP_STORE_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
    /// Mark the `sid` cookie `Secure` (only sent over HTTPS).
    #[arg(long, env = "SHOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
}

impl SessionArgs {
    pub fn settings(&self) -> SessionSettings {
        SessionSettings {
            ttl: self.session_ttl,
            timeout: self.store_timeout,
            secure_cookies: self.secure_cookies,
        }
    }

    /// Starts a private `redis-server` when no Redis URL was given, and
    /// records its URL.
    pub async fn start_redis_if_unset(
        &mut self,
        services: &mut Services,
    ) -> Result<(), ServiceError> {
        if self.redis_url.is_none() {
            let server = RedisServer::start().await?;
            let url = server.url();
            services.keep(
                server,
                format!("Redis:      {url}   (private redis-server; set {REDIS_URL_ENV} to use your own)"),
            );
            self.redis_url = Some(url);
        }
        Ok(())
    }

    /// The variables every instance needs to reach the same sessions.
    pub fn instance_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            (
                "SHOP_SESSION_TTL".into(),
                humantime::format_duration(self.session_ttl)
                    .to_string()
                    .into(),
            ),
            (
                "SHOP_STORE_TIMEOUT".into(),
                humantime::format_duration(self.store_timeout)
                    .to_string()
                    .into(),
            ),
        ];
        if let Some(url) = &self.redis_url {
            env.push((REDIS_URL_ENV.into(), url.into()));
        }
        if self.secure_cookies {
            env.push(("SHOP_SECURE_COOKIES".into(), "true".into()));
        }
        env
    }

    /// The session store these flags describe.
    pub fn connect(&self) -> Result<RedisCarts, BoxError> {
        let url = self.redis_url.as_deref().ok_or_else(|| {
            format!("no Redis to keep sessions in: set {REDIS_URL_ENV}=redis://host:port")
        })?;
        Ok(RedisCarts::connect(url, self.settings())?)
    }
}

/// Carts in Redis, one hash per session.
#[derive(Clone)]
pub struct RedisCarts {
    redis: ConnectionManager,
    settings: SessionSettings,
}

impl std::fmt::Debug for RedisCarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCarts")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why the session store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot use Redis at {url}: {source}")]
pub struct ConnectError {
    url: String,
    source: redis::RedisError,
}

impl RedisCarts {
    /// A store using the Redis at `url`, through one reconnecting
    /// connection shared by every request of this instance.
    ///
    /// Redis need not be up yet: the manager connects on first use and
    /// reconnects after every failure, so an instance started during an
    /// outage serves as soon as Redis is back. A malformed URL fails here.
    pub fn connect(url: &str, settings: SessionSettings) -> Result<Self, ConnectError> {
        let fail = |source| ConnectError {
            url: url.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(fail)?;
        // One multiplexed connection, not a pool: Redis answers in order on
        // one socket, so concurrent requests pipeline through it for free.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_max_delay(Duration::from_secs(1))
            // Reconnect once, then fail: a refused connection should be a
            // fast answer (503, or a cache miss), and the next request tries
            // again anyway.
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(fail)?;
        Ok(Self { redis, settings })
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The Redis key of a session: a SHA-256 of its id, never the id.
    pub fn key_for(session_id: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(session_id.as_bytes());
        let mut key = String::with_capacity(SESSION_KEY_PREFIX.len() + 64);
        key.push_str(SESSION_KEY_PREFIX);
        for byte in digest {
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        key
    }

    /// Ends the session the request names, for good: its data is deleted,
    /// and the same id will be treated as unknown from now on. Returns the
    /// cookie that removes `sid` from the browser.
    pub async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        if let Some(id) = self.presented_id(cookies) {
            let key = Self::key_for(id);
            let mut redis = self.redis.clone();
            self.within_timeout(redis::cmd("DEL").arg(&key).query_async::<i64>(&mut redis))
                .await?;
            tracing::info!(session = %ids::redacted(id), "session ended");
        }
        let mut cookie = shop_cookie(SESSION_COOKIE, String::new(), self.settings.secure_cookies);
        cookie.make_removal();
        Ok(cookie)
    }

    /// The session the request names, if Redis knows it, with the values of
    /// the session's own `fields` (`_`-prefixed, e.g. stage 5's `_user`).
    /// No session, or an unknown one, is `None`: nothing is created.
    pub async fn session(
        &self,
        cookies: &CookieJar,
        fields: &[&str],
    ) -> Result<Option<Session>, ApiError> {
        let Some(id) = self.presented_id(cookies) else {
            return Ok(None);
        };
        let key = Self::key_for(id);
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("HMGET");
        command.arg(&key).arg("_born").arg(fields);
        let mut values: Vec<Option<String>> =
            self.within_timeout(command.query_async(&mut redis)).await?;
        // `_born` is in every session: without it, there is no session.
        if values.first().is_none_or(Option::is_none) {
            return Ok(None);
        }
        values.remove(0);
        Ok(Some(Session {
            id: id.to_owned(),
            values,
        }))
    }

    /// Sets session fields (`_`-prefixed names) on a known session.
    pub async fn set_fields(
        &self,
        session: &Session,
        pairs: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("HSET");
        command.arg(Self::key_for(&session.id));
        for (field, value) in pairs {
            command.arg(*field).arg(*value);
        }
        self.within_timeout(command.query_async::<i64>(&mut redis))
            .await
            .map(drop)
    }

    /// Moves the request's session (its cart included) to a new id and sets
    /// `pairs` on it, atomically; returns the new `sid` cookie. Called at
    /// login: whoever knew the old id (planted before login, the oldest
    /// session-fixation trick) knows nothing now. Without a session, a new
    /// one is started.
    pub async fn rotate(
        &self,
        cookies: &CookieJar,
        pairs: &[(&str, &str)],
    ) -> Result<Cookie<'static>, ApiError> {
        static ROTATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                r"
                -- KEYS[1] old session (may not exist), KEYS[2] the new one
                -- ARGV[1] idle ttl ms, ARGV[2] now, ARGV[3..] field, value, ...
                if redis.call('EXISTS', KEYS[1]) == 1 then
                  redis.call('RENAME', KEYS[1], KEYS[2])
                else
                  redis.call('HSET', KEYS[2], '_born', ARGV[2])
                end
                for i = 3, #ARGV, 2 do
                  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
                end
                redis.call('PEXPIRE', KEYS[2], ARGV[1])
                return 1
                ",
            )
        });
        let old = self
            .presented_id(cookies)
            .map(Self::key_for)
            .unwrap_or_else(|| format!("{SESSION_KEY_PREFIX}none"));
        let id = ids::random_id().map_err(|error| {
            tracing::error!(%error, "no session id");
            ApiError::Internal
        })?;
        let mut invocation = ROTATE.key(old);
        invocation
            .key(Self::key_for(&id))
            .arg(u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(unix_now());
        for (field, value) in pairs {
            invocation.arg(*field).arg(*value);
        }
        let mut redis = self.redis.clone();
        self.within_timeout(invocation.invoke_async::<i64>(&mut redis))
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

    /// The routes only a session store has: `DELETE /api/session`.
    pub fn routes<S>() -> Router<Arc<Shop<S>>>
    where
        S: CartStore + AsRef<RedisCarts>,
    {
        Router::new().route("/api/session", delete(end_session::<S>))
    }

    fn presented_id<'a>(&self, cookies: &'a CookieJar) -> Option<&'a str> {
        cookies
            .get(SESSION_COOKIE)
            .map(Cookie::value)
            .filter(|id| ids::is_well_formed(id))
    }

    /// A read of a known session: `HGETALL` and `PEXPIRE`, pipelined (one
    /// round trip). Reads are most requests, and two plain commands cost
    /// Redis about half what the script does, which is needed only where a
    /// rule must be checked and applied atomically. Answers like the script.
    async fn read_and_renew(&self, session_id: &str) -> Result<Vec<String>, ApiError> {
        let key = Self::key_for(session_id);
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        let (mut fields, renewed): (Vec<String>, bool) = self
            .within_timeout(
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl_ms)
                    .query_async(&mut redis),
            )
            .await?;
        // No key (PEXPIRE answers 0): an unknown or expired session.
        if !renewed {
            return Ok(vec!["unknown".to_owned()]);
        }
        fields.insert(0, "ok".to_owned());
        Ok(fields)
    }

    /// Runs the cart script for one session.
    async fn run_script(
        &self,
        session_id: &str,
        mode: &str,
        op: &CartOp,
    ) -> Result<Vec<String>, ApiError> {
        let (name, sku, qty) = match op {
            CartOp::View => ("view", "", 0),
            CartOp::Add(sku, qty) => ("add", sku.as_str(), qty.get()),
            CartOp::Set(sku, qty) => ("set", sku.as_str(), qty.get()),
            CartOp::Remove(sku) => ("remove", sku.as_str(), 0),
            CartOp::Clear => ("clear", "", 0),
        };
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let now = unix_now();
        let mut redis = self.redis.clone();
        let mut invocation = CART_SCRIPT.key(Self::key_for(session_id));
        invocation
            .arg(mode)
            .arg(name)
            .arg(sku)
            .arg(qty)
            .arg(ttl_ms)
            .arg(MAX_LINES)
            .arg(MAX_QTY)
            .arg(now);
        self.within_timeout(invocation.invoke_async::<Vec<String>>(&mut redis))
            .await
    }

    /// Waits for Redis at most the store timeout; any failure becomes 503.
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, "session store failed");
                Err(ApiError::SessionStoreUnavailable)
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.settings.timeout.as_millis(),
                    "session store did not answer in time"
                );
                Err(ApiError::SessionStoreUnavailable)
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A session Redis knows, with the fields asked for.
#[derive(Clone, Debug)]
pub struct Session {
    id: String,
    /// The values of the fields asked for, in order.
    pub values: Vec<Option<String>>,
}

impl Session {
    /// The id, shortened for logs.
    pub fn redacted_id(&self) -> String {
        ids::redacted(&self.id)
    }
}

impl AsRef<RedisCarts> for RedisCarts {
    fn as_ref(&self) -> &RedisCarts {
        self
    }
}

/// Why this request got a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NewSession {
    Missing,
    Malformed,
    Unknown,
}

impl CartStore for RedisCarts {
    async fn apply(&self, cookies: &CookieJar, op: CartOp) -> Result<CartReply, ApiError> {
        let presented = cookies.get(SESSION_COOKIE).map(Cookie::value);
        let mut new = match presented {
            None => Some(NewSession::Missing),
            Some(id) if !ids::is_well_formed(id) => Some(NewSession::Malformed),
            Some(_) => None,
        };
        // The common case: a known session, one round trip.
        if new.is_none()
            && let Some(id) = presented
        {
            let reply = if op == CartOp::View {
                self.read_and_renew(id).await?
            } else {
                self.run_script(id, "resume", &op).await?
            };
            if reply.first().map(String::as_str) != Some("unknown") {
                return finish(reply, None);
            }
            tracing::debug!(session = %ids::redacted(id), "unknown session id; starting a new one");
            new = Some(NewSession::Unknown);
        }
        // A new session under an id we make, never one the client chose.
        let id = ids::random_id().map_err(|error| {
            tracing::error!(%error, "no session id");
            ApiError::Internal
        })?;
        let reply = self.run_script(&id, "create", &op).await?;
        let cookie = self.new_cookie(id);
        finish(reply, new.map(|reason| (reason, cookie)))
    }

    fn routes() -> Router<Arc<Shop<Self>>> {
        Self::routes::<Self>()
    }
}

/// Turns the script's answer into a reply, or the refusal into an error.
fn finish(
    reply: Vec<String>,
    new: Option<(NewSession, Cookie<'static>)>,
) -> Result<CartReply, ApiError> {
    let mut fields = reply.into_iter();
    match fields.next().as_deref() {
        Some("ok") => {}
        Some("cart_full") => return Err(crate::cart::CartError::CartFull.into()),
        Some("line_full") => {
            let total = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            return Err(ApiError::BadQuantity(format!(
                "that would make {total} of one item: each line holds at most {MAX_QTY}"
            )));
        }
        other => {
            tracing::error!(status = ?other, "unexpected answer from the cart script");
            return Err(ApiError::Internal);
        }
    }
    let mut reply = CartReply::new(cart_from_fields(fields)?);
    let state = match &new {
        None => "resumed",
        Some((NewSession::Missing, _)) => "new; reason=missing",
        Some((NewSession::Malformed, _)) => "new; reason=malformed",
        Some((NewSession::Unknown, _)) => "new; reason=unknown",
    };
    reply
        .headers
        .insert(SESSION_HEADER, HeaderValue::from_static(state));
    if let Some((reason, cookie)) = new {
        if reason == NewSession::Unknown {
            reply
                .notices
                .push("Your session had ended or expired, so a new one was started.".to_owned());
        }
        reply.cookies.push(cookie);
    }
    Ok(reply)
}

/// Builds the cart from the hash's fields (`_`-prefixed ones are not lines).
/// A line whose SKU has left the catalog is skipped (and logged).
fn cart_from_fields(fields: impl Iterator<Item = String>) -> Result<Cart, ApiError> {
    let catalog = Catalog::get();
    let mut lines = Vec::new();
    let mut fields = fields;
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        if field.starts_with('_') {
            continue;
        }
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

/// `DELETE /api/session`: 204, and the `sid` cookie removed.
async fn end_session<S: CartStore + AsRef<RedisCarts>>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let removal = shop.store.as_ref().end(&request_jar(&headers)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    append_reply_headers(response.headers_mut(), vec![removal], HeaderMap::new());
    Ok(response)
}
