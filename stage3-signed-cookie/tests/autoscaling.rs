//! An auto scaling group (`up --autoscale MIN..MAX --target-load N`) in
//! front of stage 3, the first stateless stage: real `stage3` processes
//! behind the real balancer, real load, real SIGSTOP.
//!
//! The timings are shortened (cooldowns of a second or two, where `up`
//! uses tens of seconds and AWS minutes); what is asserted is what the
//! group did and in which order, never how fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lb::BackendState;
use lb::supervisor::ScalingView;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shop::autoscale::{AutoscaleConfig, LoadMetric, ScaleRange};
use shop::shopper::Shopper;
use shop::testing::is_alive;
use shop::topology::{Topology, TopologyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const SECRET: &str = "6d79636c6f746865732d73746167652d332d746573742d7365637265742d3332";

/// The group with every wait shortened.
fn quick(min: usize, max: usize, target_load: f64) -> AutoscaleConfig {
    AutoscaleConfig {
        interval: Duration::from_millis(200),
        window: Duration::from_secs(1),
        scale_out_cooldown: Duration::from_secs(1),
        scale_in_cooldown: Duration::from_secs(2),
        deregistration_delay: Duration::from_secs(2),
        unhealthy_grace: Duration::from_secs(2),
        ..AutoscaleConfig::new(ScaleRange { min, max }, target_load)
    }
}

async fn stage3(instances: usize, autoscale: AutoscaleConfig) -> Topology {
    let mut config =
        TopologyConfig::for_tests(env!("CARGO_BIN_EXE_stage3"), &stage3::INFO).instances(instances);
    config.env = vec![("SHOP_COOKIE_SECRET".into(), SECRET.into())];
    config.autoscale = Some(autoscale);
    Topology::start(config).await.expect("stage 3 starts")
}

fn scaling(topology: &Topology) -> ScalingView {
    topology.scaling().expect("an auto scaling group")
}

fn actions(view: &ScalingView, action: &str) -> Vec<String> {
    view.decisions
        .iter()
        .filter(|d| d.action == action)
        .map(|d| d.reason.clone())
        .collect()
}

/// Names of the backends the balancer has, in each state.
fn backends_in(topology: &Topology, state: BackendState) -> Vec<String> {
    topology
        .balancer()
        .backends()
        .all()
        .iter()
        .filter(|b| b.state() == state)
        .map(|b| b.name().to_owned())
        .collect()
}

/// Polls `done` every 50 ms until it holds, or panics after `within`
/// with what the group was doing.
async fn eventually(
    topology: &Topology,
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {} s: {what}; the group: {:?}; backends: {:?}",
            within.as_secs(),
            topology.scaling(),
            topology
                .balancer()
                .backends()
                .all()
                .iter()
                .map(|b| (b.name().to_owned(), b.state(), b.in_flight()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shoppers reading the catalogue as fast as they can until dropped.
struct Load {
    stop: Arc<AtomicBool>,
}

impl Load {
    fn start(base: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..clients {
            let client = reqwest::Client::new();
            let url = format!("{base}/api/products");
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.get(&url).send().await.map(|r| r.bytes());
                }
            });
        }
        Self { stop }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Six clients at full speed until the group has three instances up.
async fn load_until_three_are_up(topology: &Topology) {
    let load = Load::start(&topology.url(), 6);
    eventually(
        topology,
        Duration::from_secs(30),
        "three instances up",
        || backends_in(topology, BackendState::Up).len() == 3,
    )
    .await;
    drop(load);
}

#[tokio::test]
async fn scales_out_under_load() {
    let topology = stage3(1, quick(1, 3, 20.0)).await;
    let base = topology.url();
    let shopper = Shopper::new(&base).expect("client");
    shopper.add("TEE-RED-M", 2).await.expect("added");

    load_until_three_are_up(&topology).await;

    let view = scaling(&topology);
    assert_eq!(view.running, 3, "{view:?}");
    let outs = actions(&view, "scale-out");
    assert!(!outs.is_empty(), "{view:?}");
    assert!(
        outs[0].contains("above the target 20"),
        "the reason gives the figures: {}",
        outs[0]
    );
    // Stateless: the new instances read the cart made before they existed.
    let mut seen_by = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let cart = shopper.cart().await.expect("cart");
        assert_eq!(cart.qty_of("TEE-RED-M"), 2, "{}", cart.summary());
        seen_by.insert(cart.served_by().to_owned());
    }
    assert_eq!(seen_by.len(), 3, "every instance served it: {seen_by:?}");
}

/// A `POST` whose body is held back: in flight at the balancer until
/// [`SlowPost::finish`] sends the rest.
struct SlowPost {
    stream: TcpStream,
}

const BODY: &str = r#"{"sku":"TEE-RED-M","qty":1}"#;

impl SlowPost {
    async fn start(lb: &str) -> Self {
        let address = lb.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            BODY.len(),
            &BODY[..5]
        );
        stream.write_all(head.as_bytes()).await.expect("send");
        Self { stream }
    }

    /// Sends the rest of the body; returns the response's status line.
    async fn finish(mut self) -> String {
        self.stream
            .write_all(&BODY.as_bytes()[5..])
            .await
            .expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            self.stream.read_to_end(&mut answer),
        )
        .await
        .expect("an answer within 10 s")
        .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        answer.lines().next().unwrap_or_default().to_owned()
    }
}

