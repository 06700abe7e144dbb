//! `lb`: the small reverse-proxy load balancer every MyClothes stage runs behind.
//!
//! Run with
//! `cargo run -p lb -- --listen 127.0.0.1:8080 --backend i1=http://127.0.0.1:3001 --backend i2=http://127.0.0.1:3002`
//! then `curl -i http://127.0.0.1:8080/healthz` a few times and watch
//! `X-Served-By` change.
//!
//! It does what the shop needs a balancer to do, and shows how:
//!
//! * `backend`: the configured backends and their live counters; requests
//!   only ever go to one of them.
//! * `policy`: round-robin or least-connections.
//! * `proxy`: the hyper server and the forwarding, with streamed bodies
//!   (`body`), hop-by-hop header removal and `X-Forwarded-*` (`headers`),
//!   timeouts; `pool`: keep-alive connections to the backends, per thread.
//! * [`run_threaded`]: the binary's shape, one event loop per core.
//! * `errors`: JSON 502/503/504 when no backend can answer.
//! * `tunnel`: WebSocket upgrades, then the bytes relayed both ways with a
//!   buffer only while some are in flight (`tunnel::relay`).
//! * `sticky`: the `lb_sticky` cookie that pins a shopper to a backend.
//! * `health`: active checks of `/healthz` with rise/fall thresholds;
//!   `proxy` adds passive marking and one retry elsewhere.
//! * `admin`, [`metrics`], [`supervisor`]: `/_lb/` — the dashboard, the
//!   runtime API (add, drain, remove), Prometheus metrics, and instance
//!   controls when a launcher supervises the backends.
//! * [`tls`]: HTTPS, terminated here (`--tls`); [`redirect`]: a plain-HTTP
//!   listener that sends shoppers to it (`--redirect-http`).
//!
//! In production this job is done by nginx, HAProxy, Envoy or a cloud load
//! balancer (an AWS ALB). This one is small enough to read in one sitting,
//! and fast enough to be measured against them (`scripts/bench-lb`).

mod admin;
mod backend;
mod body;
mod client;
mod dial;
mod errors;
mod headers;
mod health;
pub mod metrics;
mod policy;
mod pool;
mod proxy;
pub mod redirect;
pub mod signals;
mod sticky;
pub mod supervisor;
pub mod tls;
mod tunnel;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

pub use admin::AdminTokenError;
pub use backend::{
    Backend, BackendSet, BackendSetError, BackendSpec, BackendSpecError, BackendState, Limits,
};
pub use body::MIN_UPLOAD_RATE;
pub use headers::origin_matches_host;
pub use health::{HealthConfig, STATE_HEADER};
pub use policy::Policy;
pub use proxy::Balancer;
pub use redirect::redirect_to_https;
pub use sticky::{Sticky, StickyKeyError};
pub use supervisor::Supervisor;
pub use tls::{TlsError, TlsSettings};

