//! The real `stage6` binary as a learner runs it: `up` with its private
//! servers and a page's socket through the balancer, Ctrl-C, the demo,
//! and every flag reaching every instance.

use std::time::Duration;

use shop::testing::{children_of, ctrl_c_stops_everything, process_name, start_up, start_up_with};
use stage6::client::{LiveClient, Tally};

const STAGE6: &str = env!("CARGO_BIN_EXE_stage6");
const TEE: &str = "TEE-RED-M";
const SOON: Duration = Duration::from_secs(10);

#[tokio::test]
async fn live_updates_reach_pages_on_every_instance_behind_nginx_and_haproxy() {
    for engine in ["nginx", "haproxy"] {
        let (mut launcher, url) = start_up_with(STAGE6, &["--behind", engine]);
        let children = children_of(launcher.id());
        let mut pages = Vec::new();
        for _ in 0..2 {
            // The engine upgrades the connection and keeps it open.
            let mut page = LiveClient::connect(&url, "")
                .await
                .unwrap_or_else(|e| panic!("a socket through {engine}: {e}"));
            let mut tally = Tally::default();
            page.watch(&[TEE.to_owned()], &Default::default())
                .await
                .expect("watch");
            page.until("snapshot", &mut tally, SOON)
                .await
                .expect("open")
                .expect("a snapshot");
            pages.push((page, tally));
        }
        assert_ne!(
            pages[0].0.instance(),
            pages[1].0.instance(),
            "least connections behind {engine}: the second socket goes to another instance"
        );
        let priced = reqwest::Client::new()
            .post(format!("{url}/api/live/price"))
            .json(&serde_json::json!({"sku": TEE, "price_cents": 777}))
            .send()
            .await
            .expect("an answer");
        assert!(priced.status().is_success(), "{}", priced.status());
        for (page, tally) in &mut pages {
            let update = page
                .until("stock", tally, SOON)
                .await
                .expect("open")
                .unwrap_or_else(|| panic!("{engine}: the update reaches {}", page.instance()));
            assert_eq!(update["price_cents"], 777);
        }
        for (page, _) in pages {
            page.close().await;
        }
        ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(15));
    }
}

#[tokio::test]
async fn up_starts_private_servers_and_serves_sockets_through_the_balancer() {
    let (mut launcher, url) = start_up(STAGE6);
    let children = children_of(launcher.id());
    let mut names: Vec<String> = children.iter().map(|&pid| process_name(pid)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "postgres",
            "postgres",
            "redis-server",
            "redis-server",
            "stage6",
            "stage6",
            "stage6"
        ],
        "a primary and a replica, sessions and cache, three instances"
    );
    let socket = LiveClient::connect(&url, "")
        .await
        .expect("a socket through up's balancer");
    assert_eq!(
        socket.hello()["fanout"],
        "pubsub",
        "pub/sub unless told otherwise"
    );
    let page = reqwest::get(&url)
        .await
        .expect("the page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("id=\"live\""), "the page has the live panel");
    socket.close().await;

    ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(15));
}

#[test]
fn demo_narrates_the_four_fanout_modes_and_exits() {
    let story = shop::testing::run_demo(
        STAGE6,
        &[
            "REDIS_URL",
            "CACHE_URL",
            "DATABASE_URL",
            "DATABASE_REPLICA_URL",
            "SHOP_FANOUT",
        ],
    );
    for mode in [
        "--fanout local",
        "--fanout room-sticky",
        "--fanout pubsub",
        "--fanout streams",
    ] {
        assert!(story.contains(mode), "{mode} is narrated: {story}");
    }
    assert!(
        story.contains("received 30 of 30"),
        "pub/sub and streams reach every page: {story}"
    );
    assert!(
        story.contains("10 never arrived"),
        "pub/sub loses what a page was away for: {story}"
    );
    assert!(
        story.contains("0 never arrived"),
        "streams replay it: {story}"
    );
    assert!(story.contains("Lesson:"), "{story}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_flags_reach_every_instance() {
    // Instances prepare the database and stock the shelves in Redis when
    // they start, so both must be real.
    let postgres = shop::services::postgres::PostgresCluster::start()
        .await
        .unwrap_or_else(|e| panic!("a private PostgreSQL primary + replica is needed: {e}"));
    let redis = shop::services::redis::RedisServer::start()
        .await
        .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
    let (primary, replica, redis_url) =
        (postgres.primary_url(), postgres.replica_url(), redis.url());
    tokio::task::spawn_blocking(move || {
        shop::testing::assert_up_flags_reach_every_instance::<stage6::Stage6>(
            STAGE6,
            &[
                ("--redis-url", &redis_url),
                ("--session-ttl", "7m"),
                ("--store-timeout", "750ms"),
                ("--secure-cookies", ""),
                ("--database-url", &primary),
                ("--database-replica-url", &replica),
                ("--cache-url", "redis://127.0.0.1:9/"),
                ("--cache-ttl", "2m"),
                ("--db-timeout", "3s"),
                ("--no-cache", ""),
                ("--fanout", "streams"),
                ("--pubsub-channel", "shared"),
                ("--ticker", "2s"),
                ("--initial-stock", "7"),
                ("--ws-ping", "9s"),
                ("--ws-messages-per-second", "25"),
            ],
        );
    })
    .await
    .expect("the check ran");
}
