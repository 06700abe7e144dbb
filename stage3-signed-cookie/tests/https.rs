//! Stage 3 behind a balancer that terminates TLS (`up --tls`): the cart
//! cookie cannot be read or altered on the way, and is marked `Secure` so
//! the browser never sends it over plain HTTP. The instances learn that
//! the shopper used HTTPS from the balancer's `X-Forwarded-Proto`.

use axum::http::Method;
use shop::testing::https::{Answer, request};
use shop::topology::{Topology, TopologyConfig};

const SECRET: &str = "6d79636c6f746865732d73746167652d332d746573742d7365637265742d3332";

async fn stage3(tls: bool) -> Topology {
    let mut config = TopologyConfig::for_tests(env!("CARGO_BIN_EXE_stage3"), &stage3::INFO);
    config.env = vec![("SHOP_COOKIE_SECRET".into(), SECRET.into())];
    if tls {
        config.tls = Some(lb::TlsSettings::self_signed_for_localhost());
        config.redirect_http_port = Some(0);
    }
    Topology::start(config).await.expect("stage 3 starts")
}

fn set_cookie(answer: &Answer) -> String {
    answer
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a cart cookie: {answer:?}"))
        .to_owned()
}

#[tokio::test]
async fn cart_cookie_is_secure_when_the_shopper_came_over_https() {
    let topology = stage3(true).await;
    let url = topology.url();
    assert!(url.starts_with("https://"), "{url}");
    let pem = topology
        .balancer()
        .tls_certificate_pem()
        .expect("the certificate served")
        .to_owned();

    let added = request(
        &format!("{url}/api/cart/items"),
        &pem,
        Method::POST,
        &[("content-type", "application/json")],
        r#"{"sku":"TEE-RED-M","qty":2}"#,
    )
    .await;
    assert_eq!(added.status, 200, "{added:?}");
    let cookie = set_cookie(&added);
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // The cookie comes back over HTTPS, to any instance: the cart is whole.
    let pair = cookie.split(';').next().expect("name=value");
    for _ in 0..3 {
        let seen = request(
            &format!("{url}/api/cart"),
            &pem,
            Method::GET,
            &[("cookie", pair)],
            "",
        )
        .await;
        assert!(
            seen.body.contains(r#""sku":"TEE-RED-M""#) && seen.body.contains(r#""qty":2"#),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn plain_http_is_redirected_and_its_cookies_are_not_secure() {
    let topology = stage3(true).await;
    let redirect = topology.redirect_url().expect("a plain-HTTP listener");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = client
        .get(format!("{redirect}/api/cart?x=1"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 308);
    let port = topology
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        answer.headers()["location"],
        format!("https://127.0.0.1:{port}/api/cart?x=1").as_str()
    );

    // Without TLS in front, the same shop leaves `Secure` off: a browser
    // would otherwise drop the cookie on http://127.0.0.1.
    let plain = stage3(false).await;
    let added = client
        .post(format!("{}/api/cart/items", plain.url()))
        .json(&serde_json::json!({"sku": "TEE-RED-M"}))
        .send()
        .await
        .expect("an answer");
    let cookie = added.headers()["set-cookie"].to_str().expect("text");
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn up_with_tls_serves_https_and_hands_out_its_certificate() {
    let exe = env!("CARGO_BIN_EXE_stage3");
    let (mut launcher, url) = shop::testing::start_up_with(exe, &["--tls"]);
    let children = shop::testing::children_of(launcher.id());
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // The banner's `curl --cacert` file: the certificate, and only it.
    let port = url.rsplit(':').next().expect("a port");
    let pem_path = std::env::temp_dir().join(format!("myclothes-{port}.pem"));
    // Written as the banner goes on, just after the line with the URL.
    shop::testing::wait_until(std::time::Duration::from_secs(10), || pem_path.exists());
    let pem = std::fs::read_to_string(&pem_path)
        .unwrap_or_else(|e| panic!("{}: {e}", pem_path.display()));
    assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE KEY"));
    let answer = request(&format!("{url}/api/cart"), &pem, Method::GET, &[], "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    shop::testing::ctrl_c_stops_everything(
        &mut launcher,
        &children,
        std::time::Duration::from_secs(10),
    );
}
