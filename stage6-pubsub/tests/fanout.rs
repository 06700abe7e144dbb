//! The lesson of stage 6, mode by mode: which pages hear which updates.
//! Real instances, real Redis, real WebSockets (through the real balancer
//! where the balancer is part of the lesson).

mod support;

use std::time::Duration;

use stage6::client::{ClientError, LiveClient, Tally};
use stage6::fanout::Fanout;
use stage6::live::PRESENCE_NAMES;
use support::{QUIET, SOON, page, receive, spawn_live};

const TEE: &str = "TEE-NAVY-M";

#[tokio::test]
async fn local_fanout_misses_shoppers_on_other_instances() {
    let shop = spawn_live(Fanout::Local, 3, &[]).await;
    let mut pages = Vec::new();
    for name in ["i1", "i2", "i3"] {
        pages.push(page(&shop.instance_url(name), &[TEE]).await);
    }
    // Thirty changes, all made on i1.
    for n in 0..30 {
        assert!(
            shop.set_price(&shop.instance_url("i1"), TEE, 1000 + n)
                .await
                .is_success()
        );
    }
    // i1's page hears all thirty (waited for, so a slow machine cannot cut
    // it short); the quiet spell after them is the others' chance to hear
    // anything.
    let (on_i1, tally) = &mut pages[0];
    receive(on_i1, tally, 30).await;
    let mut received = Vec::new();
    for (page, tally) in &mut pages {
        page.drain(tally, QUIET).await.expect("open");
        received.push(tally.received());
    }
    assert_eq!(
        received,
        [30, 0, 0],
        "only i1's own page heard i1's changes"
    );

    // The pages on i2 and i3 can tell they missed them: a snapshot shows
    // the newest update number (and the newest price, latest value wins).
    let (page, tally) = &mut pages[1];
    page.ask_snapshot().await.expect("open");
    let snapshot = page
        .until("snapshot", tally, SOON)
        .await
        .expect("open")
        .expect("a snapshot");
    assert_eq!(tally.published(), 30);
    assert_eq!(snapshot["stocks"][0]["price_cents"], 1029);
    shop.stop().await;
}

#[tokio::test]
async fn pubsub_reaches_every_instance() {
    let shop = spawn_live(Fanout::Pubsub, 3, &[]).await;
    let mut pages = Vec::new();
    for name in ["i1", "i2", "i3"] {
        pages.push(page(&shop.instance_url(name), &[TEE]).await);
    }
    // Changes made through the balancer, on whichever instance it picks.
    for n in 0..30 {
        assert!(
            shop.set_price(&shop.url(), TEE, 1000 + n)
                .await
                .is_success()
        );
    }
    for (page, tally) in &mut pages {
        receive(page, tally, 30).await;
        page.drain(tally, QUIET).await.expect("open");
        let tee = &tally.topics[&format!("stock:{TEE}")];
        assert_eq!(
            (tee.received, tee.gaps, tee.out_of_order),
            (30, 0, 0),
            "the page on {} heard every change, once, in order",
            page.instance()
        );
    }
    shop.stop().await;
}

