//! Test backends for the balancer's suite: small axum servers on free ports
//! that report what reached them, and can hold a response or a body open
//! until the test says so.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use lb::{BackendSpec, Balancer, Config, Policy};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// What a test backend shares with its test.
#[derive(Default)]
pub struct Gates {
    /// Requests that reached this backend.
    pub hits: AtomicUsize,
    /// `/hold` and `/stream` wait for this.
    pub release: Notify,
    /// `/upload-gated` signals this once the first chunk arrived.
    pub first_chunk_arrived: Notify,
    /// Requests currently parked in `/hold`.
    pub holding: AtomicUsize,
    /// Requests inside `/slow` now, and the most there ever were at once.
    pub concurrent: AtomicUsize,
    pub max_concurrent: AtomicUsize,
}

pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub gates: Arc<Gates>,
    _stop: oneshot::Sender<()>,
}

impl TestBackend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spec(&self) -> BackendSpec {
        BackendSpec::new(&self.name, &self.url()).expect("valid spec")
    }

    pub fn hits(&self) -> usize {
        self.gates.hits.load(Ordering::SeqCst)
    }
}

/// Serves `app` on a free port until the returned backend is dropped.
async fn serve(name: &str, app: Router, gates: Arc<Gates>) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("test backend serves");
    });
    TestBackend {
        name: name.to_owned(),
        addr,
        gates,
        _stop: stop,
    }
}

#[derive(Clone)]
struct Ctx {
    name: String,
    gates: Arc<Gates>,
}

pub async fn backend(name: &str) -> TestBackend {
    let gates = Arc::new(Gates::default());
    let ctx = Ctx {
        name: name.to_owned(),
        gates: Arc::clone(&gates),
    };
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/healthz", get(|| async { "ok" }))
        .route("/echo", any(echo))
        .route("/count", post(count))
        .route("/upload-gated", post(upload_gated))
        .route("/hold", get(hold).post(hold))
        .route("/stream", get(stream))
        .route("/big", get(big))
        .route("/hop", get(hop))
        .route("/slow", get(slow))
        .route("/ws", get(ws))
        .route("/limited", post(limited))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            count_hits,
        ))
        .with_state(ctx);
    serve(name, app, gates).await
}

/// A test backend with an event loop of its own, on its own thread: a
/// machine apart, which a burst against the balancer does not slow down.
pub fn backend_on_own_thread(name: &str) -> TestBackend {
    let (sent, received) = std::sync::mpsc::channel();
    let name = name.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let backend = backend(&name).await;
            sent.send(backend).expect("test is waiting");
            std::future::pending::<()>().await;
        });
    });
    received.recv().expect("backend started")
}

async fn count_hits(
    State(ctx): State<Ctx>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    ctx.gates.hits.fetch_add(1, Ordering::SeqCst);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-backend", ctx.name.parse().expect("header value"));
    response
}

async fn whoami(State(ctx): State<Ctx>) -> String {
    ctx.name
}

/// Method, URI and headers as JSON.
async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    axum::Json(serde_json::json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": headers,
    }))
}

/// Reads the whole body frame by frame and answers with its length.
async fn count(body: Body) -> String {
    let mut body = body;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            total += data.len();
        }
    }
    total.to_string()
}

/// Signals after the first chunk, then reads the rest.
async fn upload_gated(State(ctx): State<Ctx>, body: Body) -> String {
    let mut body = body;
    let mut total = 0usize;
    let mut signalled = false;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            total += data.len();
            if !signalled && total > 0 {
                ctx.gates.first_chunk_arrived.notify_one();
                signalled = true;
            }
        }
    }
    total.to_string()
}

/// Answers only when released.
async fn hold(State(ctx): State<Ctx>) -> String {
    ctx.gates.holding.fetch_add(1, Ordering::SeqCst);
    ctx.gates.release.notified().await;
    ctx.gates.holding.fetch_sub(1, Ordering::SeqCst);
    format!("{} released", ctx.name)
}

