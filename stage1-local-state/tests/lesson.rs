//! Stage 1's lesson, as tests: a cart in one instance's memory is only there
//! when the shopper is sent back to that instance.
//!
//! Real `stage1` processes behind the real balancer, round-robin.

use shop::shopper::Shopper;
use shop::testing::start_stage;
use shop::topology::Topology;

async fn three_instances_round_robin() -> Topology {
    start_stage(env!("CARGO_BIN_EXE_stage1"), &stage1::INFO).await
}

#[tokio::test]
async fn cart_is_lost_when_round_robin_moves_the_shopper() {
    let topology = three_instances_round_robin().await;
    let shopper = Shopper::new(topology.url()).expect("client");

    let added = shopper.add("TEE-RED-M", 2).await.expect("add");
    assert_eq!(
        added.qty_of("TEE-RED-M"),
        2,
        "the instance that took the add has it"
    );

    let next = shopper.cart().await.expect("cart");
    assert_ne!(
        next.served_by(),
        added.served_by(),
        "round-robin moved the shopper"
    );
    assert!(
        next.is_empty(),
        "{} has no cart for this shopper: {}",
        next.served_by(),
        next.summary()
    );
}

#[tokio::test]
async fn cart_comes_back_when_round_robin_returns_to_its_instance() {
    let topology = three_instances_round_robin().await;
    let shopper = Shopper::new(topology.url()).expect("client");
    let added = shopper.add("HOOD-NAVY-L", 1).await.expect("add");

    // Three instances: the third look after the add is back on the same one.
    let mut views = Vec::new();
    for _ in 0..3 {
        views.push(shopper.cart().await.expect("cart"));
    }
    let (home, away): (Vec<_>, Vec<_>) = views
        .iter()
        .partition(|v| v.served_by() == added.served_by());
    assert_eq!(
        home.len(),
        1,
        "one look in three lands on the instance that has the cart"
    );
    assert_eq!(
        home[0].qty_of("HOOD-NAVY-L"),
        1,
        "and there the cart is whole"
    );
    assert!(away.iter().all(|v| v.is_empty()), "elsewhere it is empty");
}

#[tokio::test]
async fn same_instance_keeps_the_cart() {
    let topology = three_instances_round_robin().await;
    let direct = topology.instances()[0].url.clone();
    let shopper = Shopper::new(direct).expect("client");

    shopper.add("TEE-RED-M", 2).await.expect("add");
    shopper.add("SOCK-BLACK-M", 1).await.expect("add");
    for _ in 0..5 {
        let cart = shopper.cart().await.expect("cart");
        assert_eq!(cart.served_by(), "i1");
        assert_eq!(cart.summary(), "2 × TEE-RED-M, 1 × SOCK-BLACK-M");
    }
}

#[tokio::test]
async fn instances_do_not_share_memory_even_with_the_same_cookie() {
    let topology = three_instances_round_robin().await;
    let shopper = Shopper::new(topology.url()).expect("client");
    // One cookie jar, three instances: each add lands on a different one.
    let mut served_by = Vec::new();
    for _ in 0..3 {
        let cart = shopper.add("TEE-WHITE-S", 1).await.expect("add");
        assert_eq!(
            cart.qty_of("TEE-WHITE-S"),
            1,
            "each instance starts its own cart"
        );
        served_by.push(cart.served_by().to_owned());
    }
    served_by.sort();
    assert_eq!(served_by, ["i1", "i2", "i3"]);
}