/// The longest any of the balancer's waits is taken to be: a timeout given
/// as "a thousand years" means for ever, and must not overflow the clock
/// when a deadline is computed from it.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How long an open tunnel may stay quiet by default: nginx's
/// `proxy_read_timeout`. The shop's sockets ping three times as often.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a write to a client may wait for the client to read, by
/// default: nginx's `send_timeout`.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a balancer needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub backends: Vec<BackendSpec>,
    pub policy: Policy,
    /// How long to wait for a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// How long to wait for a backend's response head once the request is
    /// sent (a streamed upload: once its last piece went through, so one
    /// that keeps moving is never cut, unless it trickles in below
    /// [`MIN_UPLOAD_RATE`] past this timeout), and then for each next piece of its
    /// body (nginx's `proxy_read_timeout`: a backend frozen half-way is
    /// given up); also
    /// how long a small idempotent request's body, held whole so that it
    /// can be sent again, may take to arrive (then 408).
    pub request_timeout: Duration,
    /// How long an open tunnel (a WebSocket) may carry no byte either way
    /// before it is closed; `None`: for ever.
    pub tunnel_idle_timeout: Option<Duration>,
    /// How long a write to a client may wait for it to read before the
    /// connection is closed and its response given up (nginx's
    /// `send_timeout`); `None`: for ever.
    pub send_timeout: Option<Duration>,
    /// Client connections held open at most; past that, new ones wait in
    /// the kernel's accept queue until one ends (HAProxy's `maxconn`).
    /// `None`: half the open-file limit when the balancer starts, less a
    /// few, so that each client can also have a connection to a backend.
    pub max_clients: Option<usize>,
    /// How much load each backend is given at once.
    pub limits: Limits,
    /// The query parameter the `hash-param` policy hashes.
    pub hash_param: String,
    /// Pin shoppers to backends with the `lb_sticky` cookie.
    pub sticky: Option<Sticky>,
    /// Active health checks; `None` turns them off.
    pub health: Option<HealthConfig>,
    /// Serve the dashboard and admin API under `/_lb/`.
    pub admin: bool,
    /// The token admin changes must carry; `None` makes a random one.
    pub admin_token: Option<String>,
    /// Let the admin API add backends that are not on this machine.
    pub allow_remote_backends: bool,
    /// The address connections to the backends (and health checks) come
    /// from; `None` lets the kernel choose. Stage 7's security groups let
    /// only this address reach the instances.
    pub source_address: Option<std::net::IpAddr>,
    /// Speak HTTPS with this certificate; `None` is plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Send `Strict-Transport-Security: max-age=…` on responses over TLS
    /// (ignored without TLS). Off by default: a browser told once would
    /// refuse plain HTTP to the host for that long, and a learner's
    /// `localhost` serves plain stages too.
    pub hsts: Option<Duration>,
}

impl Config {
    /// The defaults used by the stages' launcher: short timeouts, because the
    /// backends are on this machine.
    pub fn new(backends: Vec<BackendSpec>, policy: Policy) -> Self {
        Self {
            backends,
            policy,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            tunnel_idle_timeout: Some(DEFAULT_TUNNEL_IDLE_TIMEOUT),
            send_timeout: Some(DEFAULT_SEND_TIMEOUT),
            max_clients: None,
            limits: Limits::default(),
            hash_param: "room".to_owned(),
            sticky: None,
            health: Some(HealthConfig::default()),
            admin: false,
            admin_token: None,
            allow_remote_backends: false,
            source_address: None,
            tls: None,
            hsts: None,
        }
    }
}

