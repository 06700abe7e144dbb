//! `stage5 demo`: where reads go, narrated.
//!
//! A fresh topology on the private servers `services` started (unless the
//! URLs were given): sign up, read the profile twice (miss, then hit),
//! update it and read it at once, look at the replica's lag, hold the
//! replica back, then stop it and watch reads fall back to the primary.

use std::path::PathBuf;

use serde_json::{Value, json};
use shop::narrate::Narrator;
use shop::services::postgres::PostgresCluster;
use shop::shopper::Shopper;
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Services};

use crate::DataArgs;

/// Status, `X-Data-Path` and JSON body of one request.
async fn ask(request: reqwest::RequestBuilder) -> Result<(u16, String, Value), BoxError> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let path = response
        .headers()
        .get("x-data-path")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, path, body))
}

pub async fn run(args: DataArgs, exe: PathBuf, mut services: Services) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 5 · Database, replica and cache: where reads go");
    let topology = Topology::start(TopologyConfig {
        env: shop::flags::instance_env(&args)?,
        ..TopologyConfig::for_tests(exe, &crate::INFO)
    })
    .await?;
    say.note(&format!(
        "3 instances behind {}; PostgreSQL primary + streaming replica, a Redis for sessions, another for the cache.",
        topology.url()
    ));
    let ada = Shopper::new(topology.url())?;
    let me = || ada.http().get(ada.url("/api/me"));
    let update = |name: &str| {
        ada.http().put(ada.url("/api/me")).json(&json!({
            "name": name,
            "address": {"line1": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH", "country": "GB"}
        }))
    };

    say.step("Ada signs up.");
    let (status, path, _) = ask(ada.http().post(ada.url("/api/signup")).json(&json!({
        "email": "ada@example.com", "password": "correct horse battery", "name": "Ada Lovelace"
    })))
    .await?;
    say.note(&format!("HTTP {status}, X-Data-Path: {path}"));
    say.why("accounts are written to the primary; the password as an argon2id hash.");

    say.step("She reads her profile twice.");
    for _ in 0..2 {
        let (_, path, body) = ask(me()).await?;
        say.note(&format!("X-Data-Path: {path}   name: {}", body["name"]));
    }
    say.why("the first read missed the cache, went to a database and filled the cache; the second never left Redis.");

    say.step("She changes her name, and reads it back at once.");
    let (_, path, _) = ask(update("Ada King")).await?;
    say.note(&format!("PUT  X-Data-Path: {path}"));
    let (_, path, body) = ask(me()).await?;
    say.note(&format!(
        "GET  X-Data-Path: {path}   name: {}",
        body["name"]
    ));
    say.why(
        "the write went to the primary, committed, then deleted the cached copy; her session remembers \
         the primary's WAL position, so her read comes from the replica only once it has replayed that far.",
    );

    let metrics = reqwest::get(format!(
        "{}/metrics",
        topology
            .instances()
            .first()
            .map(|i| i.url.clone())
            .unwrap_or_default()
    ))
    .await?
    .text()
    .await?;
    if let Some(lag) = metrics
        .lines()
        .find(|l| l.starts_with("shop_replica_lag_bytes "))
    {
        say.step("How far behind is the replica?");
        say.note(&format!("{lag}   (from /metrics)"));
        say.why("streaming replication replays within milliseconds on one machine; across regions, or under load, much more.");
    }

    if let Some(replica_url) = &args.database_replica_url {
        say.step("Hold the replica back (pg_wal_replay_pause(): a replica lagging under load), then Ada updates and reads at once.");
        let replica = sqlx::PgPool::connect(replica_url).await?;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&replica)
            .await?;
        ask(update("A. A. King")).await?;
        let (_, path, body) = ask(me()).await?;
        say.note(&format!(
            "GET  X-Data-Path: {path}   name: {}",
            body["name"]
        ));
        say.why("the replica had not replayed her write, so her read went to the primary: she sees what she wrote. Another shopper's catalog reads still use the replica.");
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&replica)
            .await?;
        replica.close().await;
    }

    match services.get_mut::<PostgresCluster>() {
        Some(cluster) => {
            say.step("The replica is stopped. Ada's cache entry is gone after another update, so she reads the database.");
            cluster.stop_replica();
            ask(update("Ada, Countess of Lovelace")).await?;
            let (status, path, body) = ask(me()).await?;
            say.note(&format!(
                "HTTP {status}, X-Data-Path: {path}   name: {}",
                body["name"]
            ));
            let (status, path, _) =
                ask(ada.http().get(ada.url("/api/products/JKT-GREEN-L"))).await?;
            say.note(&format!("catalog: HTTP {status}, X-Data-Path: {path}"));
            say.why("a replica down costs capacity, not correctness: reads fall back to the primary (logged and counted in /metrics).");
            cluster.start_replica().await?;
        }
        None => {
            say.note("(the databases were given by URL, so the demo does not stop the replica)")
        }
    }

    say.lesson(
        "a database takes what must be kept (accounts, addresses, the catalog); a replica takes reads \
         off the primary at the price of lag, handled here with the shopper's last WAL position; a \
         cache takes most reads off both at the price of invalidation. Each can fail on its own, and \
         the shop says which path every answer took.",
    );
    topology.stop().await;
    Ok(())
}
