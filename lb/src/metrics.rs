//! `GET /_lb/metrics`: the balancer's counters in the Prometheus text format.
//!
//! The format is simple enough to write by hand (`# HELP`, `# TYPE`, then
//! `name{label="value"} number` lines), which keeps the balancer free of a
//! metrics registry. [`Exposition`] writes it; the shop's stages use it for
//! their own `/metrics` too. A larger service would use the `prometheus` or
//! `metrics` + `metrics-exporter-prometheus` crates.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{BackendState, STATUS_CLASSES};
use crate::proxy::Balancer;

/// Balancer-wide counters (per-backend ones live on [`crate::Backend`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Shoppers whose sticky cookie named a backend that could not take them.
    pub sticky_reassignments: AtomicU64,
    /// Requests retried on another backend after a failed connection.
    pub retries: AtomicU64,
    /// Requests answered 503 because no backend was available.
    pub no_backend: AtomicU64,
    /// Times an accept loop found `--max-clients` connections open and
    /// left new ones waiting in the kernel's accept queue.
    pub client_limit_waits: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (requests served).
    Counter,
    /// Goes up and down (requests in flight).
    Gauge,
}

/// A page of metrics in the Prometheus text format, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started, with its labels.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{}\"", escape_label(value)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub(crate) fn render(balancer: &Balancer) -> String {
    let backends = balancer.backends().all();
    let counters = balancer.counters();
    let mut out = Exposition::new();

    out.family(
        "lb_requests_total",
        Kind::Counter,
        "Responses by backend and status class.",
    );
    for backend in &backends {
        for (class, count) in STATUS_CLASSES.iter().zip(backend.served_by_class()) {
            out.sample(
                "lb_requests_total",
                &[("backend", backend.name()), ("class", class)],
                count,
            );
        }
    }
    out.family(
        "lb_errors_total",
        Kind::Counter,
        "Failed attempts, by backend: its 5xx answers, and the times it could not be reached, was too slow or was full (retried attempts included).",
    );
    for backend in &backends {
        out.sample(
            "lb_errors_total",
            &[("backend", backend.name())],
            backend.errors(),
        );
    }
    out.family(
        "lb_in_flight",
        Kind::Gauge,
        "Requests being served, by backend.",
    );
    for backend in &backends {
        out.sample(
            "lb_in_flight",
            &[("backend", backend.name())],
            backend.in_flight(),
        );
    }
    out.family(
        "lb_tunnels_open",
        Kind::Gauge,
        "Open tunnels (WebSockets), by backend.",
    );
    for backend in &backends {
        out.sample(
            "lb_tunnels_open",
            &[("backend", backend.name())],
            backend.tunnels(),
        );
    }
    out.family(
        "lb_queued",
        Kind::Gauge,
        "Requests waiting for a free slot, by backend.",
    );
    for backend in &backends {
        out.sample(
            "lb_queued",
            &[("backend", backend.name())],
            backend.queued(),
        );
    }
    out.family(
        "lb_refused_total",
        Kind::Counter,
        "Requests answered 503 because a backend's queue was full or too slow.",
    );
    for backend in &backends {
        out.sample(
            "lb_refused_total",
            &[("backend", backend.name())],
            backend.refused(),
        );
    }
    out.family(
        "lb_backend_up",
        Kind::Gauge,
        "1 when the backend is healthy, 0 when down.",
    );
    for backend in &backends {
        let up = u8::from(backend.state() != BackendState::Down);
        out.sample("lb_backend_up", &[("backend", backend.name())], up);
    }
    out.family(
        "lb_backend_draining",
        Kind::Gauge,
        "1 when the backend takes no new shoppers.",
    );
    for backend in &backends {
        let draining = u8::from(backend.state() == BackendState::Draining);
        out.sample(
            "lb_backend_draining",
            &[("backend", backend.name())],
            draining,
        );
    }
    out.family(
        "lb_health_check_failures_total",
        Kind::Counter,
        "Failed active health checks, by backend.",
    );
    for backend in &backends {
        out.sample(
            "lb_health_check_failures_total",
            &[("backend", backend.name())],
            backend.health_check_failures(),
        );
    }
    let totals = [
        (
            "lb_sticky_reassignments_total",
            "Sticky shoppers sent to a new backend.",
            &counters.sticky_reassignments,
        ),
        (
            "lb_retries_total",
            "Requests retried on another backend.",
            &counters.retries,
        ),
        (
            "lb_no_backend_total",
            "Requests refused because no backend was available.",
            &counters.no_backend,
        ),
        (
            "lb_client_limit_waits_total",
            "Times new connections were left in the accept queue because --max-clients were open.",
            &counters.client_limit_waits,
        ),
    ];
    for (name, help, counter) in totals {
        out.single(name, Kind::Counter, help, counter.load(Ordering::Relaxed));
    }
    out.single(
        "lb_clients_open",
        Kind::Gauge,
        "Client connections open (WebSockets included).",
        balancer.clients_open(),
    );
    out.single(
        "lb_clients_max",
        Kind::Gauge,
        "Client connections held open at most (--max-clients).",
        balancer.max_clients(),
    );
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_read_as_prometheus_text() {
        let mut out = Exposition::new();
        out.family("x_total", Kind::Counter, "Things.").sample(
            "x_total",
            &[("backend", "a\"b")],
            3,
        );
        out.single("y", Kind::Gauge, "A level.", 1.5);
        assert_eq!(
            out.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{backend=\"a\\\"b\"} 3\n\
             # HELP y A level.\n# TYPE y gauge\ny 1.5\n"
        );
    }
}
