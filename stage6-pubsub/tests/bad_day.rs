//! Stage 6 on a bad day: a drained instance, a frozen instance, a page
//! that reads too slowly, Redis frozen and killed, fifty shoppers after
//! the last ten T-shirts, a checkout whose answer was lost, a socket
//! opened from another site.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::json;
use shop::testing::Admin;
use stage6::client::{ClientError, LiveClient, Tally};
use stage6::fanout::Fanout;
use support::{QUIET, SOON, buy, checkout, page, receive, spawn_live, spawn_live_with};
use tokio_tungstenite::tungstenite::Message;

const TEE: &str = "TEE-NAVY-M";

/// The balancer's tunnel idle timeout in the tests about it, and how often
/// the shop pings: a few pings per timeout, as 20 s per 60 s in `up`.
const IDLE: Duration = Duration::from_secs(1);
const PING: &str = "250ms";

/// Sends `signal` to instance `name` of `shop`.
fn signal_instance(shop: &support::LiveShop, name: &str, signal: Signal) {
    let pid = shop
        .topology
        .instance(name)
        .and_then(|i| i.pid)
        .unwrap_or_else(|| panic!("{name} runs"));
    kill(Pid::from_raw(i32::try_from(pid).expect("a pid")), signal).expect("signalled");
}

#[tokio::test]
async fn a_quiet_page_outlives_the_balancers_idle_timeout_because_the_shop_pings() {
    let shop = spawn_live_with(Fanout::Pubsub, 1, &[("SHOP_WS_PING", PING)], |config| {
        config.tunnel_idle_timeout = Some(IDLE);
    })
    .await;
    let (mut quiet, mut tally) = page(&shop.url(), &[TEE]).await;
    // Three idle timeouts without a message from either end but the pings
    // (which the client answers by itself, as browsers do).
    let nothing = quiet.next(IDLE * 3).await;
    assert!(
        matches!(nothing, Ok(None)),
        "still open, nothing sent: {nothing:?}"
    );
    assert!(shop.set_price(&shop.url(), TEE, 1500).await.is_success());
    receive(&mut quiet, &mut tally, 1).await;
    assert_eq!(tally.received(), 1, "the same socket still carries updates");
    shop.stop().await;
}