/// Sends `first`, waits to be released, sends `second`.
async fn stream(State(ctx): State<Ctx>) -> Response {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        let _ = tx.send_data(Bytes::from_static(b"first;")).await;
        ctx.gates.release.notified().await;
        let _ = tx.send_data(Bytes::from_static(b"second")).await;
    });
    Body::new(body).into_response()
}

/// `?mib=N`: N MiB of generated bytes, in 64 KiB chunks.
async fn big(Query(q): Query<BTreeMap<String, usize>>) -> Response {
    let mib = q.get("mib").copied().unwrap_or(1);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..mib * 16 {
            if tx.send_data(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    Body::new(body).into_response()
}

/// A response with a header the backend declares hop-by-hop.
async fn hop() -> impl IntoResponse {
    (
        [("connection", "x-hop"), ("x-hop", "1"), ("x-kept", "1")],
        "hop",
    )
}

/// Answers after 20 ms, counting how many are inside at once.
async fn slow(State(ctx): State<Ctx>) -> String {
    let now = ctx.gates.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    ctx.gates.max_concurrent.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    ctx.gates.concurrent.fetch_sub(1, Ordering::SeqCst);
    ctx.name
}

/// A WebSocket that says which backend it is on, then echoes.
async fn ws(State(ctx): State<Ctx>, upgrade: axum::extract::ws::WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    upgrade.on_upgrade(move |mut socket| async move {
        if socket
            .send(Message::Text(format!("hello from {}", ctx.name).into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) || socket.send(message).await.is_err() {
                return;
            }
        }
    })
}

/// Refuses the body without reading it, as a server with a body limit does.
async fn limited() -> impl IntoResponse {
    (
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        [("content-type", "application/json")],
        r#"{"error":"body_too_large","message":"too large"}"#,
    )
}

/// A backend with a bug: answers every request but its health check with
/// a 500, as an instance whose database is gone does.
pub async fn failing(name: &str) -> TestBackend {
    let gates = Arc::new(Gates::default());
    let ctx = Ctx {
        name: name.to_owned(),
        gates: Arc::clone(&gates),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/json")],
                r#"{"error":"internal","message":"a bug"}"#,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            count_hits,
        ))
        .with_state(ctx);
    serve(name, app, gates).await
}

/// A backend whose connections serve one request, then read the next one
/// and close without a word: what a balancer sees on a pooled connection
/// to an instance that was just killed. Counts the requests it read.
pub async fn dies_on_second_request(name: &str) -> (TestBackend, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let label = name.to_owned();
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut stopped => return,
            };
            let Ok((mut stream, _)) = accepted else {
                return;
            };
            let counted = Arc::clone(&counted);
            let label = label.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                for request in 0.. {
                    // Read one request head (these tests send no bodies).
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    if request > 0 {
                        return; // dropped: the connection closes unanswered
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {label}\r\n\r\n{label}",
                        label.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let backend = TestBackend {
        name: name.to_owned(),
        addr,
        gates: Arc::new(Gates::default()),
        _stop: stop,
    };
    (backend, seen)
}

/// A balancer in this process, on a free port.
pub struct TestLb {
    pub balancer: Arc<Balancer>,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestLb {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub async fn balancer(backends: &[&TestBackend], policy: Policy) -> TestLb {
    balancer_with(
        backends.iter().map(|b| b.spec()).collect(),
        policy,
        Duration::from_secs(30),
    )
    .await
}

pub async fn balancer_with(
    specs: Vec<BackendSpec>,
    policy: Policy,
    request_timeout: Duration,
) -> TestLb {
    let mut config = Config::new(specs, policy);
    config.request_timeout = request_timeout;
    balancer_from(config).await
}

/// A balancer with exactly this configuration, on a free port of
/// 127.0.0.1.
pub async fn balancer_from(config: Config) -> TestLb {
    balancer_on(config, "127.0.0.1:0").await
}

/// A balancer with this configuration, listening on `address`.
pub async fn balancer_on(config: Config, address: &str) -> TestLb {
    let balancer = Balancer::new(config).expect("balancer");
    let listener = lb::listen(address.parse().expect("an address")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Arc::clone(&balancer).serve(listener, async {
        let _ = stopped.await;
    }));
    TestLb {
        balancer,
        addr,
        _stop: stop,
    }
}

/// A port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
