//! Stage 4's own failures: the session store is not answering, full, or
//! too busy with one cart.

use axum::http::StatusCode;
use shop::StageError;

/// What can go wrong with sessions, as the shopper is told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// 503 `session_store_unavailable`: the store did not answer a read
    /// within the store timeout. Nothing was changed; the shopper may retry.
    #[error(
        "the session store is not answering right now; your cart is safe, please try again in a moment"
    )]
    StoreUnavailable,
    /// 503 `session_store_unavailable`: the store did not confirm a change
    /// within the store timeout. The change was sent, so it may still be
    /// applied when the store recovers; sending it again with the same
    /// `Idempotency-Key` is safe (it is applied once).
    #[error(
        "the session store did not confirm your change in time; it may still be applied when the store recovers. Retrying with the same Idempotency-Key is safe: it is applied once"
    )]
    ChangeUnconfirmed,
    /// 503 `session_store_full`: the store takes no new data (Redis at its
    /// `maxmemory`, which never evicts a session; Memcached out of memory
    /// for an item). Nothing was changed.
    #[error(
        "the session store is full and takes no new carts right now; nothing was changed, please try again later"
    )]
    StoreFull,
    /// 503 `session_store_busy`: so many changes to one cart arrived at
    /// once that this one lost every optimistic retry (Memcached's
    /// `gets`/`cas`). Nothing was changed; retrying is safe.
    #[error("too many changes to your cart arrived at once; nothing was changed, please try again")]
    Contended,
}

impl StageError for SessionError {
    fn status(&self) -> StatusCode {
        match self {
            Self::StoreUnavailable
            | Self::ChangeUnconfirmed
            | Self::StoreFull
            | Self::Contended => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        Some(match self {
            Self::StoreUnavailable | Self::ChangeUnconfirmed | Self::Contended => 1,
            // Memory comes back as sessions expire: minutes, not a second.
            Self::StoreFull => 60,
        })
    }

    fn code(&self) -> &'static str {
        match self {
            Self::StoreUnavailable | Self::ChangeUnconfirmed => "session_store_unavailable",
            Self::StoreFull => "session_store_full",
            Self::Contended => "session_store_busy",
        }
    }
}