#[tokio::test]
async fn instance_subscribes_once_per_topic_and_unsubscribes_at_zero() {
    let shop = spawn_live(Fanout::Pubsub, 2, &[]).await;
    let topic = format!("stock:{TEE}");
    let mut on_i1 = Vec::new();
    for _ in 0..5 {
        on_i1.push(page(&shop.instance_url("i1"), &[TEE]).await);
    }
    assert_eq!(
        shop.wait_for_subscribers(&topic, 1).await,
        1,
        "five sockets on i1, one subscription"
    );
    let on_i2 = page(&shop.instance_url("i2"), &[TEE]).await;
    assert_eq!(
        shop.wait_for_subscribers(&topic, 2).await,
        2,
        "one per instance with watchers"
    );

    // The last watcher of i1 leaving drops i1's subscription, not before.
    let last = on_i1.pop().expect("a page");
    for (page, _) in on_i1 {
        page.close().await;
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(shop.subscribers(&topic).await, 2, "i1 still has a watcher");
    last.0.close().await;
    assert_eq!(
        shop.wait_for_subscribers(&topic, 1).await,
        1,
        "i1 unsubscribed at zero"
    );

    // A thousand sockets opened and closed, fifty at a time, on both
    // instances and several SKUs, leave nothing behind.
    let skus = ["TEE-RED-S", "TEE-RED-M", "HOOD-GREY-L", "SOCK-BLACK-M"];
    let urls = [shop.instance_url("i1"), shop.instance_url("i2")];
    for round in 0..20 {
        let mut churn = tokio::task::JoinSet::new();
        for n in 0..50 {
            let url = urls[n % 2].clone();
            let sku = skus[(round + n) % skus.len()];
            churn.spawn(async move {
                let (page, _) = page(&url, &[sku]).await;
                page.close().await;
            });
        }
        while let Some(done) = churn.join_next().await {
            done.expect("a churned socket");
        }
    }
    on_i2.0.close().await;
    for topic in std::iter::once(topic.clone()).chain(skus.iter().map(|s| format!("stock:{s}"))) {
        assert_eq!(
            shop.wait_for_subscribers(&topic, 0).await,
            0,
            "{topic} left subscribed"
        );
    }

    // An instance that dies with sockets open takes its subscriptions
    // with it (Redis drops a closed connection's subscriptions).
    let (_kept, _) = page(&shop.instance_url("i2"), &[TEE]).await;
    assert_eq!(shop.wait_for_subscribers(&topic, 1).await, 1);
    shop.topology.kill_instance("i2").await.expect("killed");
    assert_eq!(
        shop.wait_for_subscribers(&topic, 0).await,
        0,
        "a dead instance holds nothing"
    );
    shop.stop().await;
}

/// Updates on a topic only i1 watches, with i2 and i3 watching something
/// else: how many reach each instance from Redis?
async fn redis_deliveries_per_instance(channel: &str) -> Vec<u64> {
    let shop = spawn_live(Fanout::Pubsub, 3, &[("SHOP_PUBSUB_CHANNEL", channel)]).await;
    let (mut watcher, mut tally) = page(&shop.instance_url("i1"), &[TEE]).await;
    let _elsewhere = [
        page(&shop.instance_url("i2"), &["SOCK-RED-S"]).await,
        page(&shop.instance_url("i3"), &["SOCK-RED-S"]).await,
    ];
    for n in 0..10 {
        assert!(
            shop.set_price(&shop.url(), TEE, 1000 + n)
                .await
                .is_success()
        );
    }
    receive(&mut watcher, &mut tally, 10).await;
    assert_eq!(
        tally.received(),
        10,
        "the watcher hears every change ({channel})"
    );
    tokio::time::sleep(QUIET).await;
    let mut from_redis = Vec::new();
    for name in ["i1", "i2", "i3"] {
        from_redis.push(
            shop.stats(name).await["from_redis"]
                .as_u64()
                .expect("a count"),
        );
    }
    shop.stop().await;
    from_redis
}

#[tokio::test]
async fn per_topic_channels_reach_only_instances_that_watch() {
    assert_eq!(
        redis_deliveries_per_instance("per-topic").await,
        [10, 0, 0],
        "one channel per topic: only i1 subscribed"
    );
    assert_eq!(
        redis_deliveries_per_instance("shared").await,
        [10, 10, 10],
        "one shared channel (classic socket.io): every instance gets every update"
    );
}

/// A page on `i2` is cut off (its instance killed) while ten changes are
/// made, and comes back on `i3` sending where it was: what did it get?
async fn page_away_for_ten_changes(fanout: Fanout) -> (Tally, serde_json::Value) {
    let shop = spawn_live(fanout, 3, &[]).await;
    let (mut away, mut tally) = page(&shop.instance_url("i2"), &[TEE]).await;
    for n in 0..5 {
        assert!(
            shop.set_price(&shop.instance_url("i1"), TEE, 1000 + n)
                .await
                .is_success()
        );
    }
    receive(&mut away, &mut tally, 5).await;
    assert_eq!(tally.received(), 5, "live before the crash");
    shop.topology.kill_instance("i2").await.expect("killed");
    assert!(
        matches!(
            away.next(SOON).await,
            Err(ClientError::Dropped | ClientError::Closed { .. })
        ),
        "the socket died with its instance"
    );
    for n in 5..15 {
        assert!(
            shop.set_price(&shop.instance_url("i1"), TEE, 1000 + n)
                .await
                .is_success()
        );
    }
    let mut back = LiveClient::connect(&shop.instance_url("i3"), "")
        .await
        .expect("reconnected");
    back.watch(&[TEE.to_owned()], &tally.since())
        .await
        .expect("watch");
    let snapshot = back
        .until("snapshot", &mut tally, SOON)
        .await
        .expect("open")
        .expect("a snapshot");
    back.drain(&mut tally, QUIET).await.expect("open");
    shop.stop().await;
    (tally, snapshot)
}

#[tokio::test]
async fn pubsub_loses_updates_published_while_reconnecting() {
    let (tally, snapshot) = page_away_for_ten_changes(Fanout::Pubsub).await;
    assert_eq!(tally.published(), 15);
    assert_eq!(
        tally.received(),
        5,
        "the ten changes made while it was away are gone"
    );
    // Stock and price are latest-value state: the snapshot heals them.
    assert_eq!(snapshot["stocks"][0]["price_cents"], 1014);
}

#[tokio::test]
async fn streams_catch_up_after_reconnect() {
    let (tally, _) = page_away_for_ten_changes(Fanout::Streams).await;
    let tee = &tally.topics[&format!("stock:{TEE}")];
    assert_eq!(
        (tee.received, tee.gaps, tee.out_of_order),
        (15, 0, 0),
        "the ten it missed were replayed from the stream, in order"
    );
}

#[tokio::test]
async fn a_crowded_rooms_presence_counts_everyone_and_names_only_the_latest_few() {
    let shop = spawn_live(Fanout::Streams, 1, &[]).await;
    let crowd = PRESENCE_NAMES + 5;
    let mut members = Vec::new();
    for n in 0..crowd {
        let member = LiveClient::connect(&shop.url(), &format!("?room=tees&name=m{n}"))
            .await
            .expect("joined");
        members.push(member);
    }
    // The first member hears every join; the last says how many are there.
    let mut tally = Tally::default();
    let last = loop {
        let presence = members[0]
            .until("presence", &mut tally, SOON)
            .await
            .expect("open")
            .expect("a presence update for each join");
        if presence["count"] == crowd {
            break presence;
        }
    };
    let who: Vec<&str> = last["who"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|name| name.as_str())
        .collect();
    // Every join goes to everyone in the room: with every name in each,
    // a room of N would cost N * N names per join.
    assert_eq!(who.len(), PRESENCE_NAMES, "{last}");
    let newest = format!("m{}", crowd - 1);
    assert!(
        who.contains(&newest.as_str()),
        "the newest is named: {who:?}"
    );
    assert!(!who.contains(&"m0"), "the first to come is not: {who:?}");
    shop.stop().await;
}

#[tokio::test]
async fn room_sticky_sends_a_room_to_one_instance() {
    let shop = spawn_live(Fanout::RoomSticky, 3, &[]).await;
    let mut members = Vec::new();
    for n in 0..6 {
        let member = LiveClient::connect(&shop.url(), &format!("?room=tees&name=m{n}"))
            .await
            .expect("joined");
        members.push(member);
    }
    let host = members[0].instance().to_owned();
    assert!(
        members.iter().all(|m| m.instance() == host),
        "every member of 'tees' on {host}"
    );
    // ... so a message reaches them all, with no help from Redis.
    let mut tallies = vec![Tally::default(); members.len()];
    members[0].say("the navy runs small").await.expect("said");
    for (member, tally) in members.iter_mut().zip(&mut tallies) {
        let said = loop {
            let message = member.next(SOON).await.expect("open").expect("a message");
            tally.absorb(&message);
            if message["type"] == "say" {
                break message;
            }
        };
        assert_eq!(said["text"], "the navy runs small");
    }

    // Other rooms hash to other instances: the load is spread by room.
    let mut hosts = std::collections::BTreeSet::new();
    for room in stage6::topic::ROOMS {
        let page = LiveClient::connect(&shop.url(), &format!("?room={room}"))
            .await
            .expect("joined");
        hosts.insert(page.instance().to_owned());
    }
    assert!(
        hosts.len() > 1,
        "the shop's nine rooms on more than one instance: {hosts:?}"
    );

    // The room's instance dies: its members land together on another.
    shop.topology.kill_instance(&host).await.expect("killed");
    shop.topology
        .wait_for_backend(&host, lb::BackendState::Down, SOON)
        .await
        .expect("the balancer sees it down");
    let mut again = std::collections::BTreeSet::new();
    for n in 0..6 {
        let member = LiveClient::connect(&shop.url(), &format!("?room=tees&name=m{n}"))
            .await
            .expect("rejoined");
        again.insert(member.instance().to_owned());
    }
    assert_eq!(again.len(), 1, "together again on one survivor: {again:?}");
    assert!(!again.contains(&host));
    shop.stop().await;
}

#[tokio::test]
async fn every_watcher_sees_every_update_in_order() {
    let shop = spawn_live(Fanout::Pubsub, 3, &[("SHOP_INITIAL_STOCK", "1000")]).await;
    let skus = [
        "TEE-RED-M",
        "POLO-NAVY-L",
        "JEAN-BLACK-M",
        "SOCK-GREY-S",
        "KNIT-WHITE-XL",
    ];
    let mut watchers = Vec::new();
    for name in ["i1", "i2", "i3"] {
        for _ in 0..10 {
            watchers.push(page(&shop.instance_url(name), &skus).await);
        }
    }
    // 500 buys from 25 shoppers at once, through the balancer.
    let url = shop.url();
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..25 {
        let url = url.clone();
        buyers.spawn(async move {
            for n in 0..20 {
                let (status, body) = support::buy(&url, skus[(b + n) % skus.len()], 1).await;
                assert_eq!(status, 200, "{body}");
            }
        });
    }
    while let Some(done) = buyers.join_next().await {
        done.expect("a buyer");
    }
    for (watcher, tally) in &mut watchers {
        receive(watcher, tally, 500).await;
        watcher.drain(tally, QUIET).await.expect("open");
        let gaps: u64 = tally.topics.values().map(|t| t.gaps + t.out_of_order).sum();
        assert_eq!(
            (tally.received(), gaps, tally.lagged),
            (500, 0, 0),
            "a watcher on {} saw every update, in order",
            watcher.instance()
        );
    }
    shop.stop().await;
}

/// The process id in the ticker's lease (`pid:token`).
async fn ticker_holder(shop: &support::LiveShop) -> Option<u32> {
    let mut redis = shop.redis().await;
    let holder: Option<String> = redis::cmd("GET")
        .arg("myclothes:live:ticker")
        .query_async(&mut redis)
        .await
        .expect("GET");
    holder?.split_once(':')?.0.parse().ok()
}

#[tokio::test]
async fn ticker_runs_on_one_instance_and_moves_when_it_dies() {
    let shop = spawn_live(Fanout::Pubsub, 3, &[("SHOP_TICKER", "100ms")]).await;
    let skus: Vec<String> = shop::Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.clone())
        .collect();
    let mut watcher = LiveClient::connect(&shop.url(), "").await.expect("open");
    let mut tally = Tally::default();
    watcher
        .watch(&skus, &Default::default())
        .await
        .expect("watch");
    receive(&mut watcher, &mut tally, 5).await;
    assert!(tally.received() >= 5, "the ticker publishes flash prices");

    // Three instances run the loop; one holds the lease, and keeps it.
    let mut holders = std::collections::BTreeSet::new();
    for _ in 0..5 {
        holders.extend(ticker_holder(&shop).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holders.len(), 1, "one holder: {holders:?}");
    let pid = holders.pop_first().expect("a holder");
    let holder = shop
        .topology
        .instances()
        .into_iter()
        .find(|i| i.pid == Some(pid))
        .expect("the holder is an instance");
    let watched_from = watcher.instance().to_owned();

    // The holder dies: its lease runs out and another instance ticks.
    shop.topology
        .kill_instance(&holder.name)
        .await
        .expect("killed");
    let deadline = tokio::time::Instant::now() + SOON;
    let successor = loop {
        match ticker_holder(&shop).await {
            Some(next) if next != pid => break next,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("no instance took the ticker over")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(
        shop.topology
            .instances()
            .iter()
            .any(|i| i.pid == Some(successor))
    );
    if watched_from != holder.name {
        let before = tally.received();
        receive(&mut watcher, &mut tally, before + 5).await;
        assert!(tally.received() >= before + 5, "prices keep changing");
    }
    shop.stop().await;
}