#[tokio::test]
async fn scales_in_after_cooldown_by_draining() {
    let config = AutoscaleConfig {
        deregistration_delay: Duration::from_secs(60),
        scale_in_cooldown: Duration::from_secs(4),
        ..quick(1, 2, 1000.0)
    };
    let topology = stage3(2, config).await;
    let started = Instant::now();
    let base = topology.url();
    // Keep a request in flight on each instance.
    let mut slow = Vec::new();
    let busy = || {
        topology
            .balancer()
            .backends()
            .all()
            .iter()
            .all(|b| b.in_flight() > 0)
    };
    while !busy() {
        assert!(slow.len() < 20, "20 slow requests did not reach both");
        slow.push(SlowPost::start(&base).await);
        let deadline = Instant::now() + Duration::from_millis(300);
        while !busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow requests took longer to place than the cooldown"
    );
    eventually(
        &topology,
        Duration::from_secs(20),
        "an instance draining",
        || !backends_in(&topology, BackendState::Draining).is_empty(),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "no scale-in before the cooldown"
    );
    let leaving = backends_in(&topology, BackendState::Draining)[0].clone();
    let pid = topology
        .instance(&leaving)
        .and_then(|i| i.pid)
        .expect("the draining instance runs");
    let view = scaling(&topology);
    assert!(
        actions(&view, "scale-in")
            .iter()
            .any(|r| r.contains(&format!("draining {leaving}"))),
        "{view:?}"
    );
    // While its request is in flight it stays: draining, running. (A
    // second of watching: the group looks five times in that time.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backends_in(&topology, BackendState::Draining),
        std::slice::from_ref(&leaving)
    );
    assert!(
        is_alive(pid),
        "{leaving} was stopped with a request in flight"
    );

    for request in slow {
        let status = request.finish().await;
        assert!(
            status.contains("200"),
            "every request in flight finished: {status}"
        );
    }
    eventually(
        &topology,
        Duration::from_secs(10),
        "the drained instance gone",
        || topology.balancer().backends().get(&leaving).is_none() && !is_alive(pid),
    )
    .await;
    let view = scaling(&topology);
    assert_eq!((view.running, view.desired), (1, 1), "{view:?}");
    assert!(
        actions(&view, "terminated")
            .iter()
            .any(|r| r.starts_with(&format!("{leaving} drained"))),
        "{view:?}"
    );
}

