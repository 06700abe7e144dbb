//! Reading the request's cookies and writing the shop's own.
//!
//! Every cookie the shop sets is `HttpOnly` (page JavaScript cannot read it,
//! so an injected script cannot steal it), `SameSite=Lax` (another site's
//! form cannot make the browser send it along with a cross-site POST), and
//! `Path=/`. `Secure` is added when the shop is told it is served over TLS.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use cookie::{Cookie, CookieJar, SameSite};

/// The cookies the request carried. Unparsable cookie pairs are skipped: a
/// malformed cookie from some other site on the same host must not break
/// the shop.
pub fn request_jar(headers: &HeaderMap) -> CookieJar {
    let mut jar = CookieJar::new();
    for header in headers.get_all(COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for cookie in Cookie::split_parse(header.to_owned()).flatten() {
            jar.add_original(cookie.into_owned());
        }
    }
    jar
}

/// A cookie with the shop's safe defaults.
pub fn shop_cookie(
    name: impl Into<std::borrow::Cow<'static, str>>,
    value: String,
    secure: bool,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(secure)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn jar_reads_every_cookie_header_and_skips_garbage() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; junk; b=2"));
        headers.append(COOKIE, HeaderValue::from_static("c=3"));
        let jar = request_jar(&headers);
        let values: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| jar.get(n).map(|c| c.value().to_owned()))
            .collect();
        assert_eq!(
            values,
            [Some("1".into()), Some("2".into()), Some("3".into())]
        );
    }

    #[test]
    fn shop_cookies_are_http_only_and_same_site_lax() {
        let text = shop_cookie("sid", "x".into(), false).to_string();
        assert!(
            text.contains("HttpOnly") && text.contains("SameSite=Lax") && text.contains("Path=/")
        );
        assert!(!text.contains("Secure"));
        assert!(
            shop_cookie("sid", "x".into(), true)
                .to_string()
                .contains("Secure")
        );
    }
}
