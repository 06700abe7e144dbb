//! What stage 5 adds to the shop page (and stage 6 keeps): the account panel (sign up, log in,
//! read the profile, log out). Its calls show up in the page's request log
//! with their `X-Data-Path`.

use axum::http::HeaderMap;
use shop::Widget;

/// The account panel.
pub const ACCOUNT: Widget = Widget {
    style: include_str!("page/account.css"),
    html: account_html,
    script: include_str!("page/account.js"),
};

fn account_html(_headers: &HeaderMap) -> String {
    include_str!("page/account.html").to_owned()
}
