//! The cart and its rules, whatever stage keeps it.
//!
//! A cart is an *ordered* list of lines `{sku, qty}`: shoppers expect their
//! cart to list things in the order they added them. The rules are enforced
//! here, once, so no stage can forget one:
//!
//! * a quantity is 1..=99 per line ([`Quantity`]);
//! * a cart has at most [`MAX_LINES`] lines;
//! * a SKU must be in the catalog ([`KnownSku`]);
//! * prices and totals are looked up and computed on the server
//!   ([`PricedCart`]): a client only ever sends SKUs and quantities.
//!
//! A change to a cart is a [`CartOp`], not a new cart. That matters once the
//! cart lives in a shared store: the store can apply an operation
//! atomically, whereas "read the cart, change it, write it back" loses one
//! of two concurrent updates.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Product};

/// The most lines one cart may hold.
pub const MAX_LINES: usize = 200;
/// The most of one SKU one line may hold.
pub const MAX_QTY: u8 = 99;

/// A quantity that is known to be within 1..=99.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Quantity(u8);

impl Quantity {
    pub fn new(qty: i64) -> Result<Self, CartError> {
        match u8::try_from(qty) {
            Ok(q) if (1..=MAX_QTY).contains(&q) => Ok(Self(q)),
            _ => Err(CartError::BadQuantity(qty)),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// A SKU that is known to be in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownSku(&'static Product);

impl KnownSku {
    pub fn new(sku: &str) -> Result<Self, CartError> {
        Catalog::get()
            .find(sku)
            .map(Self)
            .ok_or_else(|| CartError::UnknownSku(sku.to_owned()))
    }

    pub fn as_str(&self) -> &'static str {
        &self.0.sku
    }

    pub fn product(&self) -> &'static Product {
        self.0
    }
}

/// Why a cart change was refused. The cart is left as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("no product has the SKU `{0}`")]
    UnknownSku(String),
    #[error("quantity {0} is out of range: each line holds 1 to 99")]
    BadQuantity(i64),
    #[error("that would make {total} of `{sku}`: each line holds at most 99")]
    LineFull { sku: String, total: u32 },
    #[error("the cart already has {MAX_LINES} lines, the most it may hold")]
    CartFull,
}

/// One line of a stored cart: what the shopper chose, nothing derived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub sku: String,
    pub qty: u8,
}

/// A change to a cart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CartOp {
    /// Only look.
    View,
    /// Add to the line for this SKU (creating it at the end if new).
    Add(KnownSku, Quantity),
    /// Set the line's quantity (creating it at the end if new).
    Set(KnownSku, Quantity),
    /// Remove the line; removing a line that is not there is not an error
    /// (`DELETE` is idempotent).
    Remove(KnownSku),
    /// Empty the cart.
    Clear,
}

impl CartOp {
    /// Whether this operation changes anything.
    pub fn is_write(&self) -> bool {
        !matches!(self, Self::View)
    }
}

/// A shopper's cart: ordered lines, each SKU at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cart {
    lines: Vec<CartLine>,
}

impl Cart {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a cart from stored lines, enforcing the rules (a stored cart
    /// may come from an older version, or from a client). A SKU listed
    /// twice keeps its last quantity. Linear in the number of lines: a
    /// store may do this on every request, for carts of up to 200 lines.
    pub fn from_lines(lines: impl IntoIterator<Item = CartLine>) -> Result<Self, CartError> {
        let mut cart = Self::new();
        let mut seen: HashMap<&'static str, usize> = HashMap::new();
        for line in lines {
            let sku = KnownSku::new(&line.sku)?;
            let qty = Quantity::new(i64::from(line.qty))?;
            match seen.get(sku.as_str()) {
                Some(&index) => cart.lines[index].qty = qty.get(),
                None => {
                    seen.insert(sku.as_str(), cart.lines.len());
                    cart.push(sku, qty)?;
                }
            }
        }
        Ok(cart)
    }

    pub fn lines(&self) -> &[CartLine] {
        &self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The quantity held of `sku` (0 when there is no line).
    pub fn qty_of(&self, sku: &str) -> u8 {
        self.lines
            .iter()
            .find(|l| l.sku == sku)
            .map_or(0, |l| l.qty)
    }

    /// Applies `op`, or leaves the cart untouched and says why not.
    pub fn apply(&mut self, op: CartOp) -> Result<(), CartError> {
        match op {
            CartOp::View => {}
            CartOp::Add(sku, qty) => {
                if let Some(line) = self.line_mut(sku.as_str()) {
                    let total = u32::from(line.qty) + u32::from(qty.get());
                    line.qty = u8::try_from(total)
                        .ok()
                        .filter(|&t| t <= MAX_QTY)
                        .ok_or_else(|| CartError::LineFull {
                            sku: sku.as_str().to_owned(),
                            total,
                        })?;
                } else {
                    self.push(sku, qty)?;
                }
            }
            CartOp::Set(sku, qty) => {
                if let Some(line) = self.line_mut(sku.as_str()) {
                    line.qty = qty.get();
                } else {
                    self.push(sku, qty)?;
                }
            }
            CartOp::Remove(sku) => self.lines.retain(|l| l.sku != sku.as_str()),
            CartOp::Clear => self.lines.clear(),
        }
        Ok(())
    }

    fn line_mut(&mut self, sku: &str) -> Option<&mut CartLine> {
        self.lines.iter_mut().find(|l| l.sku == sku)
    }

    fn push(&mut self, sku: KnownSku, qty: Quantity) -> Result<(), CartError> {
        if self.lines.len() >= MAX_LINES {
            return Err(CartError::CartFull);
        }
        self.lines.push(CartLine {
            sku: sku.as_str().to_owned(),
            qty: qty.get(),
        });
        Ok(())
    }

    /// Prices the cart from the catalog. Lines whose SKU has left the
    /// catalog are dropped (and reported), never priced from stale data.
    pub fn priced(&self) -> PricedCart {
        let catalog = Catalog::get();
        let lines: Vec<PricedLine> = self
            .lines
            .iter()
            .filter_map(|line| {
                let product = catalog.find(&line.sku)?;
                let unit = u64::from(product.price_cents);
                Some(PricedLine {
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    qty: line.qty,
                    unit_price_cents: unit,
                    line_total_cents: unit * u64::from(line.qty),
                })
            })
            .collect();
        let total_cents = lines.iter().map(|l| l.line_total_cents).sum();
        PricedCart { lines, total_cents }
    }
}

/// A cart line as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: String,
    pub name: String,
    pub qty: u8,
    pub unit_price_cents: u64,
    pub line_total_cents: u64,
}

/// A cart with its prices and total, computed on the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedCart {
    pub lines: Vec<PricedLine>,
    pub total_cents: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> KnownSku {
        KnownSku::new(s).expect("known SKU")
    }

