//! The one error type of the shop's HTTP surface, and the seam for a
//! stage's own errors.
//!
//! Every failure a shopper can meet in every stage is a variant of
//! [`ApiError`], and each variant's doc names its status and `error` code.
//! A stage adds failures of its own (a limit only its store has, a server
//! only it depends on) as its own enum implementing [`StageError`]; `?` turns one into [`ApiError::Stage`]. All of them
//! become the same JSON body, `{"error": "<code>", "message": "<human
//! text>"}`: a machine can branch on `error`, a person can read `message`.
//!
//! A refused request changes nothing: handlers validate before they touch a
//! store, and the cart rules refuse a change as a whole.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cart::CartError;

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// The request field at fault, when the error is about one field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error a stage defines for its own lesson, answered with the shared
/// JSON body.
///
/// A stage writes an enum (documenting each variant's status, as
/// [`ApiError`] does) and implements this; `?` then converts it into
/// [`ApiError`]. `Display` is the message shown to the shopper.
pub trait StageError: std::error::Error + Send + Sync + 'static {
    /// The HTTP status.
    fn status(&self) -> StatusCode;
    /// The machine-readable `error` code, e.g. `cart_full`.
    fn code(&self) -> &'static str;
    /// The request field at fault, if the error is about one.
    fn field(&self) -> Option<&str> {
        None
    }
    /// Seconds after which a retry may succeed (`Retry-After`). A 503 says
    /// one second unless the stage knows better.
    fn retry_after_s(&self) -> Option<u32> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`: the body is not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 400 `bad_path`: a part of the path cannot be read (not UTF-8, say).
    #[error("{0}")]
    BadPath(String),
    /// 400 `bad_idempotency_key`: the `Idempotency-Key` header is not 1 to
    /// 64 letters, digits, `-` or `_`.
    #[error("an Idempotency-Key is 1 to 64 letters, digits, `-` or `_` (a UUID will do)")]
    BadIdempotencyKey,
    /// 404 `unknown_sku`: no product has that SKU.
    #[error("no product has the SKU `{0}`")]
    UnknownSku(String),
    /// 404 `not_found`: no such route.
    #[error("there is nothing at {0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists, the method does not.
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    /// 413 `body_too_large`: the body is over the limit.
    #[error("the request body is over the {limit} byte limit")]
    BodyTooLarge { limit: usize },
    /// 415 `unsupported_media_type`: the body is not declared as JSON.
    #[error("send the body as JSON, with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422 `invalid_body`: valid JSON, but not the expected fields.
    #[error("{0}")]
    InvalidBody(String),
    /// 422 `bad_quantity`: a quantity outside 1..=99, or a line that would exceed 99.
    #[error("{0}")]
    BadQuantity(String),
    /// 422 `cart_full`: the cart already has the most lines it may hold.
    #[error("{0}")]
    CartFull(String),
    /// A stage's own error; its status and code are the stage's.
    #[error("{0}")]
    Stage(Box<dyn StageError>),
    /// 500 `internal`: a bug; the details are logged, not shown.
    #[error("something went wrong on our side")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadPath(_) | Self::BadIdempotencyKey => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownSku(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidBody(_) | Self::BadQuantity(_) | Self::CartFull(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Stage(error) => error.status(),
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::BadPath(_) => "bad_path",
            Self::BadIdempotencyKey => "bad_idempotency_key",
            Self::UnknownSku(_) => "unknown_sku",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidBody(_) => "invalid_body",
            Self::BadQuantity(_) => "bad_quantity",
            Self::CartFull(_) => "cart_full",
            Self::Stage(error) => error.code(),
            Self::Internal => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
            field: match self {
                Self::Stage(error) => error.field().map(str::to_owned),
                _ => None,
            },
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            Self::Stage(error) => error.retry_after_s(),
            _ => None,
        }
    }
}

impl<E: StageError> From<E> for ApiError {
    fn from(error: E) -> Self {
        Self::Stage(Box::new(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<CartError> for ApiError {
    fn from(error: CartError) -> Self {
        match error {
            CartError::UnknownSku(sku) => Self::UnknownSku(sku),
            CartError::BadQuantity(_) | CartError::LineFull { .. } => {
                Self::BadQuantity(error.to_string())
            }
            CartError::CartFull => Self::CartFull(error.to_string()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadPath(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the thing is resting")]
    struct Resting;

    impl StageError for Resting {
        fn status(&self) -> StatusCode {
            StatusCode::SERVICE_UNAVAILABLE
        }
        fn code(&self) -> &'static str {
            "resting"
        }
    }

    #[test]
    fn a_stage_error_answers_with_the_shared_body_and_retry_after() {
        let error = ApiError::from(Resting);
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error.body(),
            ErrorBody {
                error: "resting".into(),
                message: "the thing is resting".into(),
                field: None
            }
        );
        let response = error.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
