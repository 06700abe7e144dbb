//! Stage 5's lesson, as tests: a real PostgreSQL primary and streaming
//! replica, real Redis for sessions and for the cache, three real instance
//! processes, real HTTP through the real `lb`.
//!
//! Writes go to the primary, reads to the replica, most reads to the cache;
//! each answer says which in `X-Data-Path`. The tests check the trouble
//! each brings: replica lag, invalidation, outages, and accounts.

mod support;

use reqwest::{Method, StatusCode};
use stage4::testing::request_with_sid;
use support::{Answer, TestShop, login, me, send, signup, spawn_shop, update_me};

const PASSWORD: &str = "correct horse battery";

async fn signed_up(shop: &TestShop, email: &str) -> shop::shopper::Shopper {
    let shopper = shop.shopper();
    let answer = signup(&shopper, email, PASSWORD).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    shopper
}

fn name_of(answer: &Answer) -> &str {
    answer.body["name"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn profile_is_written_to_primary_and_read_from_replica() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;

    let written = update_me(&ada, "Ada King").await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    assert!(
        written.data_path.starts_with("profile=primary"),
        "{written:?}"
    );
    let on_primary: String = sqlx::query_scalar("SELECT name FROM users WHERE email = $1")
        .bind("ada@example.com")
        .fetch_one(&shop.primary().await)
        .await
        .expect("row on the primary");
    assert_eq!(on_primary, "Ada King");

    // Streaming replication carries the write to the replica...
    shop.replica_caught_up().await;
    let on_replica: String = sqlx::query_scalar("SELECT name FROM users WHERE email = $1")
        .bind("ada@example.com")
        .fetch_one(&shop.replica().await)
        .await
        .expect("row on the replica");
    assert_eq!(on_replica, "Ada King");
    // ...which then serves the read.
    let read = me(&ada).await;
    assert_eq!(name_of(&read), "Ada King");
    assert_eq!(read.data_path, "profile=cache-miss,replica,cached");
    shop.stop().await;
}

#[tokio::test]
async fn read_your_writes_right_after_update() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;

    shop.hold_replica_back().await;

    assert_eq!(
        update_me(&ada, "Countess of Lovelace").await.status,
        StatusCode::OK
    );
    let stale: String = sqlx::query_scalar("SELECT name FROM users WHERE email = $1")
        .bind("ada@example.com")
        .fetch_one(&shop.replica().await)
        .await
        .expect("replica row");
    assert_eq!(stale, "Ada Lovelace", "the replica is behind");

    let read = me(&ada).await;
    assert_eq!(
        name_of(&read),
        "Countess of Lovelace",
        "the shopper sees their own write"
    );
    assert_eq!(
        read.data_path, "profile=cache-miss,replica-behind,primary,cached",
        "read from the primary because the replica had not replayed the write"
    );

    shop.let_replica_replay().await;
    shop.stop().await;
}

#[tokio::test]
async fn second_read_is_a_cache_hit() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;

    let first = me(&ada).await;
    assert_eq!(first.data_path, "profile=cache-miss,replica,cached");
    let queries = shop.metric("shop_db_queries_total").await;
    let second = me(&ada).await;
    assert_eq!(second.data_path, "profile=cache-hit");
    assert_eq!(second.body, first.body, "the same profile");
    assert_eq!(
        shop.metric("shop_db_queries_total").await,
        queries,
        "a hit touches no database"
    );

    let mut cache = shop.cache_connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:cache:profile:*")
        .query_async(&mut cache)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut cache)
        .await
        .expect("PTTL");
    assert!(
        0 < ttl_ms && ttl_ms <= 330_000,
        "cached with the 5-minute TTL plus at most 10% jitter: {ttl_ms}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn update_invalidates_the_cache() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    me(&ada).await;
    assert_eq!(me(&ada).await.data_path, "profile=cache-hit");

    let written = update_me(&ada, "A. A. Lovelace").await;
    assert_eq!(written.data_path, "profile=primary,invalidated");
    let mut cache = shop.cache_connection().await;
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg("myclothes:cache:profile:*")
        .query_async(&mut cache)
        .await
        .expect("KEYS");
    let held: Vec<String> = redis::cmd("MGET")
        .arg(&cached)
        .query_async(&mut cache)
        .await
        .expect("MGET");
    assert!(
        held.len() == 1 && held[0].starts_with("written-at "),
        "the stale copy is replaced by the write's mark: {held:?}"
    );

    let read = me(&ada).await;
    assert_eq!(name_of(&read), "A. A. Lovelace");
    assert!(read.data_path.starts_with("profile=cache-miss"), "{read:?}");
    assert_eq!(me(&ada).await.data_path, "profile=cache-hit");
    shop.stop().await;
}

