//! The real `stage1` binary as a learner runs it: `up`, Ctrl-C, a SIGKILL,
//! a busy port, and the demo.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shop::testing::{children_of, is_alive};

const STAGE1: &str = env!("CARGO_BIN_EXE_stage1");

/// Starts `stage1 up` on free ports and reads its banner until the shop URL.
fn start_up() -> (Child, String) {
    let mut child = Command::new(STAGE1)
        .args(["up", "--port", "0", "--instance-port-base", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stage1 starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the banner names the shop URL before stdout closes")
            .expect("readable stdout");
        if let Some(rest) = line.trim().strip_prefix("Shop:") {
            break rest.split_whitespace().next().expect("a URL").to_owned();
        }
    };
    // Keep draining stdout so the launcher never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn signal(child: &Child, signal: Signal) {
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        signal,
    )
    .expect("signal sent");
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
