//! A client for a balancer that terminates TLS with a self-signed
//! certificate (`up --tls`): it trusts exactly that certificate, checks it
//! is valid for `localhost`, and speaks HTTP/1.1 over the TLS stream.
//!
//! Not reqwest: its TLS backends would add a second TLS stack (or a
//! platform verifier) to every test build; tokio-rustls and hyper are in
//! the build already, through `lb`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long any step (connect, handshake, answer) may take.
const STEP: Duration = Duration::from_secs(10);

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request to `url` (`https://127.0.0.1:PORT/path`) over a new
/// TLS connection that trusts only `certificate_pem`; panics on failure.
pub async fn request(
    url: &str,
    certificate_pem: &str,
    method: Method,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let rest = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{url} is not an https:// URL"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let tcp = step("connecting", TcpStream::connect(authority))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {authority}: {e}"));
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = step(
        "the TLS handshake",
        connector(certificate_pem).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("the TLS handshake with {authority} failed: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    let response = step("the answer", sender.send_request(request))
        .await
        .expect("an answer over TLS");
    let (head, body) = response.into_parts();
    let body = step("the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    Answer {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A TLS connector that trusts the certificates in `pem` and nothing else.
fn connector(pem: &str) -> TlsConnector {
    let config = lb::tls::client_config_trusting(pem).expect("a PEM certificate");
    TlsConnector::from(Arc::new(config))
}

async fn step<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {} s", STEP.as_secs()))
}
