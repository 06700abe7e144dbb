//! Every `--store` of stage 4 on a bad day, as tests: a real server of
//! each kind, three real instances, real HTTP through the real `lb`.
//!
//! Whatever keeps the sessions, the shop keeps the same promises: a frozen
//! store gives a quick 503 (never a hang, never an empty cart), a retried
//! change is applied once, a refused change is the same 4xx, and the cart
//! is whole when the store comes back. What a crash keeps differs, and is
//! the reason to pick one store over another.

use std::time::Duration;

use reqwest::StatusCode;
use shop::Catalog;
use shop::cart::MAX_LINES;
use shop::shopper::{CartSeen, Shopper};
use stage4::sessions::{REMEMBERED_KEYS, SESSION_HEADER, STORE_HEADER};
use stage4::stores::StoreKind;
use stage4::testing::{StoreShop, metric};

const STAGE4: &str = env!("CARGO_BIN_EXE_stage4");
const EVERY_STORE: [StoreKind; 5] = [
    StoreKind::Redis,
    StoreKind::Memcached,
    StoreKind::Postgres,
    StoreKind::Dynamodb,
    // Frozen here is the record: the cache cannot answer a change.
    StoreKind::DynamodbCached,
];
/// Generous store and cache timeouts, for the tests that are not about
/// outages: on a busy machine a cache fill that missed the default 50 ms
/// would be skipped (by design), and a test counting cached entries fail.
const PATIENT: &[(&str, &str)] = &[("SHOP_STORE_TIMEOUT", "10s"), ("SHOP_CACHE_TIMEOUT", "10s")];

fn header<'a>(seen: &'a CartSeen, name: &reqwest::header::HeaderName) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Polls `GET /api/cart` until it answers 200 (the store back).
async fn cart_once_the_store_answers(shopper: &Shopper, kind: StoreKind) -> CartSeen {
    for _ in 0..300 {
        match shopper.cart().await {
            Ok(cart) => return cart,
            Err(error) => assert_eq!(
                error.status(),
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "{}: while the store recovers, only 503: {error}",
                kind.name()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}: the shop did not recover with its store", kind.name());
}

#[tokio::test]
async fn every_store_answers_quickly_when_frozen() {
    for kind in EVERY_STORE {
        // The real default store timeout (500 ms). The client gives up
        // after five seconds: a shop that waited on the frozen store
        // instead of answering fails here.
        let shop = StoreShop::start(STAGE4, kind, &[]).await;
        let alice = shop.shopper();
        alice.add("TEE-RED-M", 2).await.expect("add");

        shop.store.freeze();
        for (method, path, body) in [
            (reqwest::Method::GET, "/api/cart", None),
            (
                reqwest::Method::POST,
                "/api/cart/items",
                Some(serde_json::json!({ "sku": "SOCK-GREY-L", "qty": 1 })),
            ),
        ] {
            let mut request = alice.http().request(method.clone(), alice.url(path));
            if let Some(body) = &body {
                request = request.json(body);
            }
            // The shopper's own client (its cookie), with a deadline.
            let response = request
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {method} {path}: an answer, not a hang: {e}",
                        kind.name()
                    )
                });
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{}: {method} {path}",
                kind.name()
            );
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(body["error"], "session_store_unavailable", "{body}");
        }

        shop.store.thaw();
        let back = cart_once_the_store_answers(&alice, kind).await;
        assert_eq!(
            back.qty_of("TEE-RED-M"),
            2,
            "{}: the cart is whole",
            kind.name()
        );
        assert_eq!(header(&back, &SESSION_HEADER), "resumed");
        shop.stop().await;
    }
}

#[tokio::test]
async fn a_retried_change_is_applied_once_in_every_store() {
    for kind in EVERY_STORE {
        let shop = StoreShop::start(STAGE4, kind, PATIENT).await;
        let alice = shop.shopper();
        alice.add("SOCK-GREY-L", 1).await.expect("a first change");
        let add = shop::cart::CartOp::Add(
            shop::cart::KnownSku::new("TEE-RED-M").expect("a SKU"),
            shop::cart::Quantity::new(3).expect("a quantity"),
        );
        // The same change sent three times (its answers lost, say), with
        // one key: applied once, and the retries say they are replays.
        let first = alice
            .apply(add, Some("retry-me-1"))
            .await
            .expect("first try");
        for _ in 0..2 {
            let again = alice.apply(add, Some("retry-me-1")).await.expect("a retry");
            assert_eq!(
                again
                    .headers
                    .get("idempotent-replayed")
                    .map(|v| v.as_bytes()),
                Some(&b"true"[..]),
                "{}",
                kind.name()
            );
            assert_eq!(again.qty_of("TEE-RED-M"), first.qty_of("TEE-RED-M"));
        }
        let cart = alice.cart().await.expect("view");
        assert_eq!(cart.qty_of("TEE-RED-M"), 3, "{}: applied once", kind.name());
        shop.stop().await;
    }
}

