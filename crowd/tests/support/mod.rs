//! Running the real `crowd` binary from a test.

use std::process::Command;

use serde_json::Value;

const CROWD: &str = env!("CARGO_BIN_EXE_crowd");

/// Runs crowd with `args` (and a fixed seed, JSON out) and returns its
/// first report.
pub fn run_crowd(args: &[&str]) -> Value {
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
    let reports: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    reports[0].clone()
}
