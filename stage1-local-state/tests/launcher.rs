//! The real `stage1` binary as a learner runs it: `up`, Ctrl-C, a SIGKILL,
//! a busy port, and the demo.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::Signal;
use shop::testing::{children_of, is_alive, send_signal as signal, wait_until};

const STAGE1: &str = env!("CARGO_BIN_EXE_stage1");

fn start_up() -> (Child, String) {
    shop::testing::start_up(STAGE1)
}

#[tokio::test]
async fn up_serves_the_shop_through_the_balancer_and_ctrl_c_leaves_no_process() {
    let (mut launcher, url) = start_up();
    let instances = children_of(launcher.id());
    assert_eq!(
        instances.len(),
        3,
        "three instance processes: {instances:?}"
    );

    let page = reqwest::get(&url)
        .await
        .expect("the shop page through the balancer");
    assert!(page.status().is_success());
    assert!(page.headers().contains_key("x-served-by"));
    let html = page.text().await.expect("html");
    assert!(html.contains("Stage 1 · Local state") && html.contains("MyClothes"));

    signal(&launcher, Signal::SIGINT);
    let status = launcher.wait().expect("launcher exits");
    assert!(status.success(), "Ctrl-C is a clean stop: {status}");
    assert!(
        wait_until(Duration::from_secs(5), || instances
            .iter()
            .all(|&pid| !is_alive(pid))),
        "no instance outlives the launcher"
    );
    assert!(
        reqwest::get(&url).await.is_err(),
        "the balancer is gone too"
    );
}

#[tokio::test]
async fn killing_the_launcher_takes_its_instances_with_it() {
    let (mut launcher, _url) = start_up();
    let instances = children_of(launcher.id());
    assert_eq!(instances.len(), 3);

    signal(&launcher, Signal::SIGKILL);
    launcher.wait().expect("launcher reaped");
    assert!(
        wait_until(Duration::from_secs(5), || instances
            .iter()
            .all(|&pid| !is_alive(pid))),
        "the parent-death signal stops every instance"
    );
}

#[test]
fn a_busy_port_gives_one_line_naming_the_flag() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();

    let lb_busy = Command::new(STAGE1)
        .args(["up", "--port", &port, "--instance-port-base", "0"])
        .output()
        .expect("runs");
    assert!(!lb_busy.status.success());
    let stderr = String::from_utf8_lossy(&lb_busy.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&port) && stderr.contains("--port"),
        "{stderr}"
    );

    let instance_busy = Command::new(STAGE1)
        .args(["up", "--port", "0", "--instance-port-base", &port])
        .output()
        .expect("runs");
    assert!(!instance_busy.status.success());
    let stderr = String::from_utf8_lossy(&instance_busy.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--instance-port-base"), "{stderr}");
}

#[test]
fn demo_narrates_the_vanishing_cart_and_exits() {
    let story = shop::testing::run_demo(STAGE1, &[]);
    assert!(
        story.contains("served by i1") && story.contains("served by i2"),
        "{story}"
    );
    assert!(story.contains("cart empty"), "the cart vanishes: {story}");
    assert!(
        story.contains("cart 2 × TEE-RED-M"),
        "and comes back: {story}"
    );
    assert!(story.contains("Lesson:"), "{story}");
}

#[test]
fn up_flags_reach_every_instance() {
    // Stage 1 has no flags of its own; the check still proves that the
    // instances start with exactly that: nothing was invented on the way.
    shop::testing::assert_up_flags_reach_every_instance::<stage1::Stage1>(STAGE1, &[]);
}

#[tokio::test]
async fn up_behind_nginx_or_haproxy_round_robins_and_ctrl_c_stops_the_engine_too() {
    for engine in ["nginx", "haproxy"] {
        let (mut launcher, url) = shop::testing::start_up_with(STAGE1, &["--behind", engine]);
        let children = children_of(launcher.id());
        let engines = children
            .iter()
            .filter(|&&pid| shop::testing::process_name(pid) == engine)
            .count();
        assert_eq!(engines, 1, "{engine}'s master process: {children:?}");
        assert_eq!(children.len(), 4, "and three instances: {children:?}");

        // The engine, not our balancer, spreads the requests.
        let mut served_by = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let answer = reqwest::get(format!("{url}/api/cart"))
                .await
                .expect("the cart through the engine");
            assert!(answer.status().is_success());
            served_by.insert(
                answer.headers()["x-served-by"]
                    .to_str()
                    .expect("text")
                    .to_owned(),
            );
        }
        assert_eq!(served_by.len(), 3, "{engine} round-robins: {served_by:?}");

        shop::testing::ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(10));
    }
}
