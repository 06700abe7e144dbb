//! `crowd --ramp`: the crowd grows and shrinks, and an auto scaling group
//! follows it. A scale-in is a kill with good manners: stage 2 loses the
//! carts pinned to the instances it stops; stages 3 and 4 lose none.

mod support;

use serde_json::Value;
use support::run_crowd;

/// Runs `crowd --stage N --ramp` briefly and returns its one JSON report.
fn ramp(stage: &str) -> Value {
    run_crowd(&[
        "--stage",
        stage,
        "--ramp",
        "--shoppers",
        "30",
        "--duration",
        "16s",
        "--autoscale",
        "1..3",
        "--target-load",
        "60",
    ])
}

/// The instance counts over the run: (first, most, last).
fn instances(report: &Value) -> (u64, u64, u64) {
    let counts: Vec<u64> = report["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("an instances timeline in {report}"))
        .iter()
        .filter_map(|point| point[1].as_u64())
        .collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    (counts[0], most, counts[counts.len() - 1])
}

fn carts_lost(report: &Value) -> u64 {
    report["carts_lost"].as_u64().expect("carts_lost")
}

/// Scaled out as the crowd grew, and in as it shrank.
fn assert_scaled_out_and_in(report: &Value) {
    let (first, most, last) = instances(report);
    assert!(
        first == 1 && most > 1 && last < most,
        "out and back in: {first}→{most}→{last}; {}",
        report["chaos"]
    );
    let chaos = report["chaos"].to_string();
    assert!(
        chaos.contains("scale-out") && chaos.contains("scale-in"),
        "{chaos}"
    );
}

#[test]
fn scale_in_loses_pinned_carts_in_stage_2() {
    let report = ramp("2");
    assert_scaled_out_and_in(&report);
    assert!(
        carts_lost(&report) > 0,
        "the shoppers pinned to a stopped instance lost their carts: {report}"
    );
}

#[test]
fn stateless_stages_lose_no_cart_to_autoscaling() {
    for stage in ["3", "4"] {
        let report = ramp(stage);
        assert_scaled_out_and_in(&report);
        assert_eq!(carts_lost(&report), 0, "stage {stage}: {report}");
    }
}
