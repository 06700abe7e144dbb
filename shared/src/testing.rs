//! Helpers for the stages' test suites (and this crate's own), behind the
//! `testing` feature: they panic with a message instead of returning
//! errors, which is right in a test and wrong anywhere else.
//!
//! * [`LocalShop`]: instances *inside the test process* behind a real `lb`,
//!   on free ports. Quick to start; for tests that do not kill anything.
//! * [`start_stage`]: instances as real child processes, for tests that kill
//!   one (see [`crate::topology::TopologyConfig::for_tests`]).
//! * [`crate::shopper::Shopper`]: a client with a cookie jar.
//! * [`start_up`], [`send_signal`], [`wait_until`]: a stage binary run as a
//!   learner runs it (`stageN up`), then stopped.
//! * [`assert_up_flags_reach_every_instance`]: every flag given to `up`
//!   arrives in every instance it starts.
//! * [`children_of`] and [`is_alive`]: what processes a launcher left behind.
//! * [`browser::Browser`]: headless Chromium over WebDriver, for the pages.
//!
//! Everything binds 127.0.0.1 port 0, so suites run in parallel without
//! clashing, and stops when dropped.

pub mod browser;
pub mod https;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb::{BackendSpec, Balancer, Policy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::instance::Instance;
use crate::stage::{Shop, Stage, StageInfo};
use crate::topology::{Topology, TopologyConfig};

/// Shop instances served from this process, behind a balancer.
#[derive(Debug)]
pub struct LocalShop {
    url: String,
    // Dropping these senders stops the servers.
    _stops: Vec<oneshot::Sender<()>>,
}

impl LocalShop {
    /// Starts one instance of stage `S` per `(carts, state)` (named `i1`,
    /// `i2`, …) and a balancer in front of them.
    pub async fn start<S: Stage>(
        parts: Vec<(S::Carts, S::State)>,
        policy: Policy,
    ) -> std::io::Result<Self> {
        let mut stops = Vec::new();
        let mut specs = Vec::new();
        for (index, (carts, state)) in parts.into_iter().enumerate() {
            let name = format!("i{}", index + 1);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let url = format!("http://{}", listener.local_addr()?);
            let instance = Instance::new(&name).map_err(std::io::Error::other)?;
            let shop = Arc::new(Shop::<S> {
                instance,
                carts,
                state,
            });
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(crate::http::run(listener, shop, async {
                let _ = stopped.await;
            }));
            specs.push(BackendSpec::new(&name, &url).map_err(std::io::Error::other)?);
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
        Ok(Self { url, _stops: stops })
    }

    /// The balancer's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Starts a stage as its tests want it (see
/// [`TopologyConfig::for_tests`]): `exe` is `env!("CARGO_BIN_EXE_stageN")`.
pub async fn start_stage(exe: &str, stage: &StageInfo) -> Topology {
    Topology::start(TopologyConfig::for_tests(exe, stage))
        .await
        .unwrap_or_else(|e| panic!("{} did not start: {e}", stage.package))
}

/// Runs `EXE up` on free ports, as a learner would, and reads its banner
/// until the shop's URL. Its stdout keeps being drained so it never blocks.
pub fn start_up(exe: &str) -> (Child, String) {
    start_up_with(exe, &[])
}

/// [`start_up`] with more flags for `up` (`--behind nginx`).
pub fn start_up_with(exe: &str, flags: &[&str]) -> (Child, String) {
    let mut child = Command::new(exe)
        .args(["up", "--port", "0", "--instance-port-base", "0"])
        .args(flags)
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

/// Sends `up`'s launcher a Ctrl-C (SIGINT) and checks that it stops
/// cleanly and that none of `children` (its instances and servers) outlives
/// it, within `deadline`.
pub fn ctrl_c_stops_everything(launcher: &mut Child, children: &[u32], deadline: Duration) {
    send_signal(launcher, nix::sys::signal::Signal::SIGINT);
    assert!(launcher.wait().expect("exits").success(), "a clean stop");
    assert!(
        wait_until(deadline, || children.iter().all(|&pid| !is_alive(pid))),
        "no server or instance outlives the launcher"
    );
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

/// Runs `EXE up` with `flags` (`("--db-timeout", "3s")`…) and checks that
/// every instance it starts runs with each of them, as the instances' own
/// start-up log line shows (`flags=--db-timeout=3s …`, values declared
/// `hide_env_values` as `<set>`). Also checks that `flags` names every flag
/// stage `S` declares, so a flag added later cannot go untested.
///
/// The variables behind the flags are removed from the launcher's
/// environment first: what arrives must have come through `up`.
pub fn assert_up_flags_reach_every_instance<S: Stage>(exe: &str, flags: &[(&str, &str)]) {
    use clap::Args as _;
    let declared = S::Args::augment_args(clap::Command::new("stage"));
    let mut declared_longs: Vec<String> = declared
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect();
    declared_longs.sort();
    let mut given: Vec<String> = flags.iter().map(|(flag, _)| (*flag).to_owned()).collect();
    given.sort();
    assert_eq!(
        given,
        declared_longs,
        "the test must give every flag {} declares",
        S::INFO.package
    );

    let instances = 2;
    let mut command = Command::new(exe);
    command
        .args(["up", "--port", "0", "--instance-port-base", "0"])
        .args(["--instances", &instances.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for arg in declared.get_arguments() {
        if let Some(env) = arg.get_env() {
            command.env_remove(env);
        }
    }
    for (flag, value) in flags {
        if value.is_empty() {
            command.arg(flag);
        } else {
            command.arg(format!("{flag}={value}"));
        }
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{exe} up did not start: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut everything = Vec::new();
    while seen.len() < instances {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if line.contains("flags=") && line.contains("starting") {
                    seen.push(line.clone());
                }
                everything.push(line);
            }
            Err(_) => break,
        }
    }
    send_signal(&child, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert_eq!(
        seen.len(),
        instances,
        "every instance logs its flags when it starts; the launcher said:\n{}",
        everything.join("\n")
    );
    for line in &seen {
        for (flag, value) in flags {
            let expected = if value.is_empty() {
                format!("{flag}=true")
            } else {
                format!("{flag}={value}")
            };
            let hidden = format!("{flag}=<set>");
            assert!(
                line.contains(&format!("{expected} "))
                    || line.ends_with(&expected)
                    || line.contains(&hidden),
                "{flag} did not reach an instance as {expected}: {line}"
            );
        }
    }
}

/// The balancer's admin API as the dashboard uses it: every change carries
/// the admin token (`Authorization: Bearer …`) and a JSON body.
#[derive(Debug)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    /// The admin API of `topology`'s balancer.
    pub fn of(topology: &Topology) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: topology.url(),
            token: topology
                .admin_token()
                .expect("the topology's balancer serves the admin API")
                .to_owned(),
        }
    }

    /// A change (`POST`, `DELETE`) to `path` (`/_lb/…`) with `body`.
    pub fn change(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
    }
}
