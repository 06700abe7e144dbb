//! A whole zone goes dark under the data tier: the failover manager
//! fences the primary and promotes the standby, the writer endpoint
//! follows, and the same URL takes writes again. Then the zone returns,
//! and its old primary re-joins as the standby.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;
use stage7::data_tier::{DataTier, Options};
use stage7::failover::Policy;
use stage7::postgres_ha::{NodeName, Replication};
use stage7::region::{Machine, Zone};
use support::{redis_in, region, sql};

/// How long one write waits while the zone may be dark, before the next
/// try (a write to a zone that is gone hangs until then).
const ATTEMPT: Duration = Duration::from_secs(2);
/// How long writes that must all be acknowledged may take: generous, for a
/// busy machine (they return as soon as they are).
const ACKNOWLEDGED_WITHIN: Duration = Duration::from_secs(15);

async fn data_tier() -> (DataTier, Machine) {
    let region = Arc::new(region());
    let options = Options {
        replication: Replication::Synchronous,
        policy: Policy {
            after: 3,
            strict: false,
        },
    };
    let tier = DataTier::start(region.clone(), options)
        .await
        .expect("the data tier");
    // An instance in zone b: it outlives zone a.
    let b1 = region.instance_machine(1).expect("b1");
    sql::execute(
        &b1,
        &tier.writer_url(),
        "CREATE TABLE orders (id int PRIMARY KEY)",
    )
    .await;
    (tier, b1)
}

/// Takes zone a down and writes through the endpoint until a write is
/// acknowledged again; returns how long writes were refused.
async fn lose_zone_a(tier: &DataTier, client: &Machine) -> Duration {
    let killed = tier.take_zone_down(Zone::A).await.expect("zone a down");
    assert!(killed >= 1, "the primary's processes were in zone a");
    writes_accepted_again(tier, client, 1000).await
}

