//! The MyClothes catalog: garments × colours × sizes.
//!
//! Every product is a *variant* with its own SKU (`TEE-RED-M`), the way real
//! shops and their warehouses count stock. Nine garments in six colours and
//! five sizes make 270 SKUs: enough that a keen shopper's cart can outgrow a
//! 4 KB cookie.
//!
//! Prices are integer cents. Floating point cannot represent 0.10 exactly,
//! and money that drifts by a cent per line is a bug report waiting to
//! happen; every shop and payment API (Stripe, Adyen) counts in minor units.
//!
//! The catalog is static data built once on first use; a stage that keeps
//! its catalog in a database seeds it from here.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Serialize;

/// One sellable variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    /// The garment family, e.g. `TEE`; handy for filtering.
    pub garment: String,
    pub colour: String,
    pub size: String,
    pub price_cents: u32,
}

/// `(code, name, base price in cents)`.
const GARMENTS: [(&str, &str, u32); 9] = [
    ("TEE", "Organic cotton T-shirt", 1_900),
    ("POLO", "Piqué polo", 3_400),
    ("OXF", "Oxford shirt", 4_900),
    ("HOOD", "Loopback hoodie", 5_900),
    ("KNIT", "Merino crew knit", 7_900),
    ("CHINO", "Slim chinos", 5_400),
    ("JEAN", "Selvedge jeans", 8_900),
    ("JKT", "Waxed field jacket", 14_900),
    ("SOCK", "Rib socks (2 pairs)", 1_200),
];

/// `(code, display name)`.
const COLOURS: [(&str, &str); 6] = [
    ("BLACK", "Black"),
    ("WHITE", "White"),
    ("NAVY", "Navy"),
    ("RED", "Red"),
    ("GREEN", "Olive"),
    ("GREY", "Grey"),
];

/// Sizes and the surcharge for the extra cloth, in cents.
const SIZES: [(&str, u32); 5] = [("XS", 0), ("S", 0), ("M", 0), ("L", 0), ("XL", 200)];

/// The whole catalog, in a stable order (garment, colour, size).
pub struct Catalog {
    products: Vec<Product>,
    by_sku: HashMap<String, usize>,
    /// The products as JSON, serialised once: they never change while the
    /// process runs.
    json: Vec<u8>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("products", &self.products.len())
            .finish()
    }
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::build);

impl Catalog {
    /// The catalog every stage sells from.
    pub fn get() -> &'static Catalog {
        &CATALOG
    }

    fn build() -> Self {
        let mut products = Vec::with_capacity(GARMENTS.len() * COLOURS.len() * SIZES.len());
        for (garment, garment_name, base) in GARMENTS {
            for (colour, colour_name) in COLOURS {
                for (size, surcharge) in SIZES {
                    products.push(Product {
                        sku: format!("{garment}-{colour}-{size}"),
                        name: format!("{garment_name}, {colour_name}, {size}"),
                        garment: garment.to_owned(),
                        colour: colour_name.to_owned(),
                        size: size.to_owned(),
                        price_cents: base + surcharge,
                    });
                }
            }
        }
        let by_sku = products
            .iter()
            .enumerate()
            .map(|(index, p)| (p.sku.clone(), index))
            .collect();
        // Plain strings and numbers always serialise.
        let json = serde_json::to_vec(&products).unwrap_or_else(|_| b"[]".to_vec());
        Self {
            products,
            by_sku,
            json,
        }
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// Every product, as the JSON `GET /api/products` answers.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Looks a SKU up exactly (SKUs are upper case; `tee-red-m` is unknown).
    pub fn find(&self, sku: &str) -> Option<&Product> {
        self.by_sku.get(sku).map(|&index| &self.products[index])
    }

    /// Where a SKU stands in the catalog's order (for listing lines from an
    /// unordered store in a stable order).
    pub fn position(&self, sku: &str) -> Option<usize> {
        self.by_sku.get(sku).copied()
    }

    /// The garment families with their display names, for the shop page's filter.
    pub(crate) fn garments(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        GARMENTS.iter().map(|(code, name, _)| (*code, *name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_hundreds_of_unique_skus_with_positive_prices() {
        let catalog = Catalog::get();
        assert!(
            catalog.products().len() >= 200,
            "{} SKUs",
            catalog.products().len()
        );
        assert_eq!(
            catalog.by_sku.len(),
            catalog.products().len(),
            "SKUs are unique"
        );
        assert!(catalog.products().iter().all(|p| p.price_cents > 0));
    }

    #[test]
    fn skus_read_garment_colour_size() {
        let tee = Catalog::get().find("TEE-RED-M").expect("TEE-RED-M exists");
        assert_eq!((tee.colour.as_str(), tee.size.as_str()), ("Red", "M"));
        assert_eq!(tee.price_cents, 1_900);
        assert_eq!(
            Catalog::get().find("JKT-NAVY-XL").map(|p| p.price_cents),
            Some(15_100)
        );
        assert!(Catalog::get().find("tee-red-m").is_none());
    }
}
