//! Stage 4's lesson, as tests: a real `redis-server`, three real instance
//! processes, real HTTP through the real `lb`.
//!
//! Only a session id travels; the cart lives in Redis. So instances are
//! disposable, concurrent changes lose nothing, and what must be guarded
//! now is the session id itself and Redis's availability.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode};
use shop::shopper::{Shopper, set_cookie_value};
use stage4::sessions::{RedisSessions, SESSION_COOKIE, SESSION_HEADER, SESSION_KEY_PREFIX};
use stage4::testing::{SessionShop, add_one_at_once, request_with_sid};

const STAGE4: &str = env!("CARGO_BIN_EXE_stage4");

/// The stage, with a generous store timeout: these tests are about what
/// happens, not how fast, and a loaded test machine must not turn a slow
/// answer into a 503. The outage tests use the real default (500 ms).
async fn spawn_shop() -> SessionShop {
    SessionShop::start(STAGE4, &stage4::INFO, &[("SHOP_STORE_TIMEOUT", "10s")]).await
}

/// `POST /api/cart/items` with `Cookie: sid=<sid>` (or none).
async fn add_with_sid(url: &str, sid: Option<&str>, sku: &str) -> reqwest::Response {
    request_with_sid(Method::POST, &format!("{url}/api/cart/items"), sid)
        .json(&serde_json::json!({ "sku": sku, "qty": 1 }))
        .send()
        .await
        .expect("request through the balancer")
}