#[tokio::test]
async fn login_rotates_session_id_and_keeps_the_cart() {
    let shop = spawn_shop().await;
    signed_up(&shop, "ada@example.com").await;

    let shopper = shop.shopper();
    let cart = shopper.add("TEE-RED-M", 2).await.expect("anonymous add");
    let anonymous_sid = shop::shopper::set_cookie_value(&cart.headers, "sid").expect("sid");

    let logged_in = login(&shopper, "ADA@example.com", PASSWORD).await;
    assert_eq!(logged_in.status, StatusCode::OK, "{logged_in:?}");
    let new_sid = logged_in.new_sid.expect("login sets a new session id");
    assert_ne!(new_sid, anonymous_sid, "the id is rotated");
    assert_eq!(
        shopper.cart().await.expect("cart").qty_of("TEE-RED-M"),
        2,
        "the anonymous cart came along"
    );
    assert_eq!(me(&shopper).await.status, StatusCode::OK);

    // The pre-login id (planted, or seen) is worth nothing now.
    let old = send(request_with_sid(
        Method::GET,
        &shopper.url("/api/me"),
        Some(&anonymous_sid),
    ))
    .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let old_cart = send(request_with_sid(
        Method::GET,
        &shopper.url("/api/cart"),
        Some(&anonymous_sid),
    ))
    .await;
    assert_eq!(old_cart.body["lines"], serde_json::json!([]));
    shop.stop().await;
}

#[tokio::test]
async fn a_login_on_a_new_device_finds_an_account_made_a_moment_ago() {
    let shop = spawn_shop().await;
    // The replica falls behind; the shopper signs up on their phone.
    shop.hold_replica_back().await;
    let _phone = signed_up(&shop, "ada@example.com").await;

    // A moment later they log in on a laptop: a session of its own, with
    // no write of its own. Its reads must not come from before the login.
    let laptop = shop.shopper();
    let logged_in = login(&laptop, "ada@example.com", PASSWORD).await;
    assert_eq!(logged_in.status, StatusCode::OK, "{logged_in:?}");
    let read = me(&laptop).await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "the account the laptop just logged in to: {read:?}"
    );
    assert_eq!(
        read.data_path, "profile=cache-miss,replica-behind,primary,cached",
        "the replica has not replayed the signup, so the primary answered"
    );

    shop.let_replica_replay().await;
    shop.stop().await;
}

