//! Real engines in front: a stage's instances behind nginx or HAProxy.
//!
//! Every stage normally runs behind this project's own balancer (`lb`).
//! The lesson must not depend on it: a stateless shop is stateless behind
//! any balancer. [`Behind`] starts the same instances as
//! [`Topology`](crate::topology::Topology) and puts a real engine in front,
//! its configuration rendered from the templates in `deploy/`
//! ([`config`]) into a private folder:
//!
//! ```text
//! cargo run -p stage4 -- up --behind nginx      # or: scripts/behind nginx --stage 4
//! cargo run -p stage2 -- up --behind haproxy
//! ```
//!
//! Scaling works the way it does with these engines in production: the
//! configuration is rewritten and the engine reloaded (nginx: SIGHUP to
//! the master; HAProxy in master-worker mode: SIGUSR2). Old workers finish
//! the requests they hold; new ones use the new server list.

pub mod config;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use self::config::{Engine, ReadyMade, Server, Site};
use crate::services::{ManagedProcess, ServiceError, free_port, private_dir};
use crate::topology::{Fleet, InstanceInfo, LaunchError, TopologyConfig};

/// How long an engine may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// How long a removed instance keeps serving what the engine already sent
/// it, as a deregistration delay would (much shorter here).
const DEREGISTRATION_DELAY: Duration = Duration::from_millis(500);
/// How long an engine gets to stop gracefully.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A stage's instances behind a real engine. Dropping it stops the engine
/// and kills the instances; [`Behind::stop`] stops them gracefully.
#[derive(Debug)]
pub struct Behind {
    engine: Engine,
    fleet: Arc<Fleet>,
    address: SocketAddr,
    /// The servers the engine balances over now (removed ones are gone).
    site: Mutex<Site>,
    /// The engine's master process (`None` once stopped).
    process: Mutex<Option<ManagedProcess>>,
    config_path: PathBuf,
    /// The engine's folder: configuration, pid file, log. Removed last.
    _dir: tempfile::TempDir,
}

impl Behind {
    /// Starts the instances `config` asks for, then `engine` in front of
    /// them on `config.lb_port` (0: a free port).
    pub async fn start(config: TopologyConfig, engine: Engine) -> Result<Self, LaunchError> {
        let binary = find_engine(engine).map_err(service_error)?;
        let fleet = Arc::new(Fleet::start(config.clone()).await?);
        let dir = private_dir(engine.name()).map_err(|e| service_error(e.into()))?;
        // nginx's workers run as an unprivileged user when the master is
        // root, and must reach their spill folders inside: the folder holds
        // nothing secret (a configuration and a log).
        open_to_workers(dir.path()).map_err(|e| service_error(e.into()))?;
        let port = match config.lb_port {
            0 => free_port().map_err(|e| service_error(e.into()))?,
            port => port,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if std::net::TcpListener::bind(address).is_err() {
            return Err(LaunchError::PortInUse {
                port,
                flag: "--port",
            });
        }
        let site = Site {
            listen: address.to_string(),
            servers: servers_of(&fleet.instances()),
            policy: config.policy,
            sticky: config.sticky,
            health: config.health.unwrap_or(crate::topology::TEACHING_HEALTH),
            run_dir: dir.path().display().to_string(),
        };
        let config_path = dir.path().join(match engine {
            Engine::Nginx => "nginx.conf",
            Engine::Haproxy => "haproxy.cfg",
        });
        write_config(&config_path, &site.render(engine)).map_err(|e| service_error(e.into()))?;
        let process = spawn(engine, &binary, &config_path, dir.path()).map_err(service_error)?;
        let mut behind = Self {
            engine,
            fleet,
            address,
            site: Mutex::new(site),
            process: Mutex::new(Some(process)),
            config_path,
            _dir: dir,
        };
        behind.wait_until_ready().await.map_err(service_error)?;
        Ok(behind)
    }

    /// The engine's URL, `http://127.0.0.1:PORT`: where shoppers go.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The rendered configuration the engine runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every instance, running or not, in start order.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.fleet.instances()
    }

    /// Kills an instance with SIGKILL, as a crash would. The engine is not
    /// told: finding out is its job (health checks, failed requests).
    pub async fn kill_instance(&self, name: &str) -> Result<(), LaunchError> {
        self.fleet.kill(name).await.map_err(LaunchError::Config)
    }

    /// Starts a (killed or running) instance again on its own port.
    pub async fn restart_instance(&self, name: &str) -> Result<(), LaunchError> {
        self.fleet.restart(name).await.map_err(LaunchError::Config)
    }

    /// Starts one more instance, adds it to the configuration and reloads
    /// the engine (scale out).
    pub async fn add_instance(&self) -> Result<InstanceInfo, LaunchError> {
        let spec = self.fleet.add().await.map_err(LaunchError::Config)?;
        let added = self
            .fleet
            .instances()
            .into_iter()
            .find(|i| i.name == spec.name)
            .ok_or_else(|| LaunchError::Config(format!("instance {} vanished", spec.name)))?;
        self.change_servers(|servers| servers.extend(servers_of(std::slice::from_ref(&added))))?;
        Ok(added)
    }

