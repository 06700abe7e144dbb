//! Stage 3's lesson, as tests: real `stage3` processes behind the real
//! balancer (round-robin), a plain HTTP client that handles the cart cookie
//! by hand, as an attacker (or a second browser tab) would.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::Catalog;
use shop::cart::{Cart, CartOp, KnownSku, Quantity};
use shop::shopper::set_cookie_value;
use shop::topology::{Topology, TopologyConfig};
use stage3::keys::{Key, Keys};
use stage3::token::Codec;

const SECRET: &str = "6d79636c6f746865732d73746167652d332d746573742d7365637265742d3332";
const OTHER_SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

async fn stage3(instances: usize, env: &[(&str, &str)]) -> Topology {
    let mut config =
        TopologyConfig::for_tests(env!("CARGO_BIN_EXE_stage3"), &stage3::INFO).instances(instances);
    config.env = [("SHOP_COOKIE_SECRET", SECRET)]
        .iter()
        .chain(env)
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    Topology::start(config).await.expect("stage 3 starts")
}

/// What one response said.
struct Seen {
    status: StatusCode,
    served_by: String,
    cookie: Option<String>,
    verdict: Option<String>,
    bytes: Option<usize>,
    set_cookie: Option<String>,
    body: Value,
}

impl Seen {
    fn skus(&self) -> Vec<(String, u64)> {
        self.body["lines"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        (
                            l["sku"].as_str().unwrap_or_default().to_owned(),
                            l["qty"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn send(
    base: &str,
    name: &str,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> Seen {
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{name}={cookie}"));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("response");
    let header = |h: &str| {
        response
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Seen {
        status: response.status(),
        served_by: header("x-served-by").unwrap_or_default(),
        verdict: header("x-cart-cookie"),
        bytes: header("x-cart-cookie-bytes").and_then(|b| b.parse().ok()),
        set_cookie: response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned),
        cookie: set_cookie_value(response.headers(), name),
        body: response.json().await.unwrap_or_default(),
    }
}

async fn view(base: &str, cookie: Option<&str>) -> Seen {
    send(
        base,
        "cart",
        reqwest::Method::GET,
        "/api/cart",
        cookie,
        None,
    )
    .await
}

async fn add(base: &str, cookie: Option<&str>, sku: &str, qty: u8) -> Seen {
    send(
        base,
        "cart",
        reqwest::Method::POST,
        "/api/cart/items",
        cookie,
        Some(json!({"sku": sku, "qty": qty})),
    )
    .await
}

fn codec(secret: &str) -> Codec {
    Codec::new(Keys::new(Key::parse(secret).expect("key"), vec![]), 3_600)
}

fn two_tees() -> Cart {
    let mut cart = Cart::new();
    cart.apply(CartOp::Add(
        KnownSku::new("TEE-RED-M").expect("sku"),
        Quantity::new(2).expect("qty"),
    ))
    .expect("add");
    cart
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn rejected_because(seen: &Seen, reasons: &[&str]) {
    assert_eq!(
        seen.status,
        StatusCode::OK,
        "a rejected cookie is an empty cart, not an error"
    );
    assert!(
        seen.skus().is_empty(),
        "the cart counts as empty: {:?}",
        seen.skus()
    );
    let verdict = seen
        .verdict
        .as_deref()
        .expect("X-Cart-Cookie says what happened");
    assert!(
        reasons
            .iter()
            .any(|r| verdict == format!("rejected; reason={r}")),
        "{verdict} is not one of {reasons:?}"
    );
    assert!(
        seen.body["notices"][0]
            .as_str()
            .is_some_and(|n| n.contains("could not be read")),
        "the page is told in plain words: {}",
        seen.body
    );
    assert_eq!(
        seen.cookie, None,
        "a view leaves the rejected cookie as the browser has it"
    );
}

#[tokio::test]
async fn cart_survives_any_instance() {
    let topology = stage3(3, &[]).await;
    let base = topology.url();
    let cookie = add(&base, None, "TEE-RED-M", 2)
        .await
        .cookie
        .expect("a cart cookie");
    let mut served_by = Vec::new();
    for _ in 0..6 {
        let seen = view(&base, Some(&cookie)).await;
        assert_eq!(seen.skus(), [("TEE-RED-M".to_owned(), 2)]);
        served_by.push(seen.served_by);
    }
    served_by.sort();
    served_by.dedup();
    assert_eq!(
        served_by,
        ["i1", "i2", "i3"],
        "every instance read the same cart"
    );
}

#[tokio::test]
async fn instance_loss_loses_nothing() {
    let topology = stage3(3, &[]).await;
    let base = topology.url();
    let added = add(&base, None, "HOOD-GREY-L", 1).await;
    topology
        .kill_instance(&added.served_by)
        .await
        .expect("killed");
    for _ in 0..3 {
        let seen = view(&base, added.cookie.as_deref()).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(seen.skus(), [("HOOD-GREY-L".to_owned(), 1)]);
    }
}

#[tokio::test]
async fn tampered_cookie_is_rejected() {
    let topology = stage3(1, &[]).await;
    let base = topology.url();
    let cookie = add(&base, None, "TEE-RED-M", 2)
        .await
        .cookie
        .expect("a cart cookie");
    let parts: Vec<&str> = cookie.split('.').collect();
    let flip = |s: &str, at: usize| -> String {
        let mut bytes = s.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("ascii")
    };
    let payload_flipped = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        flip(parts[2], 5),
        parts[3]
    );
    let mac_flipped = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        parts[2],
        flip(parts[3], 3)
    );
    let reordered = format!("{}.{}.{}.{}", parts[0], parts[1], parts[3], parts[2]);
    let truncated = cookie[..cookie.len() - 5].to_owned();
    let dropped_part = format!("{}.{}.{}", parts[0], parts[1], parts[2]);
    for (tampered, reasons) in [
        (payload_flipped, &["bad-signature"][..]),
        (mac_flipped, &["bad-signature"][..]),
        (reordered, &["bad-signature", "malformed"][..]),
        (truncated, &["bad-signature", "malformed"][..]),
        (dropped_part, &["malformed"][..]),
    ] {
        rejected_because(&view(&base, Some(&tampered)).await, reasons);
    }
}

#[tokio::test]
async fn cookie_signed_with_another_secret_is_rejected() {
    let topology = stage3(1, &[]).await;
    let base = topology.url();
    let foreign = codec(OTHER_SECRET).sign("cart", &two_tees(), now());
    rejected_because(&view(&base, Some(&foreign)).await, &["unknown-key"]);
    // The same forgery claiming the shop's own key id: the MAC gives it away.
    let own_kid = Key::parse(SECRET).expect("key").id().to_owned();
    let mut parts: Vec<&str> = foreign.split('.').collect();
    parts[1] = &own_kid;
    rejected_because(
        &view(&base, Some(&parts.join("."))).await,
        &["bad-signature"],
    );
}

#[tokio::test]
async fn a_fleet_half_way_through_a_key_change_loses_no_cart() {
    // Machine "old" has not been given the new key yet; machine "new" signs
    // with it and still accepts the old one.
    let old = stage3(1, &[]).await;
    let new = stage3(
        1,
        &[
            ("SHOP_COOKIE_SECRET", OTHER_SECRET),
            ("SHOP_COOKIE_OLD_SECRETS", SECRET),
        ],
    )
    .await;
    let mut cookie = add(&old.url(), None, "TEE-RED-M", 2)
        .await
        .cookie
        .expect("a cart cookie");
    // Page loads take turns between the machines, as round-robin would; the
    // browser keeps whatever cookie each answer sets.
    for base in [new.url(), old.url(), new.url(), old.url(), new.url()] {
        let seen = view(&base, Some(&cookie)).await;
        if let Some(set) = seen.cookie.clone() {
            cookie = set;
        }
        if base == new.url() {
            assert_eq!(
                seen.skus(),
                [("TEE-RED-M".to_owned(), 2)],
                "the machine with both keys reads the cart"
            );
        } else {
            assert_eq!(seen.status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn value_moved_to_another_cookie_name_is_rejected() {
    // Two shops on one domain sharing a secret: the main shop's `cart`, the
    // outlet's `cart_outlet`.
    let main_shop = stage3(1, &[]).await;
    let outlet = stage3(1, &[("SHOP_CART_COOKIE", "cart_outlet")]).await;
    let value = add(&main_shop.url(), None, "JKT-NAVY-XL", 1)
        .await
        .cookie
        .expect("a cart cookie");
    let moved = send(
        &outlet.url(),
        "cart_outlet",
        reqwest::Method::GET,
        "/api/cart",
        Some(&value),
        None,
    )
    .await;
    rejected_because(&moved, &["wrong-name"]);
}

#[tokio::test]
async fn cart_over_4kb_is_refused_and_unchanged() {
    let topology = stage3(1, &[]).await;
    let base = topology.url();
    let mut cookie: Option<String> = None;
    let mut lines = 0;
    let mut refused = None;
    for product in Catalog::get().products() {
        let seen = add(&base, cookie.as_deref(), &product.sku, 99).await;
        if seen.status == StatusCode::PAYLOAD_TOO_LARGE {
            refused = Some(seen);
            break;
        }
        assert_eq!(seen.status, StatusCode::OK);
        assert!(seen.bytes.expect("size reported") <= 4096);
        cookie = seen.cookie;
        lines += 1;
    }
    let refused = refused.expect("the cart hits the 4 KB wall before the catalog runs out");
    assert_eq!(refused.body["error"], "cart_too_large_for_cookie");
    let message = refused.body["message"].as_str().expect("message");
    assert!(
        message.contains("4096") && message.contains("bytes"),
        "{message}"
    );
    assert!(
        refused.set_cookie.is_none(),
        "the shopper's cookie is left as it was"
    );
    let still = view(&base, cookie.as_deref()).await;
    assert_eq!(still.skus().len(), lines, "the cart is unchanged");
}

#[tokio::test]
async fn every_cart_response_reports_its_cookie_size_and_safe_attributes() {
    let topology = stage3(1, &[]).await;
    let seen = add(&topology.url(), None, "TEE-RED-M", 2).await;
    let set_cookie = seen.set_cookie.expect("Set-Cookie");
    assert_eq!(
        seen.bytes,
        Some(set_cookie.len()),
        "X-Cart-Cookie-Bytes measures the whole header value"
    );
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "Secure only with --secure-cookies"
    );
}

#[tokio::test]
async fn secure_cookies_flag_adds_secure() {
    let topology = stage3(1, &[("SHOP_SECURE_COOKIES", "true")]).await;
    let seen = add(&topology.url(), None, "TEE-RED-M", 1).await;
    assert!(seen.set_cookie.expect("Set-Cookie").contains("Secure"));
}

#[tokio::test]
async fn old_secret_still_verifies_and_is_resigned() {
    let before_rotation = stage3(1, &[]).await;
    let cookie = add(&before_rotation.url(), None, "POLO-GREEN-S", 3)
        .await
        .cookie
        .expect("cookie");

    let after_rotation = stage3(
        1,
        &[
            ("SHOP_COOKIE_SECRET", OTHER_SECRET),
            ("SHOP_COOKIE_OLD_SECRETS", SECRET),
        ],
    )
    .await;
    let seen = view(&after_rotation.url(), Some(&cookie)).await;
    assert_eq!(
        seen.skus(),
        [("POLO-GREEN-S".to_owned(), 3)],
        "the old key still verifies"
    );
    assert_eq!(seen.verdict.as_deref(), Some("resigned; reason=old-key"));
    let resigned = seen.cookie.expect("a re-signed cookie");
    let new_kid = Key::parse(OTHER_SECRET).expect("key").id().to_owned();
    assert_eq!(
        resigned.split('.').nth(1),
        Some(new_kid.as_str()),
        "signed with the new key"
    );
    assert_eq!(
        times_of(&resigned),
        times_of(&cookie),
        "re-signed, not renewed: a replayed old cookie gets no new lifetime"
    );
    let again = view(&after_rotation.url(), Some(&resigned)).await;
    assert_eq!(again.skus(), [("POLO-GREEN-S".to_owned(), 3)]);
    assert_eq!(again.verdict, None);
}

/// A token's `iat` and `exp`, read from its (readable, signed) payload.
fn times_of(token: &str) -> (u64, u64) {
    use base64::Engine;
    let payload = token.split('.').nth(2).expect("a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    let payload: Value = serde_json::from_slice(&json).expect("JSON");
    (
        payload["iat"].as_u64().expect("iat"),
        payload["exp"].as_u64().expect("exp"),
    )
}

#[tokio::test]
async fn expired_cookie_is_rejected() {
    let topology = stage3(1, &[]).await;
    let key = Key::parse(SECRET).expect("key");
    let an_hour_ago = now() - 3_600;
    let expired = codec(SECRET).sign_with(&key, "cart", &two_tees(), an_hour_ago - 60, an_hour_ago);
    rejected_because(&view(&topology.url(), Some(&expired)).await, &["expired"]);
    let fresh = codec(SECRET).sign("cart", &two_tees(), now());
    assert_eq!(
        view(&topology.url(), Some(&fresh)).await.skus().len(),
        1,
        "the same cart, in date, is fine"
    );
}

#[tokio::test]
async fn replayed_old_cookie_is_accepted() {
    let topology = stage3(2, &[]).await;
    let base = topology.url();
    let first = add(&base, None, "TEE-RED-M", 1)
        .await
        .cookie
        .expect("cookie");
    let second = add(&base, Some(&first), "SOCK-BLACK-S", 2)
        .await
        .cookie
        .expect("cookie");
    assert_eq!(view(&base, Some(&second)).await.skus().len(), 2);
    let replayed = view(&base, Some(&first)).await;
    assert_eq!(replayed.verdict, None, "nothing looks wrong with it");
    assert_eq!(
        replayed.skus(),
        [("TEE-RED-M".to_owned(), 1)],
        "the old cart is back: a signature proves origin, not freshness"
    );
}

#[tokio::test]
async fn concurrent_adds_race_and_last_writer_wins() {
    let topology = stage3(2, &[]).await;
    let base = topology.url();
    let start = add(&base, None, "TEE-RED-M", 1)
        .await
        .cookie
        .expect("cookie");
    // Two tabs, one cookie, two adds at once.
    let (socks, hoodie) = tokio::join!(
        add(&base, Some(&start), "SOCK-GREY-M", 1),
        add(&base, Some(&start), "HOOD-NAVY-L", 1)
    );
    assert_eq!(
        socks.skus(),
        [("TEE-RED-M".to_owned(), 1), ("SOCK-GREY-M".to_owned(), 1)]
    );
    assert_eq!(
        hoodie.skus(),
        [("TEE-RED-M".to_owned(), 1), ("HOOD-NAVY-L".to_owned(), 1)]
    );
    // The browser keeps the cookie of whichever answer it processed last.
    for last in [
        socks.cookie.expect("cookie"),
        hoodie.cookie.expect("cookie"),
    ] {
        let kept = view(&base, Some(&last)).await.skus();
        assert_eq!(kept.len(), 2, "one of the two adds is lost: {kept:?}");
    }
}

#[test]
fn short_secret_refuses_to_start() {
    let run = |secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stage3"));
        command
            .args(["serve", "--port", "0", "--id", "x"])
            .env_remove("SHOP_COOKIE_SECRET");
        if let Some(secret) = secret {
            command.env("SHOP_COOKIE_SECRET", secret);
        }
        command.output().expect("runs")
    };
    let short = run(Some("00112233445566778899aabbccddeeff"));
    assert!(!short.status.success(), "16 bytes is too short");
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");

    let mut instant = std::process::Command::new(env!("CARGO_BIN_EXE_stage3"));
    instant
        .args(["serve", "--port", "0", "--id", "x", "--cart-ttl", "0s"])
        .env("SHOP_COOKIE_SECRET", SECRET);
    let instant = instant.output().expect("runs");
    assert!(!instant.status.success(), "a cart that expires at once");
    let stderr = String::from_utf8_lossy(&instant.stderr);
    assert!(stderr.contains("--cart-ttl 0s is too short"), "{stderr}");

    let missing = run(None);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("SHOP_COOKIE_SECRET"),
        "names the variable: {stderr}"
    );
}

#[test]
fn demo_narrates_tampering_the_wall_replay_and_the_race() {
    let story = shop::testing::run_demo(env!("CARGO_BIN_EXE_stage3"), &["SHOP_COOKIE_SECRET"]);
    for beat in [
        "reason=bad-signature",
        "HTTP 413",
        "Alice replays",
        "Two tabs",
        "Lesson:",
    ] {
        assert!(story.contains(beat), "{beat}: {story}");
    }
}
