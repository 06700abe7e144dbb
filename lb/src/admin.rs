//! The balancer's own pages and API under `/_lb/` (with `--admin`).
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_lb/` | the dashboard: health, load, a live chart of requests and errors per second, and (under `stageN up`) instance controls |
//! | `GET /_lb/backends` | `[{"name","url","state","in_flight","served","errors","tunnels","reported_load","last_check_ms"}]`; `served` and `errors` are cumulative counters since the backend was added (see [`BackendView`]) |
//! | `POST /_lb/backends {"name","url"}` | add a backend (201; 409 if the name is taken) |
//! | `POST /_lb/backends/{name}/drain` | stop sending it new shoppers |
//! | `DELETE /_lb/backends/{name}` | remove it |
//! | `GET /_lb/metrics` | Prometheus text format |
//! | `GET /_lb/config` | policy, stickiness, whether instance controls exist |
//! | `POST /_lb/instances`, `POST /_lb/instances/{name}/kill` · `/restart` | with a [`Supervisor`](crate::supervisor::Supervisor) only |
//! | `POST /_lb/zones/{zone}/down` · `/up` | with a supervisor that placed its instances in zones |
//! | `GET /_lb/scaling` | with a supervisor that scales on its own: [`ScalingView`](crate::supervisor::ScalingView) |
//!
//! Adding a backend decides where the balancer sends traffic (and the
//! shoppers' cookies), so the API is closed the way routers' and
//! databases' admin pages are ([`AdminAccess`]):
//!
//! * only clients on this machine (loopback, IPv4-mapped included);
//! * only requests *addressed* to this machine (`Host: 127.0.0.1…`,
//!   `localhost…`, `[::1]…`): a web page that points its own domain at
//!   127.0.0.1 (DNS rebinding) sends its own name as `Host`;
//! * no requests from another site's page (`Origin` must match `Host`;
//!   `Sec-Fetch-Site` must be `same-origin` or `none`);
//! * changes only with `Content-Type: application/json` (a cross-site form
//!   cannot send that without a CORS preflight, which is never granted) and
//!   the per-run admin token (`Authorization: Bearer …`), which only the
//!   dashboard link on the launcher's banner carries;
//! * backends added at run time only on this machine, unless the balancer
//!   was started with `--allow-remote-backends`.
//!
//! (A production balancer puts its admin API on a separate, private
//! listener, often a Unix socket: HAProxy's stats socket, Envoy's admin
//! port.)

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::backend::{Backend, BackendSetError, BackendSpec, BackendState};
use crate::body::ProxyBody;
use crate::errors::json_response;
use crate::metrics;
use crate::proxy::Balancer;

/// The prefix of every admin route.
pub const PREFIX: &str = "/_lb";

const DASHBOARD: &str = include_str!("dashboard.html");
const BODY_LIMIT: usize = 16 * 1024;

/// A backend as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct BackendView {
    pub name: String,
    pub url: String,
    pub state: String,
    pub in_flight: usize,
    /// Responses produced for it, whatever their status (the balancer's
    /// own 502/503/504 on its behalf included).
    pub served: u64,
    /// Failed attempts on its account: its 5xx answers, and the times it
    /// could not be reached, was too slow or was full (also when the
    /// request was then retried elsewhere). See [`Backend::errors`].
    /// Cumulative, like `served`: the dashboard turns both into rates
    /// (the difference between two polls over the time between them).
    pub errors: u64,
    /// Open tunnels (WebSockets).
    pub tunnels: usize,
    /// The load it reported at its last health check.
    pub reported_load: Option<u64>,
    /// How long the last health check took, in ms (`null` before the first).
    pub last_check_ms: Option<u64>,
}

impl BackendView {
    pub fn of(backend: &Backend) -> Self {
        let url = backend.url().to_string();
        Self {
            name: backend.name().to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            state: match backend.state() {
                BackendState::Up => "up",
                BackendState::Down => "down",
                BackendState::Draining => "draining",
            }
            .to_owned(),
            in_flight: backend.in_flight(),
            served: backend.served(),
            errors: backend.errors(),
            tunnels: backend.tunnels(),
            reported_load: backend.reported_load(),
            last_check_ms: backend.last_check_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    name: String,
    url: String,
}

/// The shortest admin token accepted.
const MIN_TOKEN_CHARS: usize = 16;

/// Why an admin token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("the admin token must be at least {MIN_TOKEN_CHARS} characters")]
    TooShort,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// Who may use the admin API, and what it may add.
#[derive(Clone)]
pub struct AdminAccess {
    token: String,
    allow_remote_backends: bool,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("allow_remote_backends", &self.allow_remote_backends)
            .finish_non_exhaustive()
    }
}

impl AdminAccess {
    /// With `token`, or a fresh random one (128 bits from the OS).
    pub fn new(
        token: Option<String>,
        allow_remote_backends: bool,
    ) -> Result<Self, AdminTokenError> {
        let token = match token {
            Some(token) if token.chars().count() < MIN_TOKEN_CHARS => {
                return Err(AdminTokenError::TooShort);
            }
            Some(token) => token,
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| AdminTokenError::Random(e.to_string()))?;
                URL_SAFE_NO_PAD.encode(bytes)
            }
        };
        Ok(Self {
            token,
            allow_remote_backends,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `presented` is the token, compared in constant time (by
    /// their HMACs under a key of the day: equal inputs, equal tags).
    fn accepts(&self, presented: &str) -> bool {
        let tag = |text: &str| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.token.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
            mac.update(text.as_bytes());
            mac
        };
        let expected = tag(&self.token).finalize().into_bytes();
        tag(presented).verify_slice(&expected).is_ok()
    }
}

/// Whether `path` belongs to the admin API.
pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/_lb/")
}

/// Whether a `Host` header names this machine: an IP literal on loopback,
/// or `localhost`, with any port.
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        // `127.0.0.1:8080`, `localhost:8080`
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The checks every admin request passes (see the module's docs), and for
/// a change the token and the content type. `Err` is the refusal to send.
fn admitted(
    access: &AdminAccess,
    client: SocketAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), Box<Response<ProxyBody>>> {
    let forbidden = |why: &str| Box::new(json_response(StatusCode::FORBIDDEN, "forbidden", why));
    if !client.ip().to_canonical().is_loopback() {
        return Err(forbidden(
            "the balancer's admin API is only open to this machine",
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if headers.get_all(header::HOST).iter().count() != 1 || !host_is_local(host) {
        return Err(forbidden(
            "the admin API answers only requests addressed to this machine (Host: 127.0.0.1, localhost or [::1])",
        ));
    }
    if !crate::headers::origin_matches_host(headers) {
        return Err(forbidden(
            "the admin API does not answer other sites' pages",
        ));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|site| site != "same-origin" && site != "none") {
        return Err(forbidden(
            "the admin API does not answer other sites' pages",
        ));
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|token| access.accepts(token.trim())) {
        let mut refused = json_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "changes need the admin token (Authorization: Bearer …): open the dashboard from the link the balancer printed when it started",
        );
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(refused));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(Box::new(json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "changes must be sent with Content-Type: application/json",
        )));
    }
    Ok(())
}

/// Serves one admin request.
pub async fn handle(
    balancer: &Balancer,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(access) = balancer.admin_access() else {
        return json_response(StatusCode::NOT_FOUND, "not_found", "the admin API is off");
    };
    if let Err(refusal) = admitted(access, client, request.method(), request.headers()) {
        crate::body::linger(request.into_body());
        return *refusal;
    }
    let allow_remote_backends = access.allow_remote_backends;
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, []) => html(DASHBOARD),
        (&Method::GET, ["config"]) => json(StatusCode::OK, &config(balancer)),
        (&Method::GET, ["metrics"]) => text(metrics::render(balancer)),
        (&Method::GET, ["scaling"]) => match balancer.supervisor().and_then(|s| s.scaling()) {
            Some(view) => json(StatusCode::OK, &view),
            None => json_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no auto scaling group here (start with --autoscale MIN..MAX)",
            ),
        },
        (&Method::GET, ["backends"]) => {
            let views: Vec<_> = balancer
                .backends()
                .all()
                .iter()
                .map(|b| BackendView::of(b))
                .collect();
            json(StatusCode::OK, &views)
        }
        (&Method::POST, ["backends"]) => {
            add_backend(balancer, request, allow_remote_backends).await
        }
        (&Method::POST, ["backends", name, "drain"]) => match balancer.backends().get(name) {
            Some(backend) => {
                backend.drain();
                tracing::info!(backend = backend.name(), "draining");
                json(StatusCode::OK, &BackendView::of(&backend))
            }
            None => unknown_backend(name),
        },
        (&Method::DELETE, ["backends", name]) => match balancer.remove_backend(name) {
            Ok(backend) => json(StatusCode::OK, &BackendView::of(&backend)),
            Err(_) => unknown_backend(name),
        },
        (&Method::POST, ["instances"]) => add_instance(balancer).await,
        (&Method::POST, ["instances", name, action @ ("kill" | "restart")]) => {
            control_instance(balancer, name, action).await
        }
        (&Method::POST, ["zones", zone, action @ ("down" | "up")]) => {
            control_zone(balancer, zone, *action == "up").await
        }
        (
            _,
            ["config" | "metrics" | "backends" | "scaling"]
            | []
            | ["backends", _]
            | ["backends", _, "drain"]
            | ["instances"],
        ) => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("there is nothing at {path}"),
        ),
    }
}

fn config(balancer: &Balancer) -> serde_json::Value {
    serde_json::json!({
        "policy": balancer.policy(),
        "sticky": balancer.sticky().is_some(),
        "sticky_ttl_s": balancer.sticky().map(|s| s.ttl().as_secs()),
        "controls": balancer.supervisor().is_some(),
        "zones": balancer.supervisor().map(|s| s.zones()).unwrap_or_default(),
        "autoscaling": balancer.supervisor().is_some_and(|s| s.scaling().is_some()),
    })
}

async fn add_backend(
    balancer: &Balancer,
    request: Request<Incoming>,
    allow_remote_backends: bool,
) -> Response<ProxyBody> {
    let body = match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is over 16 KiB",
            );
        }
    };
    let new: NewBackend = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                &format!("expected {{\"name\",\"url\"}}: {e}"),
            );
        }
    };
    let spec = match BackendSpec::new(&new.name, &new.url) {
        Ok(spec) if !allow_remote_backends && !spec.is_loopback() => {
            let refused = crate::BackendSpecError::NotLoopback(new.url);
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_backend",
                &refused.to_string(),
            );
        }
        Ok(spec) => spec,
        Err(e) => {
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_backend",
                &e.to_string(),
            );
        }
    };
    added(balancer, spec)
}

fn added(balancer: &Balancer, spec: BackendSpec) -> Response<ProxyBody> {
    match balancer.backends().add(spec) {
        Ok(backend) => {
            tracing::info!(backend = backend.name(), url = %backend.url(), "added");
            json(StatusCode::CREATED, &BackendView::of(&backend))
        }
        Err(e @ BackendSetError::DuplicateName(_)) => {
            json_response(StatusCode::CONFLICT, "duplicate_backend", &e.to_string())
        }
        Err(e) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_backend",
            &e.to_string(),
        ),
    }
}

async fn add_instance(balancer: &Balancer) -> Response<ProxyBody> {
    let Some(supervisor) = balancer.supervisor() else {
        return no_supervisor();
    };
    match supervisor.add().await {
        Ok(spec) => added(balancer, spec),
        Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, "instance_failed", &e),
    }
}

async fn control_instance(balancer: &Balancer, name: &str, action: &str) -> Response<ProxyBody> {
    let Some(supervisor) = balancer.supervisor() else {
        return no_supervisor();
    };
    let outcome = if action == "kill" {
        supervisor.kill(name).await
    } else {
        supervisor.restart(name).await
    };
    match outcome {
        Ok(()) => {
            tracing::info!(instance = name, action, "instance control");
            json(
                StatusCode::OK,
                &serde_json::json!({ "instance": name, "done": action }),
            )
        }
        Err(e) => json_response(StatusCode::UNPROCESSABLE_ENTITY, "instance_failed", &e),
    }
}

async fn control_zone(balancer: &Balancer, zone: &str, up: bool) -> Response<ProxyBody> {
    let Some(supervisor) = balancer.supervisor() else {
        return no_supervisor();
    };
    match supervisor.set_zone(zone, up).await {
        Ok(done) => {
            tracing::warn!(zone, up, "zone control");
            json(
                StatusCode::OK,
                &serde_json::json!({ "zone": zone, "up": up, "done": done }),
            )
        }
        Err(e) => json_response(StatusCode::UNPROCESSABLE_ENTITY, "zone_failed", &e),
    }
}

fn no_supervisor() -> Response<ProxyBody> {
    json_response(
        StatusCode::NOT_FOUND,
        "no_instance_controls",
        "this balancer was not started by a launcher, so it cannot start or stop instances",
    )
}

fn unknown_backend(name: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::NOT_FOUND,
        "unknown_backend",
        &format!("no backend named `{name}`"),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", Bytes::from(body)),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

fn html(page: &'static str) -> Response<ProxyBody> {
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(page.as_bytes()),
    )
}

fn text(body: String) -> Response<ProxyBody> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_on_this_machine_are_local() {
        for local in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "127.0.0.1",
        ] {
            assert!(host_is_local(local), "{local}");
        }
        for foreign in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:80",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_is_local(foreign), "{foreign}");
        }
    }

    #[test]
    fn the_token_is_checked_whole() {
        let access =
            AdminAccess::new(Some("a-token-of-twenty-chars".into()), false).expect("token");
        assert!(access.accepts("a-token-of-twenty-chars"));
        assert!(!access.accepts("a-token-of-twenty-char"));
        assert!(!access.accepts(""));
        assert!(matches!(
            AdminAccess::new(Some("short".into()), false),
            Err(AdminTokenError::TooShort)
        ));
        let random = AdminAccess::new(None, false).expect("random token");
        assert!(random.token().len() >= MIN_TOKEN_CHARS);
    }
}
