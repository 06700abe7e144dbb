//! The balancer's own answers, when it cannot get one from a backend.
//!
//! They are JSON in the same `{"error","message"}` shape the shop uses, so a
//! client (and the shop page's JavaScript) handles a balancer failure the
//! same way as any other API error.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::ProxyBody;

/// Everything the balancer itself may answer with.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// 503: no backend takes requests right now.
    #[error("no backend is available to serve this request")]
    NoBackendAvailable,
    /// 502: the chosen backend refused the connection, reset it, or sent
    /// something that is not HTTP.
    #[error("backend `{backend}` failed: {reason}")]
    BadGateway { backend: String, reason: String },
    /// 504: the backend did not answer within the request timeout.
    #[error("backend `{backend}` did not answer within {timeout_ms} ms")]
    GatewayTimeout { backend: String, timeout_ms: u128 },
    /// 400: the request cannot be forwarded (e.g. a path that is not valid).
    #[error("{0}")]
    BadRequest(String),
}

impl LbError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoBackendAvailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBackendAvailable => "no_backend_available",
            Self::BadGateway { .. } => "bad_gateway",
            Self::GatewayTimeout { .. } => "gateway_timeout",
            Self::BadRequest(_) => "bad_request",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        json_response(self.status(), self.code(), &self.to_string())
    }
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
