//! What stage 6 adds to the shop page: the live panel. One WebSocket per
//! page carries the stock and flash prices of every size shown (sold-out
//! sizes grey out, low stock says "2 left"), a live-shopping room per
//! garment line, a "Buy now" button (`POST /api/checkout`), and the
//! counter of the lesson: updates *received* against updates *published*
//! on the SKUs the page watches. With `--fanout local` and three
//! instances, received is about a third of published.
//!
//! When the socket drops (the instance died, or was drained: close code
//! 1001), the page reconnects after a random pause between 100 ms and 2 s
//! ("full jitter", so a thousand pages do not all land on the survivor in
//! the same millisecond) and sends the last stream id it saw of each
//! topic, from which `--fanout streams` replays what it missed.

use axum::http::HeaderMap;
use shop::Widget;

/// The live panel.
pub(crate) const LIVE: Widget = Widget {
    style: include_str!("page/live.css"),
    html: live_html,
    script: include_str!("page/live.js"),
};

/// The panel, with the shop's rooms to choose from.
fn live_html(_headers: &HeaderMap) -> String {
    let rooms: String = crate::topic::ROOMS
        .iter()
        .map(|room| format!(r#"<option value="{room}">{room}</option>"#))
        .collect();
    include_str!("page/live.html").replace("{{rooms}}", &rooms)
}
