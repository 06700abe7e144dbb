//! What the dashboard shows, over real HTTP: the per-backend counters it
//! charts (`served` and `errors`, in `/_lb/backends` and `/_lb/metrics`),
//! and a page that needs nothing from the network but the balancer's own
//! API (it must work on a laptop with no connection, in a workshop room).

mod support;

use std::collections::HashMap;

use lb::{BackendSpec, Config, Policy};
use reqwest::StatusCode;
use serde_json::Value;
use support::{TestLb, backend, balancer_from, closed_port, failing};

/// A round-robin balancer with the admin API on and no active health
/// checks: only the requests of the test move the counters.
async fn admin_balancer(specs: Vec<BackendSpec>) -> TestLb {
    let mut config = Config::new(specs, Policy::RoundRobin);
    config.health = None;
    config.admin = true;
    config.admin_token = Some("the-admin-token-for-tests".to_owned());
    balancer_from(config).await
}

/// `/_lb/backends`, by name.
async fn backends(lb: &TestLb) -> HashMap<String, Value> {
    let views: Vec<Value> = reqwest::get(lb.url("/_lb/backends"))
        .await
        .expect("backends")
        .json()
        .await
        .expect("JSON");
    views
        .into_iter()
        .map(|view| (view["name"].as_str().expect("name").to_owned(), view))
        .collect()
}

async fn metrics(lb: &TestLb) -> String {
    reqwest::get(lb.url("/_lb/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn a_backends_5xx_answers_count_as_its_errors_and_only_its() {
    let good = backend("good").await;
    let bad = failing("bad").await;
    let lb = admin_balancer(vec![good.spec(), bad.spec()]).await;
    let client = reqwest::Client::new();
    let mut statuses: HashMap<StatusCode, usize> = HashMap::new();
    for _ in 0..10 {
        let response = client
            .get(lb.url("/whoami"))
            .send()
            .await
            .expect("response");
        *statuses.entry(response.status()).or_default() += 1;
    }
    assert_eq!(statuses[&StatusCode::OK], 5, "{statuses:?}");
    assert_eq!(statuses[&StatusCode::INTERNAL_SERVER_ERROR], 5);

    let views = backends(&lb).await;
    assert_eq!(views["good"]["served"], 5);
    assert_eq!(
        views["good"]["errors"], 0,
        "a healthy backend has no errors"
    );
    assert_eq!(views["bad"]["served"], 5);
    assert_eq!(views["bad"]["errors"], 5);
    assert_eq!(
        views["bad"]["state"], "up",
        "a 500 is an answer, not a death"
    );

    let text = metrics(&lb).await;
    assert!(text.contains("# TYPE lb_errors_total counter"), "{text}");
    assert!(
        text.contains("lb_errors_total{backend=\"good\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("lb_errors_total{backend=\"bad\"} 5"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_backend_counts_errors_even_when_a_retry_saves_the_request() {
    let dead =
        BackendSpec::new("dead", &format!("http://127.0.0.1:{}", closed_port())).expect("spec");
    let good = backend("good").await;
    let lb = admin_balancer(vec![dead, good.spec()]).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let response = client
            .get(lb.url("/whoami"))
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK, "retried on `good`");
    }
    let views = backends(&lb).await;
    // Refused once, then out of rotation: one error, no response of its own.
    assert_eq!(views["dead"]["errors"], 1, "{views:?}");
    assert_eq!(views["dead"]["served"], 0);
    assert_eq!(views["dead"]["state"], "down");
    assert_eq!(views["good"]["served"], 4);
    assert_eq!(views["good"]["errors"], 0);

    // Alone, it has no one to pass the request to: the 502 the shopper
    // gets is counted once, as served and as an error.
    let alone =
        BackendSpec::new("alone", &format!("http://127.0.0.1:{}", closed_port())).expect("spec");
    let lb = admin_balancer(vec![alone]).await;
    let response = reqwest::get(lb.url("/whoami")).await.expect("response");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let views = backends(&lb).await;
    assert_eq!(views["alone"]["served"], 1);
    assert_eq!(views["alone"]["errors"], 1);
}

#[tokio::test]
async fn dashboard_loads_nothing_from_the_network() {
    let good = backend("good").await;
    let lb = admin_balancer(vec![good.spec()]).await;
    let response = reqwest::get(lb.url("/_lb/")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.expect("page");
    assert!(page.contains("<svg"), "the chart is drawn in the page");

    // No script, stylesheet, image or font from elsewhere: every `src`,
    // `href` and CSS `url(` / `@import` names a path on the balancer (or
    // is inline data, as the empty icon is).
    let lower = page.to_ascii_lowercase();
    for attribute in ["src=", "href=", "url(", "@import"] {
        for (at, _) in lower.match_indices(attribute) {
            let value = lower[at + attribute.len()..].trim_start_matches(['"', '\'', ' ']);
            assert!(
                (value.starts_with('/') && !value.starts_with("//"))
                    || value.starts_with('#')
                    || value.starts_with("data:"),
                "`{attribute}` names something off the balancer: {}",
                &page[at..(at + 60).min(page.len())]
            );
        }
    }
    // And no absolute URL at all, but the SVG namespace (a name, never
    // fetched) and the example in the add-backend form.
    let rest = page
        .replace("http://www.w3.org/2000/svg", "")
        .replace("placeholder=\"http://127.0.0.1:3004\"", "");
    assert!(!rest.contains("://"), "an absolute URL in the page");
}
