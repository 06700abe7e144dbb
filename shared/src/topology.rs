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
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lb::supervisor::SupervisorFuture;
use lb::{BackendSpec, Balancer, HealthConfig, Policy, Sticky, Supervisor};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::autoscale::{AutoscaleConfig, Autoscaler, ScalingState};
use crate::parent::LAUNCHER_PID_ENV;
use crate::stage::StageInfo;

/// What the instances print once they accept connections.
pub(crate) const READY_MARKER: &str = "listening on ";
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
    /// Pin shoppers to instances with the balancer's cookie.
    pub sticky: bool,
    /// Health checks of the instances; `None` turns them off.
    pub health: Option<HealthConfig>,
    /// How long an open WebSocket may stay quiet both ways before the
    /// balancer closes it ([`lb::Config::tunnel_idle_timeout`]).
    pub tunnel_idle_timeout: Option<Duration>,
    /// Serve the balancer's dashboard and admin API under `/_lb/`.
    pub admin: bool,
    /// Extra environment for every instance.
    pub env: Vec<(OsString, OsString)>,
    /// Pass the instances' logs through to this process's stderr.
    pub show_logs: bool,
    /// Where each instance runs; `None`: on 127.0.0.1, named `i1`, `i2`, ….
    pub placement: Option<Arc<dyn Placement>>,
    /// The address the balancer connects to the instances from (see
    /// [`lb::Config::source_address`]); `None` lets the kernel choose.
    pub balancer_source: Option<IpAddr>,
    /// Terminate TLS at the balancer (`--tls`): shoppers speak HTTPS to
    /// it, it speaks plain HTTP to the instances.
    pub tls: Option<lb::TlsSettings>,
    /// With TLS, tell browsers to use only HTTPS here for this long.
    pub hsts: Option<Duration>,
    /// With TLS, a plain-HTTP port on 127.0.0.1 that redirects to it
    /// (0: any free port).
    pub redirect_http_port: Option<u16>,
    /// Let an auto scaling group add and remove instances by load
    /// (`--autoscale MIN..MAX`); `instances` is then its starting size,
    /// kept within MIN..MAX.
    pub autoscale: Option<AutoscaleConfig>,
}

/// Decides where each instance of a topology runs: stage 7 spreads them
/// over zones, each on an address (and a network namespace) of its own.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// Where the instance numbered `index` (from 0, in start order) runs.
    /// Called again for each instance added later (scale out).
    fn place(&self, index: usize) -> Result<Place, String>;

    /// The zones it places instances in (the dashboard offers to take
    /// each down); none by default.
    fn zones(&self) -> Vec<String> {
        Vec::new()
    }

    /// Takes zone `zone` down (its servers and its network; processes it
    /// can see in the zone, instances included, may go with it) or, with
    /// `up`, brings its servers and network back; the fleet then kills, or
    /// restarts, the zone's instances itself. Returns what was done.
    fn set_zone(&self, zone: &str, up: bool) -> lb::supervisor::SupervisorFuture<'_, String> {
        let _ = up;
        let message = format!("there is no zone {zone} here");
        Box::pin(async move { Err(message) })
    }
}

/// Where one instance runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its name (`X-Served-By`, the dashboard): `a1` says "zone a".
    pub name: String,
    /// The address it listens on.
    pub host: IpAddr,
    /// Its port; `None` uses the topology's port plan.
    pub port: Option<u16>,
    /// A command the instance is started through (`ip netns exec NS`), or
    /// empty.
    pub wrapper: Vec<OsString>,
    /// Its availability zone, if the placement has zones.
    pub zone: Option<String>,
}

impl Place {
    /// The default: `iN` on 127.0.0.1.
    fn local(index: usize) -> Self {
        Self {
            name: format!("i{}", index + 1),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            wrapper: Vec::new(),
            zone: None,
        }
    }
}

/// Health checks for a topology on one machine: every second, two strikes.
pub(crate) const TEACHING_HEALTH: HealthConfig = HealthConfig {
    interval: Duration::from_secs(1),
    timeout: Duration::from_secs(1),
    rise: 2,
    fall: 2,
};

