//! Stage 1's lesson as a learner sees it: the real page in headless
//! Chromium, through `stage1 up`'s round-robin balancer.
//!
//! Needs `chromium` and `chromium-driver` (`scripts/test` installs them).
//! `scripts/screenshots` saves this page's picture into `docs/screenshots/`.

use std::time::Duration;

use serde_json::json;
use shop::testing::browser::{Browser, screenshot_path};
use shop::testing::{children_of, ctrl_c_stops_everything, start_up};

const STAGE1: &str = env!("CARGO_BIN_EXE_stage1");

/// How many lines the page's cart shows.
const CART_LINES: &str = "return document.querySelectorAll('#cart li[data-sku]').length";
/// The same, as a function expression (for use inside another script).
const CART_LINES_FN: &str = "() => document.querySelectorAll('#cart li[data-sku]').length";
/// How many requests the page's log shows.
const LOG_LINES: &str = "return document.querySelectorAll('#log li').length";

#[tokio::test]
async fn refreshing_the_page_moves_the_shopper_and_the_cart_vanishes_and_returns() {
    let (mut launcher, url) = start_up(STAGE1);
    let children = children_of(launcher.id());
    let browser = Browser::start(1100).await;
    browser.goto(&url).await;
    assert!(
        browser
            .wait_for("return document.querySelector('#badge').textContent.trim().length > 0")
            .await
    );

    browser.click("button.size[data-sku='TEE-RED-M']").await;
    assert!(
        browser
            .wait_for(
                "return document.querySelectorAll('#cart li[data-sku=\"TEE-RED-M\"]').length === 1"
            )
            .await,
        "the T-shirt is in the cart"
    );
    let holder = browser.text("#badge").await;

    // Round-robin: each press of "Refresh cart" goes to the next instance.
    let (mut badges, mut emptied, mut returned) = (vec![holder.clone()], false, false);
    for _ in 0..6 {
        // The page logs every request it makes: one more line, one answer.
        let logged = browser.run(LOG_LINES, json!([])).await;
        browser.click("#refresh").await;
        let answered = format!(
            "return document.querySelectorAll('#log li').length > {logged} \
             && !document.querySelector('#refresh').disabled"
        );
        assert!(browser.wait_for(&answered).await, "the refresh is answered");
        let badge = browser.text("#badge").await;
        let lines = browser.run(CART_LINES, json!([])).await;
        if badge != holder && lines == 0 {
            emptied = true;
        }
        if emptied && badge == holder && lines == 1 {
            returned = true;
        }
        badges.push(badge);
    }
    assert!(
        badges.iter().any(|b| *b != holder),
        "the badge changes as the balancer moves the shopper: {badges:?}"
    );
    assert!(emptied, "on another instance the cart is empty: {badges:?}");
    assert!(
        returned,
        "back on {holder}, the cart is there again: {badges:?}"
    );

    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser.screenshot(&screenshot_path("stage1")).await;
    browser.quit().await;
    ctrl_c_stops_everything(&mut launcher, &children, Duration::from_secs(10));
}

/// The state column of backend `name` in the dashboard's table.
fn state_of(name: &str) -> String {
    format!(
        "const row = [...document.querySelectorAll('#backends tr')].find(r => r.cells[0].textContent === '{name}'); \
         return row ? row.cells[2].textContent : null"
    )
}

#[tokio::test]
async fn dashboard_buttons_kill_restart_drain_and_add_instances() {
    let topology = shop::testing::start_stage(STAGE1, &stage1::INFO).await;
    let browser = Browser::start(1100).await;
    browser.goto(&topology.dashboard_url()).await;
    assert!(
        browser
            .wait_for("return document.querySelectorAll('#backends tr').length === 3")
            .await,
        "three instances in the table"
    );
    let shows = |name: &str, state: &str| {
        format!(
            "return (function() {{ {} }})() === '{state}'",
            state_of(name)
        )
    };

    browser.click("button[aria-label='Kill i2']").await;
    assert!(browser.wait_for(&shows("i2", "down")).await, "killed: down");
    browser.click("button[aria-label='Restart i2']").await;
    assert!(browser.wait_for(&shows("i2", "up")).await, "restarted: up");
    browser.click("button[aria-label='Drain i3']").await;
    assert!(
        browser.wait_for(&shows("i3", "draining")).await,
        "drained: draining"
    );
    browser.click("#add-instance").await;
    assert!(
        browser
            .wait_for("return document.querySelectorAll('#backends tr').length === 4")
            .await,
        "a fourth instance joins the table"
    );
    assert!(browser.wait_for(&shows("i4", "up")).await, "and comes up");

    // Some traffic, so that the chart (and its picture) shows lines.
    let shopper = shop::shopper::Shopper::new(topology.url()).expect("client");
    for _ in 0..40 {
        let _ = shopper.cart().await;
        tokio::time::sleep(Duration::from_millis(75)).await;
    }

    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser.screenshot(&screenshot_path("dashboard")).await;
    browser.quit().await;
    topology.stop().await;
}

#[tokio::test]
async fn the_page_fits_a_phone_and_works_by_keyboard() {
    let topology = shop::testing::start_stage(STAGE1, &stage1::INFO).await;
    let browser = Browser::start(390).await;
    browser.goto(&topology.url()).await;
    assert!(
        browser
            .wait_for("return document.querySelectorAll('button.size').length > 0")
            .await
    );
    fits_a_phone_with_named_controls(&browser, "the shop page").await;

    // Keyboard only: focus the first size button, press Enter.
    browser
        .run("document.querySelector('button.size').focus()", json!([]))
        .await;
    browser.press("\u{E007}").await;
    assert!(
        browser
            .wait_for(&format!("return ({CART_LINES_FN})() === 1"))
            .await,
        "Enter on a size button adds it to the cart"
    );
    // Tab moves on to the next control, as a keyboard user expects.
    browser.press("\u{E004}").await;
    let focused = browser
        .run("return document.activeElement.tagName", json!([]))
        .await;
    assert_eq!(focused, "BUTTON");

    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser.screenshot(&screenshot_path("stage1-phone")).await;
    browser.quit().await;
    topology.stop().await;
}

/// At the browser's (phone) width nothing sticks out sideways, and every
/// button and input has a name a screen reader can say.
async fn fits_a_phone_with_named_controls(browser: &Browser, page: &str) {
    let overflow = browser
        .run(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    let wide = browser
        .run(
            "return [...document.querySelectorAll('body *')] \
               .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5) \
               .slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right))",
            json!([]),
        )
        .await;
    assert_eq!(
        overflow, 0,
        "{page}: nothing sticks out sideways at 390 px: {wide}"
    );
    let unnamed = browser
        .run(
            "return [...document.querySelectorAll('button, input, select')] \
               .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim())) \
               .map(e => e.outerHTML)",
            json!([]),
        )
        .await;
    assert_eq!(unnamed, json!([]), "{page}: unnamed controls");
}

#[tokio::test]
async fn the_dashboard_fits_a_phone() {
    let topology = shop::testing::start_stage(STAGE1, &stage1::INFO).await;
    let browser = Browser::start(390).await;
    browser.goto(&topology.dashboard_url()).await;
    assert!(
        browser
            .wait_for("return document.querySelectorAll('#backends tr').length === 3")
            .await
    );
    fits_a_phone_with_named_controls(&browser, "the dashboard").await;
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser
        .screenshot(&screenshot_path("dashboard-phone"))
        .await;
    browser.quit().await;
    topology.stop().await;
}
