//! `stage4 demo`: the disposable instance, narrated.
//!
//! A fresh topology (a private `redis-server` unless `REDIS_URL` is set,
//! three instances, round-robin), one shopper. The story is told from what
//! the shop and Redis actually answered.

use std::path::PathBuf;

use shop::BoxError;
use shop::narrate::Narrator;
use shop::shopper::{Shopper, set_cookie_value};
use shop::topology::{Topology, TopologyConfig};

use crate::SessionArgs;
use crate::sessions::{RedisSessions, SESSION_COOKIE};

pub async fn run(args: SessionArgs, exe: PathBuf) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 4 · Server session: any instance, the same cart");
    let redis_url = args
        .redis_url
        .clone()
        .ok_or("no Redis: set REDIS_URL or install redis-server")?;
    let topology = Topology::start(TopologyConfig {
        env: shop::flags::instance_env(&args)?,
        ..TopologyConfig::for_tests(exe, &crate::INFO)
    })
    .await?;
    say.note(&format!(
        "Started 3 instances behind a round-robin balancer at {}, all using Redis at {redis_url}.",
        topology.url()
    ));

    let alice = Shopper::new(topology.url())?;
    say.step("Alice adds two red T-shirts and a pair of socks.");
    let first = alice.add("TEE-RED-M", 2).await?;
    say.saw(&first);
    let sid = set_cookie_value(&first.headers, SESSION_COOKIE).ok_or("no session cookie")?;
    let added = alice.add("SOCK-GREY-L", 1).await?;
    say.saw(&added);
    let set_cookie_bytes = first
        .headers
        .get(reqwest::header::SET_COOKIE)
        .map_or(0, |v| v.len());
    let cart_json = serde_json::to_string(&added.body.lines)?;
    say.why(&format!(
        "her browser holds one cookie, sid={}… ({} characters, 128 random bits; the whole \
         Set-Cookie header is {set_cookie_bytes} bytes), and it will not grow. In stage 3 the \
         cookie carried the cart itself: this cart's JSON alone is {} bytes, before base64 \
         and the signature, and every line adds more.",
        &sid[..6],
        sid.len(),
        cart_json.len()
    ));

    let mut redis = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let key = RedisSessions::keys_for(&sid).cart;
    let fields: Vec<String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut redis)
        .await?;
    say.step("Where is the cart? In Redis, under a hash of her session id.");
    say.note(&format!(
        "HGETALL {}…  →  {}",
        &key[..key.len() - 56],
        fields.join(" ")
    ));
    say.why("the key is a SHA-256 of the id: reading Redis does not hand out live sessions.");

    let last = added.served_by().to_owned();
    say.step(&format!(
        "{last} served her last request. Kill it (SIGKILL), as a crash would."
    ));
    topology.kill_instance(&last).await?;
    let after = alice.cart().await?;
    say.saw(&after);
    if after.served_by() != last && after.qty_of("TEE-RED-M") == 2 {
        say.why(&format!(
            "{} keeps nothing of Alice's in its memory, and needs nothing: it fetched the cart \
             from Redis by her session id. Instances hold nothing worth losing.",
            after.served_by()
        ));
    }

    say.step("Twenty \"add one pair of socks\" requests at once, spread over the instances.");
    let adds = (0..20).map(|_| {
        let alice = alice.clone();
        tokio::spawn(async move { alice.add("SOCK-GREY-L", 1).await })
    });
    for add in adds {
        add.await??;
    }
    let counted = alice.cart().await?;
    say.saw(&counted);
    say.why(&format!(
        "1 + 20 = {}: each add is one atomic Lua script in Redis, so none overwrites another \
         (stage 3's cookies kept whichever answer arrived last).",
        counted.qty_of("SOCK-GREY-L")
    ));

    say.step("Alice logs off: DELETE /api/session. Then a copy of her old cookie comes back.");
    alice
        .http()
        .delete(alice.url("/api/session"))
        .send()
        .await?
        .error_for_status()?;
    let thief = Shopper::new(topology.url())?;
    let replay = thief
        .http()
        .get(thief.url("/api/cart"))
        .header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={sid}"))
        .send()
        .await?;
    let state = replay
        .headers()
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let body: serde_json::Value = replay.json().await?;
    say.note(&format!(
        "old id → X-Session: {state}, cart {}",
        if body["lines"].as_array().is_some_and(Vec::is_empty) {
            "empty"
        } else {
            "NOT EMPTY (this should not happen)"
        }
    ));
    say.why("an ended session is deleted, and an unknown id is never adopted: a read gets the empty cart and stores nothing; a change would start a new session under a new id.");

    say.lesson(
        "keep the state out of the instances and they become disposable: any of them serves \
         any request, and killing one loses nothing. The state has moved to Redis, which must \
         now stay up (when it does not, the shop answers 503, never an empty cart). Stage 5 \
         adds what belongs in a database: accounts, addresses and the catalog.",
    );
    topology.stop().await;
    Ok(())
}
