//! A whole stage on one machine: N instance processes behind the balancer.
//!
//! Used by `stageN up`, by `stageN demo` and by every stage's test suite, so
//! what a learner runs is exactly what the tests check. Instances are child
//! processes of a stage binary in `serve` mode (real processes, so that
//! "kill an instance" is a real SIGKILL); the balancer runs inside this
//! process, from the `lb` library.
//!
//! Start-up, step by step:
//! 1. bind the balancer's port (a busy port is reported with the flag to
//!    change, before anything is started);
//! 2. check the instances' ports are free;
//! 3. spawn each instance with `serve --port P --id iN` and wait for the line
//!    `listening on http://…` on its stdout (with port 0 the instance picks a
//!    free port itself and the line says which: no race between "find a free
//!    port" and "bind it");
//! 4. start the balancer with those URLs as backends.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb::{BackendSpec, Balancer, Policy};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::parent::LAUNCHER_PID_ENV;

/// What the instances print once they accept connections.
pub const READY_MARKER: &str = "listening on ";
/// How long an instance may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an instance gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of an instance's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 40;

/// What to start.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    /// The stage binary (`CARGO_BIN_EXE_stage1` in tests, `current_exe` in `up`).
    pub exe: PathBuf,
    pub instances: usize,
    /// First instance port; the others follow. 0 = any free ports.
    pub instance_port_base: u16,
    /// The balancer's port on 127.0.0.1. 0 = any free port.
    pub lb_port: u16,
    pub policy: Policy,
    /// Extra environment for every instance.
    pub env: Vec<(OsString, OsString)>,
    /// Pass the instances' logs through to this process's stderr.
    pub show_logs: bool,
}

impl TopologyConfig {
    /// Free ports everywhere, logs only with `TEST_LOG=1`: what tests want.
    pub fn for_tests(exe: impl Into<PathBuf>, instances: usize, policy: Policy) -> Self {
        Self {
            exe: exe.into(),
            instances,
            instance_port_base: 0,
            lb_port: 0,
            policy,
            env: Vec::new(),
            show_logs: crate::telemetry::test_logs_wanted(),
        }
    }
}

/// Why a topology could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("port {port} is already in use; choose another with {flag}")]
    PortInUse { port: u16, flag: &'static str },
    #[error("cannot listen on port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("instance {name} did not start: {reason}{}", tail(.stderr))]
    NotReady {
        name: String,
        reason: String,
        stderr: Vec<String>,
    },
    #[error("{0}")]
    Balancer(String),
    #[error("{0}")]
    Config(String),
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n  its last output:\n    {}", lines.join("\n    "))
    }
}

/// One running instance process.
#[derive(Debug)]
pub struct InstanceProcess {
    name: String,
    url: String,
    child: Child,
}

impl InstanceProcess {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`, to talk to this instance directly.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A running stage: instances plus balancer. Dropping it kills everything
/// (the instances are spawned with `kill_on_drop`); [`Topology::stop`] stops
/// them gracefully.
#[derive(Debug)]
pub struct Topology {
    lb_addr: SocketAddr,
    balancer: Arc<Balancer>,
    lb_stop: Option<oneshot::Sender<()>>,
    lb_task: Option<JoinHandle<()>>,
    instances: Vec<InstanceProcess>,
}

impl Topology {
    pub async fn start(config: TopologyConfig) -> Result<Self, LaunchError> {
        if config.instances == 0 {
            return Err(LaunchError::Config(
                "--instances must be at least 1".to_owned(),
            ));
        }
        let lb_listener = bind_local(config.lb_port, "--port").await?;
        let lb_addr = lb_listener
            .local_addr()
            .map_err(|source| LaunchError::Listen {
                port: config.lb_port,
                source,
            })?;
        let ports = instance_ports(&config)?;

        let mut starting = Vec::with_capacity(ports.len());
        for (index, port) in ports.into_iter().enumerate() {
            starting.push(spawn_instance(&config, &format!("i{}", index + 1), port)?);
        }
        let mut instances = Vec::with_capacity(starting.len());
        for pending in starting {
            instances.push(pending.ready().await?);
        }

        let backends = instances
            .iter()
            .map(|i| {
                BackendSpec::new(&i.name, &i.url).map_err(|e| LaunchError::Balancer(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let balancer = Balancer::new(lb::Config::new(backends, config.policy))
            .map_err(|e| LaunchError::Balancer(e.to_string()))?;
        let (lb_stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&balancer);
        let lb_task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = serving.serve(lb_listener, shutdown).await {
                tracing::error!(%error, "the balancer stopped");
            }
        });
        Ok(Self {
            lb_addr,
            balancer,
            lb_stop: Some(lb_stop),
            lb_task: Some(lb_task),
            instances,
        })
    }

    /// The balancer's URL, `http://127.0.0.1:PORT`: where shoppers go.
    pub fn url(&self) -> String {
        format!("http://{}", self.lb_addr)
    }

    pub fn lb_addr(&self) -> SocketAddr {
        self.lb_addr
    }

    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    pub fn instances(&self) -> &[InstanceProcess] {
        &self.instances
    }

