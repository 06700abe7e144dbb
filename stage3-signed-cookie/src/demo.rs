//! `stage3 demo`: the cart in a signed cookie, its strengths and its walls.
//!
//! The shopper here is a plain HTTP client that handles the `cart` cookie
//! by hand, so the story can show the cookie, alter it, replay it and race
//! it, as an attacker or an impatient double-clicker would.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use shop::narrate::Narrator;
use shop::shopper::set_cookie_value;
use shop::topology::{Topology, TopologyConfig};
use shop::{BoxError, Catalog};

use crate::CookieArgs;

/// One request's outcome: who served it, what cart, what cookie came back.
struct Seen {
    status: u16,
    served_by: String,
    summary: String,
    cookie: Option<String>,
    bytes: String,
    verdict: Option<String>,
    message: String,
}

struct Client {
    http: reqwest::Client,
    base: String,
    name: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<Seen, BoxError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", format!("{}={cookie}", self.name));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let served_by = header("x-served-by").unwrap_or_default();
        let bytes = header("x-cart-cookie-bytes").unwrap_or_default();
        let verdict = header("x-cart-cookie");
        let cookie = set_cookie_value(response.headers(), &self.name);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let summary = match body["lines"].as_array() {
            Some(lines) if lines.is_empty() => "empty".to_owned(),
            Some(lines) => lines
                .iter()
                .map(|l| format!("{} × {}", l["qty"], l["sku"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        };
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        Ok(Seen {
            status,
            served_by,
            summary,
            cookie,
            bytes,
            verdict,
            message,
        })
    }

    async fn cart(&self, cookie: Option<&str>) -> Result<Seen, BoxError> {
        self.send(reqwest::Method::GET, "/api/cart", cookie, None)
            .await
    }

    async fn add(&self, cookie: Option<&str>, sku: &str, qty: u8) -> Result<Seen, BoxError> {
        self.send(
            reqwest::Method::POST,
            "/api/cart/items",
            cookie,
            Some(json!({"sku": sku, "qty": qty})),
        )
        .await
    }
}

fn show(say: &Narrator, seen: &Seen) {
    let verdict = seen
        .verdict
        .as_deref()
        .map(|v| format!(" [{v}]"))
        .unwrap_or_default();
    say.note(&format!(
        "served by {}: HTTP {}, cart {}, cookie {} bytes{verdict}",
        seen.served_by, seen.status, seen.summary, seen.bytes
    ));
}

pub async fn run(args: CookieArgs, exe: PathBuf) -> Result<(), BoxError> {
    let mut say = Narrator::new();
    say.title("Stage 3 · Signed cookie: the cart travels with the shopper");
    let mut config = TopologyConfig::for_tests(exe, &crate::INFO);
    config.env = shop::flags::instance_env(&args)?;
    let topology = Topology::start(config).await?;
    say.note(&format!(
        "Started 3 instances behind a round-robin balancer at {}, sharing one signing secret.",
        topology.url()
    ));
    let alice = Client {
        http: reqwest::Client::new(),
        base: topology.url(),
        name: args.cart_cookie.clone(),
    };

    say.step("Alice adds two red T-shirts, then looks at her cart twice.");
    let added = alice.add(None, "TEE-RED-M", 2).await?;
    show(&say, &added);
    let cookie = added.cookie.clone().ok_or("the shop set no cart cookie")?;
    for _ in 0..2 {
        show(&say, &alice.cart(Some(&cookie)).await?);
    }
    say.why("every instance reads the cart from the cookie and checks its HMAC with the shared key: no instance needs to remember anything.");
    let payload = cookie.split('.').nth(2).unwrap_or_default();
    let decoded = URL_SAFE_NO_PAD
        .decode(payload)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    say.note(&format!(
        "the cookie's payload, readable by anyone: {decoded}"
    ));

    say.step("The instance that served her last crashes. She looks again.");
    topology.kill_instance(&added.served_by).await?;
    show(&say, &alice.cart(Some(&cookie)).await?);
    say.why("the cart was never on the instance: nothing is lost when one dies.");

    say.step("Alice edits the cookie: 99 T-shirts instead of 2, same signature.");
    let forged_payload =
        URL_SAFE_NO_PAD.encode(decoded.replace("\"TEE-RED-M\",2", "\"TEE-RED-M\",99"));
    let forged = cookie.replace(payload, &forged_payload);
    show(&say, &alice.cart(Some(&forged)).await?);
    say.why("the HMAC covers the payload; without the key she cannot make a matching one, so the shop throws the cookie away (and logs why, never the value).");

    say.step("Alice keeps adding different items, one line each, until the cookie is full.");
    let mut current = cookie.clone();
    let skus: Vec<&str> = Catalog::get()
        .products()
        .iter()
        .map(|p| p.sku.as_str())
        .filter(|s| *s != "TEE-RED-M")
        .collect();
    for (count, sku) in skus.iter().enumerate() {
        let seen = alice.add(Some(&current), sku, 1).await?;
        if seen.status == 413 {
            say.note(&format!("line {}: HTTP 413: {}", count + 2, seen.message));
            break;
        }
        current = seen.cookie.clone().unwrap_or(current);
        if (count + 2) % 25 == 0 {
            say.note(&format!("{} lines: cookie {} bytes", count + 2, seen.bytes));
        }
    }
    say.why("browsers keep 4096 bytes per cookie, name and attributes included; the shop measures the Set-Cookie header before sending it and refuses the change rather than have the browser drop the cart silently.");

    say.step("Alice replays the cookie from the beginning of her visit.");
    show(&say, &alice.cart(Some(&cookie)).await?);
    say.why("it is still validly signed and not expired: a signature proves who made a value, not that it is the latest one.");

    say.step("Two tabs add at the same moment, both sending the same cookie.");
    let (socks, hoodie) = tokio::join!(
        alice.add(Some(&cookie), "SOCK-GREY-M", 1),
        alice.add(Some(&cookie), "HOOD-NAVY-L", 1)
    );
    let (socks, hoodie) = (socks?, hoodie?);
    show(&say, &socks);
    show(&say, &hoodie);
    say.why("each answer holds only its own change; the browser keeps whichever cookie arrives last, and the other add is lost. Stage 4 applies changes to one shared copy instead.");

    say.lesson("a signed cookie makes instances stateless and catches tampering, but the cart is visible, limited to 4 KB, sent with every request, replayable until it expires, and racy. Stage 4 keeps only an id in the cookie and the cart in Redis.");
    topology.stop().await;
    Ok(())
}
