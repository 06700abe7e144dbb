//! One virtual shopper: a cookie jar, a seeded list of choices, and its own
//! idea of what its cart must hold.
//!
//! Each step is one cart request. The shopper applies the same operation to
//! its own model (`shop::Cart`, the very rules the shop uses) and compares
//! the cart the shop answers with the model: a difference after a
//! successful answer means the shop lost (part of) the cart.
//!
//! Like a careful client, it names every change with an `Idempotency-Key`
//! and, when an answer does not come (a 5xx, a cut connection), sends the
//! same request again, same key, a few times with growing pauses: a store
//! that remembers keys applies the change once however often it arrives.
//! Only if every try fails is the answer counted as a 5xx, and, for a
//! change, as *unconfirmed*: it may or may not have happened, so the next
//! successful answer is taken as the truth without being counted as a loss.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shop::cart::{Cart, CartOp, KnownSku, Quantity};
use shop::catalog::Catalog;
use shop::shopper::{CartSeen, Shopper, ShopperError};

use crate::rng::Rng;

/// Counts shared by every shopper of a run, read by the progress bar.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Requests that failed every try (5xx, or no answer).
    pub server_errors: AtomicU64,
    /// Tries sent again after a 5xx or no answer.
    pub retries: AtomicU64,
    /// Changes that failed every try: they may or may not have happened.
    pub unconfirmed: AtomicU64,
    pub carts_lost: AtomicU64,
}

/// Tries of one request: the first and up to this many again.
const RETRIES: u32 = 4;
/// The pause before the first retry; each further one doubles it.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

impl Tally {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct VirtualShopper {
    shop: Shopper,
    rng: Rng,
    /// The SKUs this shopper likes: a dozen, so carts stay a realistic size.
    skus: Vec<&'static str>,
    expected: Cart,
    /// The last answer was a 5xx or no answer: the cart's state is unknown.
    uncertain: bool,
    /// Whether the shop ever answered with a cart that was not this one's.
    pub lost: bool,
    pub latencies: Vec<Duration>,
    /// Names this shopper's changes: `<seed>-<shopper>-<step>`.
    key_prefix: String,
    steps: u64,
}

impl VirtualShopper {
    pub fn new(url: &str, seed: u64, number: u64) -> Result<Self, ShopperError> {
        let mut rng = Rng::fork(seed, number + 1);
        let products = Catalog::get().products();
        let skus = (0..12)
            .map(|_| products[rng.index(products.len())].sku.as_str())
            .collect();
        Ok(Self {
            shop: Shopper::new(url)?,
            rng,
            skus,
            expected: Cart::new(),
            uncertain: false,
            lost: false,
            latencies: Vec::new(),
            key_prefix: format!("crowd-{seed}-{number}"),
            steps: 0,
        })
    }

    /// How long to "think" before the next step.
    pub fn think_time(&mut self) -> Duration {
        Duration::from_millis(20 + self.rng.below(100))
    }

    /// One request, checked against the model.
    pub async fn step(&mut self, tally: &Tally) {
        let op = self.choose();
        self.steps += 1;
        let key = op
            .is_write()
            .then(|| format!("{}-{}", self.key_prefix, self.steps));
        let started = std::time::Instant::now();
        let answer = self.send(op, key.as_deref(), tally).await;
        self.latencies.push(started.elapsed());
        self.check(op, answer, tally);
    }

    /// A last look at the cart, after the run.
    pub async fn final_check(&mut self, tally: &Tally) {
        let answer = self.send(CartOp::View, None, tally).await;
        self.check(CartOp::View, answer, tally);
    }

    /// Sends `op`, and again (same key) while the answer is a 5xx or none.
    async fn send(
        &self,
        op: CartOp,
        key: Option<&str>,
        tally: &Tally,
    ) -> Result<CartSeen, ShopperError> {
        let mut pause = FIRST_PAUSE;
        let mut tries = 0;
        loop {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let answer = self.shop.apply(op, key).await;
            let failed =
                matches!(&answer, Err(error) if error.status().is_none_or(|s| s.is_server_error()));
            if !failed || tries == RETRIES {
                return answer;
            }
            tries += 1;
            tally.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    fn choose(&mut self) -> CartOp {
        let sku = self.skus[self.rng.index(self.skus.len())];
        let Ok(known) = KnownSku::new(sku) else {
            return CartOp::View;
        };
        let qty = |n: u64| Quantity::new(i64::try_from(n).unwrap_or(1));
        match self.rng.below(100) {
            0..50 => qty(1 + self.rng.below(3)).map_or(CartOp::View, |q| CartOp::Add(known, q)),
            50..65 => qty(1 + self.rng.below(5)).map_or(CartOp::View, |q| CartOp::Set(known, q)),
            65..80 => {
                // Remove a line the shopper has, when it has one.
                let lines = self.expected.lines();
                let pick = if lines.is_empty() {
                    Some(known)
                } else {
                    KnownSku::new(&lines[self.rng.index(lines.len())].sku).ok()
                };
                pick.map_or(CartOp::View, CartOp::Remove)
            }
            _ => CartOp::View,
        }
    }

    fn check(&mut self, op: CartOp, answer: Result<CartSeen, ShopperError>, tally: &Tally) {
        match answer {
            Ok(seen) => {
                let mut model = self.expected.clone();
                let applied = model.apply(op).is_ok();
                let seen_lines = lines_of_seen(&seen);
                let matches = applied && lines_of(&model) == seen_lines;
                if !matches && !self.uncertain && !self.lost {
                    self.lost = true;
                    tally.carts_lost.fetch_add(1, Ordering::Relaxed);
                }
                // From here on, the shop's answer is what the shopper holds.
                self.expected = Cart::from_lines(
                    seen_lines
                        .into_iter()
                        .map(|(sku, qty)| shop::CartLine { sku, qty }),
                )
                .unwrap_or_default();
                self.uncertain = false;
            }
            // A refusal (4xx: a full line, a cookie over 4 KB) changed nothing.
            Err(error) if error.status().is_some_and(|s| s.is_client_error()) => {}
            Err(error) => {
                if error.status().is_none_or(|s| s.is_server_error()) {
                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                    if op.is_write() {
                        tally.unconfirmed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.uncertain = true;
            }
        }
    }
}

fn lines_of(cart: &Cart) -> BTreeMap<String, u8> {
    cart.lines()
        .iter()
        .map(|l| (l.sku.clone(), l.qty))
        .collect()
}

/// Lines in the order-free form stores agree on (stage 4 lists them in
/// catalog order, the others in the order they were added).
fn lines_of_seen(seen: &CartSeen) -> BTreeMap<String, u8> {
    seen.body
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.qty))
        .collect()
}
