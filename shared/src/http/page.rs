//! `GET /`: the shop page.
//!
//! Server-rendered HTML (so the page works, and shows the cart, before any
//! script runs), plus a little JavaScript (`shop.js`) that talks to the JSON
//! API: adding to the cart, changing quantities, and re-colouring the
//! "served by" badge after every request so a learner *sees* which instance
//! answered and what that instance knew about the cart.
//!
//! A stage adds its own parts through [`Stage::WIDGETS`] (HTML under the
//! cart, a style, a script that uses `window.shop`) and names the headers
//! the request log shows through [`Stage::LOG_HEADERS`].
//!
//! The template is a plain HTML file with `{{slots}}`; every value put into a
//! slot goes through [`escape`]. A template engine (askama, minijinja) would
//! do the same with more ceremony than one page needs.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};

use crate::cart::{CartOp, PricedCart};
use crate::catalog::Catalog;
use crate::cookies::request_jar;
use crate::http::api::set_cookies;
use crate::stage::{Shop, Stage};
use crate::store::{CartRequest, CartStore};

const TEMPLATE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("shop.js");

/// `GET /`
pub(super) async fn shop_page<S: Stage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Response {
    // The page still renders when the store fails: it says so instead of
    // showing an empty cart as if nothing were wrong.
    let cookies = request_jar(&headers);
    let view = CartRequest {
        cookies: &cookies,
        op: CartOp::View,
        key: None,
    };
    let (cart, notices, cookies, extra) = match shop.carts.apply(view).await {
        Ok(reply) => (
            Some(reply.cart.priced()),
            reply.notices,
            reply.cookies,
            reply.headers,
        ),
        Err(error) => (None, vec![error.to_string()], Vec::new(), HeaderMap::new()),
    };
    let stage = S::INFO;
    let widgets = S::WIDGETS;
    let html = TEMPLATE
        .replace("{{title}}", &escape(stage.title))
        .replace("{{lesson}}", &escape(stage.lesson))
        .replace("{{instance}}", &escape(shop.instance.id()))
        .replace("{{log_headers}}", &escape(&S::LOG_HEADERS.join(" ")))
        .replace("{{filters}}", &garment_filter())
        .replace("{{catalog}}", &catalog_cards())
        .replace(
            "{{cart}}",
            &cart.as_ref().map_or_else(String::new, cart_lines),
        )
        .replace(
            "{{total}}",
            &cart
                .as_ref()
                .map_or_else(|| "—".to_owned(), |c| money(c.total_cents)),
        )
        .replace("{{notices}}", &notice_items(&notices))
        .replace(
            "{{widget_styles}}",
            &widgets.iter().map(|w| w.style).collect::<String>(),
        )
        .replace(
            "{{widgets}}",
            &widgets.iter().map(|w| (w.html)(&extra)).collect::<String>(),
        )
        .replace("{{script}}", SCRIPT)
        .replace(
            "{{widget_scripts}}",
            &widgets
                .iter()
                .map(|w| w.script)
                .collect::<Vec<_>>()
                .join("\n"),
        );
    let mut response = Html(html).into_response();
    set_cookies(response.headers_mut(), cookies);
    response.headers_mut().extend(extra);
    response
}

/// `1900` → `€19.00`.
pub(crate) fn money(cents: u64) -> String {
    format!("€{}.{:02}", cents / 100, cents % 100)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn garment_filter() -> String {
    let mut html = String::from(r#"<option value="">All garments</option>"#);
    for (code, name) in Catalog::get().garments() {
        let _ = write!(
            html,
            r#"<option value="{}">{}</option>"#,
            escape(code),
            escape(name)
        );
    }
    html
}

/// One card per garment and colour, with a button per size.
fn catalog_cards() -> String {
    let mut html = String::new();
    let products = Catalog::get().products();
    for group in products.chunk_by(|a, b| a.garment == b.garment && a.colour == b.colour) {
        let Some(first) = group.first() else { continue };
        let title = first
            .name
            .rsplit_once(", ")
            .map_or(first.name.as_str(), |(t, _)| t);
        let _ = write!(
            html,
            r#"<article class="card" data-garment="{garment}" data-text="{text}"><div class="swatch swatch-{colour}"></div><h3>{title}</h3><p class="price">from {price}</p><div class="sizes">"#,
            garment = escape(&first.garment),
            text = escape(&title.to_lowercase()),
            colour = escape(&first.colour.to_lowercase()),
            title = escape(title),
            price = money(u64::from(first.price_cents)),
        );
        for product in group {
            let _ = write!(
                html,
                r#"<button class="size" data-sku="{sku}" title="Add {sku} ({price})" aria-label="Add {sku} ({price}) to the cart">{size}</button>"#,
                sku = escape(&product.sku),
                price = money(u64::from(product.price_cents)),
                size = escape(&product.size),
            );
        }
        html.push_str("</div></article>");
    }
    html
}

fn cart_lines(cart: &PricedCart) -> String {
    let mut html = String::new();
    for line in &cart.lines {
        let _ = write!(
            html,
            r#"<li data-sku="{sku}"><span class="name">{name}</span><span class="qty"><button class="dec" aria-label="one less">−</button>{qty}<button class="inc" aria-label="one more">+</button></span><span class="line-total">{total}</span><button class="remove" aria-label="remove">×</button></li>"#,
            sku = escape(&line.sku),
            name = escape(&line.name),
            qty = line.qty,
            total = money(line.line_total_cents),
        );
    }
    html
}

fn notice_items(notices: &[String]) -> String {
    notices
        .iter()
        .map(|n| format!("<li>{}</li>", escape(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn money_is_cents_with_two_digits() {
        assert_eq!(money(1_900), "€19.00");
        assert_eq!(money(5), "€0.05");
    }

    #[test]
    fn every_sku_has_a_button() {
        let html = catalog_cards();
        let buttons = html.matches(r#"class="size""#).count();
        assert_eq!(buttons, Catalog::get().products().len());
    }
}
