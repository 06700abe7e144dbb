//! Accounts: sign up, log in, log out, and the shopper's own profile.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/signup {"email","password","name"}` | 201, logged in (also when the same signup is sent again: see `signup_sent_again`); 409 `email_taken` |
//! | `POST /api/login {"email","password"}` | 200; 401 `invalid_credentials` |
//! | `DELETE /api/session` | log out: 204, the session is gone for good (stage 4's route) |
//! | `GET /api/me` | the profile; 401 `not_logged_in` |
//! | `PUT /api/me {"name","address":{"line1","line2","city","postcode","country"}}` | the updated profile (`"address": null` removes it) |
//!
//! Passwords are hashed with argon2id ([`crate::passwords`]: on the
//! blocking pool, a slot per core, a short queue, then 503). A wrong
//! password and an unknown email get the same answer, and an unknown email
//! still pays for one hash, so neither the message nor the timing tells
//! which emails have accounts. Logins and signups are counted per client
//! and failed logins per account ([`crate::attempts`]): past the limits,
//! 429 with `Retry-After`. Every statement on the primary has a deadline
//! (`--db-timeout`).
//!
//! Logging in rotates the session id (the anonymous cart moves along): an
//! id someone planted or saw before login is worth nothing after it.
//! The session remembers the user (`user`) and the primary's WAL position
//! after the shopper's last write (`lsn`, for read-your-writes), read back
//! as a [`Login`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shop::cookies::request_jar;
use shop::http::api::set_cookies;
use shop::http::json::ApiJson;
use shop::{ApiError, Shop};
use sqlx::Row;
use stage4::sessions::{RedisSessions, Session};

use crate::DataStage;
use crate::attempts::client_of;
use crate::data_path::{self, DATA_PATH, Step};
use crate::db::WalPosition;
use crate::error::DataError;

/// The session fields this module keeps.
const USER: &str = "user";
const LSN: &str = "lsn";

/// An account's id (`users.id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UserId(i64);

/// Who a session is logged in as, and where their last write left the
/// primary: the session fields, read back as types.
#[derive(Debug)]
struct Login {
    user: UserId,
    /// Reads of this shopper's own data wait for a replica this far along.
    last_write: Option<WalPosition>,
}

impl Login {
    /// The login a session holds; `None` for an anonymous session.
    fn from_session(session: &Session) -> Option<Self> {
        let user = session.get(USER)?.parse().ok().map(UserId)?;
        Some(Self {
            user,
            last_write: session.get(LSN).map(WalPosition::from_stored),
        })
    }

