//! HTTPS at the balancer: a real TLS client (rustls, trusting only the
//! balancer's own certificate) through the real `lb` to real HTTP backends.
//! The lesson: the shopper's connection is encrypted up to the balancer,
//! the backends are told so, and plain HTTP is turned away or redirected.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, LOCATION, SET_COOKIE, STRICT_TRANSPORT_SECURITY};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lb::{Config, Policy, Sticky, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{TestLb, backend, balancer_from, closed_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Every network step of these tests finishes within this, or fails.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

/// A TLS balancer with a self-signed certificate for localhost, in front
/// of `config`'s backends.
async fn tls_balancer(mut config: Config) -> TestLb {
    config.health = None;
    config.tls = Some(TlsSettings::self_signed_for_localhost());
    balancer_from(config).await
}

fn config(backends: &[&support::TestBackend]) -> Config {
    let mut config = Config::new(
        backends.iter().map(|b| b.spec()).collect(),
        Policy::RoundRobin,
    );
    config.health = None;
    config
}

/// A client that trusts the certificates in `pem`, and nothing else.
fn connector(pem: &str) -> TlsConnector {
    let config = lb::tls::client_config_trusting(pem).expect("a PEM certificate");
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr`, checking the certificate is valid for
/// `localhost` and issued by `trusted`.
async fn tls_connect(addr: SocketAddr, trusted: &str) -> TlsStream<TcpStream> {
    let tcp = within("connecting", TcpStream::connect(addr))
        .await
        .expect("connected");
    let name = ServerName::try_from("localhost").expect("a server name");
    within("the TLS handshake", connector(trusted).connect(name, tcp))
        .await
        .expect("the handshake succeeds with the balancer's certificate")
}

/// An HTTP/1.1 client on one TLS connection.
async fn https_client(stream: TlsStream<TcpStream>) -> SendRequest<Empty<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP over TLS");
    tokio::spawn(connection);
    sender
}

async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    lb: &TestLb,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, Bytes) {
    let mut request = Request::get(path).header(HOST, format!("localhost:{}", lb.addr.port()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).expect("a request");
    let response = within("the response", sender.send_request(request))
        .await
        .expect("a response over TLS");
    let (head, body) = response.into_parts();
    let body = within("the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    (Response::from_parts(head, ()), body)
}

/// One request on a new TLS connection.
async fn https_get(lb: &TestLb, path: &str, headers: &[(&str, &str)]) -> (Response<()>, Bytes) {
    let pem = lb.balancer.tls_certificate_pem().expect("TLS is on");
    let mut sender = https_client(tls_connect(lb.addr, pem).await).await;
    get(&mut sender, lb, path, headers).await
}

/// What the `/echo` backend saw, as JSON.
fn echoed(body: &Bytes) -> Value {
    serde_json::from_slice(body).expect("the echo backend's JSON")
}

#[tokio::test]
async fn https_requests_reach_the_backends_through_tls() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let lb = tls_balancer(config(&[&b1, &b2])).await;
    let pem = lb.balancer.tls_certificate_pem().expect("TLS is on");
    let stream = tls_connect(lb.addr, pem).await;
    let (_, session) = stream.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "HTTP/1.1 was agreed"
    );
    let served = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the balancer sent its certificate");
    assert_eq!(
        Some(lb::tls::fingerprint(served).as_str()),
        lb.balancer.tls_fingerprint(),
        "the fingerprint the balancer prints is the certificate's"
    );
    // Four requests on one connection: one handshake, round-robin behind.
    let mut sender = https_client(stream).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let (response, body) = get(&mut sender, &lb, "/whoami", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        names.push(String::from_utf8_lossy(&body).into_owned());
    }
    names.sort();
    assert_eq!(names, ["b1", "b1", "b2", "b2"]);
}

#[tokio::test]
async fn backends_are_told_the_shopper_used_https() {
    let b = backend("b1").await;
    let lb = tls_balancer(config(&[&b])).await;
    // A client's own claim is replaced, whatever it says.
    let (_, body) = https_get(&lb, "/echo", &[("x-forwarded-proto", "http")]).await;
    let seen = echoed(&body);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("localhost:{}", lb.addr.port())
    );

    let plain = balancer_from(config(&[&b])).await;
    let seen: Value = reqwest::Client::new()
        .get(plain.url("/echo"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("a response")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        seen["headers"]["x-forwarded-proto"], "http",
        "a plain-HTTP client claiming https is not believed"
    );
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_clear_error() {
    let b = backend("b1").await;
    let lb = tls_balancer(config(&[&b])).await;
    let response = within(
        "the refusal",
        reqwest::Client::new().get(lb.url("/api/cart?x=1")).send(),
    )
    .await
    .expect("a plain-HTTP answer, not a TLS alert");
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["connection"], "close");
    let error: Value = response.json().await.expect("a JSON body");
    assert_eq!(error["error"], "plain_http_to_https_port");
    let message = error["message"].as_str().expect("a message");
    assert_eq!(
        message,
        format!(
            "This port speaks HTTPS; use https://{}/api/cart?x=1",
            lb.addr
        )
    );
    assert_eq!(b.hits(), 0, "nothing plain reached a backend");
}

#[tokio::test]
async fn sticky_cookie_is_secure_only_over_tls() {
    let b = backend("b1").await;
    let sticky = |mut config: Config| {
        config.sticky = Some(Sticky::random(Duration::from_secs(60)).expect("a key"));
        config
    };
    let lb = tls_balancer(sticky(config(&[&b]))).await;
    let (response, _) = https_get(&lb, "/whoami", &[]).await;
    let cookie = response.headers()[SET_COOKIE].to_str().expect("ASCII");
    assert!(
        cookie.starts_with("lb_sticky=") && cookie.contains("; Secure"),
        "over TLS: {cookie}"
    );

    let plain = balancer_from(sticky(config(&[&b]))).await;
    let response = reqwest::get(plain.url("/whoami")).await.expect("response");
    let cookie = response.headers()[SET_COOKIE].to_str().expect("ASCII");
    assert!(
        cookie.starts_with("lb_sticky=") && !cookie.contains("Secure"),
        "over plain HTTP a Secure cookie would never come back: {cookie}"
    );
}

#[tokio::test]
async fn http_listener_redirects_to_https() {
    let b = backend("b1").await;
    let lb = tls_balancer(config(&[&b])).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(lb::redirect_to_https(listener, lb.addr.port(), async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = within(
        "the redirect",
        client
            .post(format!("http://{plain}/api/cart/items?from=ad"))
            .header("host", format!("localhost:{}", plain.port()))
            .send(),
    )
    .await
    .expect("a response");
    assert_eq!(
        response.status(),
        reqwest::StatusCode::PERMANENT_REDIRECT,
        "308 keeps the method and body"
    );
    let location = response.headers()[LOCATION.as_str()]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert_eq!(
        location,
        format!(
            "https://localhost:{}/api/cart/items?from=ad",
            lb.addr.port()
        ),
        "same host and path, the TLS port"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(b.hits(), 0, "plain HTTP reaches no backend");

    // The redirect leads to the shop, over TLS.
    let path = location
        .split_once(&format!(":{}", lb.addr.port()))
        .map(|(_, path)| path.replace("/api/cart/items", "/whoami"))
        .expect("a path");
    let (followed, body) = https_get(&lb, &path, &[]).await;
    assert_eq!(followed.status(), StatusCode::OK);
    assert_eq!(body, "b1");

    // HTTP/1.0 without a Host: nowhere to send it.
    let mut raw = within("connecting", TcpStream::connect(plain))
        .await
        .expect("connected");
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = String::new();
    within("the answer", raw.read_to_string(&mut answer))
        .await
        .expect("read");
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
    drop(stop);
}

#[tokio::test]
async fn hsts_is_off_unless_asked() {
    let b = backend("b1").await;
    let lb = tls_balancer(config(&[&b])).await;
    let (response, _) = https_get(&lb, "/whoami", &[]).await;
    assert!(
        !response.headers().contains_key(STRICT_TRANSPORT_SECURITY),
        "a learner's localhost must not be pinned to HTTPS by default"
    );

    let mut asked = config(&[&b]);
    asked.hsts = Some(Duration::from_secs(365 * 24 * 3600));
    let lb = tls_balancer(asked.clone()).await;
    let (response, _) = https_get(&lb, "/whoami", &[]).await;
    assert_eq!(
        response.headers()[STRICT_TRANSPORT_SECURITY],
        "max-age=31536000"
    );
    // On the balancer's own answers too: a 502 for a backend that is gone.
    let gone = lb::BackendSpec::new("gone", &format!("http://127.0.0.1:{}", closed_port()))
        .expect("a spec");
    let mut dead = Config::new(vec![gone], Policy::RoundRobin);
    dead.hsts = asked.hsts;
    let dead = tls_balancer(dead).await;
    let (response, _) = https_get(&dead, "/whoami", &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.headers().contains_key(STRICT_TRANSPORT_SECURITY));

    let plain = balancer_from(asked).await;
    let response = reqwest::get(plain.url("/whoami")).await.expect("response");
    assert!(
        !response
            .headers()
            .contains_key(STRICT_TRANSPORT_SECURITY.as_str()),
        "never over plain HTTP (RFC 6797 §7.2)"
    );
}

#[tokio::test]
async fn certificate_from_files_is_served() {
    let b = backend("b1").await;
    let names = vec!["localhost".to_owned()];
    let (certificate, key) = lb::tls::generate_self_signed_pem(&names).expect("generated");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (certificate_file, key_file) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    std::fs::write(&certificate_file, &certificate).expect("written");
    std::fs::write(&key_file, &key).expect("written");

    let mut from_files = config(&[&b]);
    from_files.tls = Some(TlsSettings::Files {
        certificate: certificate_file.clone(),
        key: key_file,
    });
    let lb = balancer_from(from_files).await;
    // The client trusts the file's certificate, not the balancer's word.
    let stream = tls_connect(lb.addr, &certificate).await;
    let served = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone();
    let expected = CertificateDer::from_pem_slice(certificate.as_bytes()).expect("PEM");
    assert_eq!(served, expected, "the file's certificate is served");
    assert_eq!(
        lb.balancer.tls_fingerprint(),
        Some(lb::tls::fingerprint(&expected).as_str())
    );
    let mut sender = https_client(stream).await;
    let (response, body) = get(&mut sender, &lb, "/whoami", &[]).await;
    assert_eq!(
        (response.status(), body),
        (StatusCode::OK, Bytes::from("b1"))
    );

    // A key that is not the certificate's is refused at start.
    let (_, other_key) = lb::tls::generate_self_signed_pem(&names).expect("generated");
    let other_key_file = dir.path().join("other-key.pem");
    std::fs::write(&other_key_file, other_key).expect("written");
    let mut mismatched = config(&[&b]);
    mismatched.tls = Some(TlsSettings::Files {
        certificate: certificate_file,
        key: other_key_file,
    });
    let error = lb::Balancer::new(mismatched).expect_err("a key that does not match");
    assert!(matches!(error, lb::RunError::Tls(_)), "{error}");
}

#[tokio::test]
async fn websocket_upgrades_work_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = backend("b1").await;
    let lb = tls_balancer(config(&[&b])).await;
    let pem = lb.balancer.tls_certificate_pem().expect("TLS is on");
    let stream = tls_connect(lb.addr, pem).await;
    let url = format!("wss://localhost:{}/ws", lb.addr.port());
    let (mut socket, response) = within(
        "the upgrade",
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    .expect("the upgrade goes through TLS");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = within("the greeting", socket.next())
        .await
        .expect("a frame")
        .expect("a message");
    assert_eq!(greeting, Message::text("hello from b1"));
    socket.send(Message::text("ping")).await.expect("sent");
    let echo = within("the echo", socket.next())
        .await
        .expect("a frame")
        .expect("a message");
    assert_eq!(echo, Message::text("ping"));
}
