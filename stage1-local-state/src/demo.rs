//! `stage1 demo`: the vanishing cart, narrated.
//!
//! A fresh topology (three instances on free ports, round-robin), one
//! shopper, and a handful of requests. The story is told from what the shop
//! actually answered, not from a script of what it should answer.

use std::path::PathBuf;

use shop::BoxError;
use shop::narrate::Narrator;
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};

pub async fn run(exe: PathBuf) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 1 · Local state: the cart that vanishes");
    let topology = Topology::start(TopologyConfig::for_tests(exe, &crate::INFO)).await?;
    say.note(&format!(
        "Started 3 instances ({}) behind a round-robin balancer at {}.",
        topology
            .instances()
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        topology.url()
    ));

    let alice = Shopper::new(topology.url())?;
    say.step("Alice adds two red T-shirts (TEE-RED-M) to her cart.");
    let added = alice.add("TEE-RED-M", 2).await?;
    say.saw(&added);
    let home = added.served_by().to_owned();
    say.why(&format!(
        "{home} stored the cart in its own memory, under the client_id cookie it gave Alice."
    ));

    say.step("Alice looks at her cart.");
    let mut seen = alice.cart().await?;
    say.saw(&seen);
    if seen.served_by() != home && seen.is_empty() {
        say.why(&format!(
            "round-robin sent her to {}; its memory has no cart under her client_id. Same cookie, different process.",
            seen.served_by()
        ));
    }

    say.step("She looks again, and again, until round-robin brings her back.");
    for _ in 0..3 {
        seen = alice.cart().await?;
        say.saw(&seen);
        if seen.served_by() == home {
            break;
        }
    }
    if seen.served_by() == home {
        say.why(&format!(
            "the cart was never gone: it is in {home}'s memory, and only {home} can show it."
        ));
    }

    let direct = topology
        .instance(&home)
        .map(|i| i.url)
        .ok_or("the home instance disappeared")?;
    say.step(&format!(
        "Alice skips the balancer and talks to {home} directly ({direct})."
    ));
    let pinned = alice.at(direct);
    for _ in 0..3 {
        say.saw(&pinned.cart().await?);
    }
    say.why("one instance, one memory: the cart holds every time.");

    say.lesson(
        "state kept in an instance's memory only works if the shopper always returns to that \
         instance. Stage 2 makes the balancer do that (sticky sessions); stages 3 and 4 move \
         the cart out of the instance instead.",
    );
    topology.stop().await;
    Ok(())
}