#[tokio::test]
async fn a_stopping_instance_tells_its_pages_it_is_going_away() {
    let shop = spawn_live(Fanout::Pubsub, 2, &[]).await;
    // In a room: leaving it is a call to Redis, which must not come
    // between the page and its goodbye.
    let mut leaving = LiveClient::connect(&shop.url(), "?room=tees&name=Ada")
        .await
        .expect("open");
    let mut tally = Tally::default();
    leaving
        .until("snapshot", &mut tally, SOON)
        .await
        .expect("socket open")
        .expect("in the room");
    let stopping = leaving.instance().to_owned();
    // What a deploy or a scale-in sends: the instance finishes its
    // requests and closes its sockets itself, with a reason.
    signal_instance(&shop, &stopping, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + SOON;
    let goodbye = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match leaving.next(left).await {
            // The room's news that was on its way.
            Ok(Some(_)) => {}
            end => break end,
        }
    };
    assert!(
        matches!(goodbye, Err(ClientError::Closed { code: 1001, .. })),
        "told 1001 (going away), not cut off: {goodbye:?}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_page_on_a_frozen_instance_is_cut_off_by_the_balancer_and_reconnects_elsewhere() {
    let shop = spawn_live_with(Fanout::Pubsub, 2, &[("SHOP_WS_PING", PING)], |config| {
        config.tunnel_idle_timeout = Some(IDLE);
    })
    .await;
    let (mut stuck, _) = page(&shop.url(), &[TEE]).await;
    let frozen = stuck.instance().to_owned();
    // SIGSTOP: the instance keeps its sockets open and says nothing more.
    signal_instance(&shop, &frozen, Signal::SIGSTOP);
    let cut = stuck.next(SOON).await;
    assert!(
        matches!(cut, Err(ClientError::Dropped)),
        "the balancer closes the quiet tunnel: {cut:?}"
    );
    // The health checks take the frozen instance out; the page's next
    // socket goes to the one that answers.
    shop.topology
        .wait_for_backend(&frozen, lb::BackendState::Down, SOON)
        .await
        .expect("the frozen instance is marked down");
    let (again, _) = page(&shop.url(), &[TEE]).await;
    assert_ne!(again.instance(), frozen, "reconnected to a live instance");
    signal_instance(&shop, &frozen, Signal::SIGCONT);
    shop.stop().await;
}

#[tokio::test]
async fn drain_closes_sockets_with_going_away() {
    let shop = spawn_live(Fanout::Pubsub, 2, &[]).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(LiveClient::connect(&shop.url(), "").await.expect("open"));
    }
    let host = sockets[0].instance().to_owned();
    let admin = Admin::of(&shop.topology);
    let drained = admin
        .change(
            Method::POST,
            &format!("/_lb/backends/{host}/drain"),
            json!({}),
        )
        .send()
        .await
        .expect("drain");
    assert!(drained.status().is_success());
    for socket in sockets.iter_mut().filter(|s| s.instance() == host) {
        let end = loop {
            match socket.next(SOON).await {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(ClientError::Closed { code: 1001, .. })),
            "closed with 1001 going away: {end:?}"
        );
    }
    // Where the page reconnects, the balancer sends it elsewhere.
    for _ in 0..4 {
        let again = LiveClient::connect(&shop.url(), "")
            .await
            .expect("reconnected");
        assert_ne!(
            again.instance(),
            host,
            "a draining instance takes no new sockets"
        );
    }
    shop.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_dropped_without_delaying_others() {
    // The speaker says thousands of things as fast as it can: no limit on
    // what one page may send, for this test only.
    let shop = spawn_live(Fanout::Pubsub, 1, &[("SHOP_WS_MESSAGES_PER_SECOND", "0")]).await;
    let base = shop.instance_url("i1");
    // A page whose machine reads nothing: a tiny receive buffer, never read.
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    tcp.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = base
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let stream = tcp.connect(addr).await.expect("connected");
    let (mut slow, _) =
        tokio_tungstenite::client_async(format!("ws://{}/ws?room=tees&name=slow", addr), stream)
            .await
            .expect("the slow page's socket");
    let (mut quick, mut quick_tally) = page(&base, &[]).await;
    quick.join("tees", "quick", None).await.expect("joined");
    let mut speaker = LiveClient::connect(&base, "?room=tees&name=speaker")
        .await
        .expect("open");

    // Messages of 4 KB, 50 at a time, until the shop gives up on the slow
    // page. The pressure must last, not add up to a volume: once the slow
    // page's kernel buffers are full (a few MB), its updates are dropped
    // rather than queued, and what closes it is a send blocked for over a
    // second. A fast machine says 10,000 messages in less time than that
    // (and the check below, which reads the slow socket, would then unblock
    // the send): so keep talking until it is closed, for 30 s at most.
    let text = "x".repeat(4000);
    let (total_tx, total_rx) = tokio::sync::oneshot::channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut says = 0;
        let mut total_rx = total_rx;
        let mut total = None;
        while total.is_none_or(|n| says < n) {
            tokio::select! {
                told = &mut total_rx, if total.is_none() => total = told.ok(),
                heard = quick.next(SOON) => match heard {
                    Ok(Some(message)) => {
                        quick_tally.absorb(&message);
                        if message["type"] == "say" {
                            says += 1;
                        }
                    }
                    other => panic!("the quick page stopped hearing after {says}: {other:?}"),
                },
            }
        }
        (quick, quick_tally)
    });
    // The speaker hears its own words too, and reads them as it goes.
    let mut speaker_tally = Tally::default();
    let mut said = 0;
    let talk_until = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < talk_until && shop.stats("i1").await["closed_slow"] == 0 {
        for _ in 0..50 {
            speaker.say(&text).await.expect("said");
        }
        said += 50;
        receive(&mut speaker, &mut speaker_tally, said).await;
    }
    let _ = total_tx.send(said);
    let (quick, quick_tally) = reader.await.expect("the quick page heard everything");
    assert_eq!(quick_tally.lagged, 0, "the quick page never lagged");
    let room = &quick_tally.topics["room:tees"];
    assert_eq!(
        (room.gaps, room.out_of_order),
        (0, 0),
        "in order, none missing"
    );

    // The slow page was cut off, with a reason, once it could be told.
    let mut closed = None;
    let deadline = tokio::time::Instant::now() + SOON;
    while closed.is_none() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(SOON, slow.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => closed = Some(frame.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    let stats = shop.stats("i1").await;
    assert!(stats["closed_slow"].as_u64() >= Some(1), "counted: {stats}");
    assert_eq!(
        stats["sockets"], 2,
        "the quick page and the speaker remain: {stats}"
    );
    if let Some(code) = closed.flatten() {
        assert_eq!(code, 1013, "try again later");
    }
    let _ = slow.close(None).await;
    quick.close().await;
    shop.stop().await;
}

#[tokio::test]
async fn a_page_watching_many_skus_is_answered_at_once_while_redis_is_frozen() {
    let shop = spawn_live(Fanout::Streams, 1, &[("SHOP_STORE_TIMEOUT", "500ms")]).await;
    let mut page = LiveClient::connect(&shop.instance_url("i1"), "")
        .await
        .expect("open");
    shop.redis.pause().expect("SIGSTOP");
    // Two hundred topics this instance has never subscribed to: each waits
    // for a subscription Redis will not confirm, then for its stream's
    // newest entry. One deadline covers them all, not one per topic.
    let skus: Vec<String> = shop::Catalog::get()
        .products()
        .iter()
        .take(200)
        .map(|product| product.sku.clone())
        .collect();
    page.watch(&skus, &Default::default()).await.expect("watch");
    let mut tally = Tally::default();
    let paused = page.until("paused", &mut tally, SOON).await;
    shop.redis.resume().expect("SIGCONT");
    assert!(
        matches!(paused, Ok(Some(_))),
        "the page is told live updates are paused, within seconds: {paused:?}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn only_the_shops_rooms_can_be_joined_so_pages_cannot_fill_redis_with_rooms() {
    let shop = spawn_live(Fanout::Streams, 1, &[]).await;
    let mut page = LiveClient::connect(&shop.url(), "").await.expect("open");
    page.join("made-up", "Mallory", None).await.expect("sent");
    page.say("hello, nobody").await.expect("sent");
    let mut tally = Tally::default();
    let refused = page
        .until("error", &mut tally, SOON)
        .await
        .expect("socket open")
        .expect("the join is refused");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("tees")),
        "the message names the rooms there are: {refused}"
    );
    let mut redis = shop.redis().await;
    let made: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:live:room:made-up*")
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(made.is_empty(), "nothing of the room in Redis: {made:?}");
    // The shop's own rooms still work on the same socket.
    page.join("tees", "Ada", None).await.expect("sent");
    page.until("snapshot", &mut tally, SOON)
        .await
        .expect("socket open")
        .expect("joined tees");
    shop.stop().await;
}

