//! The real `stage3` binary as `up` runs it: every flag reaches every
//! instance, the secrets through the environment.

#[test]
fn up_flags_reach_every_instance() {
    shop::testing::assert_up_flags_reach_every_instance::<stage3::Stage3>(
        env!("CARGO_BIN_EXE_stage3"),
        &[
            ("--cart-cookie", "basket"),
            ("--cart-ttl", "2h"),
            ("--secure-cookies", ""),
            (
                "--cookie-secret",
                "6d79636c6f746865732d73746167652d332d746573742d7365637265742d3332",
            ),
            (
                "--cookie-old-secrets",
                "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
            ),
        ],
    );
}
