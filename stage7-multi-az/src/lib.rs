//! # Stage 7 · Multi-AZ
//!
//! **The lesson:** a stateless web tier survives the loss of an instance;
//! a whole availability zone can go dark too, with everything in it. The
//! shop spreads every tier over zones `a` and `b` (Linux network
//! namespaces, [`region`]): instances in both behind the balancer,
//! PostgreSQL with a **synchronous** standby in the other zone
//! ([`postgres_ha`]), the sessions' Redis with a replica watched by three
//! Sentinels, and security groups that let each tier talk only to the
//! next ([`security_groups`]). When zone `a` goes dark, a failover manager
//! ([`failover`]) fences the old primary and promotes the standby, and the
//! endpoints ([`endpoint`]) follow: no committed write is lost.
//!
//! **What changed since stage 5:** nothing in the shop's code. The
//! instances are stage 5's; what changes is where each server runs and how
//! they find the primary: through endpoints that move on failover.
//!
//! **Run it:** `sudo -E cargo run -p stage7` (root: namespaces and
//! nftables; without root the zones run on loopback addresses, without the
//! firewall, and the banner says so).

pub mod data_tier;
pub mod endpoint;
pub mod failover;
pub mod netns;
pub mod postgres_ha;
pub mod redis_ha;
pub mod region;
pub mod security_groups;