fn session_state(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Starts the shopper's session with a first change (a read starts none)
/// and returns its id, read back from the `Set-Cookie`.
async fn start_session(shopper: &Shopper) -> String {
    let first = shopper.add("SOCK-GREY-L", 1).await.expect("a first change");
    set_cookie_value(&first.headers, SESSION_COOKIE).expect("a first change starts a session")
}

/// Polls `GET /api/cart` until it answers 200 (Redis back), then returns it.
async fn cart_once_redis_answers(shopper: &Shopper) -> shop::shopper::CartSeen {
    for _ in 0..200 {
        match shopper.cart().await {
            Ok(cart) => return cart,
            Err(error) => assert_eq!(
                error.status(),
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "while Redis recovers, only 503: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the shop did not recover when Redis came back");
}

#[tokio::test]
async fn cart_survives_instance_loss() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    let added = alice.add("TEE-RED-M", 2).await.expect("add");
    let home = added.served_by().to_owned();

    shop.topology.kill_instance(&home).await.expect("kill");
    for _ in 0..3 {
        let seen = alice.cart().await.expect("the cart, from a survivor");
        assert_ne!(seen.served_by(), home, "{home} is dead");
        assert_eq!(
            seen.qty_of("TEE-RED-M"),
            2,
            "the cart lived in Redis, not in {home}"
        );
    }
    shop.stop().await;
}

#[tokio::test]
async fn any_instance_serves_any_request() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    alice.add("JEAN-NAVY-M", 1).await.expect("add");

    let mut served_by = BTreeSet::new();
    for sku in ["TEE-RED-M", "SOCK-GREY-L", "HOOD-NAVY-S"] {
        let seen = alice.add(sku, 1).await.expect("add");
        served_by.insert(seen.served_by().to_owned());
        assert_eq!(seen.qty_of("JEAN-NAVY-M"), 1, "earlier lines are there");
    }
    for _ in 0..3 {
        let seen = alice.cart().await.expect("view");
        served_by.insert(seen.served_by().to_owned());
        assert_eq!(seen.body.lines.len(), 4, "every line, on every instance");
    }
    assert_eq!(
        served_by.len(),
        3,
        "round-robin used every instance: {served_by:?}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn concurrent_adds_lose_nothing() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    start_session(&alice).await;

    // Fifty "add one" requests at once, spread over three instances by the
    // balancer. Each is one atomic script in Redis; none overwrites another
    // (stage 3's cookie would keep only whichever answer came back last).
    let served_by = add_one_at_once(&alice, "TEE-RED-M", 50).await;

    let cart = alice.cart().await.expect("view");
    assert_eq!(cart.qty_of("TEE-RED-M"), 50, "no add was lost");
    assert!(served_by.len() > 1, "the adds were spread: {served_by:?}");
    shop.stop().await;
}

#[tokio::test]
async fn session_id_is_random_and_at_least_128_bits() {
    let shop = spawn_shop().await;
    let mut ids = BTreeSet::new();
    let mut set_cookies = Vec::new();
    for _ in 0..64 {
        let response = add_with_sid(&shop.url(), None, "TEE-RED-M").await;
        set_cookies.push(
            response
                .headers()
                .get(reqwest::header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .expect("a new shopper's first change gets a session cookie")
                .to_owned(),
        );
        ids.insert(set_cookie_value(response.headers(), SESSION_COOKIE).expect("sid"));
    }
    assert_eq!(ids.len(), 64, "every shopper gets a different id");

    let decoded: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| URL_SAFE_NO_PAD.decode(id).expect("base64url"))
        .collect();
    assert!(
        decoded.iter().all(|bytes| bytes.len() * 8 >= 128),
        "at least 128 bits each"
    );
    // A counter, a timestamp or a weak generator leaves some bits fixed
    // across visitors; 64 random ids make each of the 128 bits take both
    // values with overwhelming probability (a miss: 2 × 2^-64 per bit).
    for bit in 0..128 {
        let ones = decoded
            .iter()
            .filter(|b| b[bit / 8] & (1 << (bit % 8)) != 0)
            .count();
        assert!(
            ones > 0 && ones < decoded.len(),
            "bit {bit} never changes: not random"
        );
    }
    for header in &set_cookies {
        assert!(
            header.contains("HttpOnly") && header.contains("SameSite=Lax"),
            "{header}"
        );
    }
    shop.stop().await;
}

#[tokio::test]
async fn redis_key_does_not_contain_the_session_id() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    let sid = start_session(&alice).await;
    alice.add("TEE-RED-M", 3).await.expect("add");

    let keys = shop.redis_keys().await;
    let expected = RedisSessions::keys_for(&sid);
    assert_eq!(
        keys,
        [expected.cart.clone(), expected.session.clone()],
        "one session (its own hash and its cart), under the hash of its id"
    );
    assert!(expected.session.starts_with(SESSION_KEY_PREFIX));
    assert!(
        keys.iter().all(|k| !k.contains(&sid)),
        "no key holds the id"
    );
    let mut redis = shop.redis_connection().await;
    for key in &keys {
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .expect("HGETALL");
        assert!(
            fields.iter().all(|f| !f.contains(&sid)),
            "nor does a value: {fields:?}"
        );
    }
    let cart: Vec<String> = redis::cmd("HGETALL")
        .arg(&expected.cart)
        .query_async(&mut redis)
        .await
        .expect("HGETALL");
    assert!(cart.windows(2).any(|w| w == ["TEE-RED-M", "3"]), "{cart:?}");
    shop.stop().await;
}

#[tokio::test]
async fn session_expires_after_idle_ttl() {
    let shop = SessionShop::start(
        STAGE4,
        &stage4::INFO,
        &[("SHOP_SESSION_TTL", "2s"), ("SHOP_STORE_TIMEOUT", "10s")],
    )
    .await;
    let alice = shop.shopper();
    let sid = start_session(&alice).await;
    alice.add("TEE-RED-M", 1).await.expect("add");
    let key = RedisSessions::keys_for(&sid).session;
    let mut redis = shop.redis_connection().await;
    let ttl_ms = pttl(&mut redis, &key).await;
    assert!(
        0 < ttl_ms && ttl_ms <= 2000,
        "the key expires after the idle TTL: {ttl_ms}"
    );

    // Wait (idle) until Redis has expired the session.
    let mut exists = 1;
    for _ in 0..100 {
        exists = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("EXISTS");
        if exists == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(exists, 0, "an idle session expires");

    let after = alice.cart().await.expect("view after expiry");
    assert!(after.is_empty(), "the expired cart is gone");
    assert_eq!(session_state_of(&after), "none; reason=unknown");
    let changed = alice
        .add("SOCK-GREY-L", 1)
        .await
        .expect("a change after expiry");
    assert_eq!(session_state_of(&changed), "new; reason=unknown");
    assert_eq!(
        changed.summary(),
        "1 × SOCK-GREY-L",
        "nothing of the old cart"
    );
    let new_sid = set_cookie_value(&changed.headers, SESSION_COOKIE).expect("a new id");
    assert_ne!(new_sid, sid, "a new session gets a new id");
    shop.stop().await;
}

#[tokio::test]
async fn a_read_slides_the_idle_expiry_once_it_has_run_down() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    let sid = start_session(&alice).await;
    let key = RedisSessions::keys_for(&sid).session;
    let mut redis = shop.redis_connection().await;

    // Pretend the session has sat idle for most of its 30 minutes.
    pexpire(&mut redis, &key, 5_000).await;
    let seen = alice.cart().await.expect("a plain read");
    assert_eq!(session_state_of(&seen), "resumed");
    let ttl_ms = pttl(&mut redis, &key).await;
    assert!(
        ttl_ms > 29 * 60 * 1000,
        "a read renews the 30-minute idle TTL: {ttl_ms} ms left"
    );
    shop.stop().await;
}

#[tokio::test]
async fn a_read_renews_the_expiry_only_once_it_has_run_down() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    let sid = start_session(&alice).await;
    let key = RedisSessions::keys_for(&sid).session;
    let mut redis = shop.redis_connection().await;
    // Ten seconds into a 30-minute idle lifetime: less than a minute run
    // down, so reads leave it (a read stays a read: no write to Redis).
    let set_to = 30 * 60 * 1000 - 10_000;
    pexpire(&mut redis, &key, set_to).await;
    for _ in 0..3 {
        let seen = alice.cart().await.expect("a plain read");
        assert_eq!(session_state_of(&seen), "resumed");
    }
    let ttl_ms = pttl(&mut redis, &key).await;
    assert!(
        0 < ttl_ms && ttl_ms <= set_to,
        "reads within a minute of a renewal do not renew: {ttl_ms} ms left"
    );
    shop.stop().await;
}

