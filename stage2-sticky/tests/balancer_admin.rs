//! The balancer's runtime face under `stage2 up`: the admin API, the
//! metrics, the dashboard and its instance controls.

use std::time::Duration;

use lb::BackendState;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::shopper::Shopper;
use shop::testing::{Admin, is_alive, start_stage};
use shop::topology::Topology;

async fn sticky_stage() -> Topology {
    start_stage(env!("CARGO_BIN_EXE_stage2"), &stage2::INFO).await
}

async fn backends(topology: &Topology) -> Vec<Value> {
    reqwest::get(format!("{}/_lb/backends", topology.url()))
        .await
        .expect("response")
        .json()
        .await
        .expect("JSON")
}

fn state_of<'a>(list: &'a [Value], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|b| b["name"] == name)
        .and_then(|b| b["state"].as_str())
}

/// The value of one sample line, e.g. `lb_backend_up{backend="i1"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn admin_api_adds_drains_and_removes_backends() {
    let topology = sticky_stage().await;
    let admin = Admin::of(&topology);
    let base = topology.url();
    let listed = backends(&topology).await;
    assert_eq!(listed.len(), 3);
    for field in [
        "name",
        "url",
        "state",
        "in_flight",
        "served",
        "last_check_ms",
    ] {
        assert!(listed[0].get(field).is_some(), "backends show {field}");
    }

    // Remove i3, then add its instance back under another name.
    let i3_url = topology.instance("i3").expect("i3").url;
    let removed = admin
        .change(Method::DELETE, "/_lb/backends/i3", json!({}))
        .send()
        .await
        .expect("response");
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(state_of(&backends(&topology).await, "i3"), None);
    let added = admin
        .change(
            Method::POST,
            "/_lb/backends",
            json!({"name": "again", "url": i3_url}),
        )
        .send()
        .await
        .expect("response");
    assert_eq!(added.status(), StatusCode::CREATED);
    let mut reached = false;
    for _ in 0..6 {
        let seen = Shopper::new(&base)
            .expect("client")
            .cart()
            .await
            .expect("cart");
        reached |= seen.served_by() == "i3";
    }
    assert!(
        reached,
        "the re-added backend takes shoppers (its instance calls itself i3)"
    );

    // Refusals: a taken name, an unusable URL, an unknown backend.
    let duplicate = admin
        .change(
            Method::POST,
            "/_lb/backends",
            json!({"name": "i1", "url": "http://127.0.0.1:1"}),
        )
        .send()
        .await
        .expect("response");
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let bad_url = admin
        .change(
            Method::POST,
            "/_lb/backends",
            json!({"name": "x", "url": "https://example.com/path"}),
        )
        .send()
        .await
        .expect("response");
    assert_eq!(bad_url.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = admin
        .change(Method::POST, "/_lb/backends/nope/drain", json!({}))
        .send()
        .await
        .expect("response");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // Drain.
    let drained = admin
        .change(Method::POST, "/_lb/backends/i1/drain", json!({}))
        .send()
        .await
        .expect("response");
    assert_eq!(drained.status(), StatusCode::OK);
    assert_eq!(state_of(&backends(&topology).await, "i1"), Some("draining"));
}

#[tokio::test]
async fn metrics_count_requests_reassignments_and_health_failures() {
    let topology = sticky_stage().await;
    let metrics_url = format!("{}/_lb/metrics", topology.url());
    let shopper = Shopper::new(topology.url()).expect("client");
    let home = shopper
        .add("TEE-RED-M", 1)
        .await
        .expect("add")
        .served_by()
        .to_owned();
    for _ in 0..4 {
        shopper.cart().await.expect("cart");
    }
    let before = reqwest::get(&metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let ok_series = format!("lb_requests_total{{backend=\"{home}\",class=\"2xx\"}}");
    assert_eq!(sample(&before, &ok_series), Some(5.0), "{before}");
    assert_eq!(
        sample(&before, &format!("lb_backend_up{{backend=\"{home}\"}}")),
        Some(1.0)
    );
    assert_eq!(sample(&before, "lb_sticky_reassignments_total"), Some(0.0));

    topology.kill_instance(&home).await.expect("killed");
    shopper.cart().await.expect("re-dispatched");
    topology
        .wait_for_backend(&home, BackendState::Down, Duration::from_secs(15))
        .await
        .expect("down");
    // Wait for at least one failed active check to be counted.
    let failures_series = format!("lb_health_check_failures_total{{backend=\"{home}\"}}");
    let mut after = String::new();
    for _ in 0..100 {
        after = reqwest::get(&metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if sample(&after, &failures_series).is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sample(&after, &failures_series).is_some_and(|n| n >= 1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, &format!("lb_backend_up{{backend=\"{home}\"}}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "lb_sticky_reassignments_total"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "lb_retries_total"), Some(1.0), "{after}");
    assert!(after.contains("# TYPE lb_in_flight gauge"));
}

#[tokio::test]
async fn dashboard_buttons_kill_restart_and_add_instances() {
    let topology = sticky_stage().await;
    let client = reqwest::Client::new();
    let admin = Admin::of(&topology);
    let base = topology.url();

    let page = client
        .get(format!("{base}/_lb/"))
        .send()
        .await
        .expect("dashboard");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert!(page.text().await.expect("html").contains("lb · dashboard"));
    let config: Value = client
        .get(format!("{base}/_lb/config"))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        config["controls"], true,
        "the launcher lends the dashboard its instance controls"
    );
    assert_eq!(config["sticky"], true);
    assert_eq!(
        config["zones"],
        json!([]),
        "instances on one machine, in no zone: no zone buttons"
    );

    let pid = topology
        .instance("i2")
        .and_then(|i| i.pid)
        .expect("i2 runs");
    let killed = admin
        .change(Method::POST, "/_lb/instances/i2/kill", json!({}))
        .send()
        .await
        .expect("kill");
    assert_eq!(killed.status(), StatusCode::OK);
    assert!(!is_alive(pid), "the kill button kills the process");

    let restarted = admin
        .change(Method::POST, "/_lb/instances/i2/restart", json!({}))
        .send()
        .await
        .expect("restart");
    assert_eq!(restarted.status(), StatusCode::OK);
    let new_pid = topology
        .instance("i2")
        .and_then(|i| i.pid)
        .expect("i2 runs again");
    assert!(is_alive(new_pid) && new_pid != pid);
    topology
        .wait_for_backend("i2", BackendState::Up, Duration::from_secs(15))
        .await
        .expect("i2 rejoins");

    let added = admin
        .change(Method::POST, "/_lb/instances", json!({}))
        .send()
        .await
        .expect("add");
    assert_eq!(added.status(), StatusCode::CREATED);
    let added: Value = added.json().await.expect("JSON");
    assert_eq!(added["name"], "i4");
    assert_eq!(state_of(&backends(&topology).await, "i4"), Some("up"));
    let health: Value = reqwest::get(format!("{}/healthz", added["url"].as_str().expect("url")))
        .await
        .expect("the new instance answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["instance"], "i4");
}