#[tokio::test]
async fn a_lagging_replica_cannot_put_an_old_profile_back_in_the_cache() {
    let shop = spawn_shop().await;
    let phone = signed_up(&shop, "ada@example.com").await;
    let laptop = shop.shopper();
    assert_eq!(
        login(&laptop, "ada@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
    shop.replica_caught_up().await;

    // The replica falls behind; the phone changes the name.
    shop.hold_replica_back().await;
    assert_eq!(
        update_me(&phone, "Countess of Lovelace").await.status,
        StatusCode::OK
    );

    // The laptop's session knows nothing of that write, and the replica
    // still has the old name. The write's mark in the cache sends the read
    // to the primary; had it read the replica, it would have cached the old
    // name for everyone, the phone included, for the whole TTL.
    let read = me(&laptop).await;
    assert_eq!(name_of(&read), "Countess of Lovelace", "{read:?}");
    assert_eq!(
        read.data_path,
        "profile=cache-miss,replica-behind,primary,cached"
    );
    let again = me(&phone).await;
    assert_eq!(again.data_path, "profile=cache-hit");
    assert_eq!(name_of(&again), "Countess of Lovelace");

    shop.let_replica_replay().await;
    shop.stop().await;
}

/// A retried login or signup lands on the session its first try moved the
/// cart to (two TEE-RED-M), cart and all.
async fn assert_lands_where_the_first_try_went(
    shopper: &shop::shopper::Shopper,
    retry: &Answer,
    moved_to: &str,
) {
    assert_eq!(
        retry.new_sid.as_deref(),
        Some(moved_to),
        "the retry lands on the session the first try made"
    );
    let cart = send(request_with_sid(
        Method::GET,
        &shopper.url("/api/cart"),
        Some(moved_to),
    ))
    .await;
    assert_eq!(
        cart.body["lines"][0]["qty"], 2,
        "the cart is whole: {cart:?}"
    );
}

#[tokio::test]
async fn a_login_retried_after_its_answer_was_lost_keeps_the_cart() {
    let shop = spawn_shop().await;
    signed_up(&shop, "ada@example.com").await;
    let shopper = shop.shopper();
    let cart = shopper.add("TEE-RED-M", 2).await.expect("anonymous add");
    let anonymous_sid = shop::shopper::set_cookie_value(&cart.headers, "sid").expect("sid");
    let log_in_from_the_old_id = |email: &str| {
        request_with_sid(
            Method::POST,
            &shopper.url("/api/login"),
            Some(&anonymous_sid),
        )
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
    };

    // The first try moves the session; its answer never reaches the
    // browser, which still holds the old id and sends the login again.
    let first = send(log_in_from_the_old_id("ada@example.com")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let moved_to = first.new_sid.expect("a new id");
    let retry = send(log_in_from_the_old_id("ada@example.com")).await;
    assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
    assert_lands_where_the_first_try_went(&shopper, &retry, &moved_to).await;

    // Someone else logging in from the same old id gets none of it.
    signed_up(&shop, "eve@example.com").await;
    let eve = send(log_in_from_the_old_id("eve@example.com")).await;
    assert_eq!(eve.status, StatusCode::OK, "{eve:?}");
    let eves = eve.new_sid.expect("a session of her own");
    assert_ne!(eves, moved_to, "not Ada's session");
    let eves_cart = send(request_with_sid(
        Method::GET,
        &shopper.url("/api/cart"),
        Some(&eves),
    ))
    .await;
    assert_eq!(eves_cart.body["lines"], serde_json::json!([]));
    shop.stop().await;
}

#[tokio::test]
async fn a_signup_retried_after_its_answer_was_lost_logs_the_shopper_in_with_the_cart() {
    let shop = spawn_shop().await;
    let shopper = shop.shopper();
    let cart = shopper.add("TEE-RED-M", 2).await.expect("anonymous add");
    let anonymous_sid = shop::shopper::set_cookie_value(&cart.headers, "sid").expect("sid");
    let sign_up_from_the_old_id = |password: &str| {
        request_with_sid(
            Method::POST,
            &shopper.url("/api/signup"),
            Some(&anonymous_sid),
        )
        .json(&serde_json::json!({
            "email": "ada@example.com", "password": password, "name": "Ada Lovelace"
        }))
    };

    // The first try makes the account and moves the session; its answer
    // never reaches the browser, which sends the signup again.
    let first = send(sign_up_from_the_old_id(PASSWORD)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let moved_to = first.new_sid.expect("a new id");
    let retry = send(sign_up_from_the_old_id(PASSWORD)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(retry.body["email"], "ada@example.com");
    assert_lands_where_the_first_try_went(&shopper, &retry, &moved_to).await;

    // Another password is not the same signup; nor is an old account's.
    let other = send(sign_up_from_the_old_id("another password entirely")).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{other:?}");
    assert_eq!(other.body["error"], "email_taken");
    let primary = shop.primary().await;
    sqlx::query("UPDATE users SET created_at = now() - interval '1 hour'")
        .execute(&primary)
        .await
        .expect("an older account");
    let late = send(sign_up_from_the_old_id(PASSWORD)).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{late:?}");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&primary)
        .await
        .expect("count");
    assert_eq!(accounts, 1, "one account, however often it was sent");
    shop.stop().await;
}

#[tokio::test]
async fn logout_cannot_be_undone() {
    let shop = spawn_shop().await;
    let ada = shop.shopper();
    let answer = signup(&ada, "ada@example.com", PASSWORD).await;
    let sid = answer.new_sid.expect("signup logs in");
    ada.add("SOCK-GREY-L", 1).await.expect("add");

    let out = send(ada.http().delete(ada.url("/api/session"))).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(me(&ada).await.status, StatusCode::UNAUTHORIZED);

    // A copy of the old cookie gets neither the account nor the cart.
    let replay = send(request_with_sid(
        Method::GET,
        &ada.url("/api/me"),
        Some(&sid),
    ))
    .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.body["error"], "not_logged_in");
    let cart = send(request_with_sid(
        Method::GET,
        &ada.url("/api/cart"),
        Some(&sid),
    ))
    .await;
    assert_eq!(cart.body["lines"], serde_json::json!([]));
    assert_ne!(cart.new_sid.as_deref(), Some(sid.as_str()));
    shop.stop().await;
}

#[tokio::test]
async fn duplicate_email_is_409() {
    let shop = spawn_shop().await;
    signed_up(&shop, "ada@example.com").await;
    let again = signup(&shop.shopper(), "Ada@Example.com", "another password").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["error"], "email_taken");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&shop.primary().await)
        .await
        .expect("count");
    assert_eq!(accounts, 1, "emails are unique whatever their case");
    shop.stop().await;
}

#[tokio::test]
async fn password_is_stored_hashed() {
    let shop = spawn_shop().await;
    signed_up(&shop, "ada@example.com").await;
    signed_up(&shop, "charles@example.com").await;
    let hashes: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM users ORDER BY id")
        .fetch_all(&shop.primary().await)
        .await
        .expect("hashes");
    for hash in &hashes {
        assert!(hash.starts_with("$argon2id$"), "argon2id: {hash}");
        assert!(!hash.contains(PASSWORD) && !hash.contains("horse"));
    }
    assert_ne!(hashes[0], hashes[1], "the same password, salted apart");

    let wrong = login(&shop.shopper(), "ada@example.com", "not the password").await;
    let unknown = login(&shop.shopper(), "nobody@example.com", PASSWORD).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.body, unknown.body,
        "a wrong password and an unknown email look the same"
    );
    shop.stop().await;
}

#[tokio::test]
async fn replica_outage_falls_back_to_primary() {
    let mut shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.postgres.stop_replica();

    let product = send(ada.http().get(ada.url("/api/products/JKT-GREEN-L"))).await;
    assert_eq!(product.status, StatusCode::OK);
    assert_eq!(product.body["sku"], "JKT-GREEN-L");
    assert_eq!(
        product.data_path,
        "catalog=cache-miss,replica-down,primary,cached"
    );
    let profile = me(&ada).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert!(profile.data_path.ends_with("primary,cached"), "{profile:?}");
    assert!(shop.metric("shop_replica_fallbacks_total").await >= 2);
    shop.stop().await;
}

#[tokio::test]
async fn cache_outage_serves_from_database() {
    let mut shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;
    shop.cache.kill();

    let catalog = send(ada.http().get(ada.url("/api/products"))).await;
    assert_eq!(catalog.status, StatusCode::OK);
    assert_eq!(catalog.body.as_array().map(Vec::len), Some(270));
    assert_eq!(catalog.data_path, "catalog=cache-down,replica");
    let profile = me(&ada).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(profile.data_path, "profile=cache-down,replica");
    assert!(shop.metric("shop_cache_errors_total").await >= 2);
    shop.stop().await;
}

#[tokio::test]
async fn an_address_is_removed_with_null_and_never_by_leaving_it_out() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    let saved = update_me(&ada, "Ada Lovelace").await;
    assert_eq!(saved.status, StatusCode::OK, "{saved:?}");
    assert!(saved.body["address"].is_object(), "{saved:?}");

    // A rename that leaves the address out is refused, and loses nothing.
    let put = |body: serde_json::Value| send(ada.http().put(ada.url("/api/me")).json(&body));
    let left_out = put(serde_json::json!({"name": "Ada King"})).await;
    assert_eq!(
        left_out.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{left_out:?}"
    );
    assert_eq!(left_out.body["error"], "invalid_body");
    let read = me(&ada).await;
    assert_eq!(name_of(&read), "Ada Lovelace", "{read:?}");
    assert!(
        read.body["address"].is_object(),
        "the address is kept: {read:?}"
    );

    // `null` says it: no address.
    let removed = put(serde_json::json!({"name": "Ada King", "address": null})).await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    assert!(removed.body["address"].is_null(), "{removed:?}");
    let read = me(&ada).await;
    assert_eq!(name_of(&read), "Ada King", "{read:?}");
    assert!(
        read.body["address"].is_null(),
        "gone, cache included: {read:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM addresses")
        .fetch_one(&shop.primary().await)
        .await
        .expect("count");
    assert_eq!(rows, 0);
    shop.stop().await;
}

