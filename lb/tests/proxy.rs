//! The balancer over real HTTP: what it forwards, what it strips, how it
//! streams, how it fails, and how it spreads load.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb::{BackendSpec, MIN_UPLOAD_RATE, Policy};
use reqwest::StatusCode;
use serde_json::Value;
use support::{backend, balancer, balancer_with, closed_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A deadline for steps that wait on the balancer passing data along. If it
/// passes, the balancer buffered (or lost) what it should have streamed.
const STREAM_STEP: Duration = Duration::from_secs(10);

/// What the backend's `/echo` saw of `request`, sent through the balancer.
async fn echoed(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json")
}

async fn error_body(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.expect("JSON error body"))
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let echoed = echoed(
        reqwest::Client::new()
            .get(lb.url("/echo"))
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "hunter2")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-kept", "yes"),
    )
    .await;
    let headers = echoed["headers"].as_object().expect("headers");
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the backend: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "yes", "end-to-end headers pass");

    let response = reqwest::get(lb.url("/hop")).await.expect("response");
    assert!(
        !response.headers().contains_key("x-hop"),
        "a header the backend named in Connection is dropped"
    );
    assert_eq!(response.headers()["x-kept"], "1");
}

#[tokio::test]
async fn x_forwarded_for_is_appended_and_proto_and_host_are_set() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let echoed = echoed(
        reqwest::Client::new()
            .get(lb.url("/echo?x=1"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    let headers = &echoed["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        headers["x-forwarded-proto"], "http",
        "this hop spoke plain HTTP"
    );
    assert_eq!(headers["x-forwarded-host"], lb.addr.to_string());
    assert_eq!(echoed["uri"], "/echo?x=1", "path and query pass unchanged");
}

#[tokio::test]
async fn a_shopper_cannot_send_the_balancers_own_backend_state_header() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let echoed = echoed(
        reqwest::Client::new()
            .get(lb.url("/echo"))
            .header(lb::STATE_HEADER, "removed"),
    )
    .await;
    assert!(
        echoed["headers"].get(lb::STATE_HEADER).is_none(),
        "only the health checks say it: {echoed}"
    );
}

#[tokio::test]
async fn response_body_streams_through_without_buffering() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let mut response = reqwest::get(lb.url("/stream"))
        .await
        .expect("response head");
    // The backend sends "first;" and then waits. A buffering proxy would
    // wait for the whole body, and this chunk would never come.
    let first = tokio::time::timeout(STREAM_STEP, response.chunk())
        .await
        .expect("the first chunk arrives while the backend is still sending")
        .expect("chunk")
        .expect("some data");
    assert_eq!(&first[..], b"first;");
    b.gates.release.notify_one();
    let rest = response.bytes().await.expect("rest");
    assert_eq!(&rest[..], b"second");
}

#[tokio::test]
async fn a_backend_that_stops_sending_mid_response_is_given_up_at_the_request_timeout() {
    let b = backend("b1").await;
    let lb = balancer_with(
        vec![b.spec()],
        Policy::RoundRobin,
        Duration::from_millis(300),
    )
    .await;
    let mut response = reqwest::get(lb.url("/stream"))
        .await
        .expect("response head");
    let first = tokio::time::timeout(STREAM_STEP, response.chunk())
        .await
        .expect("the first chunk")
        .expect("chunk")
        .expect("some data");
    assert_eq!(&first[..], b"first;");
    // Then the backend says nothing more (it is never released), as a
    // frozen one would: the response is cut, not left hanging.
    let rest = tokio::time::timeout(STREAM_STEP, response.chunk())
        .await
        .expect("the balancer gives up within the deadline");
    assert!(rest.is_err(), "the client sees a broken response: {rest:?}");
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.in_flight(), 0, "its request slot is free again");
}

