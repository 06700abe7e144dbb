//! The command line every stage binary shares: `up` (the default), `serve`
//! and `demo`.
//!
//! ```text
//! stage1 [up] [--port 8080] [--instances 3] [--instance-port-base 3001] [--behind nginx|haproxy]
//! stage1 serve --port 3001 --id i1 [--host 127.0.0.1] [--trusted-proxy 127.0.0.1]
//! stage1 demo
//! ```
//!
//! A stage's `main` is one line: `shop::cli::main::<Stage1>()`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::autoscale::{AutoscaleConfig, LoadMetric, ScaleRange};
use crate::front::{Behind, Engine};
use crate::instance::Instance;
use crate::stage::{BoxError, Scope, Services, Shop, Stage, StageInfo};
use crate::topology::{READY_MARKER, Topology, TopologyConfig};

/// `stageN [COMMAND]`
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli<A: Args> {
    #[command(subcommand)]
    command: Option<Command<A>>,
    /// With no command, `up` with these flags.
    #[command(flatten)]
    up: UpArgs<A>,
}

#[derive(Debug, Subcommand)]
enum Command<A: Args> {
    /// Start the whole stage: its instances behind the balancer (the default).
    Up(UpArgs<A>),
    /// Run one instance, to put behind any balancer.
    Serve(ServeArgs<A>),
    /// A narrated walkthrough of this stage's lesson, then exit.
    Demo(DemoArgs<A>),
}

#[derive(Clone, Debug, Args)]
struct UpArgs<A: Args> {
    /// The balancer's port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How many instances to start.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// The first instance's port; the others follow. 0 picks free ports.
    #[arg(long, default_value_t = 3001)]
    instance_port_base: u16,
    /// Put a real engine in front instead of this project's balancer
    /// (its configuration rendered from `deploy/`; see `shop::front`).
    #[arg(long, value_enum)]
    behind: Option<Engine>,
    /// Serve the shop over HTTPS: the balancer terminates TLS (a
    /// self-signed certificate for localhost unless --tls-cert is given)
    /// and tells the instances with X-Forwarded-Proto, so their cookies
    /// become Secure.
    #[arg(long)]
    tls: bool,
    /// A PEM certificate chain for --tls (needs --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// With --tls, also listen for plain HTTP on this port and redirect
    /// every request to HTTPS (0 picks a free port).
    #[arg(long, value_name = "PORT", requires = "tls")]
    redirect_http: Option<u16>,
    /// With --tls, send Strict-Transport-Security for this long (e.g. 1y).
    /// Off by default: it would pin a learner's localhost to HTTPS.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "tls")]
    hsts: Option<std::time::Duration>,
    /// Let an auto scaling group keep between MIN and MAX instances
    /// (e.g. 2..6), adding and removing them by load.
    #[arg(long, value_name = "MIN..MAX")]
    autoscale: Option<ScaleRange>,
    /// The load per instance the group keeps near (with --autoscale): in
    /// requests per second, or in requests in flight plus open sockets
    /// with --scale-on in-flight.
    #[arg(long, default_value_t = 50.0, requires = "autoscale")]
    target_load: f64,
    /// What the group measures (with --autoscale).
    #[arg(long, value_enum, default_value_t = LoadMetric::Requests, requires = "autoscale")]
    scale_on: LoadMetric,
    #[command(flatten)]
    stage: A,
}

#[derive(Clone, Debug, Args)]
struct ServeArgs<A: Args> {
    /// Port to listen on. 0 picks a free one (printed on start).
    #[arg(long)]
    port: u16,
    /// This instance's name, shown in `X-Served-By` and on the page.
    #[arg(long)]
    id: String,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Worker threads. One event loop per instance is the default: the shop
    /// scales by running more instances, and several multi-threaded
    /// instances on a few cores spend their time waking each other's threads
    /// (measured with the stage benchmarks in `scripts/`: three instances on
    /// two cores all got faster with one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// A balancer whose X-Forwarded-Proto and X-Forwarded-For, and whose
    /// health checks' X-LB-Backend-State (draining), are believed: its
    /// address, or a network of balancers (10.0.0.0/16); repeat for each.
    /// When it says the shopper came over HTTPS, every cookie this instance
    /// sets is marked Secure. The headers from any other peer are ignored:
    /// anyone can send them. Default: none.
    #[arg(long = "trusted-proxy", value_name = "IP[/PREFIX]", value_parser = crate::instance::parse_trusted_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,
    #[command(flatten)]
    stage: A,
}