#[tokio::test]
async fn primary_outage_gives_503_on_write() {
    let mut shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;
    shop.postgres.stop_primary();

    let write = update_me(&ada, "Ada King").await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "{write:?}");
    assert_eq!(write.body["error"], "database_unavailable");
    let new_account = signup(&shop.shopper(), "charles@example.com", PASSWORD).await;
    assert_eq!(new_account.status, StatusCode::SERVICE_UNAVAILABLE);

    let read = me(&ada).await;
    assert_eq!(read.status, StatusCode::OK, "reads carry on: {read:?}");
    assert_eq!(name_of(&read), "Ada Lovelace", "nothing was changed");
    assert!(read.data_path.contains("replica"), "{read:?}");
    shop.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
    let shop = spawn_shop().await;
    let bad_email = signup(&shop.shopper(), "not-an-email", PASSWORD).await;
    assert_eq!(bad_email.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_email.body["field"], "email");
    let short = signup(&shop.shopper(), "ada@example.com", "short").await;
    assert_eq!(short.body["field"], "password");

    let ada = signed_up(&shop, "ada@example.com").await;
    let country = send(ada.http().put(ada.url("/api/me")).json(&serde_json::json!({
        "name": "Ada", "address": {"line1": "1 A St", "city": "London", "postcode": "N1", "country": "Britain"}
    })))
    .await;
    assert_eq!(country.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(country.body["error"], "invalid_field");
    assert_eq!(country.body["field"], "address.country");
    assert_eq!(
        name_of(&me(&ada).await),
        "Ada Lovelace",
        "a refused update changes nothing"
    );
    shop.stop().await;
}

