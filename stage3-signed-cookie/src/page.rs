//! What stage 3 adds to the shop page: the cookie meter, a bar under the
//! cart that shows how much of the 4096 bytes the cart's cookie uses. It is
//! drawn on the server from the page's own cart reply, and redrawn by
//! `meter.js` after every answer.

use axum::http::HeaderMap;
use shop::Widget;

use crate::store::{CART_COOKIE_BYTES, COOKIE_LIMIT};

/// The cookie meter.
pub(crate) const METER: Widget = Widget {
    style: include_str!("page/meter.css"),
    html: meter_html,
    script: include_str!("page/meter.js"),
};

fn meter_html(headers: &HeaderMap) -> String {
    let bytes = headers
        .get(CART_COOKIE_BYTES)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (hidden, bytes) = match bytes {
        Some(bytes) => ("", bytes),
        None => (" hidden", 0),
    };
    #[allow(clippy::cast_precision_loss)] // at most a few thousand bytes
    let percent = (bytes.min(COOKIE_LIMIT) as f64) * 100.0 / COOKIE_LIMIT as f64;
    format!(
        r#"<div id="meter" class="widget"{hidden}><span class="label">Cookie: {bytes} / {COOKIE_LIMIT} bytes</span><div class="bar"><div style="width:{percent:.1}%"></div></div></div>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_meter_shows_the_cookie_size_it_was_given() {
        let mut headers = HeaderMap::new();
        headers.insert(CART_COOKIE_BYTES, HeaderValue::from(2048_usize));
        let html = meter_html(&headers);
        assert!(html.contains("Cookie: 2048 / 4096 bytes") && html.contains("width:50.0%"));
        assert!(meter_html(&HeaderMap::new()).contains(" hidden"));
    }
}
