//! Server-side sessions: what a session is, the same in every store.
//!
//! The shopper's cookie holds only a session id (`sid`, 22 characters, 128
//! random bits). The cart lives in a store every instance reaches (Redis
//! by default; see [`crate::stores`] for the others), so any instance
//! serves any request and an instance dying loses nothing.
//!
//! This module is the part no store changes:
//!
//! * **New sessions**: only a change starts one (as Django and Rails do):
//!   reading without a session answers the empty cart and stores nothing,
//!   so a flood of cookie-less reads costs the store nothing. An id the
//!   server does not know (expired, ended, evicted, made up) is never
//!   adopted: a change gets a fresh id. Adopting it would let an attacker
//!   plant an id in a victim's browser and then share the victim's session
//!   (session fixation).
//! * **Where**: a store keeps a session under a SHA-256 of its id
//!   ([`digest`]), never the id, so someone who can read the store (a
//!   backup, `MONITOR`, a support engineer) cannot lift live session ids
//!   out of it.
//! * **Retries**: a change sent with an `Idempotency-Key` is recorded with
//!   its result for [`APPLIED_FOR`], in the same atomic step as the change;
//!   the same key again is answered with that result
//!   (`Idempotent-Replayed: true`) and changes nothing.
//! * **Failure**: a store that does not answer within the store timeout
//!   gives 503 `session_store_unavailable` at once, never an empty cart
//!   ([`crate::error::SessionError`]). A change that timed out was sent,
//!   and may still be applied when the store wakes up; the 503 says so,
//!   and that retrying with the same key is safe.
//!
//! What differs per store (how a change stays atomic, how the idle expiry
//! slides, what survives a restart) is behind [`SessionStore`].
//!
//! A stored cart lists its lines in catalog order (the same on every
//! instance and in every store) rather than in the order they were added.

mod answer;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::SessionError;
use axum::http::{HeaderName, HeaderValue};
use cookie::{Cookie, CookieJar};
use sha2::{Digest, Sha256};
use shop::cart::{Cart, CartError, CartLine, CartOp, MAX_QTY};
use shop::cookies::shop_cookie;
use shop::{ApiError, CartReply, CartRequest, Catalog, IdempotencyKey, ids};

pub use crate::stores::redis::{
    CART_KEY_PREFIX, ConnectError, RedisSessions, SESSION_KEY_PREFIX, Session, SessionKeys,
};
pub(crate) use answer::Answer;

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "sid";
/// What happened to the session on this request: `resumed`;
/// `new; reason=missing|malformed|unknown` (a change started one); or
/// `none; reason=…` (a read without one: nothing was stored).
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session");
/// Set on the answer to a change that was made before (same key).
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Which store holds the session, and its trade-off in a few words.
pub const STORE_HEADER: HeaderName = HeaderName::from_static("x-session-store");
/// A read renews the session's idle expiry only once it has run down by
/// this much (or by half, for a lifetime under two minutes): reads stay
/// reads, and the expiry still slides.
pub const RENEW_AFTER: Duration = Duration::from_secs(60);

/// How long a change's idempotency key is remembered. A retry comes within
/// seconds of the first try; a day (Stripe's choice) would cost memory for
/// nothing here.
pub const APPLIED_FOR: Duration = Duration::from_secs(10 * 60);

/// How many idempotency keys a store that keeps them inside the session's
/// own record (Memcached, DynamoDB) remembers at least: the newest, each
/// for [`APPLIED_FOR`]. Without a bound the record would grow with every
/// change of a long-lived session (a bot's, or a tab left adding) until
/// the store's size limit refused every change. A retry comes right after
/// its first try, sixteen changes later is long past it.
pub const REMEMBERED_KEYS: usize = 16;

/// How sessions behave, in every store.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Idle lifetime, renewed by every change, and by a read once it has
    /// run down by [`RENEW_AFTER`].
    pub ttl: Duration,
    /// How long a request waits for the store before answering 503.
    pub timeout: Duration,
    /// Mark the `sid` cookie `Secure`.
    pub secure_cookies: bool,
}