    pub fn instance(&self, name: &str) -> Option<&InstanceProcess> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Kills an instance with SIGKILL, as a crash or a pulled plug would:
    /// it gets no chance to finish anything. Returns once it is gone.
    pub async fn kill_instance(&mut self, name: &str) -> Result<(), LaunchError> {
        let instance = self
            .instances
            .iter_mut()
            .find(|i| i.name == name)
            .ok_or_else(|| LaunchError::Config(format!("no instance named {name}")))?;
        instance
            .child
            .kill()
            .await
            .map_err(|source| LaunchError::Spawn {
                exe: name.to_owned(),
                source,
            })
    }

    /// Stops everything gracefully: SIGTERM to each instance (SIGKILL after
    /// a grace period), then the balancer.
    pub async fn stop(mut self) {
        for instance in &mut self.instances {
            stop_child(&mut instance.child).await;
        }
        if let Some(stop) = self.lb_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.lb_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(task) = self.lb_task.take() {
            task.abort();
        }
        // The instances' `kill_on_drop` does the rest.
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "instance ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

async fn bind_local(port: u16, flag: &'static str) -> Result<TcpListener, LaunchError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => LaunchError::PortInUse { port, flag },
            _ => LaunchError::Listen { port, source },
        })
}

/// The port each instance is asked to use. Fixed ports are checked first,
/// so that a busy one is reported before any process starts.
fn instance_ports(config: &TopologyConfig) -> Result<Vec<u16>, LaunchError> {
    if config.instance_port_base == 0 {
        return Ok(vec![0; config.instances]);
    }
    (0..config.instances)
        .map(|i| {
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| config.instance_port_base.checked_add(i))
                .ok_or_else(|| {
                    LaunchError::Config(
                        "--instance-port-base is too high for that many instances".to_owned(),
                    )
                })?;
            match StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(_probe) => Ok(port),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    Err(LaunchError::PortInUse {
                        port,
                        flag: "--instance-port-base (0 picks free ports)",
                    })
                }
                Err(source) => Err(LaunchError::Listen { port, source }),
            }
        })
        .collect()
}

/// An instance process that has been spawned but has not said it is ready.
struct Starting {
    name: String,
    child: Child,
    ready: oneshot::Receiver<Result<String, String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

fn spawn_instance(config: &TopologyConfig, name: &str, port: u16) -> Result<Starting, LaunchError> {
    let mut command = Command::new(&config.exe);
    command
        .arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--id")
        .arg(name)
        .env(LAUNCHER_PID_ENV, std::process::id().to_string())
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        // Instances log warnings only, unless the user asked for more.
        .env(
            "RUST_LOG",
            std::env::var_os("RUST_LOG").unwrap_or_else(|| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        exe: config.exe.display().to_string(),
        source,
    })?;
    let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    if let Some(err) = child.stderr.take() {
        tokio::spawn(keep_stderr(err, Arc::clone(&stderr), config.show_logs));
    }
    let (tx, ready) = oneshot::channel();
    match child.stdout.take() {
        Some(out) => {
            tokio::spawn(watch_stdout(out, tx, config.show_logs));
        }
        None => {
            let _ = tx.send(Err("its stdout was not captured".to_owned()));
        }
    }
    Ok(Starting {
        name: name.to_owned(),
        child,
        ready,
        stderr,
    })
}

impl Starting {
    async fn ready(mut self) -> Result<InstanceProcess, LaunchError> {
        let outcome = tokio::time::timeout(READY_TIMEOUT, &mut self.ready).await;
        let url = match outcome {
            Ok(Ok(Ok(url))) => url,
            Ok(Ok(Err(reason))) => return Err(self.failed(reason).await),
            Ok(Err(_closed)) => {
                return Err(self.failed("it stopped unexpectedly".to_owned()).await);
            }
            Err(_elapsed) => {
                return Err(self
                    .failed(format!("not ready after {} s", READY_TIMEOUT.as_secs()))
                    .await);
            }
        };
        Ok(InstanceProcess {
            name: self.name,
            url,
            child: self.child,
        })
    }

    async fn failed(mut self, reason: String) -> LaunchError {
        let _ = self.child.kill().await;
        // Give the stderr reader a moment to collect the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stderr = self
            .stderr
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default();
        LaunchError::NotReady {
            name: self.name,
            reason,
            stderr,
        }
    }
}

/// Reads an instance's stdout: the first `listening on URL` line makes it
/// ready; later lines are passed on (or dropped) so the pipe never fills.
async fn watch_stdout(
    out: impl AsyncRead + Unpin,
    ready: oneshot::Sender<Result<String, String>>,
    show: bool,
) {
    let mut lines = BufReader::new(out).lines();
    let mut ready = Some(ready);
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some(url) = line.split(READY_MARKER).nth(1) {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(url.trim().to_owned()));
                        // The banner lists the instances; no need to echo.
                        continue;
                    }
                }
                if show {
                    println!("{line}");
                }
            }
            Ok(None) => break,
            Err(error) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(format!("reading its output failed: {error}")));
                }
                break;
            }
        }
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("it exited before listening".to_owned()));
    }
}

async fn keep_stderr(err: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>, show: bool) {
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if show {
            eprintln!("{line}");
        }
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}
