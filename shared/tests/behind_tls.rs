//! An instance behind a balancer that terminates TLS: its cookies become
//! `Secure` when, and only when, a balancer it trusts says the shopper
//! came over HTTPS. Served over real HTTP by the real router; the test
//! client (on 127.0.0.1) plays the balancer, trusted or not.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use shop::store::MemoryCarts;
use shop::{BoxError, Instance, NoArgs, Services, Shop, Stage, StageInfo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

static TEST_STAGE: StageInfo = StageInfo {
    package: "shop-tests",
    title: "Test stage",
    lesson: "A stage that exists for the shared crate's tests.",
    try_this: &[],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// The shared surface with nothing of a stage's own: carts in memory.
struct TestStage;

impl Stage for TestStage {
    const INFO: &'static StageInfo = &TEST_STAGE;
    type Args = NoArgs;
    type Carts = MemoryCarts;
    type State = ();

    async fn start(_args: &NoArgs) -> Result<(MemoryCarts, ()), BoxError> {
        Ok((MemoryCarts::default(), ()))
    }

    async fn demo(_: NoArgs, _: std::path::PathBuf, _: Services) -> Result<(), BoxError> {
        Err("the shared crate's test stage tells no story".into())
    }
}

/// One instance on a free port that trusts `proxies`; stops when the
/// sender is dropped.
async fn instance(proxies: &[IpAddr]) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shop = Arc::new(Shop::<TestStage> {
        instance: Instance::new("i1")
            .expect("an id")
            .with_trusted_proxies(proxies.iter().copied()),
        carts: MemoryCarts::default(),
        state: (),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(shop::http::run(listener, shop, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// The `client_id` cookie a first visit to the cart gets, sent with this
/// `X-Forwarded-Proto` (if any).
async fn first_cookie(url: &str, proto: Option<&str>) -> String {
    let mut request = reqwest::Client::new().get(format!("{url}/api/cart"));
    if let Some(proto) = proto {
        request = request.header("x-forwarded-proto", proto);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("an answer in time")
        .expect("a response");
    response.headers()["set-cookie"]
        .to_str()
        .expect("ASCII")
        .to_owned()
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn a_trusted_balancer_saying_https_makes_cookies_secure() {
    let (url, _stop) = instance(&[LOOPBACK]).await;
    let cookie = first_cookie(&url, Some("https")).await;
    assert!(cookie.starts_with("client_id="), "{cookie}");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // Several proxies: the nearest one's (last) word counts.
    let cookie = first_cookie(&url, Some("http, https")).await;
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn https_from_an_untrusted_peer_is_ignored() {
    let (url, _stop) = instance(&[IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]).await;
    let cookie = first_cookie(&url, Some("https")).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    // And trusting nobody is the default.
    let (url, _stop) = instance(&[]).await;
    let cookie = first_cookie(&url, Some("https")).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn a_trusted_balancer_saying_http_leaves_cookies_alone() {
    let (url, _stop) = instance(&[LOOPBACK]).await;
    for proto in [Some("http"), Some("https, http"), None] {
        let cookie = first_cookie(&url, proto).await;
        assert!(!cookie.contains("Secure"), "{proto:?}: {cookie}");
    }
}
