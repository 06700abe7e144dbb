//! Accounts: sign up, log in, log out, and the shopper's own profile.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/signup {"email","password","name"}` | 201, logged in; 409 `email_taken` |
//! | `POST /api/login {"email","password"}` | 200; 401 `invalid_credentials` |
//! | `POST /api/logout` | 204; the session is gone for good |
//! | `GET /api/me` | the profile; 401 `not_logged_in` |
//! | `PUT /api/me {"name","address":{"line1","line2","city","postcode","country"}}` | the updated profile |
//!
//! Passwords are hashed with argon2id (a fresh random salt each), on the
//! blocking pool: a hash takes tens of milliseconds of CPU on purpose, which
//! must not stall the async workers. A wrong password and an unknown email
//! get the same answer, and an unknown email still pays for one hash, so
//! neither the message nor the timing tells which emails have accounts.
//!
//! Logging in rotates the session id (the anonymous cart moves along): an
//! id someone planted or saw before login is worth nothing after it.
//! The session remembers the user (`_user`) and the primary's WAL position
//! after the shopper's last write (`_lsn`, for read-your-writes).

use std::sync::{Arc, LazyLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shop::ApiError;
use shop::cookies::request_jar;
use shop::http::Shop;
use shop::http::api::append_reply_headers;
use shop::http::json::ApiJson;
use sqlx::Row;

use crate::data_path::{self, DATA_PATH, Step};
use crate::db::database_error;
use crate::store::DataShop;

/// Session fields this module keeps.
const USER: &str = "_user";
const LSN: &str = "_lsn";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line1: String,
    #[serde(default)]
    pub line2: String,
    pub city: String,
    pub postcode: String,
    pub country: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub name: String,
    pub address: Address,
}

/// What `GET /api/me` answers (and what the cache holds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub email: String,
    pub name: String,
    pub address: Option<Address>,
}

/// `POST /api/signup`: creates the account on the primary and logs in.
pub async fn signup(
    State(shop): State<Arc<Shop<DataShop>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Signup>,
) -> Result<Response, ApiError> {
    let email = valid_email(&body.email)?;
    let name = valid_text("name", &body.name, 1, 100)?;
    valid_password(&body.password)?;
    let hash = hash_password(body.password).await?;
    let db = &shop.store.db;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&email)
    .bind(&hash)
    .bind(&name)
    .fetch_one(db.primary())
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("23505") => ApiError::EmailTaken,
        _ => database_error(&error),
    })?;
    let lsn = db.wal_position().await?;
    tracing::info!(user = id, "signed up");
    let cookie = shop
        .store
        .carts
        .rotate(
            &request_jar(&headers),
            &[(USER, &id.to_string()), (LSN, &lsn)],
        )
        .await?;
    let profile = Profile {
        email,
        name,
        address: None,
    };
    Ok(logged_in_response(
        (StatusCode::CREATED, Json(profile)).into_response(),
        cookie,
    ))
}

/// `POST /api/login`
pub async fn login(
    State(shop): State<Arc<Shop<DataShop>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    // Logging in reads the primary: an account made a moment ago may not be
    // on the replica yet, and "no such account" would be wrong. Logins are
    // few; profile and catalog reads are the many.
    let row = sqlx::query(
        "SELECT id, email, name, password_hash FROM users WHERE lower(email) = lower($1)",
    )
    .bind(body.email.trim())
    .fetch_optional(shop.store.db.primary())
    .await
    .map_err(|error| database_error(&error))?;
    let (found, hash) = match &row {
        Some(row) => (
            true,
            row.try_get::<String, _>("password_hash")
                .map_err(|error| database_error(&error))?,
        ),
        None => (false, DUMMY_HASH.clone()),
    };
    let matches = verify_password(body.password, hash).await?;
    let Some(row) = row.filter(|_| found && matches) else {
        return Err(ApiError::InvalidCredentials);
    };
    let id: i64 = row.try_get("id").map_err(|error| database_error(&error))?;
    let cookie = shop
        .store
        .carts
        .rotate(&request_jar(&headers), &[(USER, &id.to_string())])
        .await?;
    tracing::info!(user = id, "logged in");
    let body = Json(serde_json::json!({
        "email": row.try_get::<String, _>("email").unwrap_or_default(),
        "name": row.try_get::<String, _>("name").unwrap_or_default(),
    }));
    Ok(logged_in_response(body.into_response(), cookie))
}

/// A signup or login answer: the new session's cookie, and where the
/// account was read or written.
fn logged_in_response(mut response: Response, cookie: cookie::Cookie<'static>) -> Response {
    append_reply_headers(response.headers_mut(), vec![cookie], HeaderMap::new());
    response
        .headers_mut()
        .insert(DATA_PATH, data_path::header("account", &[Step::Primary]));
    response
}

/// `POST /api/logout`: deletes the session (cart included), for good.
pub async fn logout(
    State(shop): State<Arc<Shop<DataShop>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let removal = shop.store.carts.end(&request_jar(&headers)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    append_reply_headers(response.headers_mut(), vec![removal], HeaderMap::new());
    response.headers_mut().insert(
        DATA_PATH,
        data_path::header("session", &[Step::SessionStore]),
    );
    Ok(response)
}

/// `GET /api/me`: from the cache, else the replica (or the primary when the
/// replica has not replayed this shopper's last write).
pub async fn get_me(
    State(shop): State<Arc<Shop<DataShop>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (user, lsn) = logged_in(&shop.store, &headers).await?;
    shop.store
        .cached_json(
            &format!("profile:{user}"),
            "profile",
            lsn.as_deref(),
            move |pool| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT u.email, u.name, a.line1, a.line2, a.city, a.postcode, a.country
                         FROM users u LEFT JOIN addresses a ON a.user_id = u.id WHERE u.id = $1",
                    )
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
                    row.map(|row| profile_from(&row)).transpose()
                })
            },
        )
        .await
}

