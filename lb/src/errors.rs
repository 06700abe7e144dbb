//! The balancer's own answers, when it cannot get one from a backend.
//!
//! They are JSON in the same `{"error","message"}` shape the shop uses, so a
//! client (and the shop page's JavaScript) handles a balancer failure the
//! same way as any other API error. A client's own mistake is a 4xx, the
//! balancer's or a backend's trouble a 5xx; a 503 says when to come back
//! (`Retry-After`). No message names an internal address: those go to the
//! balancer's log.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::ProxyBody;

/// Everything the balancer itself may answer with.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// 503 `no_backend_available`: no backend takes requests right now.
    #[error("no backend is available to serve this request")]
    NoBackendAvailable,
    /// 503 `backend_busy`: the backend's slots are all taken and its queue
    /// is full, or the request waited in it too long.
    #[error("backend `{backend}` is busy ({why}); please try again in a moment")]
    BackendBusy { backend: String, why: &'static str },
    /// 503 `balancer_overloaded`: the balancer could not open a connection
    /// (out of file descriptors or ports).
    #[error("the balancer is overloaded; please try again in a moment")]
    Overloaded,
    /// 502 `bad_gateway`: the chosen backend refused the connection, reset
    /// it, or sent something that is not HTTP.
    #[error("backend `{backend}` failed: {reason}")]
    BadGateway { backend: String, reason: String },
    /// 504 `gateway_timeout`: the backend did not answer within the
    /// request timeout.
    #[error("backend `{backend}` did not answer within {timeout_ms} ms")]
    GatewayTimeout { backend: String, timeout_ms: u128 },
    /// 400 `bad_request`: the request cannot be forwarded (two `Host`
    /// headers, a path that is not valid, a body that is not valid HTTP).
    #[error("{0}")]
    BadRequest(String),
    /// 405 `method_not_allowed`: `CONNECT`; this is no forward proxy.
    #[error("{0} is not allowed: this balancer is a reverse proxy, not a tunnel")]
    MethodNotAllowed(String),
    /// 408 `request_timeout`: the client did not send the body it declared
    /// in time.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u128 },
    /// 408 `request_timeout`: the client stopped sending its body half-way
    /// while the backend waited for the rest.
    #[error("the request body stopped coming in: nothing for {timeout_ms} ms")]
    UploadStalled { timeout_ms: u128 },
    /// 408 `request_timeout`: the client sent its body slower than the
    /// balancer allows, once the request timeout had passed.
    #[error(
        "the request body came in slower than {min_rate} bytes a second; send it faster, or in smaller requests"
    )]
    UploadTooSlow { min_rate: u64 },
}

impl LbError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoBackendAvailable | Self::BackendBusy { .. } | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout { .. } | Self::UploadStalled { .. } | Self::UploadTooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
        }
    }

    /// Whether the error is the chosen backend's trouble (unreachable, too
    /// slow, full), which counts against it on the dashboard, rather than
    /// the balancer's own or the client's.
    pub fn is_backends_fault(&self) -> bool {
        matches!(
            self,
            Self::BackendBusy { .. } | Self::BadGateway { .. } | Self::GatewayTimeout { .. }
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBackendAvailable => "no_backend_available",
            Self::BackendBusy { .. } => "backend_busy",
            Self::Overloaded => "balancer_overloaded",
            Self::BadGateway { .. } => "bad_gateway",
            Self::GatewayTimeout { .. } => "gateway_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTimeout { .. } | Self::UploadStalled { .. } | Self::UploadTooSlow { .. } => {
                "request_timeout"
            }
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = json_response(self.status(), self.code(), &self.to_string());
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An empty body (a 101's, a 204's).
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON `{"error","message"}` response.
pub fn json_response(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
