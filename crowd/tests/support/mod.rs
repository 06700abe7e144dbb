//! Running the real `crowd` binary from a test.

use std::process::Command;

use serde_json::Value;

const CROWD: &str = env!("CARGO_BIN_EXE_crowd");

/// Runs crowd with `args` (and a fixed seed, JSON out) and returns its
/// first report.
pub fn run_crowd(args: &[&str]) -> Value {
    run_crowd_reports(args)[0].clone()
}

/// Runs crowd with `args` (and a fixed seed, JSON out) and returns every
/// report: one per stage, per store, per fan-out mode.
#[allow(dead_code)] // Not every test binary that includes this uses it.
pub fn run_crowd_reports(args: &[&str]) -> Vec<Value> {
    let output = Command::new(CROWD)
        .args(args)
        .args(["--seed", "11", "--format", "json", "--quiet"])
        .output()
        .expect("crowd runs");
    assert!(
        output.status.success(),
        "crowd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON reports")
}
