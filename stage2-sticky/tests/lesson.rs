//! Stage 2's lesson, as tests: sticky sessions keep a cart, until the
//! instance behind it goes away. Real `stage2` processes behind the real
//! balancer (round-robin, sticky).

use std::collections::BTreeMap;
use std::time::Duration;

use lb::BackendState;
use reqwest::StatusCode;
use shop::shopper::Shopper;
use shop::testing::start_stage;
use shop::topology::Topology;

/// Long enough for a few health-check intervals on a loaded machine.
const HEALTH_WAIT: Duration = Duration::from_secs(15);

async fn sticky_stage() -> Topology {
    start_stage(env!("CARGO_BIN_EXE_stage2"), &stage2::INFO).await
}

fn sticky_cookie(response_headers: &reqwest::header::HeaderMap) -> Option<String> {
    response_headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lb_sticky="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn sticky_cookie_pins_shopper_to_one_instance() {
    let topology = sticky_stage().await;
    let shopper = Shopper::new(topology.url()).expect("client");
    let added = shopper.add("TEE-RED-M", 2).await.expect("add");
    let cookie = sticky_cookie(&added.headers).expect("the balancer pins the shopper");
    assert!(
        !cookie.contains(added.served_by()) && !cookie.contains("127.0.0.1"),
        "the cookie names the instance opaquely: {cookie}"
    );
    for _ in 0..10 {
        let cart = shopper.cart().await.expect("cart");
        assert_eq!(
            cart.served_by(),
            added.served_by(),
            "always the same instance"
        );
        assert_eq!(cart.qty_of("TEE-RED-M"), 2, "so the cart holds");
        assert!(
            sticky_cookie(&cart.headers).is_some(),
            "the expiry slides on every response"
        );
    }
}

#[tokio::test]
async fn new_shoppers_spread_across_instances() {
    let topology = sticky_stage().await;
    let mut spread = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let shopper = Shopper::new(topology.url()).expect("client");
        let seen = shopper.cart().await.expect("cart");
        *spread.entry(seen.served_by().to_owned()).or_default() += 1;
    }
    assert_eq!(
        spread,
        BTreeMap::from([
            ("i1".to_owned(), 10),
            ("i2".to_owned(), 10),
            ("i3".to_owned(), 10)
        ])
    );
}

#[tokio::test]
async fn cart_is_lost_when_pinned_instance_dies() {
    let topology = sticky_stage().await;
    let shopper = Shopper::new(topology.url()).expect("client");
    let added = shopper.add("HOOD-BLACK-M", 1).await.expect("add");
    let home = added.served_by().to_owned();

    topology.kill_instance(&home).await.expect("killed");
    // `Shopper` turns any non-2xx into an error: this succeeding is the
    // "no 5xx" half of the lesson.
    let after = shopper
        .cart()
        .await
        .expect("the balancer re-dispatches: no error for the shopper");
    assert_ne!(after.served_by(), home);
    assert!(
        after.is_empty(),
        "the cart died with {home}: {}",
        after.summary()
    );
    assert!(
        sticky_cookie(&after.headers).is_some(),
        "re-pinned to the new instance"
    );
    let again = shopper.cart().await.expect("cart");
    assert_eq!(
        again.served_by(),
        after.served_by(),
        "and pinned there from now on"
    );
}

#[tokio::test]
async fn draining_instance_keeps_its_shoppers_and_takes_no_new_ones() {
    let topology = sticky_stage().await;
    let pinned = Shopper::new(topology.url()).expect("client");
    let home = pinned
        .add("TEE-NAVY-L", 3)
        .await
        .expect("add")
        .served_by()
        .to_owned();

    let drained = shop::testing::Admin::of(&topology)
        .change(
            reqwest::Method::POST,
            &format!("/_lb/backends/{home}/drain"),
            serde_json::json!({}),
        )
        .send()
        .await
        .expect("admin API");
    assert_eq!(drained.status(), StatusCode::OK);

    for _ in 0..5 {
        let cart = pinned.cart().await.expect("cart");
        assert_eq!(
            (cart.served_by(), cart.qty_of("TEE-NAVY-L")),
            (home.as_str(), 3)
        );
    }
    for _ in 0..12 {
        let newcomer = Shopper::new(topology.url()).expect("client");
        let seen = newcomer.cart().await.expect("cart");
        assert_ne!(
            seen.served_by(),
            home,
            "a draining instance takes no new shoppers"
        );
    }
}

#[tokio::test]
async fn forged_sticky_cookie_is_redispatched() {
    let topology = sticky_stage().await;
    let client = reqwest::Client::new();
    let forgeries = [
        "i1".to_owned(),
        topology.instances()[0].url.clone(),
        "AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    ];
    for forged in forgeries {
        let response = client
            .get(format!("{}/api/cart", topology.url()))
            .header("cookie", format!("lb_sticky={forged}"))
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK, "served anyway");
        let reissued = sticky_cookie(response.headers()).expect("a real cookie is issued");
        assert_ne!(reissued, format!("lb_sticky={forged}"));
    }
    let reassigned = topology
        .balancer()
        .counters()
        .sticky_reassignments
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reassigned, 3, "each forgery counts as a reassignment");
}

#[tokio::test]
async fn unhealthy_backend_leaves_and_rejoins_the_rotation() {
    let topology = sticky_stage().await;
    topology.kill_instance("i2").await.expect("killed");
    topology
        .wait_for_backend("i2", BackendState::Down, HEALTH_WAIT)
        .await
        .expect("health checks take i2 out");
    for _ in 0..9 {
        let seen = Shopper::new(topology.url())
            .expect("client")
            .cart()
            .await
            .expect("cart");
        assert_ne!(
            seen.served_by(),
            "i2",
            "no shopper is sent to a down instance"
        );
    }

    topology.restart_instance("i2").await.expect("restarted");
    topology
        .wait_for_backend("i2", BackendState::Up, HEALTH_WAIT)
        .await
        .expect("health checks bring i2 back");
    let mut served = Vec::new();
    for _ in 0..6 {
        let seen = Shopper::new(topology.url())
            .expect("client")
            .cart()
            .await
            .expect("cart");
        served.push(seen.served_by().to_owned());
    }
    assert!(
        served.iter().any(|s| s == "i2"),
        "new shoppers reach i2 again: {served:?}"
    );
}

#[tokio::test]
async fn all_backends_down_gives_503() {
    let topology = sticky_stage().await;
    for name in ["i1", "i2", "i3"] {
        topology.kill_instance(name).await.expect("killed");
    }
    for name in ["i1", "i2", "i3"] {
        topology
            .wait_for_backend(name, BackendState::Down, HEALTH_WAIT)
            .await
            .expect("every instance is down");
    }
    let response = reqwest::get(format!("{}/api/cart", topology.url()))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "no_backend_available");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no backend")),
        "{body}"
    );
}