/// Writes rows from `first_id` on through the writer endpoint, one every
/// 200 ms, until one is acknowledged (a minute at most); returns how long
/// that took.
async fn writes_accepted_again(tier: &DataTier, client: &Machine, first_id: i32) -> Duration {
    let began = Instant::now();
    let mut id = first_id;
    loop {
        id += 1;
        if sql::commit_each(client, &tier.writer_url(), id..=id, ATTEMPT)
            .await
            .contains(&id)
        {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no write accepted for a minute: {:?}",
            tier.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn losing_the_primary_zone_promotes_the_standby_behind_the_same_url() {
    let (tier, b1) = data_tier().await;
    let acknowledged = sql::commit_each(&b1, &tier.writer_url(), 1..=20, ACKNOWLEDGED_WITHIN).await;
    assert_eq!(acknowledged.len(), 20);

    let without_writes = lose_zone_a(&tier, &b1).await;
    eprintln!("writes refused for {:.1}s", without_writes.as_secs_f64());

    let status = tier.status();
    assert_eq!(status.primary, Some(NodeName::B), "{status:?}");
    assert_eq!(status.failovers, 1, "{status:?}");
    assert!(
        status.degraded,
        "with its standby gone, the new primary commits alone: {status:?}"
    );
    let survived = sql::ids(&b1, &tier.writer_url())
        .await
        .expect("read through the endpoint");
    assert!(
        acknowledged.is_subset(&survived),
        "every acknowledged write is on the new primary"
    );
}

#[tokio::test]
async fn zone_returns_as_standby() {
    let (tier, b1) = data_tier().await;
    lose_zone_a(&tier, &b1).await;
    // The Sentinels promote zone b's Redis too (so zone a's returns as its
    // replica, not as a second primary).
    let b_data = tier.region().machine("b-data").expect("b-data");
    let b_redis = std::net::SocketAddr::from((b_data.address, stage7::redis_ha::PORT));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tier.sessions_target() != Some(b_redis) {
        assert!(
            Instant::now() < deadline,
            "the Sentinels never promoted zone b's Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let done = tier.bring_zone_back(Zone::A).await.expect("zone a back");
    assert!(
        done.iter().any(|d| d.starts_with("pg_a: rewound")),
        "{done:?}"
    );
    let a_data = tier.region().machine("a-data").expect("a-data");
    let old_primary = tier.postgres().lock().await.url_of(NodeName::A);
    assert_eq!(
        sql::text(&a_data, &old_primary, "SELECT pg_is_in_recovery()::text")
            .await
            .expect("ask pg_a"),
        "true",
        "the old primary came back as a standby"
    );
    // The manager sees it stream and makes commits synchronous again; a
    // write acknowledged now is on both.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tier.status().degraded {
        if Instant::now() > deadline {
            let new_primary = tier.postgres().lock().await.url_of(NodeName::B);
            let replication = sql::text(&b1, &new_primary, "SELECT coalesce(string_agg(application_name || ':' || state, ','), 'none') FROM pg_stat_replication").await;
            panic!(
                "still degraded: {:?}; pg_stat_replication on pg_b: {replication:?}",
                tier.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acknowledged =
        sql::commit_each(&b1, &tier.writer_url(), 2001..=2005, ACKNOWLEDGED_WITHIN).await;
    assert_eq!(acknowledged.len(), 5);
    // `synchronous_commit = on` waits for the standby's disk, not its
    // replay: the rows become visible there a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_a = sql::ids(&a_data, &old_primary).await.expect("read pg_a");
        if acknowledged.is_subset(&on_a) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_a never showed {acknowledged:?}: {on_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The old Redis primary came back as a replica of the promoted one.
    let role = redis_in::query(
        &a_data,
        &format!("redis://{}:6379/", a_data.address),
        &["ROLE"],
    )
    .await
    .expect("ROLE on zone a's Redis");
    let redis::Value::Array(role) = role else {
        panic!("ROLE answered {role:?}");
    };
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"slave".to_vec())),
        "{role:?}"
    );
    assert_eq!(
        role.get(1),
        Some(&redis::Value::BulkString(
            b_data.address.to_string().into_bytes()
        )),
        "it follows zone b's: {role:?}"
    );
}

#[tokio::test]
async fn sentinel_failover_keeps_sessions() {
    let (tier, b1) = data_tier().await;
    let url = tier.sessions_url();
    redis_in::query(&b1, &url, &["SET", "cart:ada", "3 t-shirts"])
        .await
        .expect("SET");
    // Replication is asynchronous: WAIT makes this one cart's copy certain
    // (the shop does not wait; see redis_ha's documentation).
    // (The replica may still be loading its first copy: ask until it has it.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_in::query(&b1, &url, &["WAIT", "1", "200"]).await != Ok(redis::Value::Int(1)) {
        assert!(
            Instant::now() < deadline,
            "the replica in zone b never acknowledged the cart"
        );
    }

    tier.take_zone_down(Zone::A).await.expect("zone a down");
    let lost_at = Instant::now();
    let cart = loop {
        if let Ok(redis::Value::BulkString(cart)) =
            redis_in::query(&b1, &url, &["GET", "cart:ada"]).await
        {
            break String::from_utf8_lossy(&cart).into_owned();
        }
        assert!(
            lost_at.elapsed() < Duration::from_secs(60),
            "the sessions endpoint never answered again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "sessions unreachable for {:.1}s",
        lost_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        cart, "3 t-shirts",
        "the cart survived the zone, behind the same URL"
    );
    let b_data = tier.region().machine("b-data").expect("b-data");
    assert_eq!(
        tier.sessions_target(),
        Some(std::net::SocketAddr::from((
            b_data.address,
            stage7::redis_ha::PORT
        ))),
        "the Sentinels promoted the replica in zone b and the endpoint followed"
    );
    // And it takes writes: a promoted replica, not a read-only one.
    redis_in::query(&b1, &url, &["SET", "cart:bob", "1 scarf"])
        .await
        .expect("a write after the failover");
}

#[tokio::test]
async fn a_standby_out_of_sync_is_not_promoted() {
    let (tier, _b1) = data_tier().await;
    // Zone b goes first: the primary commits alone (degraded) ...
    tier.take_zone_down(Zone::B).await.expect("zone b down");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tier.status().degraded {
        assert!(
            Instant::now() < deadline,
            "never degraded: {:?}",
            tier.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... so when zone a goes too, no standby holds every acknowledged
    // write, and the manager must not promote one.
    tier.take_zone_down(Zone::A).await.expect("zone a down");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = tier.status();
        if status
            .events
            .iter()
            .any(|e| e.what.starts_with("not promoting"))
        {
            assert_eq!(status.failovers, 0, "{status:?}");
            assert_eq!(status.primary, Some(NodeName::A), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no refusal: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the manager has recorded an event that contains `what`.
async fn event_seen(tier: &DataTier, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !tier.status().events.iter().any(|e| e.what.contains(what)) {
        assert!(
            Instant::now() < deadline,
            "no event with {what:?}: {:?}",
            tier.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_zone_back_before_the_failover_keeps_its_primary() {
    let (tier, _b1) = data_tier().await;
    tier.take_zone_down(Zone::A).await.expect("zone a down");
    // The second failed check; the third is already under way, and will
    // fail too (it began while the zone was dark). The zone returns now,
    // before the manager acts on that third failure.
    event_seen(&tier, "did not answer (2/3)", Duration::from_secs(30)).await;
    let done = tier.bring_zone_back(Zone::A).await.expect("zone a back");
    assert!(
        done.iter()
            .any(|d| d.starts_with("pg_a: restarted as the primary")),
        "{done:?}"
    );
    // What the manager saw is out of date: it must not fence the primary
    // that was just started again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = tier.status();
    assert_eq!(status.failovers, 0, "{status:?}");
    assert!(
        !status.events.iter().any(|e| e.what.starts_with("fenced")),
        "{status:?}"
    );
    assert!(
        tier.postgres().lock().await.is_running(NodeName::A),
        "pg_a still runs: {status:?}"
    );
}

#[tokio::test]
async fn a_primary_back_after_a_failed_promotion_takes_writes_again() {
    let (tier, _b1) = data_tier().await;
    // The client: an instance in zone a, which comes back (zone b does not).
    let a1 = tier.region().instance_machine(0).expect("a1");
    // Zone b goes, and zone a right after it: the primary last said its
    // standby was in sync, so the manager fences it and tries to promote
    // the standby, which is gone too.
    tier.take_zone_down(Zone::B).await.expect("zone b down");
    tier.take_zone_down(Zone::A).await.expect("zone a down");
    event_seen(&tier, "cannot promote", Duration::from_secs(60)).await;
    // Zone a returns; nobody was promoted, so pg_a is still the primary,
    // and the writer endpoint must lead to it again.
    let done = tier.bring_zone_back(Zone::A).await;
    let postgres_back = tier.postgres().lock().await.is_running(NodeName::A);
    assert!(postgres_back, "pg_a restarted: {done:?}");
    writes_accepted_again(&tier, &a1, 3000).await;
}

#[tokio::test]
async fn a_primary_with_every_connection_taken_is_busy_not_dead() {
    let (tier, b1) = data_tier().await;
    // A crowd of clients takes every connection the primary has: it
    // answers the manager's check with "too many clients".
    let url = tier.writer_url();
    let netns = b1.netns.clone();
    let crowd = tokio::spawn(async move {
        stage7::netns::run(netns.as_deref(), move || {
            Box::pin(async move {
                let mut held = Vec::new();
                let refusal = loop {
                    match sqlx::PgConnection::connect(&url).await {
                        Ok(connection) => held.push(connection),
                        Err(error) => break error.to_string(),
                    }
                };
                // Held for five checks, more than it takes to fail over.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, sqlx::Error>((held.len(), refusal))
            })
        })
        .await
    });
    let (held, refusal) = crowd
        .await
        .expect("the crowd's task")
        .expect("the crowd's thread")
        .expect("the crowd");
    assert!(
        refusal.contains("too many clients"),
        "the server was full after {held} connections: {refusal}"
    );
    let status = tier.status();
    assert!(
        status
            .events
            .iter()
            .any(|e| e.what.contains("busy, not dead")),
        "the manager heard the refusal: {status:?}"
    );
    // Five checks refused, and three failures fail over: a refusal is an
    // answer, not a failure. (A check that ran past its second on a busy
    // machine may still count one: it is the run of three that matters.)
    assert_eq!(status.failovers, 0, "{status:?}");
    assert_eq!(status.primary, Some(NodeName::A), "{status:?}");
}

#[tokio::test]
async fn a_rejoin_that_lost_its_data_half_way_copies_it_afresh() {
    let (tier, b1) = data_tier().await;
    lose_zone_a(&tier, &b1).await;
    // An earlier try to bring pg_a back failed half-way: its rewind and
    // its base backup both failed, and the base backup cleaned up after
    // itself, leaving no data folder at all.
    let data = tier
        .postgres()
        .lock()
        .await
        .data_dir(NodeName::A)
        .to_owned();
    std::fs::remove_dir_all(&data).expect("pg_a's data folder");
    let done = tier.bring_zone_back(Zone::A).await.expect("zone a back");
    assert!(
        done.iter().any(|d| d.starts_with("pg_a: copied afresh")),
        "{done:?}"
    );
    let a_data = tier.region().machine("a-data").expect("a-data");
    let pg_a = tier.postgres().lock().await.url_of(NodeName::A);
    assert_eq!(
        sql::text(&a_data, &pg_a, "SELECT pg_is_in_recovery()::text")
            .await
            .expect("ask pg_a"),
        "true",
        "pg_a follows the new primary"
    );
}