#[tokio::test]
async fn clearing_the_cart_keeps_the_login() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    ada.add("TEE-RED-M", 2).await.expect("add");
    let cleared = ada.clear().await.expect("clear");
    assert!(cleared.is_empty());
    let still = me(&ada).await;
    assert_eq!(still.status, StatusCode::OK, "still logged in: {still:?}");
    assert_eq!(name_of(&still), "Ada Lovelace");
    shop.stop().await;
}

#[tokio::test]
async fn logged_in_cart_holds_200_lines() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    let skus: Vec<String> = shop::Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.clone())
        .collect();
    for sku in &skus[..shop::cart::MAX_LINES] {
        ada.add(sku, 1).await.expect("a line under the limit");
    }
    let cart = ada.cart().await.expect("view");
    assert_eq!(
        cart.body.lines.len(),
        shop::cart::MAX_LINES,
        "the session's own fields take no line"
    );
    let refused = ada
        .add(&skus[shop::cart::MAX_LINES], 1)
        .await
        .expect_err("one more is one too many");
    assert_eq!(refused.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    shop.stop().await;
}

#[tokio::test]
async fn frozen_replica_falls_back_within_db_timeout() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;
    // SIGSTOP: the replica keeps its connections and answers nothing.
    shop.postgres.freeze_replica().expect("SIGSTOP the replica");
    let profile = me(&ada).await;
    shop.postgres.thaw_replica().expect("SIGCONT the replica");
    assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
    assert!(
        profile.data_path.contains("replica-down,primary"),
        "the read gave up on the replica and went to the primary: {profile:?}"
    );
    assert_eq!(name_of(&profile), "Ada Lovelace");
    shop.stop().await;
}

