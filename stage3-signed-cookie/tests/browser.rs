//! Stage 3's lesson as a learner sees it: the real page in headless
//! Chromium. The cookie meter grows with the cart, a changed cookie is
//! turned away with its reason in words, and the 4 KB wall says what it is.
//!
//! Needs `chromium` and `chromium-driver` (`scripts/test` installs them).

use std::time::Duration;

use serde_json::json;
use shop::testing::browser::{Browser, screenshot_path, text_in};
use shop::topology::{Topology, TopologyConfig};

/// Three instances sharing one signing secret, as `stage3 up` starts them.
async fn stage3() -> Topology {
    let mut config = TopologyConfig::for_tests(env!("CARGO_BIN_EXE_stage3"), &stage3::INFO);
    let secret = "6d79636c6f746865732d73746167652d332d62726f777365722d746573742d31";
    config.env = vec![("SHOP_COOKIE_SECRET".into(), secret.into())];
    Topology::start(config).await.expect("stage 3 starts")
}

/// The bytes the meter shows (`Cookie: 312 / 4096 bytes`), or -1.
const METER_BYTES: &str = "const m = document.querySelector('#meter .label'); \
     const n = m && !document.querySelector('#meter').hidden ? parseInt(m.textContent.replace('Cookie: ', ''), 10) : -1; \
     return n";

#[tokio::test]
async fn the_cookie_meter_grows_and_a_changed_cookie_is_refused_in_words() {
    let topology = stage3().await;
    let browser = Browser::start(1100).await;
    browser.goto(&topology.url()).await;

    browser.click("button.size[data-sku='TEE-RED-M']").await;
    assert!(
        browser
            .wait_for(&format!("return ({})() > 0", fn_of(METER_BYTES)))
            .await
    );
    let one_line = browser.run(METER_BYTES, json!([])).await;
    browser.click("button.size[data-sku='TEE-NAVY-L']").await;
    assert!(
        browser
            .wait_for(&format!("return ({})() > {one_line}", fn_of(METER_BYTES)))
            .await,
        "a second line makes the cookie bigger than {one_line} bytes"
    );
    browser.screenshot(&screenshot_path("stage3")).await;

    // Change one character of the signature, as a curious shopper would.
    let cookie = browser.cookie("cart").await.expect("the cart cookie");
    let mut parts: Vec<String> = cookie.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 4, "version.key.payload.signature: {cookie}");
    let first = if parts[3].starts_with('A') { "B" } else { "A" };
    parts[3].replace_range(0..1, first);
    browser.set_cookie("cart", &parts.join(".")).await;
    browser.click("#refresh").await;
    assert!(
        browser
            .wait_for(&text_in(
                "#notices",
                "signature did not match: it was changed after the shop signed it"
            ))
            .await,
        "the page says why the cart was reset"
    );
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser.quit().await;
    topology.stop().await;
}

#[tokio::test]
async fn the_four_kilobyte_wall_says_what_it_is() {
    let topology = stage3().await;
    let browser = Browser::start(1100).await;
    browser.goto(&topology.url()).await;
    // Press every size button in turn, as a determined shopper would,
    // each after the last one's answer (presses that overlap would race
    // each other's cookies: stage 3's other weakness), until the shop
    // refuses.
    browser
        .run(
            "(async () => { \
               const answers = () => document.querySelectorAll('#log li').length; \
               for (const b of document.querySelectorAll('button.size')) { \
                 if (document.querySelector('#notices').textContent.includes('limit')) break; \
                 const before = answers(); b.click(); \
                 for (let i = 0; i < 500 && answers() === before; i++) \
                   await new Promise(r => setTimeout(r, 10)); } })()",
            json!([]),
        )
        .await;
    assert!(
        browser
            .wait_for_within(
                &text_in(
                    "#notices",
                    "the limit is 4096 bytes, so the cart was left as it was"
                ),
                Duration::from_secs(90),
            )
            .await,
        "the page explains the wall"
    );
    let bytes = browser.run(METER_BYTES, json!([])).await;
    assert!(
        bytes.as_i64().is_some_and(|b| b > 3000 && b <= 4096),
        "the meter stands near the limit: {bytes}"
    );
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser
        .run(
            "document.querySelector('#notices').scrollIntoView({block: 'center'})",
            json!([]),
        )
        .await;
    browser.screenshot(&screenshot_path("stage3-wall")).await;
    browser.quit().await;
    topology.stop().await;
}

/// `script` (a function body ending in `return …`) as a function expression.
fn fn_of(script: &str) -> String {
    format!("function() {{ {script} }}")
}