/// How long `key` has left to live, in ms (`PTTL`).
async fn pttl(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(redis)
        .await
        .expect("PTTL")
}

/// Sets `key` to expire in `ms` (`PEXPIRE`), as if it had sat idle.
async fn pexpire(redis: &mut redis::aio::MultiplexedConnection, key: &str, ms: i64) {
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(ms)
        .query_async(redis)
        .await
        .expect("PEXPIRE");
}

fn session_state_of(seen: &shop::shopper::CartSeen) -> &str {
    seen.headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn unknown_session_id_is_not_adopted() {
    let shop = spawn_shop().await;
    let url = shop.url();

    // A well-formed id the server never issued (an attacker's plant).
    let planted = shop::ids::random_id().expect("id");
    let response = add_with_sid(&url, Some(&planted), "TEE-RED-M").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(session_state(&response), "new; reason=unknown");
    let issued = set_cookie_value(response.headers(), SESSION_COOKIE).expect("a new id");
    assert_ne!(issued, planted, "the client's id is replaced");
    let issued_keys = RedisSessions::keys_for(&issued);
    assert_eq!(
        shop.redis_keys().await,
        [issued_keys.cart, issued_keys.session],
        "nothing is stored under the planted id"
    );

    // Sent again, the planted id is still unknown: it never became valid.
    let again = add_with_sid(&url, Some(&planted), "TEE-RED-M").await;
    assert_eq!(session_state(&again), "new; reason=unknown");

    // Junk in the cookie is not an id at all.
    let junk = add_with_sid(&url, Some("admin"), "TEE-RED-M").await;
    assert_eq!(session_state(&junk), "new; reason=malformed");
    assert!(
        !set_cookie_value(junk.headers(), SESSION_COOKIE)
            .expect("a new id")
            .contains("admin")
    );
    shop.stop().await;
}

#[tokio::test]
async fn ended_session_is_not_resurrected() {
    let shop = spawn_shop().await;
    let url = shop.url();
    let first = add_with_sid(&url, None, "TEE-RED-M").await;
    let sid = set_cookie_value(first.headers(), SESSION_COOKIE).expect("sid");

    let ended = request_with_sid(Method::DELETE, &format!("{url}/api/session"), Some(&sid))
        .send()
        .await
        .expect("DELETE /api/session");
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    let removal = ended
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("the cookie is removed")
        .to_owned();
    assert!(
        removal.starts_with("sid=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert!(shop.redis_keys().await.is_empty(), "the session is deleted");

    // A copy of the old cookie (another tab, a thief) gets nothing back.
    let replay = add_with_sid(&url, Some(&sid), "SOCK-GREY-L").await;
    assert_eq!(session_state(&replay), "new; reason=unknown");
    let new_sid = set_cookie_value(replay.headers(), SESSION_COOKIE).expect("new id");
    assert_ne!(new_sid, sid);
    let body: serde_json::Value = replay.json().await.expect("json");
    let skus: Vec<&str> = body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["sku"].as_str())
        .collect();
    assert_eq!(
        skus,
        ["SOCK-GREY-L"],
        "a fresh, empty session: no TEE-RED-M"
    );
    shop.stop().await;
}

#[tokio::test]
async fn redis_outage_gives_503_and_loses_nothing() {
    // The real default store timeout (500 ms).
    let shop = SessionShop::start(STAGE4, &stage4::INFO, &[]).await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 2).await.expect("add");
    alice.add("SOCK-GREY-L", 1).await.expect("add");

    // SIGSTOP: Redis keeps its connections open and answers nothing, the
    // way a hung or partitioned server behaves.
    shop.redis.pause().expect("SIGSTOP");
    for _ in 0..3 {
        let response = alice
            .http()
            .get(alice.url("/api/cart"))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"], "session_store_unavailable", "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    shop.redis.resume().expect("SIGCONT");
    let back = cart_once_redis_answers(&alice).await;
    assert_eq!(
        (back.qty_of("TEE-RED-M"), back.qty_of("SOCK-GREY-L")),
        (2, 1),
        "the same cart, after the outage"
    );
    assert_eq!(session_state_of(&back), "resumed", "the same session");
    shop.stop().await;
}

#[tokio::test]
async fn redis_restart_keeps_carts() {
    let mut shop = spawn_shop().await;
    let alice = shop.shopper();
    alice.add("HOOD-NAVY-S", 4).await.expect("add");

    // A crash, not a clean shutdown: the append-only file already has the
    // write (Redis appends before it answers).
    shop.redis.kill();
    let refused = alice.cart().await.expect_err("Redis is down");
    assert_eq!(refused.status(), Some(StatusCode::SERVICE_UNAVAILABLE));

    shop.redis
        .restart()
        .await
        .expect("redis-server starts again");
    let back = cart_once_redis_answers(&alice).await;
    assert_eq!(back.qty_of("HOOD-NAVY-S"), 4, "reloaded from the AOF");
    assert_eq!(session_state_of(&back), "resumed");
    shop.stop().await;
}

#[tokio::test]
async fn reads_create_no_session() {
    let shop = spawn_shop().await;
    for _ in 0..200 {
        let response = request_with_sid(Method::GET, &format!("{}/api/cart", shop.url()), None)
            .send()
            .await
            .expect("a read");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response
                .headers()
                .get(reqwest::header::SET_COOKIE)
                .is_none(),
            "a read sets no session cookie"
        );
        assert_eq!(session_state(&response), "none; reason=missing");
    }
    assert!(
        shop.redis_keys().await.is_empty(),
        "two hundred cookie-less reads stored nothing"
    );
    shop.stop().await;
}

#[tokio::test]
async fn retried_write_with_same_idempotency_key_applies_once() {
    // The real default store timeout (500 ms), so a frozen Redis gives 503.
    let shop = SessionShop::start(STAGE4, &stage4::INFO, &[]).await;
    let alice = shop.shopper();
    start_session(&alice).await;
    let add = |key: &'static str| {
        let alice = alice.clone();
        async move {
            alice
                .http()
                .post(alice.url("/api/cart/items"))
                .header("idempotency-key", key)
                .json(&serde_json::json!({ "sku": "TEE-RED-M", "qty": 1 }))
                .send()
                .await
                .expect("an answer")
        }
    };

    // Every instance talks to Redis already (round robin), as in a shop
    // that has been up a while: the change will be written to Redis's socket.
    for _ in 0..6 {
        alice.cart().await.expect("view");
    }
    // Redis freezes while the add is on its way: the shop cannot confirm it.
    shop.redis.pause().expect("SIGSTOP");
    let unconfirmed = add("add-one-tee").await;
    assert_eq!(unconfirmed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = unconfirmed.json().await.expect("json");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("may still be applied") && message.contains("Idempotency-Key"),
        "the 503 says the change may land, and that retrying with the key is safe: {message}"
    );

    // Redis wakes up and applies the add it had been sent: the 503 was
    // honest, the change did land.
    shop.redis.resume().expect("SIGCONT");
    let mut landed = false;
    for _ in 0..100 {
        landed = cart_once_redis_answers(&alice).await.qty_of("TEE-RED-M") == 1;
        if landed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(landed, "the unconfirmed add was applied once Redis woke up");
    // The shopper, who never heard back, sends the same change again, with
    // the same key.
    let retried = add("add-one-tee").await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(
        retried
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "the retry is answered with the first result"
    );
    let cart = alice.cart().await.expect("view");
    assert_eq!(cart.qty_of("TEE-RED-M"), 1, "applied exactly once");

    // A new action (a new key) is a new change.
    assert_eq!(add("add-another-tee").await.status(), StatusCode::OK);
    assert_eq!(alice.cart().await.expect("view").qty_of("TEE-RED-M"), 2);
    shop.stop().await;
}

#[tokio::test]
async fn clearing_the_cart_keeps_the_session() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    let sid = start_session(&alice).await;
    alice.add("TEE-RED-M", 2).await.expect("add");
    let cleared = alice.clear().await.expect("clear");
    assert!(cleared.is_empty());
    assert_eq!(session_state_of(&cleared), "resumed");
    let keys = shop.redis_keys().await;
    assert_eq!(
        keys,
        [RedisSessions::keys_for(&sid).session],
        "the session stays; only its cart is gone"
    );
    let again = alice.add("SOCK-GREY-L", 1).await.expect("add");
    assert_eq!(session_state_of(&again), "resumed", "the same session");
    shop.stop().await;
}

