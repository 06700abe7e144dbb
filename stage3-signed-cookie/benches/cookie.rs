//! Signing and verifying cart cookies: an empty cart, and one near the 4 KB
//! wall. Run with `cargo bench -p stage3` (or `scripts/bench-stage3`, which
//! also compares whole-request throughput with stage 1).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shop::Catalog;
use shop::cart::{Cart, CartOp, KnownSku, Quantity};
use stage3::keys::{Key, Keys};
use stage3::token::Codec;

/// The largest cart whose token still fits in ~3.9 KB.
fn near_the_wall(codec: &Codec) -> Cart {
    let mut cart = Cart::new();
    for product in Catalog::get().products() {
        let mut bigger = cart.clone();
        let op = CartOp::Add(
            KnownSku::new(&product.sku).expect("catalog SKU"),
            Quantity::new(99).expect("quantity"),
        );
        if bigger.apply(op).is_err() || codec.sign("cart", &bigger, 0).len() > 3_900 {
            break;
        }
        cart = bigger;
    }
    cart
}

fn sign_and_verify(c: &mut Criterion) {
    let codec = Codec::new(
        Keys::new(Key::new(vec![42; 32]).expect("key"), vec![]),
        3_600,
    );
    let carts = [("empty", Cart::new()), ("near_4kb", near_the_wall(&codec))];
    for (label, cart) in &carts {
        let token = codec.sign("cart", cart, 1_000);
        c.bench_function(
            &format!(
                "sign/{label} ({} lines, {} bytes)",
                cart.lines().len(),
                token.len()
            ),
            |b| {
                b.iter(|| codec.sign(black_box("cart"), black_box(cart), 1_000));
            },
        );
        c.bench_function(&format!("verify/{label}"), |b| {
            b.iter(|| codec.verify(black_box("cart"), black_box(&token), 1_001));
        });
    }
}

criterion_group!(benches, sign_and_verify);
criterion_main!(benches);