/// The `lb` command line.
#[derive(Debug, clap::Parser)]
#[command(name = "lb", version, about = "A small reverse-proxy load balancer")]
#[command(group(clap::ArgGroup::new("tls_on").args(["tls", "tls_cert"]).multiple(true)))]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "LB_LISTEN")]
    pub listen: SocketAddr,
    /// A backend as NAME=http://HOST:PORT; repeat for each backend.
    #[arg(long = "backend", value_name = "NAME=URL", required = true)]
    pub backends: Vec<BackendSpec>,
    /// How the next backend is chosen.
    #[arg(long, value_enum, default_value_t = Policy::RoundRobin)]
    pub policy: Policy,
    /// The query parameter `--policy hash-param` hashes (e.g. `?room=tees`).
    #[arg(long, default_value = "room")]
    pub hash_param: String,
    /// Time allowed to connect to a backend (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for a backend's response head after the last piece of
    /// the request went through, and then between two pieces of its body
    /// (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Time an open WebSocket may carry nothing either way before it is
    /// closed (the shop pings every 20s); 0 keeps quiet tunnels for ever.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub tunnel_idle_timeout: Duration,
    /// Time a client may read nothing of what is sent to it before its
    /// connection is closed (a download it stopped reading is given up and
    /// its backend let go); 0 waits for ever.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,
    /// Client connections held open at most; more wait in the kernel's
    /// accept queue until one ends. Default: half the open-file limit, so
    /// that each client can also have a connection to a backend.
    #[arg(long)]
    pub max_clients: Option<std::num::NonZeroUsize>,
    /// Requests in flight to one backend at most; more wait in its queue.
    #[arg(long, default_value_t = Limits::default().max_conns, value_parser = clap::value_parser!(usize))]
    pub max_conns: usize,
    /// Requests that may wait for one backend; more get 503 + Retry-After.
    #[arg(long, default_value_t = Limits::default().queue)]
    pub queue: usize,
    /// How long a request may wait in a backend's queue.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub queue_timeout: Duration,
    /// Pin each shopper to one backend with the `lb_sticky` cookie.
    #[arg(long)]
    pub sticky: bool,
    /// How long an idle shopper stays pinned (sliding; e.g. 30m, 1day).
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    pub sticky_ttl: Duration,
    /// Key for the sticky cookie's HMAC, hex, at least 32 bytes. Give every
    /// balancer of a fleet the same key. Default: random per process.
    #[arg(long, env = "LB_STICKY_KEY", hide_env_values = true)]
    pub sticky_key: Option<String>,
    /// Time between two health checks of a backend.
    #[arg(long, default_value = "2s", value_parser = parse_period)]
    pub health_interval: Duration,
    /// Time a health check may take.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
    /// Good checks in a row that bring a backend back.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub rise: u32,
    /// Failed checks in a row that take a backend out.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub fall: u32,
    /// Turn active health checks off (passive marking stays).
    #[arg(long)]
    pub no_health_checks: bool,
    /// Serve the dashboard and admin API under /_lb/ (to loopback clients
    /// only; changes need the admin token, printed at start).
    #[arg(long)]
    pub admin: bool,
    /// The admin token (at least 16 characters). Default: random per run.
    #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Let the admin API add backends that are not on this machine.
    #[arg(long)]
    pub allow_remote_backends: bool,
    /// Connect to the backends from this local address (one the security
    /// groups in front of them let in).
    #[arg(long)]
    pub source_address: Option<std::net::IpAddr>,
    /// Worker threads, each with its own event loop (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Speak HTTPS (TLS terminated here; the backends still get plain
    /// HTTP, with X-Forwarded-Proto: https). Without --tls-cert, a
    /// self-signed certificate is made at start for localhost, 127.0.0.1
    /// and ::1, and its SHA-256 fingerprint printed: browsers will warn.
    #[arg(long)]
    pub tls: bool,
    /// The certificate chain to serve, PEM (site certificate first, then
    /// intermediates). Turns TLS on; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Names a self-signed certificate is made for, instead of localhost,
    /// 127.0.0.1 and ::1 (repeat; DNS names or IP addresses).
    #[arg(
        long = "tls-name",
        value_name = "NAME",
        requires = "tls",
        conflicts_with = "tls_cert"
    )]
    pub tls_names: Vec<String>,
    /// Write the certificate served (PEM) to FILE, for clients to trust:
    /// `curl --cacert FILE https://localhost:8080/`.
    #[arg(long, value_name = "FILE", requires = "tls_on")]
    pub tls_cert_out: Option<std::path::PathBuf>,
    /// Send Strict-Transport-Security with this max-age on HTTPS responses
    /// (e.g. 1y, 1day). Off by default: a browser that gets it refuses
    /// plain HTTP to this host for that long, localhost included.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "tls_on")]
    pub hsts: Option<Duration>,
    /// Also listen for plain HTTP on ADDR, answering every request with a
    /// 308 redirect to the same path over HTTPS (e.g. 127.0.0.1:8080 while
    /// --listen is 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR", requires = "tls_on")]
    pub redirect_http: Option<SocketAddr>,
}

impl Args {
    pub fn config(&self) -> Result<Config, StickyKeyError> {
        let sticky = match (self.sticky, &self.sticky_key) {
            (false, _) => None,
            (true, Some(key)) => Some(Sticky::with_hex_key(key, self.sticky_ttl)?),
            (true, None) => Some(Sticky::random(self.sticky_ttl)?),
        };
        Ok(Config {
            backends: self.backends.clone(),
            policy: self.policy,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            tunnel_idle_timeout: Some(self.tunnel_idle_timeout).filter(|t| !t.is_zero()),
            send_timeout: Some(self.send_timeout).filter(|t| !t.is_zero()),
            max_clients: self.max_clients.map(std::num::NonZeroUsize::get),
            hash_param: self.hash_param.clone(),
            limits: Limits {
                max_conns: self.max_conns,
                queue: self.queue,
                queue_timeout: self.queue_timeout,
            },
            sticky,
            health: (!self.no_health_checks).then_some(HealthConfig {
                interval: self.health_interval,
                timeout: self.health_timeout,
                rise: self.rise,
                fall: self.fall,
            }),
            admin: self.admin,
            admin_token: self.admin_token.clone(),
            allow_remote_backends: self.allow_remote_backends,
            source_address: self.source_address,
            tls: self.tls_settings(),
            hsts: self.hsts,
        })
    }