/// `PUT /api/me`: writes the primary, commits, then drops the cached copy.
pub async fn put_me(
    State(shop): State<Arc<Shop<DataShop>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let (user, _) = logged_in(&shop.store, &headers).await?;
    let name = valid_text("name", &body.name, 1, 100)?;
    let address = Address {
        line1: valid_text("address.line1", &body.address.line1, 1, 200)?,
        line2: valid_text("address.line2", &body.address.line2, 0, 200)?,
        city: valid_text("address.city", &body.address.city, 1, 100)?,
        postcode: valid_text("address.postcode", &body.address.postcode, 1, 20)?,
        country: valid_country(&body.address.country)?,
    };
    let store = &shop.store;
    let unavailable = |error: sqlx::Error| database_error(&error);
    let mut tx = store.db.primary().begin().await.map_err(unavailable)?;
    let email: String = sqlx::query_scalar(
        "UPDATE users SET name = $2, updated_at = now() WHERE id = $1 RETURNING email",
    )
    .bind(user)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await
    .map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO addresses (user_id, line1, line2, city, postcode, country)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id) DO UPDATE SET line1 = $2, line2 = $3, city = $4,
             postcode = $5, country = $6, updated_at = now()",
    )
    .bind(user)
    .bind(&address.line1)
    .bind(&address.line2)
    .bind(&address.city)
    .bind(&address.postcode)
    .bind(&address.country)
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    let mut path = vec![Step::Primary];
    // Remember how far the primary was, so this shopper's next read waits
    // for a replica that has it; then drop the stale cached copy.
    let lsn = store.db.wal_position().await?;
    if let Some(session) = store.carts.session(&request_jar(&headers), &[]).await? {
        store.carts.set_fields(&session, &[(LSN, &lsn)]).await?;
    }
    store
        .cache
        .invalidate(&format!("profile:{user}"), &mut path)
        .await;
    let mut response = Json(Profile {
        email,
        name,
        address: Some(address),
    })
    .into_response();
    response
        .headers_mut()
        .insert(DATA_PATH, data_path::header("profile", &path));
    Ok(response)
}

/// The logged-in user's id and last write position, or 401.
async fn logged_in(
    store: &DataShop,
    headers: &HeaderMap,
) -> Result<(i64, Option<String>), ApiError> {
    let session = store
        .carts
        .session(&request_jar(headers), &[USER, LSN])
        .await?
        .ok_or(ApiError::NotLoggedIn)?;
    let user = session
        .values
        .first()
        .cloned()
        .flatten()
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or(ApiError::NotLoggedIn)?;
    Ok((user, session.values.get(1).cloned().flatten()))
}

fn profile_from(row: &sqlx::postgres::PgRow) -> Result<Profile, sqlx::Error> {
    let line1: Option<String> = row.try_get("line1")?;
    let address = match line1 {
        Some(line1) => Some(Address {
            line1,
            line2: row.try_get("line2")?,
            city: row.try_get("city")?,
            postcode: row.try_get("postcode")?,
            country: row.try_get::<String, _>("country")?.trim().to_owned(),
        }),
        None => None,
    };
    Ok(Profile {
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        address,
    })
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field,
        problem: problem.into(),
    }
}

fn valid_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let shaped = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if shaped {
        Ok(email.to_owned())
    } else {
        Err(invalid("email", "must look like name@example.com"))
    }
}

fn valid_password(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    if (8..=128).contains(&length) {
        Ok(())
    } else {
        Err(invalid("password", "must be 8 to 128 characters"))
    }
}

fn valid_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, ApiError> {
    let value = value.trim();
    let length = value.chars().count();
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    if length < min || length > max {
        return Err(invalid(
            field,
            if min == 0 {
                format!("must be at most {max} characters")
            } else {
                format!("must be {min} to {max} characters")
            },
        ));
    }
    Ok(value.to_owned())
}

fn valid_country(country: &str) -> Result<String, ApiError> {
    let country = country.trim().to_ascii_uppercase();
    if country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(country)
    } else {
        Err(invalid(
            "address.country",
            "must be a two-letter country code (ISO 3166-1), e.g. GB",
        ))
    }
}

/// A real argon2id hash of a password nobody has, checked against when the
/// email is unknown, so that an unknown email costs as much as a wrong
/// password.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    SaltString::encode_b64(&[7u8; 16])
        .ok()
        .and_then(|salt| {
            Argon2::default()
                .hash_password(b"not anyone's password", &salt)
                .ok()
                .map(|hash| hash.to_string())
        })
        .unwrap_or_default()
});

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| ApiError::Internal)?;
        let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::Internal)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|_| ApiError::Internal)
    })
    .await
    .map_err(|_| ApiError::Internal)?
}

async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|_| ApiError::Internal)?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|_| ApiError::Internal)?
}
