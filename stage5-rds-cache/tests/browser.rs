//! Stage 5's account panel as a learner uses it, in headless Chromium:
//! sign up, log out, log in; bad input names the field that is wrong.
//!
//! Needs `chromium`, `chromium-driver`, `redis-server` and `postgresql`
//! (`scripts/test` installs them).

mod support;

use shop::testing::browser::{Browser, screenshot_path, text_in};
use support::spawn_shop;

#[tokio::test]
async fn sign_up_log_out_log_in_and_bad_input_names_its_field() {
    let shop = spawn_shop().await;
    let browser = Browser::start(1100).await;
    browser.goto(&shop.topology.url()).await;
    assert!(browser.wait_for(&text_in("#who", "Not logged in")).await);

    // A password too short: the page says which field.
    browser.type_into("#email", "ada@example.com").await;
    browser.type_into("#password", "short").await;
    browser.type_into("#name", "Ada").await;
    browser.click("button[data-act='signup']").await;
    assert!(
        browser.wait_for(&text_in("#notices", "password")).await,
        "the notice names the password field"
    );
    browser
        .screenshot(&screenshot_path("stage5-bad-input"))
        .await;

    // The whole flow, with a good password.
    browser.type_into("#password", "-long-enough-now").await;
    browser.click("button[data-act='signup']").await;
    assert!(
        browser
            .wait_for(&text_in("#who", "Logged in as Ada (ada@example.com)"))
            .await,
        "signed up and logged in"
    );
    browser.screenshot(&screenshot_path("stage5")).await;
    browser.click("#logout").await;
    assert!(
        browser.wait_for(&text_in("#who", "Not logged in")).await,
        "logged out"
    );
    browser
        .type_into("#password", "short-long-enough-now")
        .await;
    browser.click("button[data-act='login']").await;
    assert!(
        browser.wait_for(&text_in("#who", "Logged in as Ada")).await,
        "logged in again with the same password"
    );
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console errors"
    );
    browser.quit().await;
}