#[tokio::test]
async fn frozen_primary_gives_503_within_db_timeout() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;
    shop.postgres.freeze_primary().expect("SIGSTOP the primary");
    let write = update_me(&ada, "Ada King").await;
    let new_account = signup(&shop.shopper(), "charles@example.com", PASSWORD).await;
    shop.postgres.thaw_primary().expect("SIGCONT the primary");
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE, "{write:?}");
    assert_eq!(write.body["error"], "database_unavailable");
    assert!(write.headers.contains_key("retry-after"));
    assert_eq!(
        new_account.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{new_account:?}"
    );
    shop.stop().await;
}

#[tokio::test]
async fn frozen_cache_is_a_miss_not_a_hang() {
    let shop = spawn_shop().await;
    let ada = signed_up(&shop, "ada@example.com").await;
    shop.replica_caught_up().await;
    shop.cache.pause().expect("SIGSTOP the cache");
    let catalog = send(ada.http().get(ada.url("/api/products/TEE-RED-M"))).await;
    let profile = me(&ada).await;
    shop.cache.resume().expect("SIGCONT the cache");
    assert_eq!(catalog.status, StatusCode::OK);
    assert_eq!(catalog.data_path, "catalog=cache-down,replica");
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(profile.data_path, "profile=cache-down,replica");
    shop.stop().await;
}

#[tokio::test]
async fn nul_byte_in_login_email_is_a_422_naming_the_field() {
    let shop = spawn_shop().await;
    let answer = login(&shop.shopper(), "ada\0@example.com", PASSWORD).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{answer:?}"
    );
    assert_eq!(answer.body["error"], "invalid_field");
    assert_eq!(answer.body["field"], "email");
    shop.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_account() {
    let shop = spawn_shop().await;
    signed_up(&shop, "ada@example.com").await;
    let guesser = shop.shopper();
    for guess in 0..10 {
        let answer = login(
            &guesser,
            "ada@example.com",
            &format!("guess number {guess}"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    }
    let locked = login(&guesser, "ADA@example.com", "guess number 11").await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{locked:?}");
    assert_eq!(locked.body["error"], "too_many_attempts");
    assert!(locked.headers.contains_key("retry-after"));
    let right = login(&shop.shopper(), "ada@example.com", PASSWORD).await;
    assert_eq!(
        right.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits: the guesser must not learn it is right"
    );
    shop.stop().await;
}

#[tokio::test]
async fn password_hashing_has_admission_control() {
    let shop = spawn_shop().await;
    // Fifty logins at once, each for an account nobody has: each costs a
    // hash (so that unknown emails cost as much as wrong passwords).
    let logins: Vec<_> = (0..50)
        .map(|n| {
            let shopper = shop.shopper();
            tokio::spawn(async move {
                login(&shopper, &format!("nobody{n}@example.com"), PASSWORD).await
            })
        })
        .collect();
    // Meanwhile, the shop keeps serving everything else.
    let catalog = send(
        shop.shopper()
            .http()
            .get(shop.url() + "/api/products/TEE-RED-M"),
    )
    .await;
    assert_eq!(catalog.status, StatusCode::OK);
    let mut busy = 0;
    for login in logins {
        let answer = login.await.expect("task");
        match answer.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.body["error"], "too_busy", "{answer:?}");
                assert!(answer.headers.contains_key("retry-after"));
                busy += 1;
            }
            other => panic!("a login answered {other}: {answer:?}"),
        }
    }
    assert!(
        busy > 0,
        "past the hashing slots and their queue, logins are turned away"
    );
    shop.stop().await;
}
