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
    /// Carts intact as the run went on: `[seconds, carts]`, every half
    /// second (what `--chart` draws).
    pub timeline: Vec<(f64, usize)>,
    /// Under an auto scaling group: instance processes running as the run
    /// went on, `[seconds, instances]`, every half second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<(f64, usize)>,
    /// Stage 7: account renames the shop acknowledged ([`crate::accounts`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_writes: Option<u64>,
    /// Stage 7: acknowledged renames the database no longer holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_writes_lost: Option<u64>,
}

/// What a run found: a carts report per stage 1 to 5, a live report per
/// stage-6 fan-out mode.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    pub carts: Vec<Report>,
    pub live: Vec<LiveReport>,
}

/// One stage-6 fan-out mode's run ([`crate::live`]).
#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    pub stage: String,
    pub fanout: String,
    pub watchers: usize,
    /// Updates published on the watched topics (prices, room messages,
    /// and arrivals and departures in the rooms), by their numbers.
    pub published: u64,
    /// Deliveries owed: each update, once to each watcher of its topic.
    pub owed_stock: u64,
    pub owed_room: u64,
    pub delivered_stock: u64,
    pub delivered_room: u64,
    pub missed_stock: u64,
    pub missed_room: u64,
    /// From the publisher's request to a watcher's socket.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Sockets opened again after a drop.
    pub reconnects: u64,
    pub chaos: Vec<String>,
}

impl LiveReport {
    /// Missed, as a share of owed, in percent.
    pub fn missed_percent(missed: u64, owed: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let share = missed as f64 / owed.max(1) as f64;
        share * 100.0
    }
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

/// `start→peak→end`, e.g. `1→4→1`.
fn instances_cell(instances: &[(f64, usize)]) -> String {
    match (instances.first(), instances.last()) {
        (Some(first), Some(last)) => {
            let peak = instances.iter().map(|p| p.1).max().unwrap_or(0);
            format!("{}→{peak}→{}", first.1, last.1)
        }
        _ => "—".to_owned(),
    }
}

/// Prints what a run found: the carts table, then the live table.
pub fn render(reports: &Reports, format: Format) -> String {
    if format == Format::Json {
        // One array: a row per stage (and per stage-6 mode).
        let rows: Vec<serde_json::Value> = reports
            .carts
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .chain(
                reports
                    .live
                    .iter()
                    .filter_map(|r| serde_json::to_value(r).ok()),
            )
            .collect();
        return serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".to_owned());
    }
    let mut out = String::new();
    if !reports.carts.is_empty() {
        // Under an auto scaling group, one more column: how many
        // instances, at the start, at the peak, at the end.
        let scaled = reports.carts.iter().any(|r| !r.instances.is_empty());
        let mut headers = HEADERS.to_vec();
        if scaled {
            headers.push("instances");
        }
        let rows = reports
            .carts
            .iter()
            .map(|r| {
                let mut row = cells(r).to_vec();
                if scaled {
                    row.push(instances_cell(&r.instances));
                }
                row
            })
            .collect();
        out.push_str(&table(&headers, rows, format));
        for report in &reports.carts {
            if let (Some(writes), Some(lost)) = (report.account_writes, report.account_writes_lost)
            {
                let _ = writeln!(
                    out,
                    "\n{}: {writes} account writes acknowledged, {lost} of them lost",
                    report.title
                );
            }
        }
        if let Some(first) = reports
            .carts
            .first()
            .filter(|r| !r.chaos.is_empty() && format == Format::Table)
        {
            let _ = writeln!(out, "\nchaos ({}): {}", first.stage, first.chaos.join("; "));
        }
    }
    if !reports.live.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&table(
            &LIVE_HEADERS,
            reports.live.iter().map(live_cells).collect(),
            format,
        ));
        if let Some(first) = reports
            .live
            .first()
            .filter(|r| !r.chaos.is_empty() && format == Format::Table)
        {
            let _ = writeln!(out, "\nchaos (stage6): {}", first.chaos.join("; "));
        }
    }
    out
}

const LIVE_HEADERS: [&str; 9] = [
    "stage 6 --fanout",
    "watchers",
    "published",
    "stock owed",
    "stock missed",
    "room owed",
    "room missed",
    "p50 ms",
    "p99 ms",
];

fn live_cells(report: &LiveReport) -> Vec<String> {
    let missed = |missed: u64, owed: u64| {
        format!(
            "{missed} ({:.0} %)",
            LiveReport::missed_percent(missed, owed)
        )
    };
    vec![
        report.fanout.clone(),
        report.watchers.to_string(),
        report.published.to_string(),
        report.owed_stock.to_string(),
        missed(report.missed_stock, report.owed_stock),
        report.owed_room.to_string(),
        missed(report.missed_room, report.owed_room),
        format!("{:.1}", report.p50_ms),
        format!("{:.1}", report.p99_ms),
    ]
}

/// A Markdown table, or aligned columns (first column left, the rest right).
fn table(headers: &[&str], rows: Vec<Vec<String>>, format: Format) -> String {
    if format == Format::Markdown {
        let mut out = format!("| {} |\n|", headers.join(" | "));
        out.push_str(" --- |");
        for _ in 1..headers.len() {
            out.push_str(" ---: |");
        }
        out.push('\n');
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
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
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
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
            timeline: vec![(0.0, 2), (1.0, 1)],
            instances: Vec::new(),
            account_writes: None,
            account_writes_lost: None,
        };
        let reports = Reports {
            carts: vec![report.clone()],
            live: Vec::new(),
        };
        let scaled = Reports {
            carts: vec![Report {
                instances: vec![(0.0, 1), (5.0, 4), (9.0, 3), (10.0, 1)],
                ..report
            }],
            live: Vec::new(),
        };
        let table = render(&scaled, Format::Markdown);
        assert!(
            table.contains("| instances |") && table.contains("| 1→4→1 |"),
            "{table}"
        );
        let table = render(&reports, Format::Markdown);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("| --- |"));
        assert!(lines[2].starts_with("| Stage 1 | 2 | 10 |"));

        // Stage 7's account writers add a line under the table.
        let mut stage7 = reports.carts[0].clone();
        stage7.title = "Stage 7".into();
        stage7.account_writes = Some(100);
        stage7.account_writes_lost = Some(3);
        let table = render(
            &Reports {
                carts: vec![stage7],
                live: Vec::new(),
            },
            Format::Markdown,
        );
        assert!(
            table.contains("Stage 7: 100 account writes acknowledged, 3 of them lost"),
            "{table}"
        );
    }
}