impl TopologyConfig {
    /// A stage as `up` starts it: its policy and stickiness, three instances
    /// from port 3001, the balancer on 8080, health checks, the dashboard.
    pub(crate) fn for_stage(exe: impl Into<PathBuf>, stage: &StageInfo) -> Self {
        Self {
            exe: exe.into(),
            instances: 3,
            instance_port_base: 3001,
            lb_port: 8080,
            policy: stage.policy,
            sticky: stage.sticky,
            health: Some(TEACHING_HEALTH),
            tunnel_idle_timeout: Some(lb::DEFAULT_TUNNEL_IDLE_TIMEOUT),
            admin: true,
            env: Vec::new(),
            show_logs: true,
            placement: None,
            balancer_source: None,
            tls: None,
            hsts: None,
            redirect_http_port: None,
            autoscale: None,
        }
    }

    /// The same, on free ports, with logs only when `TEST_LOG=1`: what tests
    /// and demos want.
    pub fn for_tests(exe: impl Into<PathBuf>, stage: &StageInfo) -> Self {
        Self {
            instance_port_base: 0,
            lb_port: 0,
            show_logs: crate::telemetry::test_logs_wanted(),
            ..Self::for_stage(exe, stage)
        }
    }

    pub fn instances(mut self, instances: usize) -> Self {
        self.instances = instances;
        self
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

/// One instance: a name, an address, and (while it runs) a process.
#[derive(Debug)]
struct Slot {
    name: String,
    place: Place,
    url: String,
    port: u16,
    child: Option<Child>,
}

/// An instance as the topology shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    pub name: String,
    /// `http://127.0.0.1:PORT`, to talk to this instance directly.
    pub url: String,
    /// The process id, while it runs.
    pub pid: Option<u32>,
}

/// The instance processes, shared by the topology and the balancer's
/// dashboard (as its [`Supervisor`]); also what a real engine in front
/// ([`crate::front`]) balances over.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) config: TopologyConfig,
    /// Never held across an `.await`: a child is taken out to be killed.
    slots: Mutex<Vec<Slot>>,
    /// The number the next added instance gets: names are never reused,
    /// so a terminated `i4` and its successor are told apart.
    next_index: AtomicUsize,
    /// What the auto scaling group reports, when there is one.
    scaling: OnceLock<Arc<ScalingState>>,
}

impl Fleet {
    /// Starts `config.instances` instances and waits until each is ready.
    pub(crate) async fn start(config: TopologyConfig) -> Result<Self, LaunchError> {
        if config.instances == 0 {
            return Err(LaunchError::Config(
                "--instances must be at least 1".to_owned(),
            ));
        }
        let ports = instance_ports(&config)?;
        let mut starting = Vec::with_capacity(ports.len());
        for (index, port) in ports.into_iter().enumerate() {
            let place = place(&config, index).map_err(LaunchError::Config)?;
            let port = place.port.unwrap_or(port);
            starting.push(spawn_instance(&config, place, port)?);
        }
        let mut slots = Vec::with_capacity(starting.len());
        for pending in starting {
            slots.push(pending.ready().await?.into_slot());
        }
        Ok(Self {
            next_index: AtomicUsize::new(slots.len()),
            config,
            slots: Mutex::new(slots),
            scaling: OnceLock::new(),
        })
    }

    /// What the auto scaling group last decided, with the processes
    /// running counted now.
    fn scaling_view(&self) -> Option<lb::supervisor::ScalingView> {
        let mut view = self.scaling.get()?.view();
        view.running = self.running();
        Some(view)
    }

    /// Instance processes running now.
    pub(crate) fn running(&self) -> usize {
        self.slots().iter().filter(|s| s.child.is_some()).count()
    }

    /// Stops instance `name` (gracefully: SIGTERM, then SIGKILL after a
    /// grace; or at once) and forgets it: an auto scaling group's
    /// terminate. Returns once the process is gone.
    pub(crate) async fn terminate(&self, name: &str, graceful: bool) {
        let child = {
            let mut slots = self.slots();
            let Some(index) = slots.iter().position(|s| s.name == name) else {
                return;
            };
            slots.remove(index).child
        };
        if let Some(mut child) = child {
            if graceful {
                stop_child(&mut child).await;
            } else {
                let _ = child.kill().await;
            }
        }
    }

    /// Every instance, as a balancer's backend list.
    pub(crate) fn backends(&self) -> Result<Vec<BackendSpec>, lb::BackendSpecError> {
        self.slots()
            .iter()
            .map(|s| BackendSpec::new(&s.name, &s.url))
            .collect()
    }

