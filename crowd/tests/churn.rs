//! The workshop's proof, bounded: a few shoppers for a few seconds under the
//! chaos schedule. Counts, not timings: stage 1 loses carts, stage 4 none.

mod support;

use serde_json::Value;
use support::{run_crowd, run_crowd_reports};

/// Runs `crowd --stage N` briefly and returns its one JSON report.
fn crowd(stage: &str) -> Value {
    run_crowd(&["--stage", stage, "--shoppers", "8", "--duration", "5s"])
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

#[test]
fn round_robin_over_local_carts_loses_them() {
    let report = crowd("1");
    assert!(count(&report, "requests") > 0);
    assert!(
        count(&report, "carts_lost") > 0,
        "stage 1 loses carts: {report}"
    );
    assert_eq!(
        count(&report, "carts_lost") + count(&report, "carts_intact"),
        8
    );
}

#[test]
fn server_sessions_lose_no_cart_under_churn() {
    let report = crowd("4");
    assert_eq!(
        count(&report, "carts_lost"),
        0,
        "stage 4 loses nothing: {report}"
    );
    assert_eq!(count(&report, "carts_intact"), 8);
    let chaos = report["chaos"].as_array().expect("chaos log");
    assert!(
        chaos
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("crashed")))
            && chaos
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains("scaled in"))),
        "instances were crashed and scaled in meanwhile: {chaos:?}"
    );
}

#[test]
fn a_store_restart_loses_memcached_carts_and_no_durable_stores() {
    let reports = run_crowd_reports(&[
        "--stage",
        "4",
        "--store",
        "memcached,redis,dynamodb",
        "--shoppers",
        "8",
        "--duration",
        "6s",
    ]);
    assert_eq!(reports.len(), 3, "one row per store: {reports:?}");
    for (report, store) in reports.iter().zip(["memcached", "redis", "dynamodb"]) {
        let title = report["title"].as_str().unwrap_or_default();
        assert!(title.ends_with(&format!("--store {store}")), "{title}");
        let chaos = report["chaos"].as_array().expect("chaos log");
        assert!(
            chaos.iter().any(|e| e
                .as_str()
                .is_some_and(|e| e.contains("session store killed (kill -9) and started again"))),
            "{store}: the store was killed and restarted: {chaos:?}"
        );
        let lost = count(report, "carts_lost");
        assert_eq!(lost + count(report, "carts_intact"), 8, "{report}");
        if store == "memcached" {
            // Memory only: whoever had a cart when it died lost it.
            assert!(lost > 0, "memcached forgets carts: {report}");
        } else {
            assert_eq!(lost, 0, "{store} keeps every cart: {report}");
        }
    }
}

#[test]
fn stateless_stages_answer_every_request_under_churn() {
    // Crashed instances, restarts, a scale-in: the balancer resends what is
    // safe to resend, and the shoppers resend their changes with the same
    // idempotency key. Every request ends with an answer.
    for stage in ["3", "4"] {
        let report = crowd(stage);
        assert_eq!(
            count(&report, "server_errors"),
            0,
            "stage {stage}: {report}"
        );
        assert_eq!(count(&report, "unconfirmed"), 0, "stage {stage}: {report}");
        assert_eq!(count(&report, "carts_lost"), 0, "stage {stage}: {report}");
    }
}

#[test]
fn a_run_shorter_than_its_chaos_goes_on_until_every_event_is_done() {
    // One second: a crash at 0.2 s, its restart at 0.35 s, a scale-out at
    // 0.5 s, a scale-in at 0.65 s that drains for longer than the second
    // crash (0.8 s) and restart (0.9 s) leave it; a busy machine's slow
    // instance starts do the same to a longer run. The run is for the
    // chaos: it goes on until all of it has happened, and the shoppers
    // with it.
    let report = run_crowd(&["--stage", "3", "--shoppers", "4", "--duration", "1s"]);
    let chaos: Vec<&str> = report["chaos"]
        .as_array()
        .expect("chaos log")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for done in ["crashed", "restarted", "scaled out", "scaled in"] {
        assert!(
            chaos.iter().any(|line| line.contains(done)),
            "{done}: {chaos:?}"
        );
    }
    assert_eq!(
        chaos.iter().filter(|line| line.contains("crashed")).count(),
        2,
        "both crashes: {chaos:?}"
    );
    assert!(
        !chaos.iter().any(|line| line.contains("not done")),
        "{chaos:?}"
    );
    // Every shopper checked its cart at the end, after the last event.
    assert_eq!(
        count(&report, "carts_lost") + count(&report, "carts_intact"),
        4
    );
    assert_eq!(count(&report, "carts_lost"), 0, "stage 3: {report}");
}

/// Runs the live crowd (stage 6) in one fan-out mode, briefly.
fn live_crowd(fanout: &str) -> Value {
    run_crowd(&[
        "--stage",
        "6",
        "--fanout",
        fanout,
        "--shoppers",
        "9",
        "--duration",
        "6s",
    ])
}

