//! What stage 4 adds to the shop page: a badge naming the store that keeps
//! the sessions and its trade-off in a few words (`redis; durable (AOF),
//! atomic by Lua script`). It is drawn on the server from the page's own
//! cart reply (its `X-Session-Store` header), and redrawn by `store.js`
//! after every answer that carries one. `store.js` also shows what the
//! store says of itself on an instance's `/metrics` (at most every two
//! seconds): Memcached's evictions (carts dropped without a word), the
//! cache's hits and misses in front of DynamoDB.

use axum::http::HeaderMap;
use shop::Widget;
use shop::http::page::escape;

use crate::sessions::STORE_HEADER;

/// The session store's badge.
pub(crate) const STORE_BADGE: Widget = Widget {
    style: include_str!("page/store.css"),
    html: store_html,
    script: include_str!("page/store.js"),
};

fn store_html(headers: &HeaderMap) -> String {
    let label = headers
        .get(STORE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (name, trade_off) = label.split_once("; ").unwrap_or((label, ""));
    let hidden = if name.is_empty() { " hidden" } else { "" };
    format!(
        r#"<div id="session-store" class="widget"{hidden}>Sessions in <b class="name">{}</b> <span class="trade-off">{}</span> <span class="counters"></span></div>"#,
        escape(name),
        escape(trade_off)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_badge_names_the_store_and_its_trade_off() {
        let mut headers = HeaderMap::new();
        headers.insert(
            STORE_HEADER,
            HeaderValue::from_static("memcached; memory only <b>"),
        );
        let html = store_html(&headers);
        assert!(html.contains(r#"<b class="name">memcached</b>"#), "{html}");
        assert!(html.contains("memory only &lt;b&gt;"), "escaped: {html}");
        assert!(store_html(&HeaderMap::new()).contains(" hidden"));
    }
}
