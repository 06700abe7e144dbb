//! The real `stage5` binary as a learner runs it: `up` with its private
//! servers, Ctrl-C, and the demo.

use std::time::Duration;

use shop::testing::{children_of, ctrl_c_stops_everything, process_name, start_up};

const STAGE5: &str = env!("CARGO_BIN_EXE_stage5");

#[tokio::test]
async fn up_starts_private_servers_and_ctrl_c_stops_them_all() {
    let (mut launcher, url) = start_up(STAGE5);
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
            "stage5",
            "stage5",
            "stage5"
        ],
        "a primary and a replica, sessions and cache, three instances"
    );

    let catalog = reqwest::get(format!("{url}/api/products/TEE-RED-M"))
        .await
        .expect("the catalog through up");
    assert!(catalog.status().is_success());
    assert!(catalog.headers().contains_key("x-data-path"));

    ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(15));
}

#[test]
fn demo_narrates_where_reads_go_and_exits() {
    let story = shop::testing::run_demo(
        STAGE5,
        &[
            "REDIS_URL",
            "CACHE_URL",
            "DATABASE_URL",
            "DATABASE_REPLICA_URL",
        ],
    );
    assert!(
        story.contains("profile=cache-miss,replica,cached"),
        "{story}"
    );
    assert!(story.contains("profile=cache-hit"), "{story}");
    assert!(story.contains("profile=primary,invalidated"), "{story}");
    assert!(
        story.contains("replica-behind,primary"),
        "read-your-writes: {story}"
    );
    assert!(story.contains("replica-down,primary"), "fallback: {story}");
    assert!(story.contains("Lesson:"), "{story}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_flags_reach_every_instance() {
    // Instances prepare the database when they start, so it must be real;
    // Redis is connected on first use, so any address will do.
    let postgres = shop::services::postgres::PostgresCluster::start()
        .await
        .unwrap_or_else(|e| panic!("a private PostgreSQL primary + replica is needed: {e}"));
    let (primary, replica) = (postgres.primary_url(), postgres.replica_url());
    tokio::task::spawn_blocking(move || {
        shop::testing::assert_up_flags_reach_every_instance::<stage5::Stage5>(
            env!("CARGO_BIN_EXE_stage5"),
            &[
                ("--redis-url", "redis://127.0.0.1:9/"),
                ("--session-ttl", "7m"),
                ("--store-timeout", "750ms"),
                ("--secure-cookies", ""),
                ("--database-url", &primary),
                ("--database-replica-url", &replica),
                ("--cache-url", "redis://127.0.0.1:9/"),
                ("--cache-ttl", "2m"),
                ("--db-timeout", "3s"),
                ("--no-cache", ""),
            ],
        );
    })
    .await
    .expect("the check ran");
}