#[tokio::test]
async fn a_full_line_is_the_same_4xx_in_every_store() {
    for kind in EVERY_STORE {
        let shop = StoreShop::start(STAGE4, kind, PATIENT).await;
        let alice = shop.shopper();
        let added = alice.add("TEE-RED-M", 90).await.expect("add");
        assert!(
            header(&added, &STORE_HEADER).starts_with(kind.name()),
            "the answer names its store: {:?}",
            added.headers
        );
        let refused = alice
            .add("TEE-RED-M", 10)
            .await
            .expect_err("a 100th item is refused");
        assert_eq!(
            refused.status(),
            Some(StatusCode::UNPROCESSABLE_ENTITY),
            "{}: {refused}",
            kind.name()
        );
        let cart = alice.cart().await.expect("view");
        assert_eq!(
            cart.qty_of("TEE-RED-M"),
            90,
            "{}: nothing changed",
            kind.name()
        );
        shop.stop().await;
    }
}

/// Adds a line, kills the store with `kill -9`, starts it again, and
/// checks that the cart came back whole.
async fn cart_survives_kill_and_restart(kind: StoreKind) {
    let mut shop = StoreShop::start(STAGE4, kind, PATIENT).await;
    let alice = shop.shopper();
    alice.add("HOOD-NAVY-S", 4).await.expect("add");

    // kill -9: each durable store wrote the change down before it
    // answered (Redis its append-only file, PostgreSQL its write-ahead
    // log, dynalite its LevelDB log).
    shop.store.kill();
    shop.store.restart().await;
    let back = cart_once_the_store_answers(&alice, kind).await;
    assert_eq!(back.qty_of("HOOD-NAVY-S"), 4, "{}: kept", kind.name());
    assert_eq!(header(&back, &SESSION_HEADER), "resumed");
    shop.stop().await;
}

#[tokio::test]
async fn durable_stores_keep_every_cart_through_kill_and_restart() {
    for kind in [StoreKind::Redis, StoreKind::Postgres] {
        cart_survives_kill_and_restart(kind).await;
    }
}

#[tokio::test]
async fn dynamodb_cart_survives_store_kill_and_restart() {
    cart_survives_kill_and_restart(StoreKind::Dynamodb).await;
}

#[tokio::test]
async fn postgres_concurrent_adds_are_atomic() {
    // Fifty "add one" at once over three instances: each is a transaction
    // that locks the session's row first, so they take turns; each upsert
    // adds to what the previous one committed.
    StoreShop::start(STAGE4, StoreKind::Postgres, PATIENT)
        .await
        .assert_concurrent_adds_all_land()
        .await;
}

#[tokio::test]
async fn dynamodb_concurrent_adds_are_atomic() {
    // Fifty "add one" at once over three instances: each is one
    // `UpdateItem` (`ADD cart.#sku :q`), which DynamoDB applies to the
    // item atomically; none reads the cart into an instance first.
    StoreShop::start(STAGE4, StoreKind::Dynamodb, PATIENT)
        .await
        .assert_concurrent_adds_all_land()
        .await;
}