    /// Takes an instance out of the configuration, reloads the engine,
    /// lets what it was sent finish, and stops it (scale in).
    pub async fn remove_instance(&self, name: &str) -> Result<(), LaunchError> {
        self.change_servers(|servers| servers.retain(|s| s.name != name))?;
        tokio::time::sleep(DEREGISTRATION_DELAY).await;
        self.fleet.kill(name).await.map_err(LaunchError::Config)
    }

    /// Stops the engine gracefully, then every instance.
    pub async fn stop(self) {
        let engine = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut engine) = engine {
            let _ = tokio::task::spawn_blocking(move || engine.stop(STOP_GRACE)).await;
        }
        self.fleet.stop_all().await;
    }

    fn change_servers(&self, change: impl FnOnce(&mut Vec<Server>)) -> Result<(), LaunchError> {
        let text = {
            let mut site = self.site.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut site.servers);
            site.render(self.engine)
        };
        write_config(&self.config_path, &text).map_err(|e| service_error(e.into()))?;
        let reload = match self.engine {
            Engine::Nginx => Signal::SIGHUP,
            Engine::Haproxy => Signal::SIGUSR2,
        };
        let process = self.process.lock().unwrap_or_else(|p| p.into_inner());
        let reloaded = match process.as_ref() {
            Some(process) => process.signal(reload),
            None => Err(std::io::Error::other("it has stopped")),
        };
        reloaded
            .map_err(|e| LaunchError::Config(format!("cannot reload {}: {e}", self.engine.name())))
    }

    async fn wait_until_ready(&mut self) -> Result<(), ServiceError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let connected = tokio::net::TcpStream::connect(self.address).await.is_ok();
            let slot = self.process.get_mut().unwrap_or_else(|p| p.into_inner());
            let Some(process) = slot.as_mut() else {
                return Err(ServiceError::Io(std::io::Error::other(
                    "the engine was stopped",
                )));
            };
            if let Some(status) = process.exited() {
                return Err(process.not_ready(format!("it exited ({status})")));
            }
            if connected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(process.not_ready(format!(
                    "not accepting connections on {} after {} s",
                    self.address,
                    READY_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        // The engine's process stops itself when dropped (ManagedProcess);
        // the instances must go now, not when the last reference does.
        self.fleet.kill_all_now();
    }
}

fn servers_of(instances: &[InstanceInfo]) -> Vec<Server> {
    instances
        .iter()
        .map(|i| Server {
            name: i.name.clone(),
            address: i.url.trim_start_matches("http://").to_owned(),
        })
        .collect()
}

/// Writes the configuration whole (a temporary file renamed over the old
/// one): an engine reloading at that moment never reads half a file.
fn write_config(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(partial, path)
}

fn open_to_workers(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// `nginx` and `haproxy` live in `/usr/sbin`, which is not on every
/// user's `PATH`.
fn find_engine(engine: Engine) -> Result<PathBuf, ServiceError> {
    crate::services::find_on_path(engine.name())
        .or_else(|| {
            ["/usr/sbin", "/usr/local/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(engine.name()))
                .find(|candidate| candidate.is_file())
        })
        .ok_or(ServiceError::MissingEngine {
            program: engine.name(),
            package: engine.package(),
        })
}

fn spawn(
    engine: Engine,
    binary: &Path,
    config: &Path,
    dir: &Path,
) -> Result<ManagedProcess, ServiceError> {
    let log = dir.join(format!("{}.log", engine.name()));
    let process = match engine {
        // In the foreground, errors to stderr (our log file), the folder
        // as its prefix; QUIT is nginx's graceful stop.
        Engine::Nginx => ManagedProcess::spawn(
            "nginx",
            binary,
            [
                "-p".as_ref(),
                dir.as_os_str(),
                "-c".as_ref(),
                config.as_os_str(),
                "-e".as_ref(),
                "stderr".as_ref(),
                "-g".as_ref(),
                "daemon off;".as_ref(),
            ],
            &log,
            None,
        )?
        .stop_with(Signal::SIGQUIT),
        // Master-worker (-W) in the foreground (-db): the master reloads
        // on SIGUSR2; USR1 is its soft stop.
        Engine::Haproxy => ManagedProcess::spawn(
            "haproxy",
            binary,
            [
                "-W".as_ref(),
                "-db".as_ref(),
                "-f".as_ref(),
                config.as_os_str(),
            ],
            &log,
            None,
        )?
        .stop_with(Signal::SIGUSR1),
    };
    Ok(process)
}

fn service_error(error: ServiceError) -> LaunchError {
    LaunchError::Balancer(error.to_string())
}
