//! The HTTP surface every stage serves, checked over real HTTP through the
//! real balancer, with the in-memory store behind it.
//!
//! Every refused request is checked twice: for its status and JSON body, and
//! for what it did *not* do (the cart is exactly as it was before).

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::cart::MAX_LINES;
use shop::error::ErrorBody;
use shop::http::page::escape;
use shop::shopper::Shopper;
use shop::store::MemoryCarts;
use shop::testing::LocalShop;
use shop::{BoxError, Catalog, NoArgs, Services, Stage, StageInfo};

static TEST_STAGE: StageInfo = StageInfo {
    package: "shop-tests",
    title: "Test stage",
    lesson: "A stage that exists for the shared crate's tests.",
    try_this: &[],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// The shared surface with nothing of a stage's own: carts in memory.
struct TestStage;

impl Stage for TestStage {
    const INFO: &'static StageInfo = &TEST_STAGE;
    type Args = NoArgs;
    type Carts = MemoryCarts;
    type State = ();

    async fn start(_args: &NoArgs) -> Result<(MemoryCarts, ()), BoxError> {
        Ok((MemoryCarts::default(), ()))
    }

    async fn demo(_: NoArgs, _: std::path::PathBuf, _: Services) -> Result<(), BoxError> {
        Err("the shared crate's test stage tells no story".into())
    }
}

/// One in-process instance behind the balancer.
async fn one_instance() -> LocalShop {
    LocalShop::start::<TestStage>(vec![(MemoryCarts::default(), ())], lb::Policy::RoundRobin)
        .await
        .expect("shop starts")
}

/// One instance behind the balancer, and a shopper with two T-shirts in the cart.
async fn shop_with_a_cart() -> (LocalShop, Shopper) {
    let shop = one_instance().await;
    let shopper = Shopper::new(shop.url()).expect("client");
    shopper.add("TEE-RED-M", 2).await.expect("first add works");
    (shop, shopper)
}

async fn error_of(response: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    assert!(
        response.headers().contains_key("x-served-by"),
        "errors name the instance too"
    );
    (status, response.json().await.expect("a JSON error body"))
}

async fn assert_cart_unchanged(shopper: &Shopper) {
    let cart = shopper.cart().await.expect("cart");
    assert_eq!(
        cart.summary(),
        "2 × TEE-RED-M",
        "a refused request changes nothing"
    );
}

/// POSTs a raw body to the add-item route.
async fn post_raw(shopper: &Shopper, content_type: &str, body: String) -> reqwest::Response {
    shopper
        .http()
        .post(shopper.url("/api/cart/items"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("response")
}

/// Checks `response` is the JSON error `code` with `status`, and that the
/// shopper's cart is exactly as it was. Returns the error's message.
async fn refused(
    shopper: &Shopper,
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
) -> String {
    let (got, body) = error_of(response).await;
    assert_eq!(
        (got, body.error.as_str()),
        (status, code),
        "{}",
        body.message
    );
    assert_cart_unchanged(shopper).await;
    body.message
}

#[tokio::test]
async fn malformed_json_is_400_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = post_raw(
        &shopper,
        "application/json",
        r#"{"sku": "TEE-RED-M", "qty": "#.into(),
    )
    .await;
    refused(
        &shopper,
        response,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
}

#[tokio::test]
async fn unknown_sku_is_404_everywhere_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let http = shopper.http();
    let attempts = [
        http.post(shopper.url("/api/cart/items"))
            .json(&json!({"sku": "TEE-GOLD-M", "qty": 1})),
        http.put(shopper.url("/api/cart/items/TEE-GOLD-M"))
            .json(&json!({"qty": 1})),
        http.delete(shopper.url("/api/cart/items/TEE-GOLD-M")),
        http.get(shopper.url("/api/products/TEE-GOLD-M")),
    ];
    for attempt in attempts {
        let response = attempt.send().await.expect("response");
        let message = refused(&shopper, response, StatusCode::NOT_FOUND, "unknown_sku").await;
        assert!(
            message.contains("TEE-GOLD-M"),
            "the message names the SKU: {message}"
        );
    }
}

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = shopper
        .http()
        .get(shopper.url("/api/basket"))
        .send()
        .await
        .expect("response");
    refused(&shopper, response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = shopper
        .http()
        .patch(shopper.url("/api/cart"))
        .send()
        .await
        .expect("response");
    refused(
        &shopper,
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn body_over_16_kib_is_413_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let padding = "x".repeat(17 * 1024);
    let body = format!(r#"{{"sku": "TEE-RED-M", "qty": 1, "padding": "{padding}"}}"#);
    let response = post_raw(&shopper, "application/json", body).await;
    refused(
        &shopper,
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
    .await;
}

#[tokio::test]
async fn body_that_is_not_json_is_415_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = post_raw(
        &shopper,
        "text/plain",
        r#"{"sku": "TEE-RED-M", "qty": 1}"#.into(),
    )
    .await;
    refused(
        &shopper,
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn quantity_outside_one_to_ninety_nine_is_422_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    for qty in [0, 100, -3, 1_000_000] {
        let add = shopper.add("TEE-RED-M", qty).await.expect_err("refused");
        assert_eq!(
            add.status(),
            Some(StatusCode::UNPROCESSABLE_ENTITY),
            "add qty {qty}"
        );
        let set = shopper.set("TEE-RED-M", qty).await.expect_err("refused");
        assert_eq!(
            set.status(),
            Some(StatusCode::UNPROCESSABLE_ENTITY),
            "set qty {qty}"
        );
    }
    // 2 already in the cart: adding 98 would make 100.
    let over = post_raw(
        &shopper,
        "application/json",
        json!({"sku": "TEE-RED-M", "qty": 98}).to_string(),
    )
    .await;
    refused(
        &shopper,
        over,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_quantity",
    )
    .await;
}

#[tokio::test]
async fn a_price_sent_by_the_client_is_refused_not_trusted() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let body = json!({"sku": "JKT-NAVY-XL", "qty": 1, "price_cents": 1}).to_string();
    let response = post_raw(&shopper, "application/json", body).await;
    let message = refused(
        &shopper,
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    assert!(
        message.contains("price_cents"),
        "names the field: {message}"
    );
}

#[tokio::test]
async fn the_cart_refuses_a_line_beyond_its_limit() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let skus: Vec<_> = Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.as_str())
        .filter(|sku| *sku != "TEE-RED-M")
        .take(MAX_LINES)
        .collect();
    for sku in &skus[..MAX_LINES - 1] {
        shopper.add(sku, 1).await.expect("fits");
    }
    let refused = shopper
        .http()
        .post(shopper.url("/api/cart/items"))
        .json(&json!({"sku": skus[MAX_LINES - 1], "qty": 1}))
        .send()
        .await
        .expect("response");
    let (status, body) = error_of(refused).await;
    assert_eq!(
        (status, body.error.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "cart_full")
    );
    let cart = shopper.cart().await.expect("cart");
    assert_eq!(cart.body.lines.len(), MAX_LINES);
    assert_eq!(cart.qty_of(skus[MAX_LINES - 1]), 0);
}

#[tokio::test]
async fn totals_are_computed_on_the_server_in_cents() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let cart = shopper.add("JKT-NAVY-XL", 1).await.expect("add");
    let tee = Catalog::get().find("TEE-RED-M").expect("tee").price_cents;
    let jacket = Catalog::get()
        .find("JKT-NAVY-XL")
        .expect("jacket")
        .price_cents;
    assert_eq!(cart.body.total_cents, u64::from(2 * tee + jacket));
    let lines: Vec<_> = cart
        .body
        .lines
        .iter()
        .map(|l| {
            (
                l.sku.as_str(),
                l.qty,
                l.unit_price_cents,
                l.line_total_cents,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("TEE-RED-M", 2, u64::from(tee), u64::from(2 * tee)),
            ("JKT-NAVY-XL", 1, u64::from(jacket), u64::from(jacket))
        ]
    );
}

#[tokio::test]
async fn set_remove_and_clear_change_the_cart() {
    let (_shop, shopper) = shop_with_a_cart().await;
    shopper.add("SOCK-GREY-L", 1).await.expect("add");
    assert_eq!(
        shopper
            .set("TEE-RED-M", 5)
            .await
            .expect("set")
            .qty_of("TEE-RED-M"),
        5
    );
    let removed = shopper.remove("TEE-RED-M").await.expect("remove");
    assert_eq!(removed.summary(), "1 × SOCK-GREY-L");
    assert!(shopper.clear().await.expect("clear").is_empty());
}

#[tokio::test]
async fn every_response_names_the_instance_that_served_it() {
    let (_shop, shopper) = shop_with_a_cart().await;
    for path in ["/", "/api/products", "/api/cart", "/healthz", "/nowhere"] {
        let response = shopper
            .http()
            .get(shopper.url(path))
            .send()
            .await
            .expect("response");
        assert_eq!(response.headers()["x-served-by"], "i1", "{path}");
    }
}

#[tokio::test]
async fn healthz_reports_instance_uptime_and_in_flight() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let health: Value = shopper
        .http()
        .get(shopper.url("/healthz"))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    assert_eq!(health["instance"], "i1");
    assert!(health["uptime_s"].is_u64());
    assert_eq!(health["in_flight"], 0, "nothing else is being served");
}

#[tokio::test]
async fn products_lists_the_whole_catalog_and_finds_one() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let products: Vec<Value> = shopper
        .http()
        .get(shopper.url("/api/products"))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    assert_eq!(products.len(), Catalog::get().products().len());
    let one: Value = shopper
        .http()
        .get(shopper.url("/api/products/HOOD-GREY-S"))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    for field in ["sku", "name", "colour", "size", "price_cents"] {
        assert!(!one[field].is_null(), "product has {field}");
    }
    assert_eq!(one["sku"], "HOOD-GREY-S");
}

#[tokio::test]
async fn shop_page_shows_the_stage_the_instance_and_the_cart() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = shopper
        .http()
        .get(shopper.url("/"))
        .send()
        .await
        .expect("response");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let page = response.text().await.expect("html");
    assert!(page.contains(&escape(TEST_STAGE.title)) && page.contains(&escape(TEST_STAGE.lesson)));
    assert!(page.contains(r#"data-instance="i1""#), "served-by badge");
    assert!(
        page.contains(r#"<li data-sku="TEE-RED-M">"#),
        "the cart is rendered on the server"
    );
    assert!(
        page.contains(r#"data-sku="JKT-NAVY-XL""#),
        "the catalog is on the page"
    );
}

#[tokio::test]
async fn client_id_cookie_is_http_only_and_same_site() {
    let shop = one_instance().await;
    let response = reqwest::get(format!("{}/api/cart", shop.url()))
        .await
        .expect("response");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cookie.starts_with("client_id="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
}

#[tokio::test]
async fn undecodable_path_segment_is_a_json_400_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    // `%ff%fe` decodes to bytes that are not UTF-8.
    let product = shopper
        .http()
        .get(shopper.url("/api/products/%ff%fe"))
        .send()
        .await
        .expect("response");
    refused(&shopper, product, StatusCode::BAD_REQUEST, "bad_path").await;
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response = shopper
            .http()
            .request(method, shopper.url("/api/cart/items/%ff%fe"))
            .json(&json!({"qty": 1}))
            .send()
            .await
            .expect("response");
        refused(&shopper, response, StatusCode::BAD_REQUEST, "bad_path").await;
    }
}

#[tokio::test]
async fn malformed_idempotency_key_is_400_and_loses_nothing() {
    let (_shop, shopper) = shop_with_a_cart().await;
    let response = shopper
        .http()
        .post(shopper.url("/api/cart/items"))
        .header("idempotency-key", "not a key; it has spaces")
        .json(&json!({"sku": "TEE-RED-M", "qty": 1}))
        .send()
        .await
        .expect("response");
    refused(
        &shopper,
        response,
        StatusCode::BAD_REQUEST,
        "bad_idempotency_key",
    )
    .await;
}