#[tokio::test]
async fn dynamodb_cart_line_limit_is_a_condition() {
    let shop = StoreShop::start(STAGE4, StoreKind::Dynamodb, PATIENT).await;
    let alice = shop.shopper();
    let skus: Vec<&'static str> = Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.as_str())
        .take(MAX_LINES + 10)
        .collect();
    assert_eq!(skus.len(), MAX_LINES + 10, "the catalog has enough SKUs");
    for sku in &skus[..MAX_LINES - 1] {
        alice.add(sku, 1).await.expect("fits");
    }

    // One line left, and eleven new lines asked for at once. The limit is
    // the update's condition (`size(cart) < 200`), checked by DynamoDB as
    // it writes: exactly one gets the last line. (Had each instance read
    // the cart and then written, several would have seen room.)
    let mut adds = tokio::task::JoinSet::new();
    for &sku in &skus[MAX_LINES - 1..] {
        let alice = alice.clone();
        adds.spawn(async move { alice.add(sku, 1).await });
    }
    let (mut added, mut refused) = (0, 0);
    while let Some(done) = adds.join_next().await {
        match done.expect("the add ran") {
            Ok(_) => added += 1,
            Err(error) => {
                assert_eq!(
                    error.status(),
                    Some(StatusCode::UNPROCESSABLE_ENTITY),
                    "a full cart is a 422, not a 5xx: {error}"
                );
                assert!(error.to_string().contains("cart_full"), "{error}");
                refused += 1;
            }
        }
    }
    assert_eq!((added, refused), (1, 10));
    let cart = alice.cart().await.expect("view");
    assert_eq!(cart.body.lines.len(), MAX_LINES);
    shop.stop().await;
}

#[tokio::test]
async fn dynamodb_expired_session_is_refused_before_deletion() {
    let shop = StoreShop::start(
        STAGE4,
        StoreKind::Dynamodb,
        &[("SHOP_SESSION_TTL", "1s"), ("SHOP_STORE_TIMEOUT", "10s")],
    )
    .await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 2).await.expect("add");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The session's item is still in the table: dynalite has no TTL, and
    // AWS deletes expired items only lazily (typically within two days).
    let items = shop.store.dynamodb_items().await;
    assert_eq!(items.len(), 1, "the expired item is not deleted yet");

    // Yet the shop does not serve it: every read checks the expiry itself.
    let cart = alice.cart().await.expect("a fresh empty cart");
    assert_eq!(
        cart.qty_of("TEE-RED-M"),
        0,
        "the expired cart is not served"
    );
    assert_eq!(header(&cart, &SESSION_HEADER), "none; reason=unknown");
    // Nor can a change bring it back to life.
    let again = alice.add("SOCK-GREY-L", 1).await.expect("a new session");
    assert_eq!(again.qty_of("TEE-RED-M"), 0, "not resurrected");
    assert_eq!(shop.store.dynamodb_items().await.len(), 2, "a new item");
    shop.stop().await;
}

#[tokio::test]
async fn dynamodb_remembers_only_the_newest_idempotency_keys() {
    let shop = StoreShop::start(STAGE4, StoreKind::Dynamodb, PATIENT).await;
    let alice = shop.shopper();
    let add = shop::cart::CartOp::Add(
        shop::cart::KnownSku::new("SOCK-GREY-L").expect("a SKU"),
        shop::cart::Quantity::new(1).expect("a quantity"),
    );
    // A long-lived session's changes, each with its own key: past a bound
    // the item forgets the oldest, or it would grow to the 400 KB limit.
    let changes = 3 * REMEMBERED_KEYS;
    for n in 0..changes {
        alice
            .apply(add, Some(&format!("change-{n}")))
            .await
            .expect("a change");
    }
    let mut remembered = usize::MAX;
    for _ in 0..100 {
        let items = shop.store.dynamodb_items().await;
        remembered = items[0]["applied"]
            .as_m()
            .map_or(0, |applied| applied.len());
        if remembered < 2 * REMEMBERED_KEYS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (REMEMBERED_KEYS..2 * REMEMBERED_KEYS).contains(&remembered),
        "{remembered} records after {changes} changes"
    );
    // The newest change is still remembered: sent again, it is a replay.
    let again = alice
        .apply(add, Some(&format!("change-{}", changes - 1)))
        .await
        .expect("a retry");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(
        again.qty_of("SOCK-GREY-L"),
        u8::try_from(changes).expect("a count")
    );
    shop.stop().await;
}

