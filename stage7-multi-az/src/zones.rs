//! What `stage7 up` starts before its instances: the region, the data tier
//! in it, and where each instance goes.
//!
//! Instances alternate between the zones (`a1`, `b1`, `a2`, …), each in a
//! machine of its own, listening on port 3000 of its own address. The
//! balancer stays on the host and reaches them from its `sg-lb` address.
//! (Why not the balancer in a namespace of its own too? Then a learner's
//! browser could not reach it without routes on the host; on the host it
//! listens on 127.0.0.1:8080 as in every other stage.)

use std::net::IpAddr;
use std::sync::Arc;

use lb::supervisor::SupervisorFuture;
use shop::services::ip_binary;
use shop::topology::{Place, Placement};
use shop::{BoxError, Services};

use crate::MultiAzArgs;
use crate::data_tier::{DataTier, Options};
use crate::failover::Policy;
use crate::postgres_ha::Replication;
use crate::region::{Mode, Region, Zone};
use crate::security_groups::INSTANCE_PORT;

/// Puts instance `index` in its zone's next machine; takes whole zones
/// down and back for the dashboard.
#[derive(Debug)]
pub struct ZonePlacement {
    region: Arc<Region>,
    tier: Arc<DataTier>,
}

impl Placement for ZonePlacement {
    fn place(&self, index: usize) -> Result<Place, String> {
        let machine = self
            .region
            .instance_machine(index)
            .map_err(|e| e.to_string())?;
        let wrapper = match &machine.netns {
            Some(ns) => {
                let ip = ip_binary().map_err(|e| e.to_string())?;
                vec![ip.into(), "netns".into(), "exec".into(), ns.into()]
            }
            None => Vec::new(),
        };
        Ok(Place {
            name: machine.name,
            host: IpAddr::V4(machine.address),
            port: Some(INSTANCE_PORT),
            wrapper,
            zone: Some(machine.zone.name().to_owned()),
        })
    }

    fn zones(&self) -> Vec<String> {
        vec!["a".to_owned(), "b".to_owned()]
    }

    fn set_zone(&self, zone: &str, up: bool) -> SupervisorFuture<'_, String> {
        let zone = Zone::parse(zone);
        Box::pin(async move {
            let zone = zone.ok_or("the zones are a and b")?;
            let done = if up {
                // A task of its own: a rejoin copies a server's data, and
                // the admin request that asked for it may be dropped (its
                // client gone) half-way; the copy must not be.
                let tier = Arc::clone(&self.tier);
                tokio::spawn(async move { tier.bring_zone_back(zone).await })
                    .await
                    .map_err(|error| format!("bringing zone back failed: {error}"))?
                    .map(|done| done.join("; "))
            } else {
                self.tier
                    .take_zone_down(zone)
                    .await
                    .map(|killed| format!("{killed} processes killed, links cut"))
            };
            done.map_err(|e| e.to_string())
        })
    }
}

/// Builds the region and its data tier, points the instances' flags at
/// the endpoints, and has `up` place the instances in the zones.
pub async fn start(args: &mut MultiAzArgs) -> Result<Services, BoxError> {
    let region = Arc::new(Region::create(args.network)?);
    let replication = if args.async_standby {
        Replication::Asynchronous
    } else {
        Replication::Synchronous
    };
    let options = Options {
        replication,
        policy: Policy {
            after: args.failover_after,
            strict: args.strict_sync,
        },
    };
    let tier = Arc::new(DataTier::start(region.clone(), options).await?);
    let data = &mut args.data;
    data.database_url = Some(tier.writer_url());
    data.database_replica_url = Some(tier.replica_url().await);
    if !data.no_cache {
        data.cache_url = Some(tier.cache_url().await);
    }
    data.session.redis_url = Some(tier.sessions_url());

    let mut services = Services::default();
    services.place_instances(
        Arc::new(ZonePlacement {
            region: region.clone(),
            tier: tier.clone(),
        }),
        Some(IpAddr::V4(region.balancer_address())),
    );
    let network = match region.mode() {
        Mode::Namespaces => format!(
            "zones a and b as network namespaces (ip netns list | grep mc7-); security groups as nftables rules; the balancer dials from {}",
            region.balancer_address()
        ),
        Mode::Loopback { why } => {
            format!("LOOPBACK ONLY: no namespaces, no security groups, no links to cut ({why})")
        }
    };
    let replication = match replication {
        Replication::Synchronous => {
            "synchronous standby: no acknowledged write is lost with a zone"
        }
        Replication::Asynchronous => {
            "ASYNCHRONOUS standby (--async-standby): a failover can lose the last writes"
        }
    };
    services.describe(format!("Network:    {network}"));
    services.describe(format!(
        "PostgreSQL: writer endpoint {} → pg_a (a-data) ⇒ pg_b (b-data), {replication}; reads from {}",
        tier.writer_url(),
        tier.replica_url().await
    ));
    services.describe(format!(
        "Redis:      sessions endpoint {} → a-data, replica in b-data, 3 Sentinels (quorum 2)",
        tier.sessions_url()
    ));
    let shopper = region.shopper_address();
    services.keep(
        tier,
        format!("Machines:   {shopper}/24 (the host is .1, the balancer .2; ip netns list)"),
    );
    Ok(services)
}
