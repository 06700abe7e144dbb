//! # Stage 3 · Signed cookie
//!
//! **The lesson:** the cart leaves the server. It travels in the shopper's
//! own `cart` cookie, signed with HMAC-SHA256, so any instance can serve any
//! request and an instance dying loses nothing. But the cookie must be
//! verified on every request, it can be tampered with (and the signature
//! catches that), it rides along with every request, it must fit in 4096
//! bytes, an old copy can be replayed, and two concurrent changes race:
//! the last response to arrive wins.
//!
//! **What changed since stage 2:** the cart store ([`store::CookieCarts`]
//! instead of `MemoryCarts`), a cookie meter on the page ([`page`]), and
//! the balancer is plain round-robin again: stickiness is no longer needed.
//! One piece of state is still shared by the instances: the signing secret
//! (`SHOP_COOKIE_SECRET`). `stage3 up` makes one and hands it to every
//! instance it starts.
//!
//! **Run it:** `cargo run -p stage3`, open <http://127.0.0.1:8080> and watch
//! the cookie meter under the cart grow; or `cargo run -p stage3 -- demo`.
//!
//! ```text
//! curl -s -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"sku":"TEE-RED-M","qty":2}' http://127.0.0.1:8080/api/cart/items
//! grep cart jar        # the cart itself, base64 JSON, plus its signature
//! ```
//!
//! The modules: [`keys`] (secrets and rotation), [`token`] (the signed
//! format, by hand), [`store`] (the cart store that uses them, and its one
//! error), [`page`] (the cookie meter).

mod demo;
pub mod keys;
mod page;
pub mod store;
pub mod token;

use std::time::Duration;

use serde::Serialize;
use shop::{BoxError, Scope, Services, Stage, StageInfo, Widget};

use crate::keys::{Key, Keys, OLD_SECRETS_ENV, SECRET_ENV, Secret};
use crate::store::CookieCarts;
use crate::token::Codec;

/// Stage 3: carts in signed cookies, behind round-robin.
#[derive(Debug)]
pub struct Stage3;

/// Stage 3's name and lesson, as the banner and the page show them.
pub static INFO: StageInfo = StageInfo {
    package: "stage3",
    title: "Stage 3 · Signed cookie",
    lesson: "Your cart travels in a signed cookie: any instance serves you, tampering is caught, and the cart must fit in 4 KB.",
    try_this: &[
        "open {url}, add items and watch the cookie meter under the cart; round-robin moves you and nothing is lost",
        "fill the cart (about 150 lines) until the shop refuses with 413 cart_too_large_for_cookie",
        "curl -s -c jar -b jar {url}/api/cart ; edit one character of the cart cookie in jar ; curl -si -b jar {url}/api/cart | grep -i x-cart-cookie",
        "cargo run -p stage3 -- demo   (tampering, the 4 KB wall, replay and the last-writer-wins race, narrated)",
    ],
    policy: lb::Policy::RoundRobin,
    sticky: false,
};

/// The shortest `--cart-ttl` accepted.
pub const MIN_CART_TTL: Duration = Duration::from_secs(60);

/// Stage 3's flags. Each has an environment fallback, which is also how
/// `up` hands them to its instances.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct CookieArgs {
    /// The cart cookie's name.
    #[arg(long, env = "SHOP_CART_COOKIE", default_value = "cart")]
    pub cart_cookie: String,
    /// How long a cart cookie stays valid after its last change (enforced by
    /// the server through `exp` and the cookie's age, not only by the
    /// browser's `Max-Age`); at least a minute.
    #[arg(long, env = "SHOP_CART_TTL", default_value = "7days", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "shop::flags::duration")]
    pub cart_ttl: Duration,
    /// Mark the cookie `Secure` (only sent over HTTPS).
    #[arg(long, env = "SHOP_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// The secret that signs carts: at least 32 bytes, hex or base64. Every
    /// instance needs the same one; `up` and `demo` make one when it is
    /// unset. Prefer the variable: a flag shows in `ps`.
    #[arg(long, env = SECRET_ENV, hide_env_values = true)]
    pub cookie_secret: Option<Secret>,
    /// Older secrets that still verify, comma-separated (key rotation).
    #[arg(long, env = OLD_SECRETS_ENV, hide_env_values = true)]
    pub cookie_old_secrets: Option<Secret>,
}

impl Stage for Stage3 {
    const INFO: &'static StageInfo = &INFO;
    type Args = CookieArgs;
    type Carts = CookieCarts;
    type State = ();

    /// The key is the one piece of state the instances still share: with
    /// different keys, each would reject the others' cookies. So `up` and
    /// `demo` make one for the whole fleet when none was given; an instance
    /// started on its own must be given one (it would share it with nobody).
    async fn services(args: &mut CookieArgs, scope: Scope) -> Result<Services, BoxError> {
        let mut services = Services::default();
        if scope == Scope::Fleet && args.cookie_secret.is_none() {
            args.cookie_secret = Some(Secret::from(Key::random()?.to_hex()));
            services.describe(format!(
                "Cookie key: made at random for this run (set {SECRET_ENV} to keep carts valid across runs)"
            ));
        }
        Ok(services)
    }

    async fn start(args: &CookieArgs) -> Result<(CookieCarts, ()), BoxError> {
        // A lifetime shorter than a page load would expire every cart as it
        // is made (`--cart-ttl 0s` did): refuse it rather than empty carts.
        if args.cart_ttl < MIN_CART_TTL {
            return Err(format!(
                "--cart-ttl {} is too short: a cart must outlive a page load (at least {} s)",
                humantime::format_duration(args.cart_ttl),
                MIN_CART_TTL.as_secs()
            )
            .into());
        }
        // No secret, or a short one: refuse to start rather than sign with
        // something guessable.
        let keys = Keys::from_secrets(
            args.cookie_secret.as_ref(),
            args.cookie_old_secrets.as_ref(),
        )?;
        tracing::info!(key_id = keys.current().id(), "signing cart cookies");
        let carts = CookieCarts::new(
            Codec::new(keys, args.cart_ttl.as_secs()),
            args.cart_cookie.clone(),
            args.cart_ttl,
            args.secure_cookies,
        );
        Ok((carts, ()))
    }

    const WIDGETS: &'static [Widget] = &[page::METER];
    const LOG_HEADERS: &'static [&'static str] = &["x-cart-cookie"];

    async fn demo(
        args: CookieArgs,
        exe: std::path::PathBuf,
        _services: Services,
    ) -> Result<(), BoxError> {
        demo::run(args, exe).await
    }
}
