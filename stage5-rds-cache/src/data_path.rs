//! `X-Data-Path`: where each piece of a response came from.
//!
//! ```text
//! X-Data-Path: profile=cache-miss,replica,cached
//! X-Data-Path: profile=primary,invalidated
//! X-Data-Path: catalog=cache-down,replica-down,primary
//! ```
//!
//! Every account and catalog answer carries it, and the shop page's
//! request log shows it: the lesson of this stage is *where reads go*, so the shop says
//! so on every answer instead of asking the learner to believe it.

use axum::http::{HeaderName, HeaderValue};

/// The header's name.
pub const DATA_PATH: HeaderName = HeaderName::from_static("x-data-path");

/// One step on a piece's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Found in the cache; no database touched.
    CacheHit,
    /// Not in the cache: read from a database, next steps say which.
    CacheMiss,
    /// The cache did not answer; served from the database (degraded).
    CacheDown,
    /// Caching is turned off (`--no-cache`).
    CacheOff,
    /// Stored in the cache after the read, with a TTL.
    Cached,
    /// Not stored: a write landed while the database was read, so this
    /// answer may be older than it (the next read fills the cache).
    NotCached,
    /// Read from the replica.
    Replica,
    /// The replica has not replayed this shopper's last write yet.
    ReplicaBehind,
    /// The replica did not answer.
    ReplicaDown,
    /// Read from, or written to, the primary.
    Primary,
    /// The cached copy was replaced by the write's mark after the commit.
    Invalidated,
    /// Marking the cached copy out of date failed (it expires with its TTL).
    InvalidateFailed,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CacheHit => "cache-hit",
            Self::CacheMiss => "cache-miss",
            Self::CacheDown => "cache-down",
            Self::CacheOff => "cache-off",
            Self::Cached => "cached",
            Self::NotCached => "not-cached",
            Self::Replica => "replica",
            Self::ReplicaBehind => "replica-behind",
            Self::ReplicaDown => "replica-down",
            Self::Primary => "primary",
            Self::Invalidated => "invalidated",
            Self::InvalidateFailed => "invalidate-failed",
        }
    }
}

/// The steps of one named piece (`profile`, `catalog`, `account`, `cart`).
pub fn header(piece: &str, steps: &[Step]) -> HeaderValue {
    let steps: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
    HeaderValue::from_str(&format!("{piece}={}", steps.join(",")))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_reads_as_piece_equals_steps() {
        let value = header("profile", &[Step::CacheMiss, Step::Replica, Step::Cached]);
        assert_eq!(value, "profile=cache-miss,replica,cached");
    }
}