#[test]
fn live_crowd_misses_most_updates_locally_and_none_with_streams() {
    // The same watchers, publisher and chaos; only --fanout differs.
    let local = live_crowd("local");
    let owed = count(&local, "owed_stock");
    assert!(owed > 0, "{local}");
    assert!(
        count(&local, "missed_stock") * 2 > owed,
        "local: each page hears only its own instance's updates, well under half: {local}"
    );
    let streams = live_crowd("streams");
    assert!(count(&streams, "owed_stock") > 0, "{streams}");
    assert_eq!(
        count(&streams, "missed_stock"),
        0,
        "streams replays what a page missed: {streams}"
    );
    assert_eq!(count(&streams, "missed_room"), 0, "rooms too: {streams}");
    assert!(
        count(&streams, "reconnects") > 0,
        "pages did reconnect through the chaos: {streams}"
    );
}

// --- Behind real nginx and HAProxy: the carts come out as they do behind
// our own balancer. The statelessness is the shop's, not the balancer's.
// (Needs `nginx` and `haproxy`; `scripts/test` installs them.)

/// Runs `crowd --stage N --behind ENGINE` briefly (nginx or HAProxy in front
/// instead of our balancer, the same churn); its one JSON report.
fn crowd_behind(engine: &str, stage: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--stage",
        stage,
        "--behind",
        engine,
        "--shoppers",
        "8",
        "--duration",
        "5s",
    ];
    args.extend_from_slice(extra);
    run_crowd(&args)
}

fn stateless_stages_lose_no_cart_behind(engine: &str) {
    for stage in ["3", "4", "5"] {
        let report = crowd_behind(engine, stage, &[]);
        assert_eq!(count(&report, "carts_lost"), 0, "stage {stage}: {report}");
        assert_eq!(count(&report, "carts_intact"), 8, "stage {stage}: {report}");
        assert_eq!(count(&report, "unconfirmed"), 0, "stage {stage}: {report}");
        let chaos = report["chaos"].to_string();
        assert!(
            chaos.contains("crashed")
                && chaos.contains("scaled out")
                && chaos.contains("scaled in"),
            "instances churned meanwhile: {chaos}"
        );
    }
}

#[test]
fn stateless_stages_lose_no_cart_behind_nginx_under_churn() {
    stateless_stages_lose_no_cart_behind("nginx");
}

#[test]
fn stateless_stages_lose_no_cart_behind_haproxy_under_churn() {
    stateless_stages_lose_no_cart_behind("haproxy");
}

#[test]
fn round_robin_loses_local_carts_behind_nginx_and_haproxy() {
    for engine in ["nginx", "haproxy"] {
        let report = crowd_behind(engine, "1", &["--no-chaos"]);
        assert!(
            count(&report, "carts_lost") > 0,
            "stage 1 behind {engine}, even with no instance failing: {report}"
        );
    }
}

#[test]
fn sticky_stage_keeps_carts_while_their_instances_live() {
    for engine in ["nginx", "haproxy"] {
        let report = crowd_behind(engine, "2", &["--no-chaos"]);
        assert_eq!(
            count(&report, "carts_lost"),
            0,
            "stage 2 behind {engine}, no instance failing: {report}"
        );
    }
    // HAProxy spreads the shoppers (a cookie per instance): crashing one
    // takes its shoppers' carts, and `option redispatch` sends them on to
    // an instance that never saw them.
    let churned = crowd_behind("haproxy", "2", &[]);
    assert!(
        count(&churned, "carts_lost") > 0,
        "stage 2 behind haproxy loses the carts of a crashed instance: {churned}"
    );
}

#[test]
fn the_chart_draws_each_stage_with_the_chaos_marked() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().join("chart.svg");
    let path_text = path.to_str().expect("a UTF-8 path");
    let report = run_crowd(&[
        "--stage",
        "1",
        "--shoppers",
        "8",
        "--duration",
        "5s",
        "--chart",
        path_text,
    ]);
    let chart = std::fs::read_to_string(&path).expect("crowd wrote the chart");
    assert!(chart.starts_with("<svg"), "{chart}");
    assert_eq!(
        chart.matches("<polyline").count(),
        1,
        "one line for stage 1"
    );
    assert!(
        chart.contains(&format!("{} of 8 intact", count(&report, "carts_intact"))),
        "the legend gives the final count"
    );
    assert!(chart.contains(">crashed "), "the chaos is marked");
}

#[test]
fn a_zone_going_dark_loses_no_cart_in_stage_7() {
    // Long enough for the failovers (seconds) to happen inside the run.
    let report = run_crowd(&["--stage", "7", "--shoppers", "8", "--duration", "20s"]);
    let chaos = report["chaos"].as_array().expect("chaos log");
    assert!(
        chaos
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("zone a went dark"))),
        "zone a went dark meanwhile: {chaos:?}"
    );
    assert_eq!(
        count(&report, "carts_lost"),
        0,
        "the replica in zone b held every cart: {report}"
    );
    assert_eq!(count(&report, "carts_intact"), 8);
    assert!(count(&report, "account_writes") > 0, "{report}");
    assert_eq!(
        count(&report, "account_writes_lost"),
        0,
        "the synchronous standby held every acknowledged account write: {report}"
    );
}