#[tokio::test]
async fn full_session_store_is_a_clear_503() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    start_session(&alice).await;
    // Leave Redis no room for anything new (it never evicts a session).
    let mut redis = shop.redis_connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut redis)
        .await
        .expect("CONFIG SET maxmemory");
    let refused = add_with_sid(&shop.url(), None, "TEE-RED-M").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key(RETRY_AFTER));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "session_store_full", "{body}");
    let existing = alice.cart().await.expect("reads still work");
    assert_eq!(existing.qty_of("SOCK-GREY-L"), 1, "and nothing was lost");
    shop.stop().await;
}

#[tokio::test]
async fn idempotent_get_is_retried_when_its_instance_dies() {
    let shop = spawn_shop().await;
    let alice = shop.shopper();
    alice.add("TEE-RED-M", 2).await.expect("add");
    // Round robin: a few reads leave a pooled connection to every instance.
    for _ in 0..6 {
        alice.cart().await.expect("view");
    }
    // A crash: the balancer's pooled connections to i2 are now dead, and
    // it has not noticed yet.
    shop.topology.kill_instance("i2").await.expect("kill");
    for _ in 0..12 {
        let seen = alice
            .cart()
            .await
            .expect("every read is answered: none comes back 5xx");
        assert_eq!(seen.qty_of("TEE-RED-M"), 2);
        assert_ne!(seen.served_by(), "i2");
    }
    shop.stop().await;
}
