//! The balancer on a bad day: an instance dying under a pooled connection,
//! a burst of clients, a page from another site poking at the admin API,
//! and clients that send what they should not. Each test names what the
//! balancer guarantees.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use lb::{BackendSpec, BackendState, Config, Limits, Policy};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{backend, balancer_from, balancer_on, closed_port, dies_on_second_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes to `addr` and reads the reply until the server closes.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

fn no_health_checks(specs: Vec<BackendSpec>) -> Config {
    let mut config = Config::new(specs, Policy::RoundRobin);
    config.health = None;
    config
}

#[tokio::test]
async fn a_small_body_that_stops_short_gets_408_at_the_deadline() {
    let b = backend("b1").await;
    let mut config = no_health_checks(vec![b.spec()]);
    config.request_timeout = Duration::from_millis(300);
    let lb = balancer_from(config).await;
    // A PUT (held whole, to be sent again if need be) that declares 100
    // bytes and sends 10, then nothing.
    let reply = raw(
        lb.addr,
        b"PUT /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "a JSON error: {reply}");
}

/// Waits (5 s at most) until `done` holds; says whether it did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// A balancer with a 1.5 s send timeout in front of one backend, and a
/// client that has asked it for `mib` MiB (one request, then the end).
async fn downloading(mib: usize) -> (support::TestBackend, support::TestLb, tokio::net::TcpStream) {
    let b = backend("b1").await;
    let mut config = no_health_checks(vec![b.spec()]);
    config.send_timeout = Some(Duration::from_millis(1500));
    let lb = balancer_from(config).await;
    let mut client = tokio::net::TcpStream::connect(lb.addr)
        .await
        .expect("connect");
    let request = format!("GET /big?mib={mib} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("write");
    (b, lb, client)
}

/// Reads `client` to its end (or a broken connection), `piece` bytes at a
/// time with `pause` before each; the bytes read.
async fn read_to_the_end(
    client: &mut tokio::net::TcpStream,
    piece: usize,
    pause: Duration,
) -> usize {
    let mut got = 0;
    let mut buffer = vec![0u8; piece];
    let reading = async {
        loop {
            tokio::time::sleep(pause).await;
            match client.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the connection ends");
    got
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_at_the_send_timeout() {
    // A download far larger than the sockets' buffers, and a client that
    // does not read it (a laptop closed half-way, or someone doing it on
    // purpose to hold the shop's connections).
    let (_b, lb, mut client) = downloading(64).await;
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert!(
        eventually(|| backend.in_flight() == 1).await,
        "the download starts"
    );
    assert!(
        eventually(|| backend.in_flight() == 0).await,
        "the stalled response is given up and the backend's slot is free again"
    );
    // Reading at last, the client gets the part that was sent, then the end.
    let got = read_to_the_end(&mut client, 64 * 1024, Duration::ZERO).await;
    assert!(got < 64 * 1024 * 1024, "the response was cut ({got} bytes)");
}

#[tokio::test]
async fn a_slow_but_steady_reader_gets_the_whole_download() {
    let (_b, _lb, mut client) = downloading(16).await;
    // 256 KiB, then a pause, and again: about 5 s in all, over three send
    // timeouts. The balancer's writes wait longer than a pause, since the
    // kernel wakes a blocked writer only once a good part of the socket's
    // buffer has drained (measured with 150 ms pauses: 600 ms, four
    // reads), but never a whole timeout in a row. How much "a good part"
    // is grows with the machine's largest send buffer (`net.ipv4.tcp_wmem`,
    // 4 MiB by default): at 3.4 MB/s this reader drains even 2 MiB in
    // 0.6 s, well inside the 1.5 s timeout on a machine tuned otherwise.
    let got = read_to_the_end(&mut client, 256 * 1024, Duration::from_millis(75)).await;
    assert!(
        got > 16 * 1024 * 1024,
        "every byte arrives, the head too ({got} bytes)"
    );
}

#[tokio::test]
async fn past_max_clients_new_connections_wait_their_turn_instead_of_using_up_files() {
    let b = backend("b1").await;
    let mut config = no_health_checks(vec![b.spec()]);
    config.max_clients = Some(2);
    let lb = balancer_from(config).await;
    // Two clients that connect and send nothing hold both places.
    let first = tokio::net::TcpStream::connect(lb.addr)
        .await
        .expect("connect");
    let _second = tokio::net::TcpStream::connect(lb.addr)
        .await
        .expect("connect");
    assert!(
        eventually(|| lb.balancer.clients_open() == 2).await,
        "both are held"
    );
    // A third is queued by the kernel, not served, not refused.
    let third = tokio::spawn(raw(
        lb.addr,
        b"GET /whoami HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "the third waits while two are open");
    // One ends: the third gets its place and its answer.
    drop(first);
    let reply = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("answered once a place is free")
        .expect("task");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let waits = lb
        .balancer
        .counters()
        .client_limit_waits
        .load(Ordering::Relaxed);
    assert!(waits >= 1, "the full house is counted");
}

#[tokio::test]
async fn idempotent_request_is_resent_when_its_connection_dies_unanswered() {
    let (dying, read_by_dying) = dies_on_second_request("dying").await;
    let healthy = backend("healthy").await;
    let lb = balancer_from(no_health_checks(vec![dying.spec(), healthy.spec()])).await;
    let client = reqwest::Client::new();
    let whoami = |client: &reqwest::Client| client.get(lb.url("/whoami")).send();

    // Round robin: the first request opens (and pools) a connection to the
    // dying backend, the second goes to the healthy one, the third goes
    // back to the dying backend on the pooled connection, which closes
    // without answering.
    assert_eq!(
        whoami(&client)
            .await
            .expect("first")
            .text()
            .await
            .expect("body"),
        "dying"
    );
    assert_eq!(
        whoami(&client)
            .await
            .expect("second")
            .text()
            .await
            .expect("body"),
        "healthy"
    );
    let third = whoami(&client).await.expect("third");
    assert_eq!(third.status(), StatusCode::OK, "no 5xx for a GET");
    assert_eq!(
        third.text().await.expect("body"),
        "healthy",
        "resent elsewhere"
    );
    assert_eq!(
        read_by_dying.load(Ordering::SeqCst),
        2,
        "it did reach the dying backend"
    );
    let metrics = client.get(lb.url("/whoami")).send().await.expect("fourth");
    assert!(metrics.status().is_success());
}

#[tokio::test]
async fn post_caught_mid_flight_is_not_resent() {
    let (dying, _) = dies_on_second_request("dying").await;
    let healthy = backend("healthy").await;
    let lb = balancer_from(no_health_checks(vec![dying.spec(), healthy.spec()])).await;
    let client = reqwest::Client::new();
    client
        .get(lb.url("/whoami"))
        .send()
        .await
        .expect("to dying");
    client
        .get(lb.url("/whoami"))
        .send()
        .await
        .expect("to healthy");
    let post = client
        .post(lb.url("/count"))
        .body("an order")
        .send()
        .await
        .expect("a response");
    assert_eq!(
        post.status(),
        StatusCode::BAD_GATEWAY,
        "a POST may have been acted on: it is not sent again"
    );
    assert_eq!(healthy.hits(), 1, "the healthy backend never saw the POST");
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let slow = backend("slow").await;
    let mut config = no_health_checks(vec![slow.spec()]);
    config.limits = Limits {
        max_conns: 1,
        queue: 1,
        queue_timeout: Duration::from_secs(30),
    };
    let lb = balancer_from(config).await;
    let client = reqwest::Client::new();
    let first = tokio::spawn(client.get(lb.url("/hold")).send());
    while slow.gates.holding.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn(client.get(lb.url("/whoami")).send());
    let backend_state = lb.balancer.backends().get("slow").expect("slow");
    while backend_state.queued() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = client.get(lb.url("/whoami")).send().await.expect("third");
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = third.json().await.expect("JSON");
    assert_eq!(body["error"], "backend_busy");

    slow.gates.release.notify_waiters();
    let first = first.await.expect("task").expect("first");
    let second = second.await.expect("task").expect("second");
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(backend_state.state(), BackendState::Up);
}

#[tokio::test]
async fn burst_of_connections_does_not_take_a_healthy_backend_down() {
    lb::raise_fd_limit().expect("a higher open-file limit for 2,000 clients");
    let slow = support::backend_on_own_thread("slow");
    let mut config = Config::new(vec![slow.spec()], Policy::RoundRobin);
    config.limits = Limits {
        max_conns: 32,
        queue: 256,
        queue_timeout: Duration::from_secs(10),
    };
    let lb = balancer_from(config).await;
    // Every client on its own connection, all at once.
    let requests: Vec<_> = (0..2_000)
        .map(|_| {
            let url = lb.url("/slow");
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("client");
                let response = client.get(url).send().await.expect("an answer");
                let status = response.status();
                let retry_after = response.headers().contains_key("retry-after");
                (status, retry_after)
            })
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for request in requests {
        let (status, retry_after) = request.await.expect("task");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE if retry_after => busy += 1,
            other => panic!("a burst gave {other}: only 200, or 503 with Retry-After, is right"),
        }
    }
    assert!(
        ok > 0,
        "the backend served ({ok} served, {busy} told to come back)"
    );
    assert!(
        slow.gates.max_concurrent.load(Ordering::SeqCst) <= 32,
        "the backend never had more than its cap at once"
    );
    assert_eq!(
        lb.balancer.backends().get("slow").expect("slow").state(),
        BackendState::Up,
        "the burst did not make a healthy backend look dead"
    );
}

#[tokio::test]
async fn dead_backend_error_names_no_internal_address() {
    let dead =
        BackendSpec::new("dead", &format!("http://127.0.0.1:{}", closed_port())).expect("spec");
    let lb = balancer_from(no_health_checks(vec![dead])).await;
    let response = reqwest::get(lb.url("/")).await.expect("response");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.text().await.expect("body");
    assert!(!body.contains("127.0.0.1"), "{body}");
}

#[tokio::test]
async fn malformed_chunked_body_is_the_clients_fault() {
    let b = backend("b").await;
    let lb = balancer_from(no_health_checks(vec![b.spec()])).await;
    let reply = raw(
        lb.addr,
        b"POST /count HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("\"error\":\"bad_request\""), "{reply}");
    assert!(!reply.contains("127.0.0.1"), "{reply}");
}

#[tokio::test]
async fn body_refused_early_by_the_backend_keeps_its_status() {
    let b = backend("b").await;
    let lb = balancer_from(no_health_checks(vec![b.spec()])).await;
    let response = reqwest::Client::new()
        .post(lb.url("/limited"))
        .body(vec![b'x'; 4 * 1024 * 1024])
        .send()
        .await
        .expect("a response");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn two_host_headers_are_a_bad_request() {
    let b = backend("b").await;
    let lb = balancer_from(no_health_checks(vec![b.spec()])).await;
    let reply = raw(
        lb.addr,
        b"GET /whoami HTTP/1.1\r\nHost: shop\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(b.hits(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let b = backend("b").await;
    let lb = balancer_from(no_health_checks(vec![b.spec()])).await;
    let reply = raw(
        lb.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(
        reply.contains("\"error\":\"method_not_allowed\""),
        "{reply}"
    );
    assert_eq!(b.hits(), 0);
}

/// A balancer with the admin API on and a known token.
async fn admin_lb(address: &str) -> (support::TestLb, support::TestBackend) {
    let b = backend("b").await;
    let mut config = no_health_checks(vec![b.spec()]);
    config.admin = true;
    config.admin_token = Some(TOKEN.to_owned());
    (balancer_on(config, address).await, b)
}

const TOKEN: &str = "the-admin-token-for-tests";

#[tokio::test]
async fn admin_rejects_cross_site_requests() {
    let (lb, _b) = admin_lb("127.0.0.1:0").await;
    let client = reqwest::Client::new();
    let add = |body: Value| {
        client
            .request(Method::POST, lb.url("/_lb/backends"))
            .bearer_auth(TOKEN)
            .json(&body)
    };
    let new_backend = json!({"name": "x", "url": "http://127.0.0.1:1"});
    let status = |response: reqwest::Response| response.status();

    // A form on another site posts text/plain: refused, nothing added.
    let plain = client
        .post(lb.url("/_lb/backends"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(new_backend.to_string())
        .send()
        .await
        .expect("response");
    assert_eq!(status(plain), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A page on another origin, with everything else right.
    let foreign_origin = add(new_backend.clone())
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("response");
    assert_eq!(status(foreign_origin), StatusCode::FORBIDDEN);
    let cross_site = add(new_backend.clone())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("response");
    assert_eq!(status(cross_site), StatusCode::FORBIDDEN);
    // DNS rebinding: the request arrives on 127.0.0.1 addressed to another name.
    let rebound = add(new_backend.clone())
        .header("host", "evil.example")
        .send()
        .await
        .expect("response");
    assert_eq!(status(rebound), StatusCode::FORBIDDEN);
    // No token, or a wrong one.
    let anonymous = client
        .post(lb.url("/_lb/backends"))
        .json(&new_backend)
        .send()
        .await
        .expect("response");
    assert_eq!(status(anonymous), StatusCode::UNAUTHORIZED);
    let guessed = client
        .post(lb.url("/_lb/backends"))
        .bearer_auth("the-admin-token-for-test")
        .json(&new_backend)
        .send()
        .await
        .expect("response");
    assert_eq!(status(guessed), StatusCode::UNAUTHORIZED);
    // A backend off this machine would receive the shoppers' cookies.
    let remote = add(json!({"name": "y", "url": "http://10.9.8.7:80"}))
        .send()
        .await
        .expect("response");
    assert_eq!(status(remote), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(lb.balancer.backends().all().len(), 1, "nothing was added");

    // The dashboard's own request: same origin, JSON, the token.
    let own = add(new_backend.clone())
        .header("origin", format!("http://{}", lb.addr))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("response");
    assert_eq!(status(own), StatusCode::CREATED);
    // Reading needs no token, but still only from this machine's pages.
    let read = client
        .get(lb.url("/_lb/backends"))
        .send()
        .await
        .expect("read");
    assert_eq!(status(read), StatusCode::OK);
}

#[tokio::test]
async fn admin_treats_ipv4_mapped_loopback_as_this_machine() {
    // A dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
    let (lb, _b) = admin_lb("[::]:0").await;
    let url = format!("http://127.0.0.1:{}/_lb/backends", lb.addr.port());
    let response = reqwest::get(url).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn lb_binary_raises_its_open_file_limit() {
    let mut child = std::process::Command::new("bash")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" --listen 127.0.0.1:0 --backend a=http://127.0.0.1:1",
        ])
        .arg(env!("CARGO_BIN_EXE_lb"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lb starts");
    let limits_path = format!("/proc/{}/limits", child.id());
    let mut soft = None;
    for _ in 0..200 {
        let limits = std::fs::read_to_string(&limits_path).unwrap_or_default();
        let line = limits.lines().find(|l| l.starts_with("Max open files"));
        let fields: Vec<&str> = line
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        if let [.., soft_limit, hard_limit, _units] = fields.as_slice() {
            if soft_limit != &"256" {
                soft = Some((soft_limit.to_string(), hard_limit.to_string()));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("stopped");
    let _ = child.wait();
    let (soft, hard) = soft.expect("the limit was raised from 256");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
}

/// Opens a WebSocket through the balancer and returns it with the name of
/// the backend that greeted it.
async fn open_socket(
    lb: &support::TestLb,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
) {
    use futures_util::StreamExt;
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.addr))
        .await
        .expect("the upgrade goes through");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = socket
        .next()
        .await
        .expect("a greeting")
        .expect("a frame")
        .into_text()
        .expect("text")
        .to_string();
    let backend = greeting.trim_start_matches("hello from ").to_owned();
    (socket, backend)
}

#[tokio::test]
async fn lb_proxies_websocket_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = backend("b1").await;
    let lb = balancer_from(no_health_checks(vec![b.spec()])).await;
    let (mut socket, backend_name) = open_socket(&lb).await;
    assert_eq!(backend_name, "b1");
    socket.send(Message::text("ping")).await.expect("send");
    let echo = socket.next().await.expect("an echo").expect("a frame");
    assert_eq!(echo.into_text().expect("text").as_str(), "ping");

    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.tunnels(), 1, "one tunnel open");
    assert_eq!(
        backend.in_flight(),
        1,
        "the open socket counts as in flight"
    );
    assert_eq!(
        lb.balancer.clients_open(),
        1,
        "the tunnel keeps its client's place (--max-clients)"
    );
    socket.close(None).await.expect("close");
    drop(socket);
    eventually(|| {
        backend.tunnels() == 0 && backend.in_flight() == 0 && lb.balancer.clients_open() == 0
    })
    .await;
    assert_eq!(
        (
            backend.tunnels(),
            backend.in_flight(),
            lb.balancer.clients_open()
        ),
        (0, 0, 0),
        "released when closed"
    );
}

#[tokio::test]
async fn a_websocket_quiet_both_ways_is_closed_at_the_idle_timeout() {
    use futures_util::StreamExt;
    let b = backend("b1").await;
    let mut config = no_health_checks(vec![b.spec()]);
    config.tunnel_idle_timeout = Some(Duration::from_millis(300));
    let lb = balancer_from(config).await;
    // The backend greets, then says nothing, as a frozen instance would.
    let (mut socket, _) = open_socket(&lb).await;
    let after = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("the balancer ends the quiet tunnel");
    assert!(
        !matches!(after, Some(Ok(ref message)) if !message.is_close()),
        "no message, only the end: {after:?}"
    );
    let backend = lb.balancer.backends().get("b1").expect("b1");
    eventually(|| backend.tunnels() == 0).await;
    assert_eq!(backend.tunnels(), 0, "the tunnel is let go");
}

#[tokio::test]
async fn draining_backend_takes_no_new_upgrades() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let lb = balancer_from(no_health_checks(vec![b1.spec(), b2.spec()])).await;
    lb.balancer.backends().get("b1").expect("b1").drain();
    for _ in 0..4 {
        let (_socket, backend_name) = open_socket(&lb).await;
        assert_eq!(backend_name, "b2");
    }
}

#[tokio::test]
async fn least_conn_balances_open_sockets() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let mut config = no_health_checks(vec![b1.spec(), b2.spec()]);
    config.policy = Policy::LeastConn;
    let lb = balancer_from(config).await;
    let mut sockets = Vec::new();
    let mut on = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let (socket, backend_name) = open_socket(&lb).await;
        *on.entry(backend_name).or_insert(0) += 1;
        sockets.push(socket);
    }
    assert_eq!(on.get("b1"), Some(&5), "{on:?}");
    assert_eq!(on.get("b2"), Some(&5), "{on:?}");
}

#[tokio::test]
async fn open_sockets_do_not_use_up_request_slots() {
    let b1 = backend("b1").await;
    let mut config = no_health_checks(vec![b1.spec()]);
    config.limits = Limits {
        max_conns: 2,
        queue: 1,
        queue_timeout: Duration::from_secs(1),
    };
    let lb = balancer_from(config).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(open_socket(&lb).await.0);
    }
    let backend = lb.balancer.backends().get("b1").expect("b1");
    assert_eq!(backend.in_flight(), 5, "least-conn still sees every socket");
    let answer = reqwest::get(lb.url("/whoami")).await.expect("an answer");
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "five open sockets, two request slots: a request still gets one"
    );
}

#[tokio::test]
async fn the_removal_notice_comes_from_the_balancers_source_address() {
    use axum::extract::ConnectInfo;
    use axum::http::HeaderMap;
    // A backend that notes who tells it what on its health check.
    let (told, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>, headers: HeaderMap| {
                let state = headers
                    .get(lb::STATE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(state) = state {
                    let _ = told.send((peer.ip(), state));
                }
                async { "ok" }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let spec = BackendSpec::new("b1", &format!("http://{address}")).expect("spec");
    let mut config = no_health_checks(vec![spec]);
    // Every 127.x address is this machine's; stage 7 uses a zone's own.
    let source: std::net::IpAddr = "127.0.0.2".parse().expect("an address");
    config.source_address = Some(source);
    let lb = balancer_from(config).await;

    lb.balancer.remove_backend("b1").expect("removed");
    let (from, state) = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("told within the deadline")
        .expect("a notice");
    assert_eq!(state, "removed");
    assert_eq!(from, source, "from the address the health checks use");
}
