//! Carts in this process's memory, keyed by a random client id cookie.
//!
//! This is where the shop starts, and the root of its first trouble: the
//! map lives inside *one* instance. Another instance has its own map, in
//! which this shopper's id finds nothing. Nothing is shared, nothing
//! survives a restart.
//!
//! The map is bounded ([`DEFAULT_CAPACITY`] carts): when it is full, the
//! least recently used cart is dropped, so a flood of new client ids costs
//! memory up to that bound and no more. (An in-process cache crate such as
//! `moka` does this with less scanning; the scan only happens when full.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::cart::{Cart, CartOp};
use crate::cookies::shop_cookie;
use crate::error::ApiError;
use crate::ids;
use crate::store::{CartReply, CartRequest, CartStore};

/// The cookie that names the shopper to *this* instance.
const CLIENT_COOKIE: &str = "client_id";
/// How many carts one instance keeps before dropping the least recently used.
const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug)]
struct Stored {
    cart: Cart,
    last_used: Instant,
}

/// A process-wide map from client id to cart.
#[derive(Debug)]
pub struct MemoryCarts {
    carts: Mutex<HashMap<String, Stored>>,
    capacity: usize,
}

impl Default for MemoryCarts {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl MemoryCarts {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            carts: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// How many carts this instance holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        // Every change under this lock is one `Cart::apply`, which leaves the
        // cart whole when it refuses; a poisoned lock holds consistent data.
        self.carts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_to(&self, id: &str, op: CartOp) -> Result<Cart, ApiError> {
        let mut carts = self.lock();
        if let Some(stored) = carts.get_mut(id) {
            stored.cart.apply(op)?;
            stored.last_used = Instant::now();
            return Ok(stored.cart.clone());
        }
        let mut cart = Cart::new();
        cart.apply(op)?;
        // Looking at an empty cart stores nothing: only a change does.
        if op.is_write() {
            if carts.len() >= self.capacity {
                let oldest = carts
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    carts.remove(&oldest);
                }
            }
            carts.insert(
                id.to_owned(),
                Stored {
                    cart: cart.clone(),
                    last_used: Instant::now(),
                },
            );
        }
        Ok(cart)
    }
}

impl CartStore for MemoryCarts {
    /// An idempotency key is not needed here: a retry only follows an
    /// answer that never arrived, and an instance that applied a change and
    /// could not answer is an instance whose carts are gone anyway.
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        let (cookies, op) = (request.cookies, request.op);
        // A well-formed id from the cookie is used as it is, even when this
        // instance has never seen it: that is exactly how the shopper "loses"
        // a cart in stage 1 (same id, different memory).
        let known = cookies
            .get(CLIENT_COOKIE)
            .map(|c| c.value())
            .filter(|v| ids::is_well_formed(v));
        let (id, is_new) = match known {
            Some(id) => (id.to_owned(), false),
            None => (
                ids::random_id().map_err(|error| {
                    tracing::error!(%error, "cannot make a client id");
                    ApiError::Internal
                })?,
                true,
            ),
        };
        let cart = self.apply_to(&id, op)?;
        let mut reply = CartReply::new(cart);
        if is_new {
            reply.cookies.push(shop_cookie(CLIENT_COOKIE, id, false));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cart::{KnownSku, Quantity};

    fn add(sku: &str, qty: i64) -> CartOp {
        CartOp::Add(
            KnownSku::new(sku).expect("known SKU"),
            Quantity::new(qty).expect("quantity"),
        )
    }

    #[test]
    fn looking_stores_nothing_changing_stores_the_cart() {
        let store = MemoryCarts::default();
        store.apply_to("a", CartOp::View).expect("view");
        assert_eq!(store.len(), 0);
        store.apply_to("a", add("TEE-RED-M", 1)).expect("add");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_full_store_drops_the_least_recently_used_cart() {
        let store = MemoryCarts::with_capacity(2);
        store.apply_to("a", add("TEE-RED-M", 1)).expect("add");
        store.apply_to("b", add("TEE-RED-M", 1)).expect("add");
        store.apply_to("a", add("TEE-RED-M", 1)).expect("touch a");
        store.apply_to("c", add("TEE-RED-M", 1)).expect("add");
        assert_eq!(store.len(), 2);
        assert_eq!(
            store
                .apply_to("a", CartOp::View)
                .expect("view")
                .qty_of("TEE-RED-M"),
            2
        );
        assert!(store.apply_to("b", CartOp::View).expect("view").is_empty());
    }
}
