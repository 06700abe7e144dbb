//! The region: availability zones `a` and `b` as Linux network namespaces.
//!
//! ```text
//!   the host (the learner's machine, outside the VPC)
//!     mc7hR  10.77.R.1 (shoppers, curl)   10.77.R.2 (the balancer: sg-lb)
//!       │ a veth pair
//!   ┌───┴──────────── namespace mc7-R-vpc: one bridge, br0 ──────────────┐
//!   │ v-a1  v-a2  v-a-data      v-b1  v-b2  v-b-data      v-region       │
//!   └──┬─────┬─────┬──────────────┬─────┬─────┬─────────────┬────────────┘
//!    a1.11 a2.12 a-data.20      b1.31 b2.32 b-data.40     region.10
//!    ────── zone a ──────       ────── zone b ──────      (regional services)
//! ```
//!
//! Each *machine* is a network namespace `mc7-R-<name>` with one interface
//! (`eth0`) on the bridge and one address; its processes see nothing else,
//! and its own nftables rules (its security group, [`crate::security_groups`])
//! decide what may reach it. Instances run in `a1`, `b1`, `a2`, … (zones
//! alternate, as an auto scaling group spreads them); the data tier's
//! servers run in `a-data` and `b-data`; `region` stands in for what AWS
//! runs across zones (the RDS endpoint, the failover orchestration, a
//! third Sentinel) and survives the loss of either zone. Taking a zone
//! down kills every process in its namespaces and cuts their links.
//!
//! `R` is a run number (1–250) claimed with an owner file, so that tests
//! and two learners' launchers can run side by side; a launcher killed
//! with SIGKILL leaves its namespaces behind, and a later one that finds
//! the number's owner gone removes them before it takes the number.
//!
//! Namespaces need root. Without it the same layout runs on loopback
//! addresses (127.77.R.x: Linux routes all of 127/8 to `lo`), with no
//! firewall and no link to cut: the banner says so.
//!
//! Why namespaces and not containers or virtual machines? The workshop's
//! machines have no Docker, and a namespace is exactly the part of a
//! container that matters here: its own interfaces, addresses, routes and
//! firewall, for processes that are otherwise ordinary (`ps` shows them,
//! their logs are files). Why one namespace per machine and not one per
//! zone? Security groups belong to a machine's interface: the database and
//! an instance in the same zone must still be separate, with separate rules.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use shop::services::{find_on_path, ip_binary};

use crate::security_groups::{self, Group};

/// Why the region could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{0}")]
    Unsupported(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("no free run number: 250 regions are in use (see {0})")]
    Full(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the zones are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Network namespaces, a bridge, and nftables security groups (root).
    Namespaces,
    /// Loopback addresses, no firewall; `why` says what was missing.
    Loopback { why: String },
}

/// What the learner asked for (`--network`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkChoice {
    /// Namespaces when running as root with `ip` and `nft`, else loopback.
    #[default]
    Auto,
    /// Namespaces, or an error saying what is missing.
    Namespaces,
    /// Loopback addresses, even as root.
    Loopback,
}

/// An availability zone, or the regional services that span them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    A,
    B,
    /// Not a zone: the regional services that survive either zone's loss.
    Region,
}

impl Zone {
    /// `a`, `b` or `region`: the first letter of its machines' names.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::Region => "region",
        }
    }

    /// `a` or `b`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            _ => None,
        }
    }
}

/// One machine of the region: a namespace with one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// `a1`, `b-data`, `region`.
    pub name: String,
    /// Which zone's power and network it shares.
    pub zone: Zone,
    /// Its one address (on `eth0`, or on `lo` in the loopback layout).
    pub address: Ipv4Addr,
    /// Its security group: which rules guard it, and which sets list it.
    pub group: Group,
    /// Its namespace; `None` in the loopback layout.
    pub netns: Option<String>,
}

