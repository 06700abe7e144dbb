//! `stage6 demo`: the four fan-out modes, narrated, in about a minute.
//!
//! For each mode a fresh three-instance topology on the servers `services`
//! started: one page (a [`LiveClient`]) on each instance watching the same
//! T-shirt, thirty flash-price changes sent through the balancer, and what
//! each page received. Then what each mode loses: a page that was away
//! for ten updates (pub/sub: gone; streams: replayed), and a room whose
//! instance dies (room-sticky).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use shop::narrate::Narrator;
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Services, Stage};

use crate::client::{LiveClient, Tally};
use crate::fanout::Fanout;
use crate::{LiveArgs, Stage6};

const SKU: &str = "TEE-NAVY-M";
const UPDATES: u32 = 30;
/// Changes made while one page is away.
const WHILE_AWAY: u32 = 10;
/// How long a page that has not heard every update may stay quiet before
/// what it heard counts as all it will (a page that has heard every one
/// stops waiting at once). Long enough for a busy machine's pauses.
const QUIET: Duration = Duration::from_secs(1);

async fn start(args: &LiveArgs, exe: &PathBuf, fanout: Fanout) -> Result<Topology, BoxError> {
    let args = LiveArgs {
        fanout,
        ..args.clone()
    };
    Ok(Topology::start(TopologyConfig {
        env: shop::flags::instance_env(&args)?,
        policy: Stage6::policy(&args),
        ..TopologyConfig::for_tests(exe, &crate::INFO)
    })
    .await?)
}

/// Sends `count` flash-price changes on [`SKU`] through the balancer.
async fn publish(http: &reqwest::Client, topology: &Topology, count: u32) -> Result<(), BoxError> {
    for n in 0..count {
        let response = http
            .post(format!("{}/api/live/price", topology.url()))
            .json(&json!({"sku": SKU, "price_cents": 1500 + n}))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("publishing answered {}", response.status()).into());
        }
    }
    Ok(())
}

/// One page on each instance, watching [`SKU`].
async fn pages(topology: &Topology) -> Result<Vec<(LiveClient, Tally)>, BoxError> {
    let mut pages = Vec::new();
    for instance in topology.instances() {
        let mut page = LiveClient::connect(&instance.url, "").await?;
        let mut tally = Tally::default();
        page.watch(&[SKU.to_owned()], &Default::default()).await?;
        page.until("snapshot", &mut tally, Duration::from_secs(5))
            .await?;
        pages.push((page, tally));
    }
    Ok(pages)
}

async fn show(say: &Narrator, pages: &mut [(LiveClient, Tally)]) -> Result<(), BoxError> {
    for (page, tally) in pages.iter_mut() {
        page.drain_until(tally, UPDATES.into(), QUIET).await?;
        // A snapshot tells the page the newest number, including the
        // updates it never heard of.
        page.ask_snapshot().await?;
        page.until("snapshot", tally, QUIET).await?;
        say.note(&format!(
            "page on {}: received {:>2} of {} updates",
            page.instance(),
            tally.received(),
            tally.published()
        ));
    }
    Ok(())
}

pub async fn run(args: LiveArgs, exe: PathBuf, _services: Services) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    let http = reqwest::Client::new();
    say.title("Stage 6 · Live, across instances: four ways to tell the other instances");

    say.step("--fanout local: three instances, one page on each, 30 price changes sent through the balancer.");
    let topology = start(&args, &exe, Fanout::Local).await?;
    let mut watching = pages(&topology).await?;
    publish(&http, &topology, UPDATES).await?;
    show(&say, &mut watching).await?;
    say.why(
        "each instance delivered what it published to its own sockets only; the balancer spread the \
         changes, so each page heard about a third. Its stock badge is wrong until it reloads.",
    );
    topology.stop().await;

    say.step("--fanout room-sticky: three shoppers open the 'tees' room through the balancer.");
    let topology = start(&args, &exe, Fanout::RoomSticky).await?;
    let mut room = Vec::new();
    for name in ["Ada", "Grace", "Linus"] {
        let page = LiveClient::connect(&topology.url(), &format!("?room=tees&name={name}")).await?;
        say.note(&format!("{name}'s socket is on {}", page.instance()));
        room.push((page, Tally::default()));
    }
    if let Some((ada, tally)) = room.first_mut() {
        ada.until("snapshot", tally, Duration::from_secs(5)).await?;
        ada.say("the navy runs small").await?;
    }
    for (page, tally) in &mut room {
        page.drain(tally, QUIET).await?;
    }
    let heard = room
        .iter()
        .filter(|(_, t)| t.topics.keys().any(|k| k == "room:tees") && t.received() > 0)
        .count();
    say.note(&format!(
        "{heard} of 3 shoppers saw Ada's message and each other arrive"
    ));
    say.why(
        "the balancer hashes ?room= (rendezvous hashing, like HAProxy's `balance url_param`): a whole room \
         is on one instance, which needs no one else. Until it dies: every member is cut off, and one busy \
         room is all on one instance.",
    );
    if let Some(host) = room.first().map(|(page, _)| page.instance().to_owned()) {
        topology.kill_instance(&host).await?;
        say.note(&format!("{host} killed: the room's sockets are gone; pages reconnect to a survivor and the room starts empty"));
    }
    topology.stop().await;

    for fanout in [Fanout::Pubsub, Fanout::Streams] {
        say.step(&format!(
            "--fanout {}: the same three pages and 30 changes; then one page is away while 10 more are made.",
            fanout.as_str()
        ));
        let topology = start(&args, &exe, fanout).await?;
        let mut watching = pages(&topology).await?;
        publish(&http, &topology, UPDATES).await?;
        show(&say, &mut watching).await?;
        let Some((away, mut tally)) = watching.pop() else {
            return Err("no page".into());
        };
        let base = topology
            .instances()
            .last()
            .map(|i| i.url.clone())
            .unwrap_or_default();
        away.close().await;
        publish(&http, &topology, WHILE_AWAY).await?;
        let mut back = LiveClient::connect(&base, "").await?;
        back.watch(&[SKU.to_owned()], &tally.since()).await?;
        back.drain_until(&mut tally, (UPDATES + WHILE_AWAY).into(), QUIET)
            .await?;
        say.note(&format!(
            "the page that was away: received {} of {} updates; {} never arrived",
            tally.received(),
            tally.published(),
            tally.published() - tally.received()
        ));
        if fanout == Fanout::Pubsub {
            say.why(
                "every instance subscribed once to the SKU's channel, so every page heard every change. \
                 Pub/sub is at most once: what was published while the page was away is gone, and the \
                 snapshot it got on return shows the latest price without the ten changes in between.",
            );
        } else {
            say.why(
                "each change is an entry in a Redis stream; the page sent the id of the last one it saw \
                 and the shop replayed the rest before going live. Nothing is missed, within the \
                 stream's length (MAXLEN ~ 1000 per topic).",
            );
        }
        topology.stop().await;
    }

    say.lesson(
        "a WebSocket ties a page to one instance, so instances must tell each other what happened: \
         local loses most of it, room-sticky keeps a room together until its instance dies, pub/sub \
         reaches everyone who is connected, streams reach everyone, late or not.",
    );
    Ok(())
}
