//! The real `stage4` binary as a learner runs it: `up` with its private
//! `redis-server`, Ctrl-C, a missing `redis-server`, and the demo.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use shop::testing::{
    children_of, ctrl_c_stops_everything, is_alive, process_name, send_signal, start_up, wait_until,
};

const STAGE4: &str = env!("CARGO_BIN_EXE_stage4");

#[tokio::test]
async fn up_starts_a_private_redis_and_ctrl_c_stops_it_with_the_instances() {
    let (mut launcher, url) = start_up(STAGE4);
    let children = children_of(launcher.id());
    let redis: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&pid| process_name(pid) == "redis-server")
        .collect();
    assert_eq!(redis.len(), 1, "one private redis-server: {children:?}");
    assert_eq!(children.len(), 4, "and three instances: {children:?}");

    let alice = shop::shopper::Shopper::new(url).expect("client");
    let added = alice.add("TEE-RED-M", 1).await.expect("add through up");
    assert_eq!(added.qty_of("TEE-RED-M"), 1);

    ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(10));
}

#[tokio::test]
async fn killing_the_launcher_takes_redis_with_it() {
    let (mut launcher, _url) = start_up(STAGE4);
    let children = children_of(launcher.id());
    assert!(
        children
            .iter()
            .any(|&pid| process_name(pid) == "redis-server")
    );

    send_signal(&launcher, Signal::SIGKILL);
    launcher.wait().expect("reaped");
    assert!(
        wait_until(Duration::from_secs(10), || children
            .iter()
            .all(|&pid| !is_alive(pid))),
        "the parent-death signal stops Redis and the instances"
    );
}

#[test]
fn a_missing_redis_server_gives_one_clear_message() {
    let output = Command::new(STAGE4)
        .args(["up", "--port", "0", "--instance-port-base", "0"])
        .env_remove("REDIS_URL")
        .env("PATH", "/nonexistent")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("apt-get install redis-server") && stderr.contains("REDIS_URL"),
        "names the package and the variable: {stderr}"
    );
}

#[test]
fn demo_narrates_the_disposable_instance_and_exits() {
    let story = shop::testing::run_demo(STAGE4, &["REDIS_URL"]);
    assert!(story.contains("Kill it (SIGKILL)"), "{story}");
    assert!(
        story.contains("cart 2 × TEE-RED-M, 1 × SOCK-GREY-L"),
        "the cart outlives its instance: {story}"
    );
    assert!(story.contains("21 × SOCK-GREY-L"), "no add lost: {story}");
    assert!(story.contains("cart empty"), "no resurrection: {story}");
    assert!(story.contains("Lesson:"), "{story}");
}

#[test]
fn up_flags_reach_every_instance() {
    // The instances connect to Redis on first use, so an address nothing
    // listens on is enough to see the flag arrive.
    shop::testing::assert_up_flags_reach_every_instance::<stage4::Stage4>(
        STAGE4,
        &[
            ("--store", "redis"),
            ("--redis-url", "redis://127.0.0.1:9/"),
            ("--memcached-url", "memcache://127.0.0.1:9"),
            ("--database-url", "postgres://postgres@127.0.0.1:9/postgres"),
            ("--dynamodb-url", "http://127.0.0.1:9"),
            ("--dynamodb-local-credentials", ""),
            ("--session-ttl", "7m"),
            ("--store-timeout", "750ms"),
            ("--cache-timeout", "80ms"),
            ("--secure-cookies", ""),
        ],
    );
}
