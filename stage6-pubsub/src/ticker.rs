//! The flash-sale ticker (`--ticker 1s`): random price changes, from one
//! instance only.
//!
//! Every instance runs the loop, and each tick they race for a lease in
//! Redis (`SET … NX PX`): the holder changes one random SKU's flash price
//! and renews its lease; the others wait. If the holder dies, its lease
//! runs out and another instance takes over: leader election with one
//! small script, the way Redis locks for a single job are usually taken
//! (a lease, not a lock held forever: a dead holder cannot block it).

use std::time::Duration;

use redis::aio::ConnectionManager;
use shop::Catalog;

use crate::live::Live;

const LEASE: &str = "myclothes:live:ticker";

/// Renews the lease if it is ours, else takes it if it is free; 1 if we
/// hold it now. One script, so the lease cannot change hands between the
/// check and the renewal.
static LEASE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          return redis.call('PEXPIRE', KEYS[1], ARGV[2])
        end
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
        return 0
        ",
    )
});

/// Runs the ticker until the task is aborted.
pub(crate) async fn run(live: Live, every: Duration) {
    // The lease holder's name: random, so that two instances can never
    // both think the lease is theirs (not even two with the same `--id`).
    let mut token = [0u8; 16];
    if getrandom::fill(&mut token).is_err() {
        tracing::error!("no randomness for the ticker's lease; the ticker is off");
        return;
    }
    // `pid:token`: the pid says which process holds it (for a person, or a
    // test, looking at Redis); the token makes it unique.
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let instance = format!("{}:{token}", std::process::id());
    let redis: ConnectionManager = live.redis();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lease_ms = u64::try_from(every.as_millis().saturating_mul(3)).unwrap_or(u64::MAX);
    loop {
        ticks.tick().await;
        let mut redis = redis.clone();
        let mut take = LEASE_SCRIPT.key(LEASE);
        take.arg(&instance).arg(lease_ms);
        let holding: i64 = take.invoke_async(&mut redis).await.unwrap_or(0);
        if holding != 1 {
            continue;
        }
        let products = Catalog::get().products();
        let mut pick = [0u8; 4];
        if getrandom::fill(&mut pick).is_err() {
            continue;
        }
        let pick = u32::from_le_bytes(pick);
        let product = &products[usize::try_from(pick).unwrap_or(0) % products.len()];
        // 70 % to 100 % of the catalog price, in whole cents.
        let percent = 70 + pick % 31;
        let price = product.price_cents / 100 * percent;
        if let Err(error) = live.set_price(&product.sku, price).await {
            tracing::debug!(%error, "the ticker could not publish");
        }
    }
}