    /// Where the certificate comes from, if TLS is on.
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(certificate), Some(key)) => Some(TlsSettings::Files {
                certificate: certificate.clone(),
                key: key.clone(),
            }),
            _ if !self.tls => None,
            _ if self.tls_names.is_empty() => Some(TlsSettings::self_signed_for_localhost()),
            _ => Some(TlsSettings::SelfSigned {
                names: self.tls_names.clone(),
            }),
        }
    }
}

/// Why the balancer could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Backends(#[from] BackendSetError),
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Parses the period of something repeated (`2s`, `250ms`), refusing
/// zero: a timer that fires every 0 s is a busy loop (tokio's `interval`
/// panics on it), so `--health-interval 0s` is a clear error at start.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(period) if period.is_zero() => Err("a period must be longer than 0".to_owned()),
        Ok(period) => Ok(period),
        Err(error) => Err(error.to_string()),
    }
}

/// Raises this process's open-file limit to the most it may have.
///
/// Every connection is a file descriptor, and a balancer holds two per
/// proxied request (client and backend). The usual soft limit, 1024, is
/// reached by a burst of a few hundred clients; the hard limit is often a
/// thousand times higher. (nginx has `worker_rlimit_nofile` for this.)
/// Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// File descriptors kept back from `--max-clients`'s default: listeners,
/// health checks, logs, and the pool's idle connections beyond one per
/// client.
const FILES_KEPT_BACK: u64 = 64;

/// `--max-clients` when not given: half the open-file limit (a client and
/// its backend connection are two files), less [`FILES_KEPT_BACK`].
/// HAProxy derives its `maxconn` from `ulimit -n` the same way.
pub(crate) fn default_max_clients() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let files = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let clients = files.saturating_sub(FILES_KEPT_BACK) / 2;
    usize::try_from(clients).unwrap_or(usize::MAX).max(1)
}

/// Runs a balancer on `addr` with one single-threaded runtime per worker
/// thread, each accepting on its own `SO_REUSEPORT` socket (the kernel
/// spreads new connections across them), until Ctrl-C or SIGTERM.
///
/// This is nginx's and HAProxy's shape: a request, the client connection it
/// came on and the pooled backend connection it goes out on all stay on one
/// thread. Measured side by side (`scripts/bench-lb`), it is what let this
/// balancer keep up with them; a single multi-threaded runtime spent much of
/// its time waking tasks across threads.
pub fn run_threaded(addr: SocketAddr, config: Config, workers: usize) -> Result<(), RunError> {
    serve_threaded(Balancer::new(config)?, addr, workers, None)
}