    /// Every instance, running or not, in start order.
    pub(crate) fn instances(&self) -> Vec<InstanceInfo> {
        self.slots()
            .iter()
            .map(|s| InstanceInfo {
                name: s.name.clone(),
                url: s.url.clone(),
                pid: s.child.as_ref().and_then(Child::id),
            })
            .collect()
    }

    /// Stops every instance gracefully (SIGTERM, SIGKILL after a grace).
    pub(crate) async fn stop_all(&self) {
        let children: Vec<Child> = self
            .slots()
            .iter_mut()
            .filter_map(|s| s.child.take())
            .collect();
        for mut child in children {
            stop_child(&mut child).await;
        }
    }

    /// Kills every instance now, without waiting (for `Drop`).
    pub(crate) fn kill_all_now(&self) {
        for slot in self.slots().iter_mut() {
            if let Some(mut child) = slot.child.take() {
                let _ = child.start_kill();
            }
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_child(&self, name: &str) -> Result<Option<Child>, String> {
        let mut slots = self.slots();
        let slot = slots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no instance named {name}"))?;
        Ok(slot.child.take())
    }

    pub(crate) async fn kill(&self, name: &str) -> Result<(), String> {
        let mut child = self
            .take_child(name)?
            .ok_or_else(|| format!("instance {name} is not running"))?;
        child
            .kill()
            .await
            .map_err(|e| format!("cannot kill {name}: {e}"))
    }

    /// A whole zone down (its servers first, then its instances, which
    /// the placement's namespaces may have taken already), or back (its
    /// servers first, so the instances find them).
    async fn set_zone(&self, zone: &str, up: bool) -> Result<String, String> {
        let placement = self
            .config
            .placement
            .as_ref()
            .ok_or_else(|| format!("there is no zone {zone} here"))?;
        let mut done = vec![placement.set_zone(zone, up).await?];
        let names: Vec<String> = self
            .slots()
            .iter()
            .filter(|s| s.place.zone.as_deref() == Some(zone))
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            let outcome = if up {
                self.restart(&name)
                    .await
                    .map(|()| format!("{name} restarted"))
            } else {
                self.kill(&name).await.map(|()| format!("{name} killed"))
            };
            done.push(outcome.unwrap_or_else(|e| e));
        }
        Ok(done.join("; "))
    }

    pub(crate) async fn restart(&self, name: &str) -> Result<(), String> {
        if let Some(mut old) = self.take_child(name)? {
            stop_child(&mut old).await;
        }
        let (place, port) = self
            .slots()
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.place.clone(), s.port))
            .ok_or_else(|| format!("no instance named {name}"))?;
        let started = spawn_instance(&self.config, place, port)
            .map_err(|e| e.to_string())?
            .ready()
            .await
            .map_err(|e| e.to_string())?;
        let mut slots = self.slots();
        if let Some(slot) = slots.iter_mut().find(|s| s.name == name) {
            slot.child = Some(started.child);
        }
        Ok(())
    }

    pub(crate) async fn add(&self) -> Result<BackendSpec, String> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let place = place(&self.config, index)?;
        let port = match (place.port, self.config.instance_port_base) {
            (Some(port), _) => port,
            (None, 0) => 0,
            (None, base) => u16::try_from(index)
                .ok()
                .and_then(|i| base.checked_add(i))
                .ok_or("no port left for another instance")?,
        };
        let started = spawn_instance(&self.config, place, port)
            .map_err(|e| e.to_string())?
            .ready()
            .await
            .map_err(|e| e.to_string())?;
        let spec =
            BackendSpec::new(&started.place.name, &started.url).map_err(|e| e.to_string())?;
        self.slots().push(started.into_slot());
        Ok(spec)
    }
}

impl Supervisor for Fleet {
    fn kill(&self, name: &str) -> SupervisorFuture<'_, ()> {
        let name = name.to_owned();
        Box::pin(async move { Fleet::kill(self, &name).await })
    }

    fn restart(&self, name: &str) -> SupervisorFuture<'_, ()> {
        let name = name.to_owned();
        Box::pin(async move { Fleet::restart(self, &name).await })
    }

    fn add(&self) -> SupervisorFuture<'_, BackendSpec> {
        Box::pin(Fleet::add(self))
    }

    fn zones(&self) -> Vec<String> {
        self.config
            .placement
            .as_ref()
            .map(|p| p.zones())
            .unwrap_or_default()
    }

    fn set_zone(&self, zone: &str, up: bool) -> SupervisorFuture<'_, String> {
        let zone = zone.to_owned();
        Box::pin(async move { Fleet::set_zone(self, &zone, up).await })
    }

    fn scaling(&self) -> Option<lb::supervisor::ScalingView> {
        self.scaling_view()
    }
}

