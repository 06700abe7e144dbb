//! `stage2 demo`: sticky sessions hold a cart, until the instance goes away.
//!
//! A fresh topology (three instances, round-robin, sticky), a few shoppers,
//! one crash, one scale-in, one scale-out. The story is told from what the
//! shop and the balancer actually answered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use shop::BoxError;
use shop::narrate::Narrator;
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};

pub async fn run(exe: PathBuf) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 2 · Sticky sessions: the cart holds, until its instance goes");
    let topology = Topology::start(TopologyConfig::for_tests(exe, &crate::INFO)).await?;
    say.note(&format!(
        "Started 3 instances behind a round-robin balancer with sticky sessions at {}.",
        topology.url()
    ));

    // 1. Pinned.
    let alice = Shopper::new(topology.url())?;
    say.step("Alice adds two red T-shirts, then looks at her cart three times.");
    let added = alice.add("TEE-RED-M", 2).await?;
    say.saw(&added);
    let home = added.served_by().to_owned();
    for _ in 0..3 {
        say.saw(&alice.cart().await?);
    }
    say.why(&format!(
        "the balancer's lb_sticky cookie names {home} (opaquely); every request goes back there, \
         and {home}'s memory has the cart."
    ));

    // 2. The pinned instance dies.
    say.step(&format!(
        "{home} crashes (SIGKILL). Alice looks at her cart."
    ));
    topology.kill_instance(&home).await?;
    let after = alice.cart().await?;
    say.saw(&after);
    say.why(&format!(
        "the connection to {home} was refused, so the balancer marked it down and sent the request \
         to {} instead, with a new lb_sticky cookie. No error for Alice, but the cart lived in \
         {home}'s memory, and that memory is gone.",
        after.served_by()
    ));
    let new_home = after.served_by().to_owned();
    topology.restart_instance(&home).await?;
    topology
        .wait_for_backend(&home, lb::BackendState::Up, Duration::from_secs(10))
        .await?;
    say.note(&format!(
        "({home} is restarted, empty; two good health checks later the balancer uses it again.)"
    ));

    // 3. Scale-in with draining.
    say.step(&format!(
        "The shop scales in: {new_home}, Alice's new instance, is drained."
    ));
    alice.add("SOCK-NAVY-M", 1).await?;
    topology
        .balancer()
        .backends()
        .get(&new_home)
        .ok_or("the instance vanished")?
        .drain();
    let pinned = alice.cart().await?;
    say.saw(&pinned);
    say.why(&format!(
        "a draining instance keeps its pinned shoppers: Alice stays on {new_home}."
    ));
    let mut newcomers = BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        let shopper = Shopper::new(topology.url())?;
        *newcomers
            .entry(shopper.cart().await?.served_by().to_owned())
            .or_default() += 1;
    }
    say.note(&format!("six new shoppers land on: {}", spread(&newcomers)));
    say.why(&format!(
        "…and takes no new ones: {new_home} is not in that list."
    ));
    topology.balancer().backends().remove(&new_home)?;
    let moved = alice.cart().await?;
    say.saw(&moved);
    say.why(&format!(
        "once {new_home} is removed, Alice is re-dispatched to {}: her cart stayed behind. Draining \
         only softens a scale-in if carts outlive their shoppers' visits, which they rarely do.",
        moved.served_by()
    ));

    // 4. Skew.
    say.step("Scale out: instance i4 joins. Who does it serve?");
    let mut regulars = Vec::new();
    for _ in 0..9 {
        let shopper = Shopper::new(topology.url())?;
        shopper.cart().await?;
        regulars.push(shopper);
    }
    let added = topology.add_instance().await?;
    let mut spread_after = BTreeMap::<String, usize>::new();
    for shopper in &regulars {
        *spread_after
            .entry(shopper.cart().await?.served_by().to_owned())
            .or_default() += 1;
    }
    say.note(&format!(
        "the nine shoppers who were already here stay put: {}",
        spread(&spread_after)
    ));
    say.why(&format!(
        "{} gets none of them: pinned shoppers never rebalance, so a new instance takes only \
         newcomers, and a few heavy shoppers keep one instance hot.",
        added.name
    ));

    say.lesson(
        "stickiness makes instance memory *look* shared. It is not: a crash, a deploy or a \
         scale-in loses every cart on that instance, and load follows shoppers, not requests. \
         Stage 3 moves the cart into the shopper's cookie; stage 4 into Redis.",
    );
    topology.stop().await;
    Ok(())
}

fn spread(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(name, n)| format!("{name} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
