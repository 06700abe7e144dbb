//! WebSocket tunnels through a balancer: how fast they open, and what each
//! costs the balancer in memory while it stays open. `scripts/bench-lb`
//! runs it against `lb`, nginx and HAProxy.
//!
//! Run with `cargo run --release -p lb --example bench_tunnels -- serve --port 4001`
//! (a WebSocket echo backend: `GET /ws` upgrades, every message comes back), then
//! `cargo run --release -p lb --example bench_tunnels -- open --url ws://127.0.0.1:8080/ws --count 2000 --pids 1234`.
//!
//! `open` measures the resident memory (`VmRSS`) of the processes `--pids`
//! names, opens `--count` tunnels (`--concurrency` at a time; each one is
//! counted once a message has gone through it and come back), measures
//! again with every tunnel open, closes them all, and prints one line:
//! `tunnels  seconds  tunnels/s  KiB per open tunnel  failures`.
//! Nothing is asserted: it is a measurement.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message as ServerMessage, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// How long one tunnel may take to open and echo before it counts as failed.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("serve") => {
            let port: u16 = flag("--port").ok_or("serve needs --port")?.parse()?;
            serve(port).await
        }
        Some("open") => {
            let url = flag("--url").ok_or("open needs --url")?;
            let count: usize = flag("--count").map_or(Ok(1000), |c| c.parse())?;
            let concurrency: usize = flag("--concurrency").map_or(Ok(64), |c| c.parse())?;
            let pids: Vec<u32> = flag("--pids")
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            open(&url, count, concurrency, &pids).await
        }
        _ => Err("usage: bench_tunnels serve --port P | open --url ws://… [--count N] [--concurrency C] [--pids P,Q]".into()),
    }
}

/// A WebSocket echo backend with small buffers, like the shop's sockets.
async fn serve(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    async fn ws(upgrade: WebSocketUpgrade) -> Response {
        upgrade
            .read_buffer_size(4 * 1024)
            .write_buffer_size(16 * 1024)
            .on_upgrade(|mut socket| async move {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, ServerMessage::Close(_))
                        || socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            })
    }
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Opens `count` tunnels, holds them, and reports.
async fn open(
    url: &str,
    count: usize,
    concurrency: usize,
    pids: &[u32],
) -> Result<(), Box<dyn std::error::Error>> {
    let before = resident_kib(pids);
    let gate = std::sync::Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    for n in 0..count {
        let gate = std::sync::Arc::clone(&gate);
        let url = url.to_owned();
        opening.spawn(async move {
            let _turn = gate.acquire_owned().await.ok()?;
            tokio::time::timeout(OPEN_DEADLINE, async {
                let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
                let text = format!("tunnel {n}");
                socket.send(Message::text(text.clone())).await.ok()?;
                match socket.next().await {
                    Some(Ok(Message::Text(echo))) if echo.as_str() == text => Some(socket),
                    _ => None,
                }
            })
            .await
            .ok()
            .flatten()
        });
    }
    let mut open = Vec::with_capacity(count);
    let mut failures = 0usize;
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Some(socket)) => open.push(socket),
            _ => failures += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the balancer settle (buffers it frees once a handshake is done).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib(pids);
    let per_tunnel = if open.is_empty() {
        f64::NAN
    } else {
        (after.saturating_sub(before)) as f64 / open.len() as f64
    };
    println!(
        "{}\t{seconds:.3}\t{:.0}\t{per_tunnel:.1}\t{failures}",
        open.len(),
        open.len() as f64 / seconds
    );
    for mut socket in open {
        let _ = socket.close(None).await;
    }
    Ok(())
}

/// The resident memory of `pids`, summed, in KiB (0 for a pid that is gone).
fn resident_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}