#[derive(Clone, Debug, Args)]
struct DemoArgs<A: Args> {
    #[command(flatten)]
    stage: A,
}

/// Parses the command line, starts logging, runs the command.
pub fn main<S: Stage>() -> ExitCode {
    let cli = Cli::<S::Args>::parse();
    let serving = matches!(cli.command, Some(Command::Serve(_)));
    let demo = matches!(cli.command, Some(Command::Demo(_)));
    // A demo tells its own story; the balancer's warnings would interrupt it.
    crate::telemetry::init(match (serving, demo) {
        (true, _) => "info",
        (_, true) => "error",
        _ => "warn",
    });
    // An instance holds a file descriptor per connection, and so does the
    // balancer in `up`: the usual soft limit (1024) is a burst away.
    if let Err(error) = lb::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let mut builder = match &cli.command {
        Some(Command::Serve(args)) if args.threads == 1 => {
            tokio::runtime::Builder::new_current_thread()
        }
        Some(Command::Serve(args)) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(args.threads));
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            None => up::<S>(cli.up).await,
            Some(Command::Up(args)) => up::<S>(args).await,
            Some(Command::Serve(args)) => serve::<S>(args).await,
            Some(Command::Demo(mut args)) => {
                let exe = std::env::current_exe()?;
                let services = S::services(&mut args.stage, Scope::Fleet).await?;
                S::demo(args.stage, exe, services).await
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `stageN serve`: one instance until SIGINT/SIGTERM.
async fn serve<S: Stage>(mut args: ServeArgs<S::Args>) -> Result<(), BoxError> {
    crate::parent::die_with_launcher()?;
    let instance = Instance::new(&args.id)?.with_trusted_proxies(args.trusted_proxies.clone());
    let services = S::services(&mut args.stage, Scope::Instance).await?;
    for service in services.descriptions() {
        tracing::warn!(
            service,
            "started a private service for this one instance; instances started separately will not share it"
        );
    }
    tracing::info!(instance = %args.id, flags = %crate::flags::describe(&args.stage), "starting");
    let (carts, state) = S::start(&args.stage).await?;
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "port {} is already in use; choose another with --port",
                    args.port
                )
            } else {
                format!("cannot listen on {}:{}: {e}", args.host, args.port)
            }
        })?;
    let address = listener.local_addr()?;
    let shop = Arc::new(Shop::<S> {
        instance,
        carts,
        state,
    });
    // The launcher waits for this line (see `topology`); keep its shape.
    println!(
        "{} instance {} {READY_MARKER}http://{address}",
        S::INFO.package,
        args.id
    );
    tracing::info!(instance = %args.id, %address, "serving");
    crate::http::run(listener, shop, lb::signals::terminate()).await?;
    tracing::info!(instance = %args.id, "stopped");
    Ok(())
}

/// `stageN up`: the whole topology until Ctrl-C or SIGTERM.
async fn up<S: Stage>(mut args: UpArgs<S::Args>) -> Result<(), BoxError> {
    let info = S::INFO;
    // Started first and dropped last: the instances need them until the end.
    let services = S::services(&mut args.stage, Scope::Fleet).await?;
    let (placement, balancer_source) = services.placement();
    let config = TopologyConfig {
        placement,
        balancer_source,
        instances: args.instances,
        instance_port_base: args.instance_port_base,
        lb_port: args.port,
        env: crate::flags::instance_env(&args.stage)?,
        policy: S::policy(&args.stage),
        tls: match (args.tls, &args.tls_cert, &args.tls_key) {
            (false, _, _) => None,
            (true, Some(certificate), Some(key)) => Some(lb::TlsSettings::Files {
                certificate: certificate.clone(),
                key: key.clone(),
            }),
            (true, _, _) => Some(lb::TlsSettings::self_signed_for_localhost()),
        },
        hsts: args.hsts,
        redirect_http_port: args.redirect_http,
        autoscale: args.autoscale.map(|range| AutoscaleConfig {
            metric: args.scale_on,
            ..AutoscaleConfig::new(range, args.target_load)
        }),
        ..TopologyConfig::for_stage(std::env::current_exe()?, info)
    };
    if let Some(engine) = args.behind {
        if config.tls.is_some() {
            return Err(format!(
                "--tls is the project's balancer's; {} terminates TLS with its own configuration (see deploy/)",
                engine.name()
            )
            .into());
        }
        if config.autoscale.is_some() {
            return Err(format!(
                "--autoscale needs the project's balancer (the group adds and drains its backends); run without --behind {}",
                engine.name()
            )
            .into());
        }
        if config.placement.is_some() {
            // nginx and HAProxy would dial the instances from the host's
            // own address, which the instances' security group drops.
            return Err(format!(
                "{} places its instances in zones, reachable only from the project's balancer; run it without --behind",
                info.package
            )
            .into());
        }
        let behind = Behind::start(config, engine).await?;
        print_engine_banner(info, &behind, &services);
        lb::signals::terminate().await;
        println!(
            "\nstopping {} and {} instance(s)…",
            engine.name(),
            behind.instances().len()
        );
        behind.stop().await;
        drop(services);
        println!("stopped.");
        return Ok(());
    }
    let topology = Topology::start(config).await?;
    print_banner(info, &topology, &services);
    lb::signals::terminate().await;
    println!(
        "\nstopping {} instance(s) and the balancer…",
        topology.instances().len()
    );
    topology.stop().await;
    drop(services);
    println!("stopped.");
    Ok(())
}

