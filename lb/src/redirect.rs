//! `--redirect-http ADDR`: a plain-HTTP listener beside the TLS one whose
//! only answer is "go to HTTPS".
//!
//! A shopper who types `shop.example` gets `http://`; the site answers on
//! port 80 with a redirect to the same path on `https://`, and from then on
//! everything is encrypted. An AWS ALB does it with a port-80 listener whose
//! default action is a redirect; nginx with `return 308 https://$host$request_uri;`.
//!
//! * `308 Permanent Redirect`, not `301`: with a 301 a client may turn a
//!   POST into a GET on the way (browsers do), losing the body; a 308 keeps
//!   the method and the body.
//! * The target is the `Host` the client asked for, without its port, then
//!   the TLS port (left out when it is 443, as browsers would write it),
//!   then the path and query. Never an absolute URI from the request line,
//!   and only a host that parses as one: the redirect must not become a
//!   way to send shoppers to another site. No `Host` (HTTP/1.0), two, or
//!   one that is not a host: a JSON 400.
//! * `Cache-Control: no-store`: browsers keep permanent redirects for a
//!   long time, and on a learner's `localhost` the same port serves a plain
//!   stage tomorrow. Remembering "HTTPS only" is what HSTS is for
//!   (`--hsts`), and it is off by default for the same reason.
//! * Nothing here is forwarded: no backend sees plain HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HOST, HeaderMap, HeaderValue, LOCATION};
use hyper::http::uri::Authority;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::errors::{LbError, empty};

/// How long open redirect connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Answers every request on `listener` with a redirect to the same host
/// and path on `https://…:https_port`, until `shutdown` completes.
pub async fn redirect_to_https(
    listener: TcpListener,
    https_port: u16,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // No upgrades here, so hyper-util's graceful helper fits (the proxy
    // needs its own; see `Balancer::accept`).
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed (redirect listener)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |request: Request<Incoming>| async move {
            Ok::<_, Infallible>(redirect(&request, https_port))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "redirect connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some redirect connections were still open after the grace period");
    }
    Ok(())
}

/// The answer to one plain-HTTP request: a 308 to HTTPS, or a JSON 400.
fn redirect(request: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let location = match https_location(request.headers(), request.uri(), https_port) {
        Ok(location) => location,
        Err(error) => return error.into_response(),
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return LbError::BadRequest("the redirect target is not a valid header".to_owned())
            .into_response();
    };
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `https://<Host without its port>[:https_port]<path?query>`.
pub(crate) fn https_location(
    headers: &HeaderMap,
    uri: &Uri,
    https_port: u16,
) -> Result<String, LbError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host,
        (None, _) => {
            return Err(LbError::BadRequest(
                "the request has no Host header, so there is no address to redirect to".to_owned(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(LbError::BadRequest(
                "the request has more than one Host header".to_owned(),
            ));
        }
    };
    let authority = host
        .to_str()
        .ok()
        .filter(|host| !host.contains('@'))
        .and_then(|host| host.parse::<Authority>().ok())
        .filter(|authority| !authority.host().is_empty())
        .ok_or_else(|| LbError::BadRequest("the Host header is not a host name".to_owned()))?;
    // `host()` keeps an IPv6 address's brackets: `[::1]`.
    let host = authority.host();
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    // Only the path and query; `OPTIONS *` and the like go to the root.
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    Ok(format!("https://{host}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(hosts: &[&'static str], uri: &str, port: u16) -> Result<String, LbError> {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, HeaderValue::from_static(host));
        }
        https_location(&headers, &uri.parse().expect("uri"), port)
    }

    #[test]
    fn the_host_keeps_its_name_and_takes_the_tls_port() {
        let to = |hosts: &[&'static str], uri, port| location(hosts, uri, port).expect("location");
        assert_eq!(
            to(&["shop.example:8080"], "/cart?x=1", 8443),
            "https://shop.example:8443/cart?x=1"
        );
        assert_eq!(to(&["shop.example"], "/", 443), "https://shop.example/");
        assert_eq!(to(&["[::1]:8080"], "/a", 8443), "https://[::1]:8443/a");
        assert_eq!(
            to(&["127.0.0.1:8080"], "http://evil.example/steal", 8443),
            "https://127.0.0.1:8443/steal",
            "only the path of an absolute request line"
        );
        assert_eq!(to(&["shop.example"], "*", 443), "https://shop.example/");
    }

    #[test]
    fn no_host_two_hosts_or_a_strange_one_is_a_bad_request() {
        for hosts in [
            &[][..],
            &["a.example", "b.example"][..],
            &["evil.example@shop.example"][..],
            &["shop example"][..],
            &[":8080"][..],
        ] {
            assert!(
                matches!(location(hosts, "/", 8443), Err(LbError::BadRequest(_))),
                "{hosts:?} was accepted"
            );
        }
    }
}