#[tokio::test]
async fn a_page_that_floods_its_room_is_refused_then_closed_and_the_room_hears_only_its_allowance()
{
    let shop = spawn_live(Fanout::Streams, 1, &[]).await;
    let mut room = LiveClient::connect(&shop.url(), "?room=tees&name=Ada")
        .await
        .expect("open");
    let mut flooder = LiveClient::connect(&shop.url(), "?room=tees&name=Mallory")
        .await
        .expect("open");
    let mut tally = Tally::default();
    for page in [&mut room, &mut flooder] {
        page.until("snapshot", &mut tally, SOON)
            .await
            .expect("socket open")
            .expect("joined tees");
    }
    // A script in the browser's console: say, say, say.
    let flood_began = std::time::Instant::now();
    for n in 0..200 {
        if flooder.say(&format!("#{n}")).await.is_err() {
            break;
        }
    }
    // The flooder is told, then closed with 1008 (policy violation).
    let mut refusals = 0;
    let closed = loop {
        match flooder.next(SOON).await {
            Ok(Some(message)) if message["type"] == "error" => {
                assert!(
                    message["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("too many messages")),
                    "{message}"
                );
                refusals += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the flooding page was not closed"),
            Err(error) => break error,
        }
    };
    let flood_lasted = flood_began.elapsed();
    assert!(
        matches!(closed, ClientError::Closed { code: 1008, .. }),
        "{closed:?}"
    );
    assert!(refusals >= 1, "told before it was closed");
    let stats = shop.stats("i1").await;
    assert_eq!(stats["closed_flooding"], 1, "{stats}");
    assert!(stats["refused_messages"].as_u64() >= Some(1), "{stats}");
    // The room heard the burst, and not the flood.
    let mut heard = 0;
    while let Ok(Some(message)) = room.next(QUIET).await {
        if message["type"] == "say" && message["from"] == "Mallory" {
            heard += 1;
        }
    }
    // 10 a second, earned while the flood lasted (a few milliseconds here).
    let earned = (flood_lasted.as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (40..=40 + earned).contains(&heard),
        "the room heard {heard} of 200: a burst of 40, and {earned} earned in {flood_lasted:?}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_shopper_cannot_tell_an_instance_it_is_leaving() {
    let shop = spawn_live(Fanout::Pubsub, 1, &[]).await;
    // What the balancer's health check says to a draining instance, sent
    // by a shopper through the balancer (which strips it), and straight to
    // the instance from an address it does not trust as a balancer (the
    // instance trusts 127.0.0.1; this client comes from 127.0.0.2).
    let untrusted = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("a client");
    for url in [shop.url(), shop.instance_url("i1")] {
        let answer = untrusted
            .get(format!("{url}/healthz"))
            .header(lb::STATE_HEADER, "removed")
            .send()
            .await
            .expect("an answer");
        assert!(answer.status().is_success());
    }
    let (mut page, mut tally) = page(&shop.url(), &[TEE]).await;
    let after = page.next(QUIET).await;
    assert!(
        !matches!(after, Err(ClientError::Closed { code: 1001, .. })),
        "the instance did not start leaving: {after:?}"
    );
    assert!(shop.set_price(&shop.url(), TEE, 1700).await.is_success());
    receive(&mut page, &mut tally, 1).await;
    assert_eq!(tally.received(), 1, "live updates still flow");
    shop.stop().await;
}

#[tokio::test]
async fn redis_outage_pauses_live_updates_and_recovers() {
    let mut shop = spawn_live(Fanout::Pubsub, 2, &[("SHOP_STORE_TIMEOUT", "1s")]).await;
    let (mut watcher, mut tally) = page(&shop.instance_url("i2"), &[TEE]).await;
    let shopper = shop.shopper();
    shopper.add(TEE, 1).await.expect("in the cart");

    for outage in ["frozen", "dead"] {
        if outage == "frozen" {
            shop.redis.pause().expect("SIGSTOP");
        } else {
            // Killed, Redis may come back without its last second of
            // writes (appendfsync everysec). Lose the topic's counter for
            // sure: the next update must still not repeat a number the
            // page holds (the instance puts it back before going live).
            let mut redis = shop.redis().await;
            let _: u64 = redis::cmd("HDEL")
                .arg("myclothes:live:seq")
                .arg(format!("stock:{TEE}"))
                .query_async(&mut redis)
                .await
                .expect("HDEL");
            shop.redis.kill();
        }
        let paused = watcher
            .until("paused", &mut tally, SOON)
            .await
            .expect("the socket stays open");
        assert!(
            paused.is_some(),
            "Redis {outage}: the page is told live updates paused"
        );
        let checkout = checkout(&shopper).await;
        assert_eq!(
            checkout.status(),
            503,
            "Redis {outage}: a buy is refused, not lost"
        );
        assert!(checkout.headers().contains_key("retry-after"));

        if outage == "frozen" {
            shop.redis.resume().expect("SIGCONT");
        } else {
            shop.redis.restart().await.expect("Redis back");
        }
        let live = watcher.until("live", &mut tally, SOON).await.expect("open");
        assert!(
            live.is_some(),
            "Redis back after being {outage}: live again"
        );
        let snapshot = watcher
            .until("snapshot", &mut tally, SOON)
            .await
            .expect("open");
        assert!(
            snapshot.is_some(),
            "Redis back after being {outage}: a snapshot of what may have changed meanwhile"
        );
        // Updates flow again, through the re-made subscription.
        let before = tally.received();
        assert!(
            shop.set_price(&shop.instance_url("i1"), TEE, 999)
                .await
                .is_success()
        );
        receive(&mut watcher, &mut tally, before + 1).await;
        assert_eq!(
            tally.received(),
            before + 1,
            "after being {outage}, updates arrive again: {tally:?}"
        );
    }
    // The cart survived both (AOF), and can be bought now.
    let checkout = checkout(&shopper).await;
    assert_eq!(checkout.status(), 200);
    shop.stop().await;
}

#[tokio::test]
async fn checkout_decrements_stock_atomically() {
    let shop = spawn_live(Fanout::Pubsub, 3, &[("SHOP_INITIAL_STOCK", "10")]).await;
    let (mut watcher, mut tally) = page(&shop.instance_url("i3"), &[TEE]).await;
    let url = shop.url();
    let mut buyers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = url.clone();
        buyers.spawn(async move { buy(&url, TEE, 1).await });
    }
    let (mut bought, mut sold_out) = (0, 0);
    while let Some(done) = buyers.join_next().await {
        let (status, body) = done.expect("a buyer");
        match status.as_u16() {
            200 => bought += 1,
            409 if body["error"] == "sold_out" => sold_out += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        (bought, sold_out),
        (10, 40),
        "ten sold, forty told: no oversell"
    );
    let mut redis = shop.redis().await;
    let left: i64 = redis::cmd("HGET")
        .arg("myclothes:stock")
        .arg(TEE)
        .query_async(&mut redis)
        .await
        .expect("HGET");
    assert_eq!(left, 0);
    receive(&mut watcher, &mut tally, 10).await;
    watcher.drain(&mut tally, QUIET).await.expect("open");
    assert_eq!(tally.received(), 10, "the watching page saw each sale");
    shop.stop().await;
}

#[tokio::test]
async fn retried_checkout_with_same_key_buys_once() {
    let shop = spawn_live(Fanout::Pubsub, 2, &[]).await;
    let shopper = shop.shopper();
    shopper.add(TEE, 2).await.expect("in the cart");
    let with_key = || {
        shopper
            .http()
            .post(shopper.url("/api/checkout"))
            .header("idempotency-key", "checkout-7f3a")
    };
    let first = with_key().send().await.expect("first");
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.expect("JSON");
    // The answer was lost; the shopper presses "buy" again.
    let again = with_key().send().await.expect("again");
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.expect("JSON");
    assert_eq!(again, first, "the first receipt, again");
    assert_eq!(first["bought"][0]["left"], 48, "two taken from fifty, once");
    // Without the key, the same click finds the cart empty: nothing twice.
    let plain = checkout(&shopper).await;
    assert_eq!(plain.status(), 409);
    shop.stop().await;
}

#[tokio::test]
async fn websocket_from_another_site_is_refused() {
    let shop = spawn_live(Fanout::Pubsub, 1, &[]).await;
    let url = shop.url().replacen("http://", "ws://", 1);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{url}/ws"
        ))
        .expect("a request");
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().expect("a header"));
    let refused = tokio_tungstenite::connect_async(request).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a cross-site socket was not refused: {other:?}"),
    }
    // The shop's own page (same origin) is welcome.
    let host = url.trim_start_matches("ws://").to_owned();
    let mut own = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{url}/ws"),
    )
    .expect("a request");
    own.headers_mut().insert(
        "origin",
        format!("http://{host}").parse().expect("a header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(own)
        .await
        .expect("same origin opens");
    // Nonsense is answered, not fatal.
    socket
        .send(Message::text("{\"type\":\"dance\"}"))
        .await
        .expect("sent");
    let mut saw_error = false;
    for _ in 0..3 {
        if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(SOON, socket.next()).await {
            if text.as_str().contains("\"error\"") {
                saw_error = true;
                break;
            }
        }
    }
    assert!(saw_error, "an error message, and the socket stays open");
    shop.stop().await;
}