#[tokio::test]
async fn request_body_streams_through_without_buffering() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let client = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes, Infallible>>();
    let request = hyper::Request::post(lb.url("/upload-gated"))
        .body(body)
        .expect("request");
    let sent = tokio::spawn(client.request(request));
    tx.send_data(Bytes::from_static(b"chunk-one"))
        .await
        .expect("send");
    // The rest of the body is not sent until the backend has the first chunk:
    // a buffering proxy would wait for the end, and this would never come.
    tokio::time::timeout(STREAM_STEP, b.gates.first_chunk_arrived.notified())
        .await
        .expect("the backend sees the first chunk before the body ends");
    tx.send_data(Bytes::from_static(b"chunk-two"))
        .await
        .expect("send");
    drop(tx);
    let response = sent.await.expect("task").expect("response");
    let body = body_of(response).await;
    assert_eq!(&body[..], b"18");
}

/// The whole body of `response`.
async fn body_of(response: hyper::Response<hyper::body::Incoming>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// A balancer over one test backend that gives up after 400 ms of silence.
async fn impatient_balancer() -> (support::TestBackend, support::TestLb) {
    let b = backend("b1").await;
    let lb = balancer_with(
        vec![b.spec()],
        Policy::RoundRobin,
        Duration::from_millis(400),
    )
    .await;
    (b, lb)
}

/// Posts to `path` through `lb` a body of `pieces` of `piece_bytes`, one every
/// `every`; the body then ends, or (`stalls`) is held open, sending nothing
/// more, until the answer comes. Returns the answer, and how long after the
/// request began it came.
async fn post_in_pieces(
    lb: &support::TestLb,
    path: &str,
    (pieces, piece_bytes): (usize, usize),
    every: Duration,
    stalls: bool,
) -> (hyper::Response<hyper::body::Incoming>, Duration) {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let client = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes, Infallible>>();
    let request = hyper::Request::post(lb.url(path))
        .body(body)
        .expect("request");
    let began = std::time::Instant::now();
    let sent = tokio::spawn(async move {
        let response = client.request(request).await;
        (response, began.elapsed())
    });
    for _ in 0..pieces {
        tokio::time::sleep(every).await;
        // A send that fails means the exchange already ended: the answer says how.
        if tx
            .send_data(Bytes::from(vec![7u8; piece_bytes]))
            .await
            .is_err()
        {
            break;
        }
    }
    let open = stalls.then_some(tx);
    let (response, after) = tokio::time::timeout(STREAM_STEP, sent)
        .await
        .expect("an answer in time")
        .expect("task");
    drop(open);
    (response.expect("response"), after)
}

#[tokio::test]
async fn a_slow_upload_that_keeps_moving_is_not_cut_at_the_request_timeout() {
    let (_b, lb) = impatient_balancer().await;
    // Twelve pieces, 150 ms apart: 1.8 s in all, four request timeouts,
    // and never 400 ms without a piece.
    let (response, _) = post_in_pieces(
        &lb,
        "/count",
        (12, 64 * 1024),
        Duration::from_millis(150),
        false,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let counted = body_of(response).await;
    assert_eq!(&counted[..], (12 * 64 * 1024).to_string().as_bytes());
}

#[tokio::test]
async fn an_upload_that_stalls_is_given_up_a_request_timeout_after_its_last_piece() {
    let (_b, lb) = impatient_balancer().await;
    // Five pieces, then nothing, the body still open: the backend waits
    // for the rest, and the balancer gives up on the exchange, but only
    // once the last piece (at 750 ms, past one 400 ms timeout) has been
    // followed by 400 ms of silence. The silence was the client's: 408,
    // as nginx's `client_body_timeout` answers, and not the backend's 504.
    let every = Duration::from_millis(150);
    let (response, after) = post_in_pieces(&lb, "/count", (5, 64 * 1024), every, true).await;
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        after >= every * 5,
        "given up while the upload still moved: after {after:?}"
    );
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.in_flight(), 0, "its request slot is free again");
    assert_eq!(backend.errors(), 0, "not counted against the backend");
}

