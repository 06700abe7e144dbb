//! Helpers for the stages' test suites (and this crate's own).
//!
//! * [`LocalShop`]: instances *inside the test process* behind a real `lb`,
//!   on free ports. Quick to start; for tests that do not kill anything.
//! * [`crate::topology::Topology`]: instances as real child processes, for
//!   tests that kill one (see [`crate::topology::TopologyConfig::for_tests`]).
//! * [`crate::shopper::Shopper`]: a client with a cookie jar.
//! * [`SessionShop`]: a stage's topology pointed at a private `redis-server`
//!   the test controls (pause, kill, restart, read its keys).
//! * [`start_up`], [`send_signal`], [`wait_until`]: a stage binary run as a
//!   learner runs it (`stageN up`), then stopped.
//! * [`children_of`] and [`is_alive`]: what processes a launcher left behind.
//!
//! Everything binds 127.0.0.1 port 0, so suites run in parallel without
//! clashing, and stops when dropped.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb::{BackendSpec, Balancer, Policy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::http::{Instance, Shop};
use crate::services::redis::{REDIS_URL_ENV, RedisServer};
use crate::stage::StageInfo;
use crate::store::CartStore;
use crate::topology::{Topology, TopologyConfig};

/// Shop instances served from this process, behind a balancer.
#[derive(Debug)]
pub struct LocalShop {
    url: String,
    instance_urls: Vec<String>,
    balancer: Arc<Balancer>,
    // Dropping these senders stops the servers.
    _stops: Vec<oneshot::Sender<()>>,
}

impl LocalShop {
    /// Starts one instance per store (named `i1`, `i2`, …) and a balancer in
    /// front of them.
    pub async fn start<S: CartStore>(
        stage: &'static StageInfo,
        stores: Vec<S>,
        policy: Policy,
    ) -> std::io::Result<Self> {
        let mut stops = Vec::new();
        let mut specs = Vec::new();
        let mut instance_urls = Vec::new();
        for (index, store) in stores.into_iter().enumerate() {
            let name = format!("i{}", index + 1);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let url = format!("http://{}", listener.local_addr()?);
            let instance = Instance::new(&name).map_err(std::io::Error::other)?;
            let shop = Arc::new(Shop {
                stage,
                instance,
                store,
            });
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(crate::instance::run(listener, shop, async {
                let _ = stopped.await;
            }));
            specs.push(BackendSpec::new(&name, &url).map_err(std::io::Error::other)?);
            instance_urls.push(url);
            stops.push(stop);
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let balancer =
            Balancer::new(lb::Config::new(specs, policy)).map_err(std::io::Error::other)?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(Arc::clone(&balancer).serve(listener, async {
            let _ = stopped.await;
        }));
        stops.push(stop);
        Ok(Self {
            url,
            instance_urls,
            balancer,
            _stops: stops,
        })
    }

    /// The balancer's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Each instance's own URL, to bypass the balancer.
    pub fn instance_urls(&self) -> &[String] {
        &self.instance_urls
    }

    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }
}

/// Starts a stage as its tests want it (see
/// [`TopologyConfig::for_tests`]): `exe` is `env!("CARGO_BIN_EXE_stageN")`.
pub async fn start_stage(exe: &str, stage: &StageInfo) -> Topology {
    Topology::start(TopologyConfig::for_tests(exe, stage))
        .await
        .unwrap_or_else(|e| panic!("{} did not start: {e}", stage.package))
}

/// A stage whose sessions live in a `redis-server` the test controls.
#[derive(Debug)]
pub struct SessionShop {
    pub topology: Topology,
    pub redis: RedisServer,
}

impl SessionShop {
    /// Starts a private `redis-server`, then the stage (three instances
    /// behind round-robin) pointed at it, with `env` added for every
    /// instance (e.g. `SHOP_SESSION_TTL=2s`).
    pub async fn start(exe: &str, stage: &StageInfo, env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("a private redis-server is needed: {e}"));
        let mut config = TopologyConfig::for_tests(exe, stage);
        config.env.push((REDIS_URL_ENV.into(), redis.url().into()));
        config
            .env
            .extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let topology = Topology::start(config)
            .await
            .unwrap_or_else(|e| panic!("{} did not start: {e}", stage.package));
        Self { topology, redis }
    }

    pub fn url(&self) -> String {
        self.topology.url()
    }

    /// A new shopper (an empty cookie jar) at the balancer.
    pub fn shopper(&self) -> crate::shopper::Shopper {
        crate::shopper::Shopper::new(self.url()).expect("an HTTP client")
    }

    /// A plain connection to the same Redis, to look at what the shop wrote.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .connection()
            .await
            .expect("a connection to the test's redis-server")
    }

    /// Every key in Redis (SCAN, fine for a test's handful).
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut redis = self.redis_connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    pub async fn stop(self) {
        self.topology.stop().await;
    }
}

/// A request from a client without a cookie jar, carrying exactly
/// `Cookie: sid=<sid>` when `sid` is given: how a test plays a planted,
/// replayed or stolen session id (stages 4 and 5).
pub fn request_with_sid(
    method: reqwest::Method,
    url: &str,
    sid: Option<&str>,
) -> reqwest::RequestBuilder {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    let request = client.request(method, url);
    match sid {
        Some(sid) => request.header(
            reqwest::header::COOKIE,
            format!("{}={sid}", crate::store::redis::SESSION_COOKIE),
        ),
        None => request,
    }
}

/// Runs `EXE up` on free ports, as a learner would, and reads its banner
/// until the shop's URL. Its stdout keeps being drained so it never blocks.
pub fn start_up(exe: &str) -> (Child, String) {
    let mut child = Command::new(exe)
        .args(["up", "--port", "0", "--instance-port-base", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{exe} up did not start: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
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
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

/// A process's command name (`/proc/PID/comm`), e.g. `redis-server`.
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Sends `signal` to a child process.
pub fn send_signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, signal).expect("signal sent");
}

/// Polls `done` until it holds or `deadline` passes; returns the last answer.
/// For waiting on processes, not for asserting how fast anything is.
pub fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Runs `EXE demo` (a stage's narrated walkthrough) to the end without the
/// variables in `unset`, checks it succeeded, and returns what it printed.
pub fn run_demo(exe: &str, unset: &[&str]) -> String {
    let mut command = std::process::Command::new(exe);
    command.arg("demo");
    for name in unset {
        command.env_remove(name);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {exe} demo: {e}"));
    let story = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{exe} demo failed:\n{story}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    story
}

/// The pids of the live processes whose parent is `parent` (from `/proc`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_of(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect()
}

/// Whether `pid` is a running (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    stat_of(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// `(state, parent pid)` from `/proc/PID/stat`. The command name in field 2
/// may contain spaces and parentheses, so parse from the last `)`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