    /// The login of the request's session, or 401.
    async fn of(sessions: &RedisSessions, headers: &HeaderMap) -> Result<Self, ApiError> {
        let session = sessions
            .session(&request_jar(headers), &[USER, LSN])
            .await?;
        Ok(session
            .as_ref()
            .and_then(Self::from_session)
            .ok_or(DataError::NotLoggedIn)?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Signup {
    email: String,
    password: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
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

/// `PUT /api/me`: the profile, whole. `"address": null` removes the
/// address; leaving `address` out is a 422, not a removal (a client that
/// only meant to rename the shopper must not lose the address by it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileUpdate {
    name: String,
    // `deserialize_with` makes the key required, while `null` stays None.
    #[serde(deserialize_with = "Option::deserialize")]
    address: Option<Address>,
}

/// What `GET /api/me` answers (and what the cache holds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub email: String,
    pub name: String,
    pub address: Option<Address>,
}

/// `POST /api/signup`: creates the account on the primary and logs in.
pub(crate) async fn signup<S: DataStage>(
    State(shop): State<Arc<Shop<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Signup>,
) -> Result<Response, ApiError> {
    let state = shop.state.as_ref();
    state
        .attempts
        .client_attempt(client_of(&shop.instance, &headers, peer))
        .await?;
    let email = valid_email(&body.email)?;
    let name = valid_text("name", &body.name, 1, 100)?;
    valid_password(&body.password)?;
    let hash = state.passwords.hash(body.password.clone()).await?;
    let db = &state.data.db;
    let inserted = db
        .on_primary(
            sqlx::query_scalar(
                "INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(&email)
            .bind(&hash)
            .bind(&name)
            .fetch_one(db.primary()),
        )
        .await;
    let id: i64 = match inserted {
        Ok(id) => id,
        Err(DataError::EmailTaken) => {
            return signup_sent_again(&shop, &headers, &email, body.password).await;
        }
        Err(error) => return Err(error.into()),
    };
    db.count_write();
    let lsn = db.wal_position().await?;
    tracing::info!(user = id, "signed up");
    let cookie = shop
        .carts
        .rotate(
            &request_jar(&headers),
            &id.to_string(),
            &[(USER, &id.to_string()), (LSN, &lsn.to_stored())],
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

/// How old an account may be for a signup of its email and password to
/// count as that account's own signup, sent again.
const SIGNUP_RETRIED_WITHIN: &str = "10 minutes";

/// A signup for an email that has an account. The same signup sent again,
/// after its answer was lost (a dropped connection, a 503 while the primary
/// failed over, a button pressed twice), logs the shopper in as the first
/// try did, cart and all; anything else is 409 `email_taken`, as before.
///
/// "The same signup": an account made in the last ten minutes, and its
/// password. A matching password is a login, so it is counted as one: a
/// locked account is refused (429), and a wrong password counts against
/// the account, so this is no way around the login limits. The answer to a
/// wrong password stays 409, the answer an older account always gets.
async fn signup_sent_again<S: DataStage>(
    shop: &Shop<S>,
    headers: &HeaderMap,
    email: &str,
    password: String,
) -> Result<Response, ApiError> {
    let state = shop.state.as_ref();
    let db = &state.data.db;
    let row = db
        .on_primary(
            sqlx::query(
                "SELECT u.id, u.password_hash, u.email, u.name,
                        a.line1, a.line2, a.city, a.postcode, a.country
                 FROM users u LEFT JOIN addresses a ON a.user_id = u.id
                 WHERE lower(u.email) = lower($1)
                   AND u.created_at > now() - $2::text::interval",
            )
            .bind(email)
            .bind(SIGNUP_RETRIED_WITHIN)
            .fetch_optional(db.primary()),
        )
        .await?;
    let Some(row) = row else {
        return Err(DataError::EmailTaken.into());
    };
    state.attempts.account_open(email).await?;
    let hash: String = row.try_get("password_hash").map_err(DataError::from)?;
    if !state.passwords.verify(password, Some(hash)).await? {
        state.attempts.account_failed(email).await;
        return Err(DataError::EmailTaken.into());
    }
    state.attempts.account_succeeded(email).await;
    let id: i64 = row.try_get("id").map_err(DataError::from)?;
    let profile = profile_from(&row).map_err(DataError::from)?;
    // The account is minutes old: this shopper's next reads wait for a
    // replica that has it, as after the first try.
    let lsn = db.wal_position().await?;
    let cookie = shop
        .carts
        .rotate(
            &request_jar(headers),
            &id.to_string(),
            &[(USER, &id.to_string()), (LSN, &lsn.to_stored())],
        )
        .await?;
    tracing::info!(user = id, "signed up (the same signup, sent again)");
    Ok(logged_in_response(
        (StatusCode::CREATED, Json(profile)).into_response(),
        cookie,
    ))
}

/// `POST /api/login`
pub(crate) async fn login<S: DataStage>(
    State(shop): State<Arc<Shop<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let state = shop.state.as_ref();
    state
        .attempts
        .client_attempt(client_of(&shop.instance, &headers, peer))
        .await?;
    // A value that cannot be an email cannot match an account (and a NUL
    // byte would not even reach the database): say which field is wrong.
    let email = valid_email(&body.email)?;
    state.attempts.account_open(&email).await?;
    // Logging in reads the primary: an account made a moment ago may not be
    // on the replica yet, and "no such account" would be wrong. Logins are
    // few; profile and catalog reads are the many.
    let db = &state.data.db;
    let row = db
        .on_primary(
            sqlx::query(
                "SELECT id, email, name, password_hash FROM users WHERE lower(email) = lower($1)",
            )
            .bind(&email)
            .fetch_optional(db.primary()),
        )
        .await?;
    let hash = row
        .as_ref()
        .map(|row| row.try_get::<String, _>("password_hash"))
        .transpose()
        .map_err(DataError::from)?;
    if !state.passwords.verify(body.password, hash).await? {
        state.attempts.account_failed(&email).await;
        return Err(DataError::InvalidCredentials.into());
    }
    let Some(row) = row else {
        return Err(DataError::InvalidCredentials.into());
    };
    state.attempts.account_succeeded(&email).await;
    let id: i64 = row.try_get("id").map_err(DataError::from)?;
    // The new session starts at the primary's WAL position now, as a signup
    // does. Without it, a shopper who changed their profile on a phone and
    // logs in on a laptop a moment later reads the lagging replica and sees
    // the old profile (or, for an account made seconds ago, none: 404).
    // One more primary round trip per login buys read-your-writes across
    // devices; the rejected alternative, a position kept per account, is a
    // write on every profile change for what a login can ask once.
    let lsn = db.wal_position().await?;
    let cookie = shop
        .carts
        .rotate(
            &request_jar(&headers),
            &id.to_string(),
            &[(USER, &id.to_string()), (LSN, &lsn.to_stored())],
        )
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
    set_cookies(response.headers_mut(), [cookie]);
    response
        .headers_mut()
        .insert(DATA_PATH, data_path::header("account", &[Step::Primary]));
    response
}

/// `GET /api/me`: from the cache, else the replica (or the primary when the
/// replica has not replayed this shopper's last write).
pub(crate) async fn get_me<S: DataStage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let login = Login::of(&shop.carts, &headers).await?;
    let UserId(user) = login.user;
    shop.state
        .as_ref()
        .data
        .cached_json(
            &format!("profile:{user}"),
            "profile",
            login.last_write.as_ref(),
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

/// `PUT /api/me`: writes the primary, commits, then marks the cached copy
/// out of date (see [`crate::cache`]).
pub(crate) async fn put_me<S: DataStage>(
    State(shop): State<Arc<Shop<S>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let UserId(user) = Login::of(&shop.carts, &headers).await?.user;
    let name = valid_text("name", &body.name, 1, 100)?;
    let address = body.address.as_ref().map(valid_address).transpose()?;
    let data = &shop.state.as_ref().data;
    let email: String = data
        .db
        .on_primary(async {
            let mut tx = data.db.primary().begin().await?;
            let email: String = sqlx::query_scalar(
                "UPDATE users SET name = $2, updated_at = now() WHERE id = $1 RETURNING email",
            )
            .bind(user)
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
            match &address {
                Some(address) => sqlx::query(
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
                .bind(&address.country),
                None => sqlx::query("DELETE FROM addresses WHERE user_id = $1").bind(user),
            }
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(email)
        })
        .await?;
    data.db.count_write();
    let mut path = vec![Step::Primary];
    // Remember how far the primary was, so this shopper's next read waits
    // for a replica that has it; then mark the cached copy out of date.
    let lsn = data.db.wal_position().await?;
    if let Some(session) = shop.carts.session(&request_jar(&headers), &[]).await? {
        // A session that ended meanwhile stays ended: no next read to guard.
        shop.carts
            .set_fields(&session, &[(LSN, &lsn.to_stored())])
            .await?;
    }
    data.cache
        .invalidate(&format!("profile:{user}"), &lsn, &mut path)
        .await;
    let mut response = Json(Profile {
        email,
        name,
        address,
    })
    .into_response();
    response
        .headers_mut()
        .insert(DATA_PATH, data_path::header("profile", &path));
    Ok(response)
}

/// An address as sent, each field checked (422 naming the first bad one).
fn valid_address(sent: &Address) -> Result<Address, ApiError> {
    Ok(Address {
        line1: valid_text("address.line1", &sent.line1, 1, 200)?,
        line2: valid_text("address.line2", &sent.line2, 0, 200)?,
        city: valid_text("address.city", &sent.city, 1, 100)?,
        postcode: valid_text("address.postcode", &sent.postcode, 1, 20)?,
        country: valid_country(&sent.country)?,
    })
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
    DataError::InvalidField {
        field,
        problem: problem.into(),
    }
    .into()
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
