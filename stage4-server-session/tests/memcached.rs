//! `stage4 --store memcached`, as tests: a real `memcached`, three real
//! instances, real HTTP through the real `lb`.
//!
//! Memcached is the fastest place to keep a session and the most
//! forgetful: it keeps nothing across a restart and drops the least
//! recently used carts when its memory is full, without a word. Without
//! scripts, a change stays atomic by `gets`/`cas` and retries.

use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use stage4::sessions::{SESSION_HEADER, STORE_HEADER};
use stage4::stores::StoreKind;
use stage4::testing::{StoreServer, StoreShop, metric};

const STAGE4: &str = env!("CARGO_BIN_EXE_stage4");

/// A generous store timeout: these tests are about what happens, not how
/// fast, and a loaded test machine must not turn a slow answer into a 503.
const PATIENT: &[(&str, &str)] = &[("SHOP_STORE_TIMEOUT", "10s")];

fn header<'a>(seen: &'a shop::shopper::CartSeen, name: &reqwest::header::HeaderName) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn memcached_restart_loses_every_cart() {
    let mut shop = StoreShop::start(STAGE4, StoreKind::Memcached, PATIENT).await;
    let alice = shop.shopper();
    let bob = shop.shopper();
    let added = alice.add("TEE-RED-M", 2).await.expect("add");
    bob.add("HOOD-NAVY-S", 1).await.expect("add");
    assert!(
        header(&added, &STORE_HEADER).starts_with("memcached;"),
        "the answer names its store: {:?}",
        added.headers
    );

    // A crash: Memcached has nothing on disk to come back from.
    shop.store.kill();
    shop.store.restart().await;

    for shopper in [&alice, &bob] {
        let cart = shopper
            .cart()
            .await
            .expect("a fresh empty cart, never an error");
        assert!(cart.is_empty(), "the cart is gone: {}", cart.summary());
        assert_eq!(header(&cart, &SESSION_HEADER), "none; reason=unknown");
        assert!(
            cart.body.notices.iter().any(|n| n.contains("starts empty")),
            "the shop says so: {:?}",
            cart.body.notices
        );
    }
    // The next change starts a new session, which works as before.
    let again = alice
        .add("SOCK-GREY-L", 1)
        .await
        .expect("add after restart");
    assert_eq!(again.qty_of("SOCK-GREY-L"), 1);
    assert_eq!(header(&again, &SESSION_HEADER), "new; reason=unknown");
    shop.stop().await;
}

#[tokio::test]
async fn memcached_evicts_carts_silently_when_full() {
    // 2 MB, Memcached's smallest that holds a 1 MB item: a few thousand
    // sessions fill it.
    let shop = StoreShop::start_with(STAGE4, StoreServer::memcached(2).await, PATIENT).await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 3).await.expect("add");
    assert_eq!(metric(&alice, "memcached_evictions_total").await, 0);

    // Other shoppers arrive, each starting a session with one change,
    // until Alice's (the least recently used) has been pushed out.
    let crowd = reqwest::Client::new();
    let url = shop.url();
    let mut alice_evicted = false;
    for _round in 0..40 {
        let adds = stream::iter(0..1_000).map(|_| {
            let request = crowd
                .post(format!("{url}/api/cart/items"))
                .json(&serde_json::json!({ "sku": "SOCK-GREY-L", "qty": 1 }))
                .send();
            async move {
                let response = request.await.expect("a crowd request");
                assert_eq!(response.status(), StatusCode::OK, "every crowd add works");
            }
        });
        adds.buffer_unordered(16).collect::<Vec<()>>().await;
        if metric(&alice, "memcached_evictions_total").await > 0 {
            alice_evicted = alice.cart().await.expect("a cart").is_empty();
            if alice_evicted {
                break;
            }
        }
    }
    assert!(alice_evicted, "a full Memcached evicted Alice's cart");
    // Silently: no error, just a fresh cart and the shop's notice.
    let cart = alice
        .cart()
        .await
        .expect("a fresh empty cart, never an error");
    assert_eq!(header(&cart, &SESSION_HEADER), "none; reason=unknown");
    assert!(metric(&alice, "memcached_evictions_total").await > 0);
    shop.stop().await;
}

#[tokio::test]
async fn memcached_cas_keeps_every_concurrent_add() {
    // Fifty "add one" at once over three instances: each reads the record,
    // changes it, and writes it back only if nobody wrote it meanwhile
    // (`cas`); the losers read again and retry. None is lost.
    StoreShop::start(STAGE4, StoreKind::Memcached, PATIENT)
        .await
        .assert_concurrent_adds_all_land()
        .await;
}
