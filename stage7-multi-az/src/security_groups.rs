//! Security groups, as nftables rules on each machine.
//!
//! AWS's security groups are stateful allow-lists attached to a machine's
//! network interface: whatever no rule allows is dropped, and the answer
//! to an allowed connection always gets back. A rule may name another
//! group instead of addresses ("from sg-app"), meaning every machine in
//! that group, now and later. Here, each machine's namespace gets one
//! table, `inet sg`:
//!
//! ```text
//! table inet sg {
//!   set sg_lb   { type ipv4_addr; elements = { 10.77.R.2 } }
//!   set sg_app  { type ipv4_addr; elements = { 10.77.R.11, 10.77.R.31 } }
//!   set sg_data { type ipv4_addr; elements = { 10.77.R.10, 10.77.R.20, 10.77.R.40 } }
//!   chain input {
//!     type filter hook input priority 0; policy drop;    # allow-only
//!     iif lo accept
//!     ct state established,related accept                # stateful
//!     ct state invalid drop
//!     tcp dport 3000 ip saddr @sg_lb accept              # sg-app's one rule
//!   }
//! }
//! ```
//!
//! A group referenced by another is a named set, so scaling out adds one
//! address to the set on every machine (`add element`) instead of
//! rewriting anyone's rules. The groups:
//!
//! | group     | members                       | allows in                                  |
//! |-----------|-------------------------------|--------------------------------------------|
//! | `sg-lb`   | the balancer (host, .2)       | the shop port from anywhere (the host's own firewall, untouched) |
//! | `sg-app`  | the instances                 | 3000 from `sg-lb`                           |
//! | `sg-data` | `a-data`, `b-data`, `region`  | 5432, 5433, 6379, 6380, 26379 from `sg-app` and `sg-data` |
//!
//! Outbound traffic is not filtered, as in a default security group. The
//! balancer's group lives on the learner's own machine, whose firewall a
//! teaching project must not touch; its rule is the balancer's listen
//! address. What `sg-lb` means to the others is that only the balancer's
//! source address (`lb --source-address`) reaches an instance: a shopper
//! on the host (.1) cannot.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// The port every instance listens on inside its machine.
pub const INSTANCE_PORT: u16 = 3000;
/// The data tier's ports: PostgreSQL (primary or standby, and the read
/// replica), Redis (sessions, and the cache), Sentinel.
pub const DATA_PORTS: [u16; 5] = [5432, 5433, 6379, 6380, 26379];

/// A security group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Group {
    /// The balancer: reaches the instances.
    #[serde(rename = "sg-lb")]
    Lb,
    /// The instances: reach the data tier.
    #[serde(rename = "sg-app")]
    App,
    /// The data tier and the region's services: reach each other.
    #[serde(rename = "sg-data")]
    Data,
}

impl Group {
    /// AWS's spelling: `sg-app`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lb => "sg-lb",
            Self::App => "sg-app",
            Self::Data => "sg-data",
        }
    }

    /// The nftables set that holds its members.
    fn set(self) -> &'static str {
        match self {
            Self::Lb => "sg_lb",
            Self::App => "sg_app",
            Self::Data => "sg_data",
        }
    }
}

/// The whole ruleset of a machine in `group`, given every group's
/// members (for `nft -f -`: deletes the table first, so applying it twice
/// gives the same rules).
pub fn ruleset(group: Group, lb: &[Ipv4Addr], app: &[Ipv4Addr], data: &[Ipv4Addr]) -> String {
    let mut text = String::from("table inet sg\ndelete table inet sg\ntable inet sg {\n");
    for (set, members) in [(Group::Lb, lb), (Group::App, app), (Group::Data, data)] {
        let _ = write!(text, "  set {} {{ type ipv4_addr;", set.set());
        if !members.is_empty() {
            let list: Vec<String> = members.iter().map(Ipv4Addr::to_string).collect();
            let _ = write!(text, " elements = {{ {} }};", list.join(", "));
        }
        text.push_str(" }\n");
    }
    text.push_str(
        "  chain input {\n    type filter hook input priority 0; policy drop;\n    iif lo accept\n    ct state established,related accept\n    ct state invalid drop\n",
    );
    for rule in rules(group) {
        let _ = writeln!(text, "    {rule}");
    }
    text.push_str("  }\n}\n");
    text
}

/// The allow rules of `group`, in nftables syntax.
pub fn rules(group: Group) -> Vec<String> {
    let ports: Vec<String> = DATA_PORTS.iter().map(u16::to_string).collect();
    let ports = ports.join(", ");
    match group {
        Group::Lb => vec![],
        Group::App => vec![format!("tcp dport {INSTANCE_PORT} ip saddr @sg_lb accept")],
        Group::Data => vec![
            format!("tcp dport {{ {ports} }} ip saddr @sg_app accept"),
            format!("tcp dport {{ {ports} }} ip saddr @sg_data accept"),
        ],
    }
}

/// The command (for `nft -f -`) that adds `address` to `group` on a
/// machine that already has the table.
pub fn add_member(group: Group, address: Ipv4Addr) -> String {
    format!("add element inet sg {} {{ {address} }}\n", group.set())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_admits_only_the_balancer_on_the_shop_port() {
        let lb = [Ipv4Addr::new(10, 77, 1, 2)];
        let text = ruleset(Group::App, &lb, &[], &[]);
        assert!(text.contains("policy drop"), "{text}");
        assert!(
            text.contains("ct state established,related accept"),
            "{text}"
        );
        assert!(
            text.contains("tcp dport 3000 ip saddr @sg_lb accept"),
            "{text}"
        );
        assert!(
            text.contains("set sg_lb { type ipv4_addr; elements = { 10.77.1.2 }; }"),
            "{text}"
        );
        assert!(
            !text.contains("5432"),
            "an instance opens no data port: {text}"
        );
    }

    #[test]
    fn the_data_tier_admits_the_app_and_itself_by_group() {
        let text = ruleset(Group::Data, &[], &[Ipv4Addr::new(10, 77, 1, 11)], &[]);
        assert!(text.contains("ip saddr @sg_app accept"), "{text}");
        assert!(text.contains("ip saddr @sg_data accept"), "{text}");
        assert!(
            !text.contains("@sg_lb accept"),
            "the balancer is not let in: {text}"
        );
        assert!(
            text.contains("set sg_data { type ipv4_addr; }"),
            "an empty set has no elements: {text}"
        );
    }
}
