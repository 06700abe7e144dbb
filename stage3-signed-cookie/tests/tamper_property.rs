//! Every single-character change to a valid cart cookie is rejected.

use proptest::prelude::*;
use shop::Catalog;
use shop::cart::{Cart, CartOp, KnownSku, Quantity};
use stage3::keys::{Key, Keys};
use stage3::token::Codec;

/// Characters a cookie value of this format could hold.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

fn cart_of(picks: &[(usize, u8)]) -> Cart {
    let products = Catalog::get().products();
    let mut cart = Cart::new();
    for &(index, qty) in picks {
        let sku = KnownSku::new(&products[index % products.len()].sku).expect("catalog SKU");
        let _ = cart.apply(CartOp::Set(
            sku,
            Quantity::new(i64::from(qty)).expect("1..=99"),
        ));
    }
    cart
}

proptest! {
    #[test]
    fn every_single_byte_change_of_a_valid_cookie_is_rejected(
        picks in prop::collection::vec((0usize..10_000, 1u8..=99), 0..20),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(ALPHABET),
    ) {
        let codec = Codec::new(Keys::new(Key::new(vec![0x5a; 32]).expect("key"), vec![]), 3_600);
        let token = codec.sign("cart", &cart_of(&picks), 1_000);
        prop_assert!(codec.verify("cart", &token, 1_001).is_ok());

        let mut bytes = token.into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).expect("ascii");
        prop_assert!(codec.verify("cart", &changed, 1_001).is_err(), "accepted: {}", changed);
    }
}
