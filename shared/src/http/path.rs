//! A path-parameter extractor whose every rejection is an [`ApiError`].
//!
//! axum's own `Path` answers a segment it cannot decode (`%ff%fe` is not
//! UTF-8) with a plain-text 400; the shop promises JSON errors everywhere,
//! so this wrapper converts the rejection into 400 `bad_path`.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Path<T>`, but rejecting with the shop's JSON errors.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