/// The last byte of the `region` machine's address.
pub const REGION_HOST: u8 = 10;
/// The last byte of zone a's data machine's address.
pub const A_DATA_HOST: u8 = 20;
/// The last byte of zone b's data machine's address.
pub const B_DATA_HOST: u8 = 40;
/// The host side: shoppers, and the balancer's own source address.
const SHOPPER_HOST: u8 = 1;
const BALANCER_HOST: u8 = 2;
/// Instances: zone a from .11, zone b from .31, up to nine each.
const INSTANCES_PER_ZONE: usize = 9;

/// The zones of one run, torn down when dropped.
#[derive(Debug)]
pub struct Region {
    run: u8,
    mode: Mode,
    ip: PathBuf,
    nft: Option<PathBuf>,
    machines: Mutex<Vec<Machine>>,
    owner_file: PathBuf,
}

impl Region {
    /// Claims a run number and builds the VPC namespace and the host's
    /// link into it (namespaces mode); machines are added with
    /// [`Self::add_machine`].
    pub fn create(choice: NetworkChoice) -> Result<Self, RegionError> {
        let mode = decide_mode(choice)?;
        let ip = match mode {
            Mode::Namespaces => ip_binary().map_err(|e| RegionError::Unsupported(e.to_string()))?,
            Mode::Loopback { .. } => PathBuf::new(),
        };
        let nft = nft_binary();
        let (run, owner_file) = claim_run()?;
        let region = Self {
            run,
            mode,
            ip,
            nft,
            machines: Mutex::new(Vec::new()),
            owner_file,
        };
        if region.mode == Mode::Namespaces {
            region.remove_namespaces();
            region.build_vpc()?;
        }
        Ok(region)
    }

    /// Namespaces, or the loopback layout (and why).
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// This run's address for host byte `host` (10.77.R.host or 127.77.R.host).
    pub fn address(&self, host: u8) -> Ipv4Addr {
        match self.mode {
            Mode::Namespaces => Ipv4Addr::new(10, 77, self.run, host),
            Mode::Loopback { .. } => Ipv4Addr::new(127, 77, self.run, host),
        }
    }

    /// Where a shopper's requests come from (the host's first address).
    pub fn shopper_address(&self) -> Ipv4Addr {
        self.address(SHOPPER_HOST)
    }

    /// The balancer's source address: the one member of `sg-lb`.
    pub fn balancer_address(&self) -> Ipv4Addr {
        self.address(BALANCER_HOST)
    }

    fn vpc(&self) -> String {
        format!("mc7-{}-vpc", self.run)
    }

    fn host_link(&self) -> String {
        format!("mc7h{}", self.run)
    }

    fn namespace_of(&self, machine: &str) -> String {
        format!("mc7-{}-{machine}", self.run)
    }

    /// The machine named `name`, if it has been added.
    pub fn machine(&self, name: &str) -> Option<Machine> {
        self.lock().iter().find(|m| m.name == name).cloned()
    }

