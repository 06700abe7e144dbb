//! `crowd --chart out.svg`: carts intact over time, one line per stage, with
//! the chaos schedule's events marked.
//!
//! The table says how many carts survived; the chart says *when* they were
//! lost: stage 1 at once (round-robin alone), stage 2 at the crashes and the
//! scale-in, stages 3 to 5 never. Written as SVG text by hand: a few lines
//! and labels do not need a plotting crate, and the file opens in any
//! browser and on GitHub.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 374.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 46.0;
/// One colour per stage, told apart also without colour vision (the
/// legend names each line, and the lines are dashed differently).
const COLOURS: [&str; 6] = [
    "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b",
];
const DASHES: [&str; 6] = ["", "6 3", "2 2", "", "8 3 2 3", "4 4"];

/// The chart of `reports` (the carts reports of one run) as an SVG document.
pub fn svg(reports: &[Report]) -> String {
    let duration = reports.iter().map(|r| r.duration_s).fold(1.0_f64, f64::max);
    let shoppers = reports.iter().map(|r| r.shoppers).max().unwrap_or(1).max(1);
    #[allow(clippy::cast_precision_loss)]
    let most = shoppers as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |seconds: f64| LEFT + plot_w * (seconds / duration).clamp(0.0, 1.0);
    let y = |carts: f64| TOP + plot_h * (1.0 - carts / most);

    let scaled = reports.iter().any(|r| !r.instances.is_empty());
    let total_height = HEIGHT + if scaled { INSTANCES_PANEL } else { 0.0 };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_height}" viewBox="0 0 {WIDTH} {total_height}" font-family="sans-serif" font-size="12" role="img" aria-labelledby="chart-title">"#
    );
    let _ = writeln!(
        out,
        r#"<title id="chart-title">Carts intact over time, per stage ({shoppers} shoppers, chaos events marked)</title>"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{total_height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">Carts intact while instances crash, restart and scale</text>"#
    );

    // Axes, with a few round ticks.
    for step in 0..=4 {
        let carts = most * f64::from(step) / 4.0;
        let at = y(carts);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{at:.1}" y2="{at:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{carts:.0}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            at + 4.0
        );
    }
    let ticks = 5;
    for step in 0..=ticks {
        let seconds = duration * f64::from(step) / f64::from(ticks);
        let at = x(seconds);
        let _ = writeln!(
            out,
            r#"<text x="{at:.1}" y="{:.1}" text-anchor="middle">{seconds:.0} s</text>"#,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time into the run</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">carts intact</text>"#,
        TOP + plot_h / 2.0
    );

    // The chaos events, from the first stage's log (every stage runs the
    // same schedule, a few milliseconds apart).
    if let Some(first) = reports.first() {
        for (n, (seconds, what)) in first.chaos.iter().filter_map(|e| event(e)).enumerate() {
            let at = x(seconds);
            let label_y = TOP - 6.0 + if n % 2 == 0 { 0.0 } else { -11.0 };
            let _ = writeln!(
                out,
                r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{:.1}" stroke="#888" stroke-dasharray="3 3"/><text x="{at:.1}" y="{label_y:.1}" text-anchor="middle" font-size="10" fill="#555">{}</text>"##,
                TOP + plot_h,
                escape(&what)
            );
        }
    }

    // One line per stage; the legend names it and its final count.
    for (index, report) in reports.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let dash = DASHES[index % DASHES.len()];
        #[allow(clippy::cast_precision_loss)]
        let points: Vec<String> = report
            .timeline
            .iter()
            .map(|&(seconds, carts)| format!("{:.1},{:.1}", x(seconds), y(carts as f64)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}" points="{}"><title>{}</title></polyline>"#,
            points.join(" "),
            escape(&report.title)
        );
        #[allow(clippy::cast_precision_loss)]
        let legend_y = TOP + 8.0 + index as f64 * 34.0;
        let legend_x = LEFT + plot_w + 16.0;
        let _ = writeln!(
            out,
            r##"<line x1="{legend_x:.1}" x2="{:.1}" y1="{legend_y:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" font-size="10" fill="#555">{} of {} intact</text>"##,
            legend_x + 22.0,
            legend_x + 28.0,
            legend_y + 4.0,
            escape(short_title(&report.title)),
            legend_x + 28.0,
            legend_y + 17.0,
            report.carts_intact,
            report.shoppers
        );
    }
    if scaled {
        instances_panel(&mut out, reports, &x);
    }
    out.push_str("</svg>\n");
    out
}

/// The height added below the chart for the instance counts.
const INSTANCES_PANEL: f64 = 150.0;

