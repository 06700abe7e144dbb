//! The balancer's own pages and API under `/_lb/` (with `--admin`).
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_lb/` | the dashboard: health, load and (under `stageN up`) instance controls |
//! | `GET /_lb/backends` | `[{"name","url","state","in_flight","served","last_check_ms"}]` |
//! | `POST /_lb/backends {"name","url"}` | add a backend (201; 409 if the name is taken) |
//! | `POST /_lb/backends/{name}/drain` | stop sending it new shoppers |
//! | `DELETE /_lb/backends/{name}` | remove it |
//! | `GET /_lb/metrics` | Prometheus text format |
//! | `GET /_lb/config` | policy, stickiness, whether instance controls exist |
//! | `POST /_lb/instances`, `POST /_lb/instances/{name}/kill` · `/restart` | with a [`Supervisor`](crate::supervisor::Supervisor) only |
//!
//! Only clients on the loopback interface may use it: adding a backend
//! decides where the balancer sends traffic, and must not be open to the
//! shoppers the balancer serves. (A production balancer puts its admin API
//! on a separate, private listener; HAProxy's stats socket, Envoy's admin
//! port.)

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

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
    pub served: u64,
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

/// Whether `path` belongs to the admin API.
pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/_lb/")
}

/// Serves one admin request.
pub async fn handle(
    balancer: &Balancer,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    if !client.ip().is_loopback() {
        return json_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the balancer's admin API is only open to this machine",
        );
    }
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, []) => html(DASHBOARD),
        (&Method::GET, ["config"]) => json(StatusCode::OK, &config(balancer)),
        (&Method::GET, ["metrics"]) => text(metrics::render(balancer)),
        (&Method::GET, ["backends"]) => {
            let views: Vec<_> = balancer
                .backends()
                .all()
                .iter()
                .map(|b| BackendView::of(b))
                .collect();
            json(StatusCode::OK, &views)
        }
        (&Method::POST, ["backends"]) => add_backend(balancer, request).await,
        (&Method::POST, ["backends", name, "drain"]) => match balancer.backends().get(name) {
            Some(backend) => {
                backend.drain();
                tracing::info!(backend = backend.name(), "draining");
                json(StatusCode::OK, &BackendView::of(&backend))
            }
            None => unknown_backend(name),
        },
        (&Method::DELETE, ["backends", name]) => match balancer.backends().remove(name) {
            Ok(backend) => {
                tracing::info!(backend = backend.name(), "removed");
                json(StatusCode::OK, &BackendView::of(&backend))
            }
            Err(_) => unknown_backend(name),
        },
        (&Method::POST, ["instances"]) => add_instance(balancer).await,
        (&Method::POST, ["instances", name, action @ ("kill" | "restart")]) => {
            control_instance(balancer, name, action).await
        }
        (
            _,
            ["config" | "metrics" | "backends"]
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
    })
}

async fn add_backend(balancer: &Balancer, request: Request<Incoming>) -> Response<ProxyBody> {
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