/// A running stage: instances plus balancer. Dropping it kills everything
/// (the instances are spawned with `kill_on_drop`); [`Topology::stop`] stops
/// them gracefully.
#[derive(Debug)]
pub struct Topology {
    lb_addr: SocketAddr,
    balancer: Arc<Balancer>,
    fleet: Arc<Fleet>,
    lb_stop: Option<oneshot::Sender<()>>,
    lb_task: Option<JoinHandle<()>>,
    autoscaler: Option<Autoscaler>,
    /// The plain-HTTP listener that redirects to HTTPS, if any.
    redirect_addr: Option<SocketAddr>,
}

impl Topology {
    pub async fn start(mut config: TopologyConfig) -> Result<Self, LaunchError> {
        if let Some(autoscale) = &config.autoscale {
            autoscale.check().map_err(LaunchError::Config)?;
            let range = autoscale.range;
            config.instances = config.instances.clamp(range.min, range.max);
        }
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
        let fleet = Arc::new(Fleet::start(config.clone()).await?);
        let backends = fleet
            .backends()
            .map_err(|e| LaunchError::Balancer(e.to_string()))?;
        let mut lb_config = lb::Config::new(backends, config.policy);
        lb_config.source_address = config.balancer_source;
        lb_config.tls = config.tls.clone();
        lb_config.hsts = config.hsts;
        lb_config.health = config.health;
        lb_config.tunnel_idle_timeout = config.tunnel_idle_timeout;
        lb_config.admin = config.admin;
        if config.sticky {
            lb_config.sticky = Some(
                Sticky::random(Duration::from_secs(24 * 60 * 60))
                    .map_err(|e| LaunchError::Balancer(e.to_string()))?,
            );
        }
        let balancer =
            Balancer::new(lb_config).map_err(|e| LaunchError::Balancer(e.to_string()))?;
        balancer.set_supervisor(Arc::clone(&fleet) as Arc<dyn Supervisor>);
        let autoscaler = config.autoscale.map(|autoscale| {
            let (autoscaler, state) =
                Autoscaler::start(autoscale, Arc::clone(&fleet), Arc::clone(&balancer));
            let _ = fleet.scaling.set(state);
            autoscaler
        });
        let redirect_listener = match (&config.tls, config.redirect_http_port) {
            (Some(_), Some(port)) => Some(bind_local(port, "--redirect-http").await?),
            _ => None,
        };
        let redirect_addr = redirect_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let (lb_stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&balancer);
        let https_port = lb_addr.port();
        let lb_task = tokio::spawn(async move {
            // One stop for both listeners: the shop and its redirect.
            let (stop_redirect, redirect_stopped) = tokio::sync::watch::channel(false);
            let redirect = redirect_listener.map(|listener| {
                let mut stopped = redirect_stopped;
                tokio::spawn(lb::redirect_to_https(listener, https_port, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                }))
            });
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = serving.serve(lb_listener, shutdown).await {
                tracing::error!(%error, "the balancer stopped");
            }
            let _ = stop_redirect.send(true);
            if let Some(redirect) = redirect {
                let _ = redirect.await;
            }
        });
        Ok(Self {
            lb_addr,
            balancer,
            fleet,
            lb_stop: Some(lb_stop),
            lb_task: Some(lb_task),
            autoscaler,
            redirect_addr,
        })
    }

    /// What the auto scaling group is doing, if there is one.
    pub fn scaling(&self) -> Option<lb::supervisor::ScalingView> {
        self.fleet.scaling_view()
    }

    /// The balancer's URL, `http://127.0.0.1:PORT` (`https://` behind
    /// TLS): where shoppers go.
    pub fn url(&self) -> String {
        format!("{}://{}", self.balancer.scheme(), self.lb_addr)
    }

    /// The plain-HTTP URL that redirects to [`Topology::url`], if any.
    pub fn redirect_url(&self) -> Option<String> {
        self.redirect_addr.map(|addr| format!("http://{addr}"))
    }

    /// The balancing policy in use.
    pub fn policy(&self) -> Policy {
        self.balancer.policy()
    }

    /// The dashboard's URL, carrying the admin token (in the fragment,
    /// which a browser never sends): what the banner prints.
    pub fn dashboard_url(&self) -> String {
        let token = self.balancer.admin_token().unwrap_or_default();
        format!("{}/_lb/#token={token}", self.url())
    }

    /// The token the balancer's admin API wants for a change
    /// (`Authorization: Bearer …`), if the admin API is on.
    pub fn admin_token(&self) -> Option<&str> {
        self.balancer.admin_token()
    }

    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// Every instance, running or not, in start order.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.fleet.instances()
    }

    pub fn instance(&self, name: &str) -> Option<InstanceInfo> {
        self.instances().into_iter().find(|i| i.name == name)
    }

    /// Kills an instance with SIGKILL, as a crash or a pulled plug would:
    /// it gets no chance to finish anything. Returns once it is gone.
    pub async fn kill_instance(&self, name: &str) -> Result<(), LaunchError> {
        self.fleet.kill(name).await.map_err(LaunchError::Config)
    }

    /// Starts a (killed or running) instance again on its own port.
    pub async fn restart_instance(&self, name: &str) -> Result<(), LaunchError> {
        self.fleet.restart(name).await.map_err(LaunchError::Config)
    }

    /// Starts one more instance and adds it to the balancer (scale out).
    pub async fn add_instance(&self) -> Result<InstanceInfo, LaunchError> {
        let spec = self.fleet.add().await.map_err(LaunchError::Config)?;
        self.balancer
            .backends()
            .add(spec.clone())
            .map_err(|e| LaunchError::Balancer(e.to_string()))?;
        self.instance(&spec.name)
            .ok_or_else(|| LaunchError::Config(format!("instance {} vanished", spec.name)))
    }

    /// Waits until the balancer reports `name` in `state` (the health checks
    /// take a couple of intervals to notice a change), or fails after `within`.
    pub async fn wait_for_backend(
        &self,
        name: &str,
        state: lb::BackendState,
        within: Duration,
    ) -> Result<(), LaunchError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.balancer.backends().get(name).map(|b| b.state());
            if now == Some(state) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LaunchError::Config(format!(
                    "backend {name} is {now:?}, not {state:?}, after {} s",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops everything gracefully: SIGTERM to each instance (SIGKILL after
    /// a grace period), then the balancer.
    pub async fn stop(mut self) {
        // No scaling while everything stops.
        drop(self.autoscaler.take());
        self.fleet.stop_all().await;
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
        // The balancer holds the fleet too (as its supervisor); make sure the
        // instances go now, not when the last reference does.
        self.fleet.kill_all_now();
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
    lb::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(|source| {
        match source.kind() {
            std::io::ErrorKind::AddrInUse => LaunchError::PortInUse { port, flag },
            _ => LaunchError::Listen { port, source },
        }
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
    place: Place,
    child: Child,
    ready: oneshot::Receiver<Result<String, String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// Where instance `index` runs: as the placement says, or on 127.0.0.1.
fn place(config: &TopologyConfig, index: usize) -> Result<Place, String> {
    match &config.placement {
        Some(placement) => placement.place(index),
        None => Ok(Place::local(index)),
    }
}

fn spawn_instance(
    config: &TopologyConfig,
    place: Place,
    port: u16,
) -> Result<Starting, LaunchError> {
    let mut command = match place.wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&config.exe);
            command
        }
        None => Command::new(&config.exe),
    };
    command
        .arg("serve")
        .arg("--host")
        .arg(place.host.to_string())
        .arg("--port")
        .arg(port.to_string())
        .arg("--id")
        .arg(&place.name)
        // The balancer's `X-Forwarded-Proto` is believed from its address
        // only (see `Instance::with_trusted_proxies`).
        .arg("--trusted-proxy")
        .arg(
            config
                .balancer_source
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .to_string(),
        )
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
        place,
        child,
        ready,
        stderr,
    })
}

/// An instance process that said it is ready.
struct Started {
    place: Place,
    url: String,
    port: u16,
    child: Child,
}

impl Started {
    fn into_slot(self) -> Slot {
        Slot {
            name: self.place.name.clone(),
            place: self.place,
            url: self.url,
            port: self.port,
            child: Some(self.child),
        }
    }
}

impl Starting {
    async fn ready(mut self) -> Result<Started, LaunchError> {
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
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(0);
        Ok(Started {
            place: self.place,
            url,
            port,
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
            name: self.place.name,
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