/// Under an auto scaling group: instances running over time, one step
/// line per stage in the stage's colour, below the carts.
fn instances_panel(out: &mut String, reports: &[Report], x: &impl Fn(f64) -> f64) {
    let top = HEIGHT + 14.0;
    let height = INSTANCES_PANEL - 44.0;
    let most = reports
        .iter()
        .flat_map(|r| r.instances.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1);
    #[allow(clippy::cast_precision_loss)]
    let y = |count: usize| top + height * (1.0 - count as f64 / most as f64);
    let plot_w = WIDTH - LEFT - RIGHT;
    for count in 0..=most {
        let at = y(count);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{at:.1}" y2="{at:.1}" stroke="#f0f0f0"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{count}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            at + 3.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" font-size="11">instances</text>"#,
        top + height / 2.0
    );
    for (index, report) in reports.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let dash = DASHES[index % DASHES.len()];
        // A step line: the count holds until the next sample.
        let mut points = Vec::new();
        let mut previous: Option<usize> = None;
        for &(seconds, count) in &report.instances {
            if let Some(before) = previous {
                points.push(format!("{:.1},{:.1}", x(seconds), y(before)));
            }
            points.push(format!("{:.1},{:.1}", x(seconds), y(count)));
            previous = Some(count);
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" stroke-dasharray="{dash}" points="{}"><title>{}: instances running</title></polyline>"#,
            points.join(" "),
            escape(&report.title)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555">instances running (auto scaling group)</text>"##,
        LEFT + plot_w + 16.0,
        top + 10.0
    );
}

/// `"4.0s crashed: i2"` → (4.0, `"crashed i2"`).
fn event(line: &str) -> Option<(f64, String)> {
    let (time, what) = line.split_once("s ")?;
    let seconds = time.parse::<f64>().ok()?;
    let label = what.replace(": skipped, one instance left", " skipped");
    Some((seconds, label.replace(':', "").replace(" joined", "")))
}

/// `"Stage 4 · Server session · nginx"` → `"Stage 4 · Server session"`
/// stays whole; only very long titles are cut, to fit the legend.
fn short_title(title: &str) -> &str {
    match title.char_indices().nth(30) {
        Some((cut, _)) => &title[..cut],
        None => title,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(title: &str, timeline: Vec<(f64, usize)>) -> Report {
        Report {
            stage: "stage1".into(),
            title: title.into(),
            shoppers: 4,
            duration_s: 10.0,
            requests: 100,
            requests_per_s: 10.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            server_errors: 0,
            retries: 0,
            unconfirmed: 0,
            carts_intact: timeline.last().map_or(0, |p| p.1),
            carts_lost: 4 - timeline.last().map_or(0, |p| p.1),
            chaos: vec!["2.0s crashed: i2".into(), "3.5s restarted: i2".into()],
            timeline,
            instances: Vec::new(),
            account_writes: None,
            account_writes_lost: None,
        }
    }

    #[test]
    fn one_line_per_stage_and_a_mark_per_chaos_event() {
        let chart = svg(&[
            report("Stage 1 · Local state", vec![(0.0, 4), (1.0, 0)]),
            report("Stage 4 · Server session", vec![(0.0, 4), (10.0, 4)]),
        ]);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert_eq!(chart.matches("<polyline").count(), 2);
        assert!(chart.contains(">crashed i2<") && chart.contains(">restarted i2<"));
        assert!(chart.contains("0 of 4 intact") && chart.contains("4 of 4 intact"));
        // Stage 4's line stays at the top: 4 carts at y = TOP.
        assert!(chart.contains(&format!("{:.1},{TOP:.1}", LEFT + (WIDTH - LEFT - RIGHT))));
    }

    #[test]
    fn an_auto_scaling_run_adds_a_step_line_of_instances() {
        let plain = svg(&[report("Stage 3", vec![(0.0, 4), (10.0, 4)])]);
        assert!(!plain.contains("instances running"));
        let scaled = svg(&[Report {
            instances: vec![(0.0, 1), (4.0, 3), (10.0, 1)],
            ..report("Stage 3", vec![(0.0, 4), (10.0, 4)])
        }]);
        assert_eq!(scaled.matches("<polyline").count(), 2);
        assert!(scaled.contains("Stage 3: instances running"));
    }

    #[test]
    fn titles_are_escaped() {
        let chart = svg(&[report("A <b> & \"c\"", vec![(0.0, 4)])]);
        assert!(chart.contains("A &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(!chart.contains("<b>"));
    }
}