#[tokio::test]
async fn cached_dynamodb_survives_cache_flush() {
    let mut shop = StoreShop::start(STAGE4, StoreKind::DynamodbCached, PATIENT).await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 3).await.expect("add");
    // Reads fill the cache (one per instance at most), then hit it.
    for _ in 0..6 {
        assert_eq!(alice.cart().await.expect("view").qty_of("TEE-RED-M"), 3);
    }
    let mut cache = shop.store.cache().connection().await.expect("redis");
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:cached-session:*")
        .query_async(&mut cache)
        .await
        .expect("KEYS");
    assert_eq!(cached.len(), 1, "the session is cached: {cached:?}");

    // The cache is only a copy: emptying it loses nothing.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut cache)
        .await
        .expect("FLUSHALL");
    let back = alice.cart().await.expect("view");
    assert_eq!(back.qty_of("TEE-RED-M"), 3, "served from the record");
    assert_eq!(header(&back, &SESSION_HEADER), "resumed");
    let refilled: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:cached-session:*")
        .query_async(&mut cache)
        .await
        .expect("KEYS");
    assert_eq!(refilled.len(), 1, "and the read filled the cache again");
    shop.stop().await;
}

#[tokio::test]
async fn a_retried_change_drops_a_cached_cart_the_first_try_left_behind() {
    let mut shop = StoreShop::start(STAGE4, StoreKind::DynamodbCached, PATIENT).await;
    let alice = shop.shopper();
    alice.add("SOCK-GREY-L", 1).await.expect("add");
    for _ in 0..6 {
        alice.cart().await.expect("view");
    }
    let mut cache = shop.store.cache().connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:cached-session:*")
        .query_async(&mut cache)
        .await
        .expect("KEYS");
    let [entry] = keys.as_slice() else {
        panic!("one cached session: {keys:?}");
    };
    let before: String = redis::cmd("GET")
        .arg(entry)
        .query_async(&mut cache)
        .await
        .expect("GET");

    let add_tee = || {
        alice
            .http()
            .post(alice.url("/api/cart/items"))
            .header("idempotency-key", "add-the-tee")
            .json(&serde_json::json!({ "sku": "TEE-RED-M", "qty": 1 }))
            .send()
    };
    let first = add_tee().await.expect("an answer");
    assert_eq!(first.status(), StatusCode::OK);
    // The first try's answer was lost, and so was its word to the cache
    // (a timeout between the record and the cache): the old copy is back.
    let _: () = redis::cmd("SET")
        .arg(entry)
        .arg(&before)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut cache)
        .await
        .expect("SET");
    assert_eq!(
        alice.cart().await.expect("view").qty_of("TEE-RED-M"),
        0,
        "the stale copy is what the cache serves"
    );

    let retry = add_tee().await.expect("an answer");
    assert_eq!(retry.status(), StatusCode::OK, "the retry is answered");
    for _ in 0..3 {
        let cart = alice.cart().await.expect("view");
        assert_eq!(
            (cart.qty_of("TEE-RED-M"), cart.qty_of("SOCK-GREY-L")),
            (1, 1),
            "the retry dropped the stale copy: the record's cart, added once"
        );
    }
    shop.stop().await;
}

#[tokio::test]
async fn cache_outage_serves_from_the_record() {
    // The real default store timeout: a frozen cache must cost a read
    // less than that, and never an error.
    let mut shop = StoreShop::start(STAGE4, StoreKind::DynamodbCached, &[]).await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 2).await.expect("add");
    for _ in 0..3 {
        alice.cart().await.expect("view");
    }

    shop.store.cache().pause().expect("SIGSTOP");
    // Every read and change still answers, from the record.
    for _ in 0..6 {
        let cart = alice
            .cart()
            .await
            .expect("a read while the cache is frozen");
        assert_eq!(cart.qty_of("TEE-RED-M"), 2);
    }
    let added = alice
        .add("TEE-RED-M", 1)
        .await
        .expect("a change while the cache is frozen");
    assert_eq!(added.qty_of("TEE-RED-M"), 3);
    for _ in 0..3 {
        let cart = alice
            .cart()
            .await
            .expect("a read while the cache is frozen");
        assert_eq!(cart.qty_of("TEE-RED-M"), 3, "the change, from the record");
    }

    // Back: the invalidation the cache missed is made again, and every
    // instance serves the new cart (within the retry, well inside the
    // entry's TTL).
    shop.store.cache().resume().expect("SIGCONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cart = alice.cart().await.expect("view");
        if cart.qty_of("TEE-RED-M") == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache still serves the old cart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..6 {
        assert_eq!(alice.cart().await.expect("view").qty_of("TEE-RED-M"), 3);
    }
    assert!(
        metric(&alice, "session_cache_skipped_total").await > 0,
        "reads went around the frozen cache"
    );
    shop.stop().await;
}