    /// Every machine so far.
    pub fn machines(&self) -> Vec<Machine> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Machine>> {
        self.machines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The machine for instance number `index` (from 0): zones alternate,
    /// `a1`, `b1`, `a2`, … Added on first use.
    pub fn instance_machine(&self, index: usize) -> Result<Machine, RegionError> {
        let (zone, first) = if index % 2 == 0 {
            (Zone::A, 11)
        } else {
            (Zone::B, 31)
        };
        let number = index / 2;
        if number >= INSTANCES_PER_ZONE {
            return Err(RegionError::Unsupported(format!(
                "at most {} instances ({INSTANCES_PER_ZONE} per zone)",
                2 * INSTANCES_PER_ZONE
            )));
        }
        let name = format!("{}{}", zone.name(), number + 1);
        if let Some(machine) = self.machine(&name) {
            return Ok(machine);
        }
        let host = first + u8::try_from(number).unwrap_or(0);
        self.add_machine(&name, zone, host, Group::App)
    }

    /// Adds a machine: its namespace, its link to the bridge, its address,
    /// its security group; and its address to that group's set on every
    /// other machine (as AWS resolves a group referenced by another).
    pub fn add_machine(
        &self,
        name: &str,
        zone: Zone,
        host: u8,
        group: Group,
    ) -> Result<Machine, RegionError> {
        let address = self.address(host);
        let netns = match self.mode {
            Mode::Namespaces => Some(self.namespace_of(name)),
            Mode::Loopback { .. } => None,
        };
        let machine = Machine {
            name: name.to_owned(),
            zone,
            address,
            group,
            netns: netns.clone(),
        };
        // The machine list is locked throughout: two machines added at
        // once must each see the other in their groups' sets.
        let mut machines = self.lock();
        if let Some(ns) = &netns {
            // A machine half made (no link, or no firewall: a namespace
            // with no table accepts everything) is taken apart again.
            if let Err(error) = self.build_machine(&machine, ns, &machines) {
                let _ = self.ip(&["netns", "del", ns]);
                return Err(error);
            }
        }
        machines.push(machine.clone());
        Ok(machine)
    }

    /// The namespace, its link to the bridge and address, its security
    /// group; and its address in its group's set on the `others`.
    fn build_machine(
        &self,
        machine: &Machine,
        ns: &str,
        others: &[Machine],
    ) -> Result<(), RegionError> {
        let vpc = self.vpc();
        let link = format!("v-{}", machine.name);
        let cidr = format!("{}/24", machine.address);
        self.ip(&["netns", "add", ns])?;
        self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        self.ip(&[
            "-n", &vpc, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        self.ip(&["-n", &vpc, "link", "set", &link, "master", "br0", "up"])?;
        self.ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        self.ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        let Some(nft) = &self.nft else {
            return Err(RegionError::Unsupported(
                "`nft` was not found (apt-get install nftables)".to_owned(),
            ));
        };
        let nft = nft.to_string_lossy();
        let mut everyone = others.to_vec();
        everyone.push(machine.clone());
        let rules = security_groups::ruleset(
            machine.group,
            &self.group_members(&everyone, Group::Lb),
            &self.group_members(&everyone, Group::App),
            &self.group_members(&everyone, Group::Data),
        );
        run_with_input(&self.ip, &["netns", "exec", ns, &nft, "-f", "-"], &rules)?;
        for other_ns in others.iter().filter_map(|m| m.netns.as_deref()) {
            run_with_input(
                &self.ip,
                &["netns", "exec", other_ns, &nft, "-f", "-"],
                &security_groups::add_member(machine.group, machine.address),
            )?;
        }
        Ok(())
    }

    fn group_members(&self, machines: &[Machine], group: Group) -> Vec<Ipv4Addr> {
        let mut members: Vec<Ipv4Addr> = machines
            .iter()
            .filter(|m| m.group == group)
            .map(|m| m.address)
            .collect();
        if group == Group::Lb {
            members.push(self.balancer_address());
        }
        members
    }

    fn build_vpc(&self) -> Result<(), RegionError> {
        let vpc = self.vpc();
        let host = self.host_link();
        self.ip(&["netns", "add", &vpc])?;
        self.ip(&["-n", &vpc, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &vpc, "link", "set", "br0", "up"])?;
        self.ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "v-host", "netns", &vpc,
        ])?;
        self.ip(&["-n", &vpc, "link", "set", "v-host", "master", "br0", "up"])?;
        // The shoppers' address first: the kernel picks it as the source
        // of the host's connections unless a program binds another.
        for host_byte in [SHOPPER_HOST, BALANCER_HOST] {
            let cidr = format!("{}/24", self.address(host_byte));
            self.ip(&["addr", "add", &cidr, "dev", &host])?;
        }
        self.ip(&["link", "set", &host, "up"])
    }

    /// Cuts (or restores) the links of every machine in `zone`: their
    /// packets stop at the bridge, as if the zone's network went dark.
    pub fn set_zone_link(&self, zone: Zone, up: bool) -> Result<(), RegionError> {
        if self.mode != Mode::Namespaces {
            return Ok(());
        }
        for machine in self.machines().iter().filter(|m| m.zone == zone) {
            self.set_machine_link(machine, up)?;
        }
        Ok(())
    }

    /// Cuts (or restores) one machine's link to the bridge.
    pub fn set_machine_link(&self, machine: &Machine, up: bool) -> Result<(), RegionError> {
        if self.mode != Mode::Namespaces {
            return Ok(());
        }
        let link = format!("v-{}", machine.name);
        self.ip(&[
            "-n",
            &self.vpc(),
            "link",
            "set",
            &link,
            if up { "up" } else { "down" },
        ])
    }

    /// The processes running in `machine`'s namespace (`ip netns pids`).
    pub fn pids_in(&self, machine: &Machine) -> Vec<i32> {
        let Some(ns) = &machine.netns else {
            return Vec::new();
        };
        Command::new(&self.ip)
            .args(["netns", "pids", ns])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ip(&self, args: &[&str]) -> Result<(), RegionError> {
        let output = Command::new(&self.ip).args(args).output()?;
        if output.status.success() {
            return Ok(());
        }
        Err(RegionError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Removes this run's namespaces and host link (a crashed launcher's
    /// too): deleting a namespace deletes the interfaces inside it.
    fn remove_namespaces(&self) {
        remove_run(&self.ip, self.run);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.mode == Mode::Namespaces {
            self.remove_namespaces();
        }
        let _ = std::fs::remove_file(&self.owner_file);
    }
}

fn remove_run(ip: &Path, run: u8) {
    let prefix = format!("mc7-{run}-");
    let listed = Command::new(ip).args(["netns", "list"]).output();
    if let Ok(out) = listed {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&prefix) {
                let _ = Command::new(ip).args(["netns", "del", name]).output();
            }
        }
    }
    // The host end would go with its peer, but only some time later:
    // delete it now so that a new run can take its name at once.
    let _ = Command::new(ip)
        .args(["link", "del", &format!("mc7h{run}")])
        .output();
}

fn decide_mode(choice: NetworkChoice) -> Result<Mode, RegionError> {
    if choice == NetworkChoice::Loopback {
        return Ok(Mode::Loopback {
            why: "--network loopback".to_owned(),
        });
    }
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("network namespaces and nftables need root (run as root, e.g. `sudo -E cargo run -p stage7`)".to_owned())
    } else if ip_binary().is_err() {
        Some("`ip` was not found (apt-get install iproute2)".to_owned())
    } else if nft_binary().is_none() {
        Some("`nft` was not found (apt-get install nftables)".to_owned())
    } else {
        None
    };
    match (missing, choice) {
        (None, _) => Ok(Mode::Namespaces),
        (Some(why), NetworkChoice::Namespaces) => Err(RegionError::Unsupported(why)),
        (Some(why), _) => Ok(Mode::Loopback { why }),
    }
}

fn nft_binary() -> Option<PathBuf> {
    find_on_path("nft").or_else(|| Some(PathBuf::from("/usr/sbin/nft")).filter(|p| p.is_file()))
}

/// Claims the lowest free run number: an owner file holding our pid,
/// written under a lock. A file whose pid is gone is a crashed run's: its
/// namespaces are removed and the number reused.
fn claim_run() -> Result<(u8, PathBuf), RegionError> {
    // Not under the `myclothes-` prefix: those folders are private_dir's,
    // which removes the ones without an owner file of its kind.
    let dir = std::env::temp_dir().join("mc7-regions");
    std::fs::create_dir_all(&dir)?;
    // One launcher claims at a time (an exclusive lock on a file, released
    // when `_claiming` drops): two could otherwise both find a crashed
    // run's number free, and one remove what the other just set up.
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("claiming.lock"))?;
    let _claiming = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    for run in 1..=250u8 {
        let file = dir.join(format!("{run}.owner"));
        if let Ok(text) = std::fs::read_to_string(&file) {
            let alive = text.trim().parse::<i32>().is_ok_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            });
            if alive {
                continue;
            }
            if let Ok(ip) = ip_binary() {
                remove_run(&ip, run);
            }
            let _ = std::fs::remove_file(&file);
        }
        std::fs::write(&file, format!("{}\n", std::process::id()))?;
        return Ok((run, file));
    }
    Err(RegionError::Full(dir.display().to_string()))
}

fn run_with_input(program: &Path, args: &[&str], input: &str) -> Result<(), RegionError> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(RegionError::Command {
        command: format!("{} {}", program.display(), args.join(" ")),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