#[tokio::test]
async fn an_upload_that_trickles_in_is_cut_once_below_the_minimum_rate() {
    let (_b, lb) = impatient_balancer().await;
    // A byte every 150 ms, for 3 s: never 400 ms without a piece, so a
    // limit on silence alone would let it hold its slot to the end (or,
    // a byte just inside each timeout, for ever). Past the timeout the
    // upload must come in at MIN_UPLOAD_RATE, and it is cut.
    let every = Duration::from_millis(150);
    let (response, after) = post_in_pieces(&lb, "/count", (20, 1), every, false).await;
    assert!(
        after < every * 20,
        "cut before the trickle ended, not answered at its end: after {after:?}"
    );
    let status = response.status();
    let body: Value = serde_json::from_slice(&body_of(response).await).expect("a JSON error");
    assert_eq!(
        status,
        StatusCode::REQUEST_TIMEOUT,
        "the client's fault: {body}"
    );
    assert_eq!(body["error"], "request_timeout");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{MIN_UPLOAD_RATE} bytes a second"))),
        "{body}"
    );
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.in_flight(), 0, "its request slot is free again");
    assert_eq!(backend.errors(), 0, "not counted against the backend");
}

#[tokio::test]
async fn a_slow_answer_to_a_finished_upload_is_the_backends_504_not_the_clients_408() {
    let (b, lb) = impatient_balancer().await;
    // Ten bytes, 200 ms after the headers, and the body ends: far below
    // the minimum rate on average, but whole. The backend then holds its
    // answer; the wait past the timeout is the backend's, not the client's.
    let (response, after) =
        post_in_pieces(&lb, "/hold", (1, 10), Duration::from_millis(200), false).await;
    b.gates.release.notify_waiters();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        after >= Duration::from_millis(600),
        "a timeout after the body's end: {after:?}"
    );
}

#[tokio::test]
async fn an_upload_the_backend_stops_reading_is_the_backends_504_not_the_clients_408() {
    let (b, lb) = impatient_balancer().await;
    // The client sends as fast as it can; the backend (`/hold`) reads none
    // of it. Once the buffers between them are full, the balancer waits on
    // the backend, not on the client: the silence is the backend's.
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let feeding = tokio::spawn(async move {
        while tx
            .send_data(Bytes::from(vec![7u8; 64 * 1024]))
            .await
            .is_ok()
        {}
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes, Infallible>>();
    let request = hyper::Request::post(lb.url("/hold"))
        .body(body)
        .expect("request");
    let response = tokio::time::timeout(STREAM_STEP, client.request(request))
        .await
        .expect("an answer in time")
        .expect("response");
    feeding.abort();
    b.gates.release.notify_waiters();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.errors(), 1, "counted against the backend");
}

#[tokio::test]
async fn large_bodies_pass_through_intact() {
    let b = backend("b1").await;
    let lb = balancer(&[&b], Policy::RoundRobin).await;
    let upload = vec![7u8; 32 * 1024 * 1024];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            hyper::Request::post(lb.url("/count"))
                .body(Full::new(Bytes::from(upload)))
                .expect("request"),
        )
        .await
        .expect("response");
    let counted = body_of(response).await;
    assert_eq!(&counted[..], (32 * 1024 * 1024).to_string().as_bytes());

    let download = reqwest::get(lb.url("/big?mib=64")).await.expect("response");
    let bytes = download.bytes().await.expect("body");
    assert_eq!(bytes.len(), 64 * 1024 * 1024);
}

