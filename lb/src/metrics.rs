//! `GET /_lb/metrics`: the balancer's counters in the Prometheus text format.
//!
//! The format is simple enough to write by hand (`# HELP`, `# TYPE`, then
//! `name{label="value"} number` lines), which keeps the balancer free of a
//! metrics registry. A larger service would use the `prometheus` or
//! `metrics` + `metrics-exporter-prometheus` crates.

use std::fmt::Write as _;
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
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Renders every metric.
pub fn render(balancer: &Balancer) -> String {
    let backends = balancer.backends().all();
    let counters = balancer.counters();
    let mut out = String::new();

    header(
        &mut out,
        "lb_requests_total",
        "counter",
        "Responses by backend and status class.",
    );
    for backend in &backends {
        for (class, count) in STATUS_CLASSES.iter().zip(backend.served_by_class()) {
            let _ = writeln!(
                out,
                "lb_requests_total{{backend=\"{}\",class=\"{class}\"}} {count}",
                backend.name()
            );
        }
    }
    header(
        &mut out,
        "lb_in_flight",
        "gauge",
        "Requests being served, by backend.",
    );
    for backend in &backends {
        let _ = writeln!(
            out,
            "lb_in_flight{{backend=\"{}\"}} {}",
            backend.name(),
            backend.in_flight()
        );
    }
    header(
        &mut out,
        "lb_backend_up",
        "gauge",
        "1 when the backend is healthy, 0 when down.",
    );
    for backend in &backends {
        let up = u8::from(backend.state() != BackendState::Down);
        let _ = writeln!(out, "lb_backend_up{{backend=\"{}\"}} {up}", backend.name());
    }
    header(
        &mut out,
        "lb_backend_draining",
        "gauge",
        "1 when the backend takes no new shoppers.",
    );
    for backend in &backends {
        let draining = u8::from(backend.state() == BackendState::Draining);
        let _ = writeln!(
            out,
            "lb_backend_draining{{backend=\"{}\"}} {draining}",
            backend.name()
        );
    }
    header(
        &mut out,
        "lb_health_check_failures_total",
        "counter",
        "Failed active health checks, by backend.",
    );
    for backend in &backends {
        let _ = writeln!(
            out,
            "lb_health_check_failures_total{{backend=\"{}\"}} {}",
            backend.name(),
            backend.health_check_failures()
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
    ];
    for (name, help, counter) in totals {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
