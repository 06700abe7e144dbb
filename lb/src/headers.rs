//! Header rewriting for a proxied request and its response.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe *one* connection, so a proxy
//! must not pass them on: `Connection`, `Keep-Alive`, `Proxy-Authenticate`,
//! `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and
//! every header the `Connection` header itself names (a client can declare
//! any header hop-by-hop, e.g. `Connection: close, X-Secret`).
//!
//! The `X-Forwarded-*` headers tell the backend who really asked:
//! `X-Forwarded-For` gets the client's address *appended* (earlier proxies'
//! entries are kept, as nginx's `$proxy_add_x_forwarded_for` does),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` are *set*, since only this hop
//! knows what the client used (`https` when the balancer terminated TLS,
//! whatever the client claimed). (The standardised `Forwarded` header of RFC
//! 7239 carries the same facts; the `X-` trio is what frameworks read.)

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

/// The fixed hop-by-hop headers.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes every hop-by-hop header, including those named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names listed in `Connection` first: removing `Connection`
    // would lose them.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// How the shopper's request reached the balancer: what `X-Forwarded-Proto`
/// says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    /// Over TLS, terminated at the balancer ([`crate::tls`]).
    Https,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// Adds the `X-Forwarded-*` headers for a request from `client` that came
/// over `proto`. A `X-Forwarded-Proto` the client sent is replaced: only
/// this hop knows whether the shopper's connection was encrypted.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: Proto) {
    let client = client.to_string();
    // Join any earlier values into one comma-separated list and append ours.
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if earlier.is_empty() {
        client
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto.as_str()));
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Whether a request comes from a page of the site it is addressed to: no
/// `Origin` (not sent by a browser page of another site: curl, a server,
/// a same-origin GET), or an `Origin` whose `host:port` is the one `Host`.
/// The check behind the admin API's "no other site's page", and behind a
/// shop's WebSocket, which browsers open cross-site without asking first
/// (no CORS preflight for WebSockets).
pub fn origin_matches_host(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    match (origin_host, host.to_str()) {
        (Some(origin), Ok(host)) => origin.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_the_rest_stay() {
        let mut headers = map(&[
            ("connection", "close, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-secret", "hunter2"),
            ("upgrade", "websocket"),
            ("accept", "application/json"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_are_set() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("host", "shop.example:8080"),
        ]);
        add_forwarded(&mut headers, "127.0.0.1".parse().expect("ip"), Proto::Http);
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(
            headers[&X_FORWARDED_PROTO], "http",
            "a client's claim of https is replaced"
        );
        assert_eq!(headers[&X_FORWARDED_HOST], "shop.example:8080");
        add_forwarded(&mut headers, "127.0.0.1".parse().expect("ip"), Proto::Https);
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn an_origin_must_name_the_host_the_request_was_sent_to() {
        let with = |origin: Option<&str>, host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            }
            origin_matches_host(&headers)
        };
        assert!(
            with(None, "127.0.0.1:8080"),
            "no Origin: not another site's page"
        );
        assert!(with(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"));
        assert!(with(Some("https://Shop.example"), "shop.example"));
        assert!(!with(Some("http://evil.example"), "127.0.0.1:8080"));
        assert!(
            !with(Some("http://127.0.0.1:9090"), "127.0.0.1:8080"),
            "another port is another site"
        );
        assert!(!with(Some("null"), "127.0.0.1:8080"));
    }
}
