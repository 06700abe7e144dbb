//! Carts in Redis, under a server-side session.
//!
//! The shopper's cookie holds only a session id (`sid`, 22 characters, 128
//! random bits). The cart lives in Redis, which every instance reaches, so
//! any instance serves any request and an instance dying loses nothing.
//!
//! * **Where**: one Redis hash per session, `myclothes:session:<sha256(id)>`,
//!   holding `_born` and one field per SKU → quantity (a later stage adds
//!   fields of its own, `_`-prefixed). The key is a hash of the id, so
//!   someone who can read Redis (a backup, `MONITOR`, a support engineer)
//!   cannot lift live session ids out of it.
//! * **How**: every change is one Lua script (`cart.lua`), which Redis runs
//!   atomically: fifty concurrent "add one" requests make fifty, never
//!   fewer. The script also renews the idle expiry and returns the whole
//!   cart, so a request costs one round trip. (The alternative, read the
//!   cart, change it in Rust, write it back, loses updates under
//!   concurrency unless wrapped in WATCH/MULTI retries.) A plain read is
//!   `HGETALL` + `PEXPIRE`, pipelined: one round trip, no script. What
//!   Redis answers is read into a type once ([`answer::Answer`]).
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
use shop::{ApiError, CartReply, CartStore, Catalog, ids};

use crate::error::SessionError;
use answer::Answer;

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "sid";
/// Every session key starts with this.
pub const SESSION_KEY_PREFIX: &str = "myclothes:session:";
/// What happened to the session on this request: `resumed`, or
/// `new; reason=missing|malformed|unknown`.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session");
/// The field every session has: when it started (Redis's clock, unix
/// seconds). It keeps an empty session in existence.
const BORN: &str = "_born";

/// The cart script, loaded once; sent by its SHA-1 (`EVALSHA`) and only
/// sent whole when Redis does not know it yet (after a restart).
static CART_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("cart.lua")));
/// The login script: a session moved to a new id.
static ROTATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("rotate.lua")));

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
    /// The value of a `_`-prefixed session field, if it is set.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// Why this request got a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NewSession {
    Missing,
    Malformed,
    Unknown,
}