    fn qty(q: i64) -> Quantity {
        Quantity::new(q).expect("valid quantity")
    }

    #[test]
    fn quantity_is_one_to_ninety_nine() {
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(99).is_ok());
        for bad in [0, 100, -1, 256, i64::MAX] {
            assert_eq!(Quantity::new(bad), Err(CartError::BadQuantity(bad)));
        }
    }

    #[test]
    fn adding_merges_into_the_existing_line_and_keeps_order() {
        let mut cart = Cart::new();
        cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(2)))
            .expect("add");
        cart.apply(CartOp::Add(sku("SOCK-GREY-L"), qty(1)))
            .expect("add");
        cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(3)))
            .expect("add");
        let lines: Vec<_> = cart
            .lines()
            .iter()
            .map(|l| (l.sku.as_str(), l.qty))
            .collect();
        assert_eq!(lines, [("TEE-RED-M", 5), ("SOCK-GREY-L", 1)]);
    }

    #[test]
    fn a_line_never_exceeds_ninety_nine_and_a_refused_change_leaves_the_cart() {
        let mut cart = Cart::new();
        cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(90)))
            .expect("add");
        let before = cart.clone();
        assert!(matches!(
            cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(10))),
            Err(CartError::LineFull { total: 100, .. })
        ));
        assert_eq!(cart, before);
    }

    #[test]
    fn the_cart_holds_at_most_max_lines() {
        let mut cart = Cart::new();
        let skus = Catalog::get().products().iter().take(MAX_LINES + 1);
        let mut results = skus.map(|p| cart.apply(CartOp::Add(sku(&p.sku), qty(1))));
        assert!(results.by_ref().take(MAX_LINES).all(|r| r.is_ok()));
        assert_eq!(results.next(), Some(Err(CartError::CartFull)));
        assert_eq!(cart.lines().len(), MAX_LINES);
    }

    #[test]
    fn totals_are_computed_from_catalog_prices() {
        let mut cart = Cart::new();
        cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(2)))
            .expect("add");
        cart.apply(CartOp::Set(sku("JKT-NAVY-XL"), qty(1)))
            .expect("set");
        let priced = cart.priced();
        assert_eq!(priced.lines[0].line_total_cents, 3_800);
        assert_eq!(priced.total_cents, 3_800 + 15_100);
    }

    #[test]
    fn stored_lines_are_checked_and_duplicates_keep_the_last_quantity() {
        let line = |sku: &str, qty| CartLine {
            sku: sku.to_owned(),
            qty,
        };
        let cart = Cart::from_lines([
            line("TEE-RED-M", 2),
            line("SOCK-GREY-L", 1),
            line("TEE-RED-M", 5),
        ])
        .expect("valid lines");
        assert_eq!(cart.lines(), [line("TEE-RED-M", 5), line("SOCK-GREY-L", 1)]);
        assert_eq!(
            Cart::from_lines([line("NOPE", 1)]),
            Err(CartError::UnknownSku("NOPE".into()))
        );
        assert_eq!(
            Cart::from_lines([line("TEE-RED-M", 0)]),
            Err(CartError::BadQuantity(0))
        );
    }

    #[test]
    fn remove_and_clear() {
        let mut cart = Cart::new();
        cart.apply(CartOp::Add(sku("TEE-RED-M"), qty(2)))
            .expect("add");
        cart.apply(CartOp::Add(sku("TEE-RED-L"), qty(2)))
            .expect("add");
        cart.apply(CartOp::Remove(sku("TEE-RED-M")))
            .expect("remove");
        cart.apply(CartOp::Remove(sku("TEE-RED-M")))
            .expect("removing twice is fine");
        assert_eq!(cart.qty_of("TEE-RED-L"), 2);
        cart.apply(CartOp::Clear).expect("clear");
        assert!(cart.is_empty());
    }
}