impl SessionSettings {
    /// After how long a read renews the idle expiry: [`RENEW_AFTER`], or
    /// half the lifetime when that is shorter (a test's, a demo's).
    pub(crate) fn renew_after(&self) -> Duration {
        RENEW_AFTER.min(self.ttl / 2)
    }
}

/// Whether a change may start a session or must find one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The session must exist.
    Resume,
    /// The session must not exist yet.
    Create,
}

/// Where sessions are kept: the four things a store must do. Everything
/// else (cookies, ids, headers, notices) is this module's, the same for
/// every store.
pub(crate) trait SessionStore: Send + Sync {
    /// The settings the store was made with.
    fn settings(&self) -> &SessionSettings;

    /// The store's name and its trade-off, for the `X-Session-Store`
    /// header: `redis; durable (AOF), atomic by Lua`.
    fn label(&self) -> &'static str;

    /// The cart of a known session ([`Answer::Cart`]), or
    /// [`Answer::Unknown`]. Writes nothing it need not: how the idle
    /// expiry slides is the store's own business.
    fn read(&self, id: &str) -> impl Future<Output = Result<Answer, ApiError>> + Send;

    /// Applies one change to one session atomically (the rules checked and
    /// the change made as one step no concurrent request can split), renews
    /// the idle expiry, and records the answer under `key` in the same
    /// step. [`Mode::Create`] makes the session, and answers
    /// [`Answer::Taken`] if its key exists already.
    fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Answer, ApiError>> + Send;

    /// Deletes a session and its cart for good.
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// The name a store keeps a session under: the SHA-256 of its id, in hex.
pub(crate) fn digest(session_id: &str) -> String {
    hex::encode(Sha256::digest(session_id.as_bytes()))
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

/// One cart request against `store`: the [`shop::CartStore`] of every
/// session store.
pub(crate) async fn apply<S: SessionStore>(
    store: &S,
    request: CartRequest<'_>,
) -> Result<CartReply, ApiError> {
    let CartRequest { cookies, op, key } = request;
    let presented = cookies.get(SESSION_COOKIE).map(Cookie::value);
    let mut missing = match presented {
        None => Some(NoSession::Missing),
        Some(id) if !ids::is_well_formed(id) => Some(NoSession::Malformed),
        Some(_) => None,
    };
    // The common case: a known session, one call to the store.
    if missing.is_none()
        && let Some(id) = presented
    {
        let answer = if op == CartOp::View {
            store.read(id).await?
        } else {
            store.change(id, Mode::Resume, &op, key).await?
        };
        if answer != Answer::Unknown {
            return reply(store, answer, Resumed::Yes);
        }
        tracing::debug!(session = %ids::redacted(id), "unknown session id");
        missing = Some(NoSession::Unknown);
    }
    let why = missing.unwrap_or(NoSession::Missing);
    // A read needs no session: the empty cart, and nothing stored.
    if op == CartOp::View {
        return reply(store, Answer::Cart(Vec::new()), Resumed::No(why, None));
    }
    // A change starts a session, under an id we make, never one the
    // client chose.
    let id = new_id()?;
    let answer = store.change(&id, Mode::Create, &op, key).await?;
    let cookie = new_cookie(store.settings(), id);
    reply(store, answer, Resumed::No(why, Some(cookie)))
}

/// Ends the session the request names, for good: its data is deleted, and
/// the same id will be treated as unknown from now on. Returns the cookie
/// that removes `sid` from the browser.
pub(crate) async fn end<S: SessionStore>(
    store: &S,
    cookies: &CookieJar,
) -> Result<Cookie<'static>, ApiError> {
    if let Some(id) = presented_id(cookies) {
        store.delete(id).await?;
        tracing::info!(session = %ids::redacted(id), "session ended");
    }
    let mut cookie = shop_cookie(
        SESSION_COOKIE,
        String::new(),
        store.settings().secure_cookies,
    );
    cookie.make_removal();
    Ok(cookie)
}

/// The `sid` cookie for a new id.
pub(crate) fn new_cookie(settings: &SessionSettings, id: String) -> Cookie<'static> {
    let mut cookie = shop_cookie(SESSION_COOKIE, id, settings.secure_cookies);
    // No Max-Age: the browser forgets the id when it closes; the server
    // forgets the session after the idle TTL, whichever comes first.
    cookie.set_max_age(None);
    cookie
}

