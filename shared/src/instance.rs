//! Who one running instance is, and how busy: the name every response
//! carries in `X-Served-By` and the load `/healthz` reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::HeaderValue;

/// One instance's identity and load.
#[derive(Debug)]
pub struct Instance {
    id: String,
    header: HeaderValue,
    started: Instant,
    in_flight: AtomicUsize,
}

impl Instance {
    /// `id` is shown to shoppers and used as a header value, so it must be
    /// printable ASCII.
    pub fn new(id: &str) -> Result<Self, String> {
        let header = HeaderValue::from_str(id)
            .ok()
            .filter(|_| !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| format!("instance id `{id}` must be printable ASCII without spaces"))?;
        Ok(Self {
            id: id.to_owned(),
            header,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id as a ready-made `X-Served-By` value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub(crate) fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request in flight until the returned guard is dropped (a
    /// guard, so a request cancelled mid-way still leaves the count right).
    pub(crate) fn busy(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }
}

/// One request in flight; see [`Instance::busy`].
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