#[tokio::test]
async fn dead_backend_gives_a_json_502() {
    let dead =
        BackendSpec::new("dead", &format!("http://127.0.0.1:{}", closed_port())).expect("spec");
    let lb = balancer_with(vec![dead], Policy::RoundRobin, Duration::from_secs(5)).await;
    let (status, body) = error_body(reqwest::get(lb.url("/")).await.expect("response")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"], "bad_gateway");
    assert!(
        body["message"].as_str().expect("message").contains("dead"),
        "{body}"
    );
}

#[tokio::test]
async fn no_available_backend_gives_a_json_503() {
    let b = backend("b1").await;
    // No health checks: their first visit would count as a hit (and it
    // did, now and then, before the backend was marked down).
    let mut config = lb::Config::new(vec![b.spec()], Policy::RoundRobin);
    config.health = None;
    let lb = support::balancer_from(config).await;
    lb.balancer
        .backends()
        .get("b1")
        .expect("b1")
        .set_healthy(false);
    let (status, body) = error_body(reqwest::get(lb.url("/whoami")).await.expect("response")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "no_backend_available");
    assert_eq!(b.hits(), 0, "nothing reached the backend that is down");
}

#[tokio::test]
async fn backend_slower_than_the_request_timeout_gives_a_json_504() {
    let b = backend("slow").await;
    let lb = balancer_with(
        vec![b.spec()],
        Policy::RoundRobin,
        Duration::from_millis(200),
    )
    .await;
    let (status, body) = error_body(reqwest::get(lb.url("/hold")).await.expect("response")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"], "gateway_timeout");
    b.gates.release.notify_waiters();
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let (b1, b2, b3) = (
        backend("b1").await,
        backend("b2").await,
        backend("b3").await,
    );
    let lb = balancer(&[&b1, &b2, &b3], Policy::RoundRobin).await;
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let name = client
            .get(lb.url("/whoami"))
            .send()
            .await
            .expect("response")
            .text()
            .await
            .expect("text");
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(
        counts,
        HashMap::from([("b1".into(), 10), ("b2".into(), 10), ("b3".into(), 10)])
    );
}

#[tokio::test]
async fn least_conn_sends_new_requests_away_from_a_busy_backend() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let lb = balancer(&[&b1, &b2], Policy::LeastConn).await;
    let client = reqwest::Client::new();
    // Park one request on whichever backend takes it.
    let parked = tokio::spawn(client.get(lb.url("/hold")).send());
    let busy = loop {
        if b1.gates.holding.load(Ordering::SeqCst) == 1 {
            break &b1;
        }
        if b2.gates.holding.load(Ordering::SeqCst) == 1 {
            break &b2;
        }
        tokio::task::yield_now().await;
    };
    let idle_name = if busy.name == "b1" { "b2" } else { "b1" };
    for _ in 0..10 {
        let name = client
            .get(lb.url("/whoami"))
            .send()
            .await
            .expect("response")
            .text()
            .await
            .expect("text");
        assert_eq!(
            name, idle_name,
            "least-connections avoids the backend with a request in flight"
        );
    }
    busy.gates.release.notify_waiters();
    let released = parked
        .await
        .expect("task")
        .expect("response")
        .text()
        .await
        .expect("text");
    assert_eq!(released, format!("{} released", busy.name));
    assert_eq!(
        lb.balancer
            .backends()
            .get(&busy.name)
            .expect("backend")
            .in_flight(),
        0
    );
}

#[tokio::test]
async fn absolute_form_request_goes_only_to_a_configured_backend() {
    let configured = backend("configured").await;
    let elsewhere = backend("elsewhere").await;
    let lb = balancer(&[&configured], Policy::RoundRobin).await;
    let mut stream = tokio::net::TcpStream::connect(lb.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET http://{0}/whoami HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        elsewhere.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.ends_with("configured"), "{response}");
    assert_eq!(elsewhere.hits(), 0, "the balancer is not an open proxy");
}

#[test]
fn lb_binary_refuses_a_backend_it_cannot_use() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "a=https://127.0.0.1:1",
        ])
        .output()
        .expect("lb runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http://"), "says what it accepts: {stderr}");
}

#[tokio::test]
async fn lb_binary_balances_across_its_backends() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let port = closed_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--backend", &format!("b1={}", b1.url())])
        .args(["--backend", &format!("b2={}", b2.url())])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("lb starts");
    let url = format!("http://127.0.0.1:{port}/whoami");
    let client = reqwest::Client::new();
    let mut first = None;
    for _ in 0..200 {
        if let Ok(response) = client.get(&url).send().await {
            first = Some(response.text().await.expect("text"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first = first.expect("the lb binary came up");
    let second = client
        .get(&url)
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("text");
    let mut seen = [first, second];
    seen.sort();
    assert_eq!(seen, ["b1", "b2"]);
    child.kill().await.expect("stopped");
}