#[tokio::test]
async fn replaces_an_unhealthy_instance() {
    let topology = stage3(2, quick(2, 2, 1000.0)).await;
    let frozen = topology
        .instance("i1")
        .and_then(|i| i.pid)
        .expect("i1 runs");
    let pid = Pid::from_raw(i32::try_from(frozen).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");

    eventually(&topology, Duration::from_secs(30), "i1 replaced", || {
        let up = backends_in(&topology, BackendState::Up);
        topology.balancer().backends().get("i1").is_none() && up.len() == 2
    })
    .await;
    eventually(
        &topology,
        Duration::from_secs(5),
        "the frozen process killed",
        || !is_alive(frozen),
    )
    .await;
    let view = scaling(&topology);
    let replaced = actions(&view, "replace");
    assert!(
        replaced
            .iter()
            .any(|r| r.starts_with("i1 failed its health checks")),
        "{view:?}"
    );
    assert_eq!(view.running, 2);
    let shopper = Shopper::new(topology.url()).expect("client");
    for _ in 0..4 {
        let cart = shopper.add("TEE-RED-M", 1).await.expect("served");
        assert_ne!(cart.served_by(), "i1");
    }
}

#[tokio::test]
async fn never_goes_below_min_or_above_max() {
    let config = AutoscaleConfig {
        deregistration_delay: Duration::from_millis(500),
        scale_in_cooldown: Duration::from_secs(1),
        ..quick(2, 3, 1.0)
    };
    // Asked for 5, given the maximum.
    let topology = stage3(5, config).await;
    assert_eq!(topology.instances().len(), 3);

    // Far more load than three can carry at 1 request/s each.
    let load = Load::start(&topology.url(), 4);
    let mut most = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        most = most.max(topology.balancer().backends().all().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = scaling(&topology);
    assert_eq!((most, view.desired), (3, 3), "{view:?}");
    drop(load);

    // No load at all: down to the minimum, and no further.
    eventually(&topology, Duration::from_secs(20), "down to two", || {
        topology.balancer().backends().all().len() == 2 && scaling(&topology).running == 2
    })
    .await;
    let mut fewest = usize::MAX;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        fewest = fewest.min(topology.balancer().backends().all().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = scaling(&topology);
    assert_eq!((fewest, view.desired, view.running), (2, 2, 2), "{view:?}");
    assert_eq!(actions(&view, "scale-in").len(), 1, "{view:?}");
}

#[tokio::test]
async fn dashboard_shows_the_group_and_why_it_scaled() {
    use shop::testing::browser::{Browser, screenshot_path};
    // No scale-in while the page is looked at.
    let config = AutoscaleConfig {
        scale_in_cooldown: Duration::from_secs(600),
        ..quick(1, 3, 20.0)
    };
    let topology = stage3(1, config).await;
    load_until_three_are_up(&topology).await;

    let browser = Browser::start(1100).await;
    browser.goto(&topology.dashboard_url()).await;
    assert!(
        browser
            .wait_for(
                "return !document.querySelector('#scaling').hidden \
                 && document.querySelector('#scaling-figures').textContent.includes('running3')"
            )
            .await,
        "the panel shows three instances running: {}",
        browser.text("#scaling").await
    );
    let decisions = browser.text("#scaling-decisions").await;
    assert!(
        decisions.contains("scale-out") && decisions.contains("above the target 20"),
        "each decision with its reason: {decisions}"
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser
        .screenshot(&screenshot_path("autoscaling-dashboard"))
        .await;
    browser.quit().await;
}

#[tokio::test]
async fn scales_out_on_the_load_the_instances_report() {
    // `--scale-on in-flight`: what the instances say on /healthz
    // (requests in flight + sockets), not what the balancer counted.
    let config = AutoscaleConfig {
        metric: LoadMetric::InFlight,
        ..quick(1, 3, 1.0)
    };
    let topology = stage3(1, config).await;
    // Four requests held in flight on the one instance: 4 per instance,
    // against a target of 1, and hardly a request per second.
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(SlowPost::start(&topology.url()).await);
    }
    eventually(
        &topology,
        Duration::from_secs(30),
        "three instances up",
        || backends_in(&topology, BackendState::Up).len() == 3,
    )
    .await;
    let view = scaling(&topology);
    assert_eq!(view.metric, "in flight + sockets per instance");
    assert!(
        actions(&view, "scale-out")
            .iter()
            .any(|r| r.contains("in flight + sockets per instance")),
        "{view:?}"
    );
    for request in slow {
        assert!(request.finish().await.contains("200"));
    }
}