/// [`run_threaded`] with a balancer already made (so that the caller can
/// first write out its certificate), and optionally a plain-HTTP listener
/// on `redirect_http` that sends every request to the balancer's HTTPS
/// port ([`redirect_to_https`]), served on the main thread.
pub fn serve_threaded(
    balancer: std::sync::Arc<Balancer>,
    addr: SocketAddr,
    workers: usize,
    redirect_http: Option<SocketAddr>,
) -> Result<(), RunError> {
    let workers = workers.max(1);
    // Bind every socket up front, so a busy port is reported before anything
    // starts, and port 0 resolves to one port shared by all workers.
    let first = reuseport_listener(addr)?;
    let addr = first.local_addr()?;
    let redirect = redirect_http
        .map(|at| listening_socket(at, false))
        .transpose()?;
    if let Some(token) = balancer.admin_token() {
        // Stderr, like the rest of the log; the token never goes elsewhere.
        eprintln!(
            "admin API and dashboard: {}://{addr}/_lb/#token={token}",
            balancer.scheme()
        );
    }
    if let (Some(fingerprint), Some(what)) =
        (balancer.tls_fingerprint(), balancer.tls_description())
    {
        eprintln!("HTTPS with a {what}");
        eprintln!("  SHA-256 fingerprint: {fingerprint}");
    }
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(reuseport_listener(addr)?);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let balancer = std::sync::Arc::clone(&balancer);
        let mut stopped = stopped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lb-worker-{index}"))
            .spawn(move || -> Result<(), RunError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let shutdown = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    balancer.accept(listener, shutdown).await
                })?;
                Ok(())
            })?;
        threads.push(thread);
    }
    // The main thread runs the health checks and waits for the signal.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _checks = balancer.start_health_checks();
        let _redirect = match redirect {
            Some(listener) => {
                let listener = TcpListener::from_std(listener)?;
                eprintln!(
                    "plain HTTP on {} redirects to https (port {})",
                    listener.local_addr()?,
                    addr.port()
                );
                let serve = redirect_to_https(listener, addr.port(), std::future::pending());
                Some(proxy::AbortOnDrop::new(tokio::spawn(async move {
                    if let Err(error) = serve.await {
                        tracing::error!(%error, "the redirect listener failed");
                    }
                })))
            }
            None => None,
        };
        signals::terminate().await;
        Ok::<_, std::io::Error>(())
    })?;
    let _ = stop.send(true);
    for thread in threads {
        thread
            .join()
            .map_err(|_| RunError::Io(std::io::Error::other("a worker thread panicked")))??;
    }
    Ok(())
}

/// A listening socket with `SO_REUSEPORT`, so several can share one port.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    listening_socket(addr, true)
}

/// Connections the kernel queues for `accept` before it starts dropping
/// new ones (the kernel caps it at `net.core.somaxconn`, 4096 on current
/// Linux). A burst of clients lands here all at once; a short queue makes
/// the ones that do not fit retry their handshake a second later, then
/// three, then seven.
const ACCEPT_BACKLOG: i32 = 4096;

/// A listening socket on `addr` with a long accept queue, for a balancer
/// to serve on (what `run_threaded` uses, one per worker).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(listening_socket(addr, false)?)
}

fn listening_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `[::]` takes IPv4 clients too (as `::ffff:a.b.c.d`).
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        let mut line = vec!["lb", "--backend", "i1=http://127.0.0.1:3001"];
        line.extend_from_slice(flags);
        Args::try_parse_from(line)
    }

    #[test]
    fn a_zero_health_interval_is_refused_with_a_clear_error() {
        let error = parse(&["--health-interval", "0s"]).expect_err("refused");
        assert!(error.to_string().contains("longer than 0"), "{error}");
        let args = parse(&["--health-interval", "250ms"]).expect("a period");
        assert_eq!(args.health_interval, Duration::from_millis(250));
    }

    #[test]
    fn tls_flags_choose_where_the_certificate_comes_from() {
        let settings = |flags: &[&str]| parse(flags).expect("valid flags").tls_settings();
        assert_eq!(settings(&[]), None);
        assert_eq!(
            settings(&["--tls"]),
            Some(TlsSettings::self_signed_for_localhost())
        );
        assert_eq!(
            settings(&["--tls", "--tls-name", "shop.test"]),
            Some(TlsSettings::SelfSigned {
                names: vec!["shop.test".to_owned()]
            })
        );
        assert_eq!(
            settings(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]),
            Some(TlsSettings::Files {
                certificate: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let config = parse(&["--tls", "--hsts", "1day"])
            .expect("valid flags")
            .config()
            .expect("a config");
        assert_eq!(config.hsts, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn tls_only_flags_need_tls() {
        for flags in [
            &["--hsts", "1y"][..],
            &["--redirect-http", "127.0.0.1:8080"][..],
            &["--tls-cert-out", "c.pem"][..],
            &["--tls-cert", "c.pem"][..],
            &["--tls-name", "shop.test"][..],
        ] {
            assert!(parse(flags).is_err(), "{flags:?} was accepted");
        }
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--hsts", "1y"]).is_ok());
    }
}
