//! `stage7 demo`: a whole zone goes dark, narrated.
//!
//! Three instances in zones a and b behind the balancer; Ada fills a cart
//! and signs up; the security groups turn a shopper away from an instance;
//! then zone a loses power and network at once (its instances, the
//! PostgreSQL primary, the Redis primary and a Sentinel). The demo asks for
//! the cart and writes the profile every quarter second and says how long
//! each was unavailable, what the failover manager did, and whether the
//! cart and the account written before the loss are still there.
//! Then zone a comes back, its old primary as the new one's standby.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use shop::narrate::Narrator;
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Services};

use crate::MultiAzArgs;
use crate::data_tier::DataTier;
use crate::region::{Mode, Zone};

/// How long the demo waits for the shop to come back before it gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

pub async fn run(args: MultiAzArgs, exe: PathBuf, mut services: Services) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 7 · Multi-AZ: zone a goes dark");
    let (placement, balancer_source) = services.placement();
    let topology = Topology::start(TopologyConfig {
        env: shop::flags::instance_env(&args)?,
        placement,
        balancer_source,
        ..TopologyConfig::for_tests(exe, &crate::INFO)
    })
    .await?;
    let tier = services
        .get_mut::<std::sync::Arc<DataTier>>()
        .ok_or("stage 7's data tier did not start")?;
    let names: Vec<String> = topology
        .instances()
        .iter()
        .map(|i| i.name.clone())
        .collect();
    say.note(&format!(
        "instances {} behind {}; PostgreSQL pg_a (zone a) with a {} standby pg_b (zone b); Redis in a, its replica in b, three Sentinels.",
        names.join(", "),
        topology.url(),
        if args.async_standby { "asynchronous" } else { "synchronous" }
    ));
    if let Mode::Loopback { why } = tier.region().mode() {
        say.note(&format!(
            "loopback layout: no firewall and no links to cut ({why})."
        ));
    }

    say.step("Ada fills her cart and signs up.");
    let ada = Shopper::new(topology.url())?;
    let cart = ada.add("JKT-GREEN-L", 2).await?;
    say.note(&format!(
        "cart: {} (served by {})",
        cart.summary(),
        cart.served_by()
    ));
    let signup = ada
        .http()
        .post(ada.url("/api/signup"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}))
        .send()
        .await?;
    say.note(&format!("sign up: HTTP {}", signup.status().as_u16()));

    if *tier.region().mode() == Mode::Namespaces {
        say.step("A shopper tries an instance directly, around the balancer.");
        let a1 = tier.region().machine("a1").ok_or("no a1")?;
        let direct = format!("http://{}:3000/api/cart", a1.address);
        let answer = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?
            .get(&direct)
            .send()
            .await;
        say.note(&match answer {
            Ok(response) => format!(
                "{direct}: HTTP {} (the security group let it in!)",
                response.status()
            ),
            Err(_) => format!("{direct}: no answer in 2 s"),
        });
        say.why("sg-app admits port 3000 from sg-lb only: the balancer's own source address. The SYN is dropped, so the client waits instead of being refused.");
    }

    say.step("Zone a goes dark: every process in it killed, its links cut.");
    let killed = tier.take_zone_down(Zone::A).await?;
    for instance in names.iter().filter(|n| n.starts_with('a')) {
        // Gone already in the namespaces layout; killed here on loopback.
        let _ = topology.kill_instance(instance).await;
    }
    say.note(&match tier.region().mode() {
        Mode::Namespaces => {
            format!("{killed} processes killed in zone a's machines; their links are down.")
        }
        Mode::Loopback { .. } => {
            "zone a's servers and instances killed (loopback: no links to cut).".to_owned()
        }
    });
    let lost_at = Instant::now();
    let lost_ms = tier.clock_ms();
    let (mut cart_back, mut write_back) = (None, None);
    while cart_back.is_none() || write_back.is_none() {
        if lost_at.elapsed() > GIVE_UP_AFTER {
            return Err(format!(
                "the shop did not come back within {}s (cart answered: {}, profile written: {}; sessions endpoint → {:?}): {:?}",
                GIVE_UP_AFTER.as_secs(),
                cart_back.is_some(),
                write_back.is_some(),
                tier.sessions_target(),
                tier.status()
            )
            .into());
        }
        if cart_back.is_none()
            && let Ok(cart) = ada.cart().await
        {
            cart_back = Some((lost_at.elapsed(), cart));
        }
        if write_back.is_none() {
            let update = ada
                .http()
                .put(ada.url("/api/me"))
                .json(&json!({"name": "Ada Lovelace", "address": {"line1": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH", "country": "GB"}}))
                .send()
                .await;
            if update.is_ok_and(|r| r.status().is_success()) {
                write_back = Some(lost_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (Some((reads_after, cart)), Some(writes_after)) = (cart_back, write_back) else {
        return Err("unreachable: both are set when the loop ends".into());
    };
    say.note(&format!(
        "the cart answered again after {:.1} s ({}, served by {}); profile writes after {:.1} s.",
        reads_after.as_secs_f64(),
        cart.summary(),
        cart.served_by(),
        writes_after.as_secs_f64()
    ));
    let me: serde_json::Value = ada
        .http()
        .get(ada.url("/api/me"))
        .send()
        .await?
        .json()
        .await
        .unwrap_or_default();
    say.note(&format!(
        "the account signed up before the loss: {} (name now {}); the cart before it: {}.",
        me["email"],
        me["name"],
        cart.summary()
    ));
    for event in tier.status().events.iter().filter(|e| e.at_ms >= lost_ms) {
        let after = (event.at_ms - lost_ms) as f64 / 1000.0;
        say.note(&format!(
            "  failover manager, {after:.1} s after: {}",
            event.what
        ));
    }
    say.why("the Sentinels in b and in the region agreed (quorum 2) that the Redis primary was down and promoted the replica; the failover manager fenced pg_a and promoted pg_b; both endpoints followed, so the instances in zone b reconnected to the same URLs.");

    say.step("Zone a comes back.");
    for done in tier.bring_zone_back(Zone::A).await? {
        say.note(&done);
    }
    say.why("pg_a held writes the new timeline never saw (in synchronous mode, none anyone was told were committed): pg_rewind winds it back to the fork, and it follows pg_b as its standby. The old Redis primary comes back as a replica.");
    topology.stop().await;
    Ok(())
}
