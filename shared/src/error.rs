//! The one error type of the shop's HTTP surface.
//!
//! Every failure a shopper can meet is a variant here, and each variant's
//! doc names its status and `error` code. All of them become the same JSON
//! body, `{"error": "<code>", "message": "<human text>"}`: a machine can
//! branch on `error`, a person can read `message`. A refused request changes
//! nothing: handlers validate before they touch a store, and the cart rules
//! refuse a change as a whole.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cart::CartError;

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// The request field at fault, for 422 `invalid_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`: the body is not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
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
    /// 413 `cart_too_large_for_cookie`: the cart's cookie would pass the
    /// 4096-byte limit browsers guarantee (stage 3); the cart is unchanged.
    #[error(
        "that change would make your cart's cookie {bytes} bytes; the limit is {limit} bytes, so the cart was left as it was"
    )]
    CartTooLargeForCookie { bytes: usize, limit: usize },
    /// 422 `invalid_field`: one field of an account or profile is not
    /// acceptable; `field` names it (stage 5).
    #[error("{field}: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
    /// 401 `invalid_credentials`: wrong email or password. One message for
    /// both, so the answer does not reveal which emails have accounts.
    #[error("that email and password do not match an account")]
    InvalidCredentials,
    /// 401 `not_logged_in`: the route needs a logged-in shopper.
    #[error("log in first")]
    NotLoggedIn,
    /// 409 `email_taken`: an account with that email exists.
    #[error("an account with that email already exists")]
    EmailTaken,
    /// 503 `database_unavailable`: the PostgreSQL primary cannot take the
    /// write (stage 5). Nothing was changed.
    #[error(
        "the database cannot take changes right now; nothing was changed, please try again in a moment"
    )]
    DatabaseUnavailable,
    /// 503 `session_store_unavailable`: Redis did not answer within the
    /// store timeout (stages 4–5). Nothing was lost; the shopper may retry.
    #[error(
        "the session store is not answering right now; your cart is safe, please try again in a moment"
    )]
    SessionStoreUnavailable,
    /// 500 `internal`: a bug; the details are logged, not shown.
    #[error("something went wrong on our side")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::UnknownSku(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } | Self::CartTooLargeForCookie { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidBody(_) | Self::BadQuantity(_) | Self::CartFull(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidCredentials | Self::NotLoggedIn => StatusCode::UNAUTHORIZED,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::SessionStoreUnavailable | Self::DatabaseUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::UnknownSku(_) => "unknown_sku",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidBody(_) => "invalid_body",
            Self::BadQuantity(_) => "bad_quantity",
            Self::CartFull(_) => "cart_full",
            Self::CartTooLargeForCookie { .. } => "cart_too_large_for_cookie",
            Self::InvalidField { .. } => "invalid_field",
            Self::InvalidCredentials => "invalid_credentials",
            Self::NotLoggedIn => "not_logged_in",
            Self::EmailTaken => "email_taken",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::SessionStoreUnavailable => "session_store_unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
            field: match self {
                Self::InvalidField { field, .. } => Some((*field).to_owned()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            // A store outage is usually short: tell clients when to retry.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
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

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::InvalidBody(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge {
                limit: crate::http::BODY_LIMIT,
            },
            other => Self::MalformedJson(other.body_text()),
        }
    }
}
