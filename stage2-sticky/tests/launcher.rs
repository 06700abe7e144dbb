//! The real `stage2` binary: `up` hands its flags on, and `demo` tells the
//! whole story and exits.

#[test]
fn demo_narrates_pinning_the_crash_the_drain_and_the_skew() {
    let story = shop::testing::run_demo(env!("CARGO_BIN_EXE_stage2"), &[]);
    assert!(
        story.contains("cart 2 × TEE-RED-M"),
        "the pinned cart holds: {story}"
    );
    assert!(
        story.contains("crashes (SIGKILL)") && story.contains("cart empty"),
        "then it is lost: {story}"
    );
    assert!(story.contains("drained") && story.contains("i4"), "{story}");
    assert!(story.contains("Lesson:"), "{story}");
}

#[test]
fn up_flags_reach_every_instance() {
    // Stage 2 has no flags of its own (stickiness is the balancer's).
    shop::testing::assert_up_flags_reach_every_instance::<stage2::Stage2>(
        env!("CARGO_BIN_EXE_stage2"),
        &[],
    );
}