impl NewSession {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Missing => "new; reason=missing",
            Self::Malformed => "new; reason=malformed",
            Self::Unknown => "new; reason=unknown",
        })
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

    /// The Redis key of a session: a SHA-256 of its id, never the id.
    pub fn key_for(session_id: &str) -> String {
        format!(
            "{SESSION_KEY_PREFIX}{}",
            hex::encode(Sha256::digest(session_id.as_bytes()))
        )
    }

    /// Ends the session the request names, for good: its data is deleted,
    /// and the same id will be treated as unknown from now on. Returns the
    /// cookie that removes `sid` from the browser.
    pub async fn end(&self, cookies: &CookieJar) -> Result<Cookie<'static>, ApiError> {
        if let Some(id) = presented_id(cookies) {
            let mut redis = self.redis.clone();
            let mut command = redis::cmd("DEL");
            command.arg(Self::key_for(id));
            self.within_timeout(command.query_async::<i64>(&mut redis))
                .await?;
            tracing::info!(session = %ids::redacted(id), "session ended");
        }
        let mut cookie = shop_cookie(SESSION_COOKIE, String::new(), self.settings.secure_cookies);
        cookie.make_removal();
        Ok(cookie)
    }

    /// The session the request names, if Redis knows it, with the values of
    /// the session fields `fields` (`_`-prefixed names). No session, or an
    /// unknown one, is `None`: nothing is created.
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
        command.arg(Self::key_for(id)).arg(BORN).arg(fields);
        let values: Vec<Option<String>> =
            self.within_timeout(command.query_async(&mut redis)).await?;
        let mut values = values.into_iter();
        // `_born` is in every session: without it, there is no session.
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
    /// `pairs` on it, atomically (`rotate.lua`); returns the new `sid`
    /// cookie. Called at login: whoever knew the old id (planted before
    /// login, the oldest session-fixation trick) knows nothing now. Without
    /// a session, a new one is started.
    pub async fn rotate(
        &self,
        cookies: &CookieJar,
        pairs: &[(&str, &str)],
    ) -> Result<Cookie<'static>, ApiError> {
        let old = presented_id(cookies)
            .map(Self::key_for)
            .unwrap_or_else(|| format!("{SESSION_KEY_PREFIX}none"));
        let id = new_id()?;
        let mut invocation = ROTATE_SCRIPT.key(old);
        invocation.key(Self::key_for(&id)).arg(self.ttl_ms());
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

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// A read of a known session: `HGETALL` and `PEXPIRE`, pipelined (one
    /// round trip). Reads are most requests, and two plain commands cost
    /// Redis about half what the script does, which is needed only where a
    /// rule must be checked and applied atomically.
    async fn read_and_renew(&self, session_id: &str) -> Result<Answer, ApiError> {
        let key = Self::key_for(session_id);
        let mut redis = self.redis.clone();
        let (fields, renewed): (Vec<(String, String)>, bool) = self
            .within_timeout(
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.ttl_ms())
                    .query_async(&mut redis),
            )
            .await?;
        // No key (PEXPIRE answers 0): an unknown or expired session.
        Ok(if renewed {
            Answer::Session(fields)
        } else {
            Answer::Unknown
        })
    }

    /// Runs the cart script for one session.
    async fn run_script(
        &self,
        session_id: &str,
        mode: Mode,
        op: &CartOp,
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
        let mut redis = self.redis.clone();
        let mut invocation = CART_SCRIPT.key(Self::key_for(session_id));
        invocation
            .arg(mode)
            .arg(name)
            .arg(sku)
            .arg(qty)
            .arg(self.ttl_ms())
            .arg(MAX_LINES)
            .arg(MAX_QTY);
        self.within_timeout(invocation.invoke_async::<Answer>(&mut redis))
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
                Err(SessionError::StoreUnavailable.into())
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.settings.timeout.as_millis(),
                    "session store did not answer in time"
                );
                Err(SessionError::StoreUnavailable.into())
            }
        }
    }
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
            let answer = if op == CartOp::View {
                self.read_and_renew(id).await?
            } else {
                self.run_script(id, Mode::Resume, &op).await?
            };
            if answer != Answer::Unknown {
                return reply(answer, None);
            }
            tracing::debug!(session = %ids::redacted(id), "unknown session id; starting a new one");
            new = Some(NewSession::Unknown);
        }
        // A new session under an id we make, never one the client chose.
        let id = new_id()?;
        let answer = self.run_script(&id, Mode::Create, &op).await?;
        let cookie = self.new_cookie(id);
        reply(answer, new.map(|reason| (reason, cookie)))
    }
}

/// Turns the script's answer into a reply, or the refusal into an error.
fn reply(
    answer: Answer,
    new: Option<(NewSession, Cookie<'static>)>,
) -> Result<CartReply, ApiError> {
    let fields = match answer {
        Answer::Session(fields) => fields,
        Answer::CartFull => return Err(CartError::CartFull.into()),
        Answer::LineFull(total) => {
            return Err(ApiError::BadQuantity(format!(
                "that would make {total} of one item: each line holds at most {MAX_QTY}"
            )));
        }
        Answer::Unknown | Answer::Taken => {
            tracing::error!(?answer, "the cart script refused a new session");
            return Err(ApiError::Internal);
        }
    };
    let mut reply = CartReply::new(cart_from_fields(fields)?);
    let state = new
        .as_ref()
        .map_or(HeaderValue::from_static("resumed"), |(reason, _)| {
            reason.header()
        });
    reply.headers.insert(SESSION_HEADER, state);
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
fn cart_from_fields(fields: Vec<(String, String)>) -> Result<Cart, ApiError> {
    let catalog = Catalog::get();
    let mut lines = Vec::new();
    for (field, value) in fields {
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
