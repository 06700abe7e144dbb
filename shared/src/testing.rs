//! Helpers for the stages' test suites (and this crate's own).
//!
//! * [`LocalShop`]: instances *inside the test process* behind a real `lb`,
//!   on free ports. Quick to start; for tests that do not kill anything.
//! * [`crate::topology::Topology`]: instances as real child processes, for
//!   tests that kill one (see [`crate::topology::TopologyConfig::for_tests`]).
//! * [`crate::shopper::Shopper`]: a client with a cookie jar.
//! * [`children_of`] and [`is_alive`]: what processes a launcher left behind.
//!
//! Everything binds 127.0.0.1 port 0, so suites run in parallel without
//! clashing, and stops when dropped.

use std::net::Ipv4Addr;
use std::sync::Arc;

use lb::{BackendSpec, Balancer, Policy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::http::{Instance, Shop};
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
