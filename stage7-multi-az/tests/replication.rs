//! Synchronous against asynchronous replication, made deterministic: the
//! standby's zone is cut off from the primary's (a network partition
//! between zones), N writes are committed, the primary's zone dies, the
//! partition heals and the standby is promoted. Which acknowledged writes
//! survive?
//!
//! (Pausing the standby's *replay* would not show it: a promotion first
//! replays everything the standby has received. The writes are lost only
//! if they never reached it.)

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use stage7::failover::promote;
use stage7::postgres_ha::{NodeName, PostgresHa, Replication};
use stage7::region::{A_DATA_HOST, B_DATA_HOST, REGION_HOST, Zone};
use stage7::security_groups::Group;
use support::{region, sql};

/// How long a client waits for a commit while zone b is cut off, before
/// giving up on it: the window in which a synchronous commit is seen not
/// to return.
const COMMIT_DEADLINE: Duration = Duration::from_secs(2);
/// How long commits with both zones up may take: generous, for a busy
/// machine (they return as soon as they are).
const ACKNOWLEDGED_WITHIN: Duration = Duration::from_secs(15);

struct Outcome {
    /// Acknowledged before the partition.
    before: BTreeSet<i32>,
    /// Acknowledged while the standby was cut off.
    during: BTreeSet<i32>,
    /// What the promoted standby holds.
    survived: BTreeSet<i32>,
}

impl Outcome {
    fn lost(&self) -> BTreeSet<i32> {
        self.before
            .union(&self.during)
            .filter(|id| !self.survived.contains(id))
            .copied()
            .collect()
    }
}

async fn partition_then_lose_zone_a(replication: Replication) -> Outcome {
    let region = region();
    let client = region
        .add_machine("region", Zone::Region, REGION_HOST, Group::Data)
        .expect("region");
    let a = region
        .add_machine("a-data", Zone::A, A_DATA_HOST, Group::Data)
        .expect("a-data");
    let b = region
        .add_machine("b-data", Zone::B, B_DATA_HOST, Group::Data)
        .expect("b-data");
    let mut pg = PostgresHa::start(a.clone(), b.clone(), replication)
        .await
        .expect("PostgreSQL in two zones");
    let (primary, standby) = (pg.url_of(NodeName::A), pg.url_of(NodeName::B));
    sql::execute(
        &client,
        &primary,
        "CREATE TABLE orders (id int PRIMARY KEY)",
    )
    .await;

    let before = sql::commit_each(&client, &primary, 1..=5, ACKNOWLEDGED_WITHIN).await;
    assert_eq!(
        before.len(),
        5,
        "with both zones up every commit is acknowledged"
    );
    // Let the standby replay them (an asynchronous one may be a moment behind).
    let deadline = Instant::now() + Duration::from_secs(15);
    while sql::ids(&client, &standby)
        .await
        .map(|ids| ids.len())
        .unwrap_or(0)
        < 5
    {
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    region.set_machine_link(&b, false).expect("cut zone b off");
    let during = sql::commit_each(&client, &primary, 6..=10, COMMIT_DEADLINE).await;
    // Zone a goes dark: its network first, then its power. (Killing the
    // server alone is not a dead zone: the kernel would go on resending
    // what the server had written to its sockets, and deliver it to the
    // standby once the partition heals.)
    region
        .set_machine_link(&a, false)
        .expect("zone a's network goes");
    pg.kill(NodeName::A);
    region
        .set_machine_link(&b, true)
        .expect("heal the partition");
    let url = standby.clone();
    stage7::netns::run(client.netns.as_deref(), move || {
        Box::pin(async move { promote(&url).await })
    })
    .await
    .expect("the promote thread")
    .expect("pg_promote on the standby");
    let survived = sql::ids(&client, &standby)
        .await
        .expect("read the promoted standby");
    Outcome {
        before,
        during,
        survived,
    }
}

#[tokio::test]
async fn synchronous_standby_loses_no_committed_write() {
    let outcome = partition_then_lose_zone_a(Replication::Synchronous).await;
    assert!(
        outcome.during.is_empty(),
        "a synchronous commit waits for the standby, so none returned while it was cut off: {:?}",
        outcome.during
    );
    assert_eq!(
        outcome.lost(),
        BTreeSet::new(),
        "no acknowledged write is lost"
    );
    assert!(outcome.before.is_subset(&outcome.survived));
}

#[tokio::test]
async fn async_standby_promotion_can_lose_writes() {
    let outcome = partition_then_lose_zone_a(Replication::Asynchronous).await;
    assert_eq!(
        outcome.during,
        (6..=10).collect(),
        "asynchronous commits return at once, standby or not"
    );
    assert_eq!(
        outcome.lost(),
        outcome.during,
        "every write acknowledged while the standby was cut off is gone after the promotion"
    );
    assert!(
        outcome.before.is_subset(&outcome.survived),
        "what it had received survives"
    );
}