/// The id the request's cookie names, if it has the shape of one.
pub(crate) fn presented_id(cookies: &CookieJar) -> Option<&str> {
    cookies
        .get(SESSION_COOKIE)
        .map(Cookie::value)
        .filter(|id| ids::is_well_formed(id))
}

/// A new session id, from the OS random source.
pub(crate) fn new_id() -> Result<String, ApiError> {
    ids::random_id().map_err(|error| {
        tracing::error!(%error, "no session id");
        ApiError::Internal
    })
}

/// Whether the request had a session of its own.
enum Resumed {
    Yes,
    /// No: why not, and the cookie of the one a change started.
    No(NoSession, Option<Cookie<'static>>),
}

/// Turns the store's answer into a reply, or the refusal into an error.
fn reply<S: SessionStore>(
    store: &S,
    answer: Answer,
    resumed: Resumed,
) -> Result<CartReply, ApiError> {
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
            tracing::error!(?answer, "the store refused a new session");
            return Err(ApiError::Internal);
        }
    };
    let mut reply = CartReply::new(cart_from_lines(lines)?);
    reply
        .headers
        .insert(STORE_HEADER, HeaderValue::from_static(store.label()));
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
                    "Your session had ended or expired (or the session store forgot it), so your cart starts empty again."
                        .to_owned(),
                );
            }
            reply.cookies.extend(started);
        }
    }
    Ok(reply)
}

/// Builds the cart from stored `(SKU, quantity)` pairs. A line whose SKU
/// has left the catalog is skipped (and logged).
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
    // The store enforces the rules, so this cannot fail unless someone
    // edited it by hand; then say so rather than show an empty cart.
    Cart::from_lines(lines.into_iter().map(|(_, line)| line)).map_err(|error| {
        tracing::error!(%error, "a stored cart breaks the cart rules");
        ApiError::Internal
    })
}

/// Round trips to the session store (and its cache) since this instance
/// started, counted by each store where it talks to its server. `/metrics`
/// shows it; `scripts/bench-stage4` divides it by the requests served.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// Counts one round trip to the store (a command, a pipeline, a statement,
/// an HTTP call: whatever waits for one answer).
pub(crate) fn round_trip() {
    ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
}

/// Round trips to the session store so far ([`round_trip`]).
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

/// What a call to the store was for, which decides what its failure means.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    /// Nothing was changed, whatever happened.
    Read,
    /// A change was sent; if no answer came, it may still be applied.
    Change,
}

/// Waits for a store's `call` at most `timeout`. Any failure becomes a 503,
/// worded for what was asked (a change that got no answer may still land
/// later, so its 503 says a retry with the same key is safe); `is_full`
/// picks out the store's own "no room" answer, 503 `session_store_full`.
/// Every store goes through here, so a slow store is a fast answer whichever
/// it is.
pub(crate) async fn within_timeout<T, E: std::fmt::Display>(
    timeout: Duration,
    purpose: Purpose,
    call: impl Future<Output = Result<T, E>>,
    is_full: impl FnOnce(&E) -> bool,
) -> Result<T, ApiError> {
    let unavailable = || match purpose {
        Purpose::Read => SessionError::StoreUnavailable,
        Purpose::Change => SessionError::ChangeUnconfirmed,
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) if is_full(&error) => {
            tracing::error!(%error, "the session store is full");
            Err(SessionError::StoreFull.into())
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "session store failed");
            Err(unavailable().into())
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = timeout.as_millis(),
                "session store did not answer in time"
            );
            Err(unavailable().into())
        }
    }
}
