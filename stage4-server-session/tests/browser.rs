//! Stage 4's lesson as a learner sees it, in headless Chromium: kill the
//! instance that holds your cart from the dashboard, and the cart is still
//! there, served by another instance (it lives in Redis).
//!
//! Needs `chromium`, `chromium-driver` and `redis-server` (`scripts/test`
//! installs them).

use shop::testing::browser::{Browser, screenshot_path};
use stage4::testing::SessionShop;

const STAGE4: &str = env!("CARGO_BIN_EXE_stage4");

#[tokio::test]
async fn the_cart_survives_killing_its_instance_from_the_dashboard() {
    let shop = SessionShop::start(STAGE4, &stage4::INFO, &[("SHOP_STORE_TIMEOUT", "10s")]).await;
    let browser = Browser::start(1100).await;
    browser.goto(&shop.topology.url()).await;
    browser.click("button.size[data-sku='TEE-RED-M']").await;
    let in_cart =
        "return document.querySelectorAll('#cart li[data-sku=\"TEE-RED-M\"]').length === 1";
    assert!(
        browser.wait_for(in_cart).await,
        "the T-shirt is in the cart"
    );
    let holder = browser.text("#badge").await;

    browser.goto(&shop.topology.dashboard_url()).await;
    let kill = format!("button[aria-label='Kill {holder}']");
    assert!(
        browser
            .wait_for(&format!(
                "return document.querySelector(\"{kill}\") !== null"
            ))
            .await
    );
    browser.click(&kill).await;
    let down = format!(
        "const row = [...document.querySelectorAll('#backends tr')].find(r => r.cells[0].textContent === '{holder}'); \
         return row !== undefined && row.cells[2].textContent === 'down'"
    );
    assert!(
        browser.wait_for(&down).await,
        "{holder} is down on the dashboard"
    );

    browser.goto(&shop.topology.url()).await;
    assert!(browser.wait_for(in_cart).await, "the cart is still there");
    let now = browser.text("#badge").await;
    assert_ne!(now, holder, "served by another instance now");
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser
        .screenshot(&screenshot_path("stage4-after-kill"))
        .await;
    browser.quit().await;
    shop.topology.stop().await;
}
