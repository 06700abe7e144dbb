//! What a run found, and the three ways to print it.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// One stage's run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub stage: String,
    pub title: String,
    pub shoppers: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests that got a 5xx, or no answer, on every try.
    pub server_errors: u64,
    /// Tries sent again (same idempotency key) after a 5xx or no answer.
    pub retries: u64,
    /// Changes that failed every try: they may or may not have happened
    /// (not counted as lost carts).
    pub unconfirmed: u64,
    /// Shoppers whose cart was always what it should be.
    pub carts_intact: usize,
    /// Shoppers who, at least once, got back a cart that was not theirs.
    pub carts_lost: usize,
    /// What the chaos schedule did, in order.
    pub chaos: Vec<String>,
}

/// The `q`-quantile of `latencies` (sorted here), in milliseconds.
pub fn percentile_ms(latencies: &mut [Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let last = latencies.len() - 1;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((last as f64) * q).round() as usize;
    latencies[index.min(last)].as_secs_f64() * 1000.0
}

/// How to print the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for the terminal.
    Table,
    /// A Markdown table, for the README.
    Markdown,
    /// JSON, for scripts.
    Json,
}

const HEADERS: [&str; 11] = [
    "stage",
    "shoppers",
    "requests",
    "req/s",
    "p50 ms",
    "p99 ms",
    "retried",
    "5xx",
    "unconfirmed",
    "carts intact",
    "carts lost",
];

fn cells(report: &Report) -> [String; 11] {
    [
        report.title.clone(),
        report.shoppers.to_string(),
        report.requests.to_string(),
        format!("{:.0}", report.requests_per_s),
        format!("{:.1}", report.p50_ms),
        format!("{:.1}", report.p99_ms),
        report.retries.to_string(),
        report.server_errors.to_string(),
        report.unconfirmed.to_string(),
        report.carts_intact.to_string(),
        report.carts_lost.to_string(),
    ]
}

pub fn render(reports: &[Report], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(reports).unwrap_or_else(|_| "[]".to_owned()),
        Format::Markdown => {
            let mut out = format!("| {} |\n|", HEADERS.join(" | "));
            out.push_str(" --- |");
            for _ in 1..HEADERS.len() {
                out.push_str(" ---: |");
            }
            out.push('\n');
            for report in reports {
                let _ = writeln!(out, "| {} |", cells(report).join(" | "));
            }
            out
        }
        Format::Table => {
            let rows: Vec<[String; 11]> = reports.iter().map(cells).collect();
            let widths: Vec<usize> = (0..HEADERS.len())
                .map(|i| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain([HEADERS[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i == 0 {
                            format!("{c:<w$}", w = widths[i])
                        } else {
                            format!("{c:>w$}", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            let mut out = line(HEADERS.iter().map(|h| (*h).to_owned()).collect());
            out.push('\n');
            for row in rows {
                out.push_str(&line(row.to_vec()));
                out.push('\n');
            }
            if let Some(first) = reports.first().filter(|r| !r.chaos.is_empty()) {
                let _ = writeln!(out, "\nchaos ({}): {}", first.stage, first.chaos.join("; "));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let mut latencies: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert!((percentile_ms(&mut latencies, 0.5) - 51.0).abs() < 1.0);
        assert!((percentile_ms(&mut latencies, 0.99) - 99.0).abs() < 1.01);
    }

    #[test]
    fn markdown_has_a_header_an_alignment_row_and_a_row_per_stage() {
        let report = Report {
            stage: "stage1".into(),
            title: "Stage 1".into(),
            shoppers: 2,
            duration_s: 1.0,
            requests: 10,
            requests_per_s: 10.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            server_errors: 0,
            retries: 0,
            unconfirmed: 0,
            carts_intact: 1,
            carts_lost: 1,
            chaos: vec![],
        };
        let table = render(&[report], Format::Markdown);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("| --- |"));
        assert!(lines[2].starts_with("| Stage 1 | 2 | 10 |"));
    }
}