fn print_banner(info: &StageInfo, topology: &Topology, services: &Services) {
    let policy = topology.policy();
    let url = topology.url();
    println!("\nMyClothes · {}", info.title);
    println!("  {}\n", info.lesson);
    let sticky = if info.sticky { ", sticky" } else { "" };
    println!(
        "  Shop:       {url}   (balancer, {}{sticky})",
        policy_name(policy)
    );
    println!(
        "  Dashboard:  {}   (health, load; kill, restart and add instances)",
        topology.dashboard_url()
    );
    print_tls(topology);
    for instance in topology.instances() {
        println!("  Instance {}: {}", instance.name, instance.url);
    }
    if let Some(scaling) = topology.scaling() {
        println!(
            "  Autoscaling: {}..{} instances, target {} {} (decisions on the dashboard)",
            scaling.min, scaling.max, scaling.target_load, scaling.metric
        );
    }
    for service in services.descriptions() {
        println!("  {service}");
    }
    if !info.try_this.is_empty() {
        println!("\n  Try:");
        for line in info.try_this {
            println!("    - {}", line.replace("{url}", &url));
        }
    }
    println!("\n  Ctrl-C stops everything.\n");
}

/// Behind TLS: where the certificate came from, its fingerprint (what a
/// browser's warning page shows, to compare), and a file holding it for
/// `curl --cacert`.
fn print_tls(topology: &Topology) {
    let balancer = topology.balancer();
    let (Some(description), Some(fingerprint)) =
        (balancer.tls_description(), balancer.tls_fingerprint())
    else {
        return;
    };
    println!("  TLS:        {description}");
    println!("              SHA-256 {fingerprint}");
    if let Some(pem) = balancer.tls_certificate_pem() {
        let url = topology.url();
        let port = url.rsplit(':').next().unwrap_or("8080");
        let path = std::env::temp_dir().join(format!("myclothes-{port}.pem"));
        match std::fs::write(&path, pem) {
            Ok(()) => println!(
                "              curl --cacert {} {url}/api/cart",
                path.display()
            ),
            Err(error) => tracing::warn!(%error, "cannot write the certificate for curl"),
        }
    }
    if let Some(redirect) = topology.redirect_url() {
        println!("  Plain HTTP: {redirect}   (redirects to HTTPS)");
    }
}

fn print_engine_banner(info: &StageInfo, behind: &Behind, services: &Services) {
    let url = behind.url();
    let engine = behind.engine();
    println!("\nMyClothes · {} · behind {}", info.title, engine.name());
    println!("  {}\n", info.lesson);
    println!("  Shop:       {url}   ({})", engine.name());
    println!(
        "  Status:     {url}{}   ({}'s own page)",
        engine.status_path(),
        engine.name()
    );
    println!(
        "  Config:     {}   (rendered from deploy/)",
        behind.config_path().display()
    );
    for instance in behind.instances() {
        println!("  Instance {}: {}", instance.name, instance.url);
    }
    for service in services.descriptions() {
        println!("  {service}");
    }
    println!("\n  Ctrl-C stops everything.\n");
}

fn policy_name(policy: lb::Policy) -> &'static str {
    match policy {
        lb::Policy::RoundRobin => "round-robin",
        lb::Policy::LeastConn => "least-connections",
        lb::Policy::LeastLoad => "least reported load",
        lb::Policy::HashParam => "hashing ?room= to one instance",
    }
}
