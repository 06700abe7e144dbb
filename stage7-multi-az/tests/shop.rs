//! The whole shop, through the real balancer, loses zone a.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};
use shop::{Scope, Stage};
use stage7::data_tier::DataTier;
use stage7::{MultiAzArgs, Stage7};

const STAGE7: &str = env!("CARGO_BIN_EXE_stage7");

fn args() -> MultiAzArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MultiAzArgs,
    }
    Cli::parse_from([
        "stage7",
        "--network",
        "namespaces",
        "--store-timeout",
        "10s",
        "--db-timeout",
        "5s",
    ])
    .args
}

#[tokio::test]
async fn zone_loss_keeps_serving() {
    let mut args = args();
    let mut services = Stage7::services(&mut args, Scope::Fleet)
        .await
        .unwrap_or_else(|e| panic!("stage 7's region (run the tests as root, with iproute2, nftables, postgresql, redis-server): {e}"));
    let (placement, balancer_source) = services.placement();
    let config = TopologyConfig {
        env: shop::flags::instance_env(&args).expect("instance env"),
        placement,
        balancer_source,
        ..TopologyConfig::for_tests(STAGE7, &stage7::INFO)
    };
    let topology = Topology::start(config)
        .await
        .expect("stage 7's instances in zones a and b");
    let names: Vec<String> = topology
        .instances()
        .iter()
        .map(|i| i.name.clone())
        .collect();
    assert_eq!(
        names,
        ["a1", "b1", "a2"],
        "instances alternate between the zones"
    );

    let ada = Shopper::new(topology.url()).expect("a shopper");
    ada.add("JKT-GREEN-L", 2).await.expect("add to cart");
    let signup = ada
        .http()
        .post(ada.url("/api/signup"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}))
        .send()
        .await
        .expect("sign up");
    assert_eq!(signup.status(), 201, "{:?}", signup.text().await);

    let before = ada.cart().await.expect("the cart before");
    assert_eq!(
        before.qty_of("JKT-GREEN-L"),
        2,
        "signing up keeps the cart: {}",
        before.summary()
    );

    let tier = services
        .get_mut::<std::sync::Arc<DataTier>>()
        .expect("the data tier")
        .clone();
    // The dashboard's button: the same admin API call it makes.
    let admin = reqwest::Client::new();
    let token = topology
        .admin_token()
        .expect("the admin API is on")
        .to_owned();
    let config: serde_json::Value = admin
        .get(format!("{}/_lb/config", topology.url()))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    assert_eq!(
        config["zones"],
        json!(["a", "b"]),
        "the dashboard offers both zones"
    );
    let down = admin
        .post(format!("{}/_lb/zones/a/down", topology.url()))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .expect("zone a down");
    assert_eq!(down.status(), 200, "{:?}", down.text().await);
    let lost_at = Instant::now();

    // Reads: the cart (sessions' Redis, failed over by the Sentinels).
    let cart = loop {
        if let Ok(cart) = ada.cart().await {
            break cart;
        }
        assert!(
            lost_at.elapsed() < Duration::from_secs(90),
            "no cart a minute and a half after zone a went dark"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let without_reads = lost_at.elapsed();
    assert_eq!(
        cart.qty_of("JKT-GREEN-L"),
        2,
        "the cart survived zone a: {}",
        cart.summary()
    );
    assert!(
        cart.served_by().starts_with('b'),
        "zone b serves now: {}",
        cart.served_by()
    );

    // Writes: the profile (PostgreSQL, failed over by the manager).
    loop {
        let update = ada
            .http()
            .put(ada.url("/api/me"))
            .json(&json!({"name": "Ada Lovelace", "address": {"line1": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH", "country": "GB"}}))
            .send()
            .await;
        if update.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            lost_at.elapsed() < Duration::from_secs(90),
            "no write a minute and a half after zone a went dark: {:?}",
            tier.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "zone a lost: carts readable again after {:.1}s, profile writes after {:.1}s",
        without_reads.as_secs_f64(),
        lost_at.elapsed().as_secs_f64()
    );
    let me: serde_json::Value = ada
        .http()
        .get(ada.url("/api/me"))
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(
        me["email"], "ada@example.com",
        "the account written before the loss is there: {me}"
    );

    // The zone comes back from the dashboard: its servers re-join, its
    // instances serve again.
    let up = admin
        .post(format!("{}/_lb/zones/a/up", topology.url()))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .expect("zone a back");
    assert_eq!(up.status(), 200, "zone a back from the dashboard");
    let done: serde_json::Value = up.json().await.expect("json");
    let done = done["done"].as_str().unwrap_or_default().to_owned();
    assert!(
        done.contains("pg_a: rewound") && done.contains("a1 restarted"),
        "{done}"
    );
    topology
        .wait_for_backend("a1", lb::BackendState::Up, Duration::from_secs(30))
        .await
        .expect("a1 healthy again");
    topology.stop().await;
}
