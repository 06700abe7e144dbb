//! Stage 4's own failure: the session store is not answering.

use axum::http::StatusCode;
use shop::StageError;

/// What can go wrong with sessions, as the shopper is told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// 503 `session_store_unavailable`: Redis did not answer within the
    /// store timeout. Nothing was lost; the shopper may retry.
    #[error(
        "the session store is not answering right now; your cart is safe, please try again in a moment"
    )]
    StoreUnavailable,
}

impl StageError for SessionError {
    fn status(&self) -> StatusCode {
        match self {
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::StoreUnavailable => "session_store_unavailable",
        }
    }
}
