//! Stage 5's own failures: accounts, and a database that cannot answer.
//!
//! Every database error goes through one `From<sqlx::Error>`, which decides
//! what the shopper is told: a unique violation of the email index is
//! `email_taken`, a connection that failed is `database_unavailable`, and
//! anything else is a bug (logged, and answered 500 `internal`).

use axum::http::StatusCode;
use shop::StageError;

/// The unique index that keeps one account per email, whatever its case
/// (`migrations/0001_accounts_and_catalog.sql`).
const EMAIL_INDEX: &str = "users_email_key";

/// What can go wrong in accounts and the data tier, as the shopper is told.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// 422 `invalid_field`: one field of an account or profile is not
    /// acceptable; `field` names it.
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
    /// 429 `too_many_attempts`: too many logins or signups from this
    /// client, or failed logins to this account, lately
    /// ([`crate::attempts`]); `Retry-After` says when to try again.
    #[error("too many attempts; please wait {retry_after_s} seconds and try again")]
    TooManyAttempts { retry_after_s: u32 },
    /// 503 `too_busy`: every password-hashing slot is taken and the queue
    /// is full ([`crate::passwords`]); nothing was done.
    #[error("too many logins at once; please try again in a moment")]
    TooBusy,
    /// 400 `invalid_input`: the database refused a value as malformed (a
    /// byte it cannot store); nothing was changed.
    #[error("a value in the request cannot be stored: {0}")]
    InvalidInput(String),
    /// 503 `database_unavailable`: the PostgreSQL primary cannot take the
    /// request (down, shutting down, frozen, or out of connections). Not
    /// "nothing was changed": a connection that broke while its `COMMIT`
    /// was on the way leaves that unknown, so the message says what is
    /// true instead: sending the request again is safe (a profile is set
    /// whole; a signup sent again finds its account and logs the shopper
    /// in, see `accounts::signup_sent_again`).
    #[error(
        "the database is not answering right now; please try again in a moment (sending the same request again is safe)"
    )]
    DatabaseUnavailable,
    /// 500 `internal`: the database refused a statement for a reason that
    /// is a bug here; the details are logged, not shown.
    #[error("something went wrong on our side")]
    Database(#[source] sqlx::Error),
}

impl StageError for DataError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidCredentials | Self::NotLoggedIn => StatusCode::UNAUTHORIZED,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooBusy | Self::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidField { .. } => "invalid_field",
            Self::InvalidCredentials => "invalid_credentials",
            Self::NotLoggedIn => "not_logged_in",
            Self::EmailTaken => "email_taken",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::TooBusy => "too_busy",
            Self::InvalidInput(_) => "invalid_input",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Database(_) => "internal",
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            Self::TooManyAttempts { retry_after_s } => Some(*retry_after_s),
            Self::TooBusy | Self::DatabaseUnavailable => Some(1),
            _ => None,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Whether a PostgreSQL error code (SQLSTATE) is the server's trouble, not
/// the request's, and may be gone on a retry (503, not 500): 08 connection
/// exceptions; 57 operator intervention (a shutdown); 53 insufficient
/// resources (disk full, out of memory, too many connections); 25006 a
/// read-only transaction (a write reached a standby); 40001 and 40P01 a
/// serialization failure or a deadlock (the transaction was rolled back
/// whole, so nothing was changed).
fn is_servers_trouble(code: &str) -> bool {
    ["08", "57", "53"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["25006", "40001", "40P01"].contains(&code)
}

impl From<sqlx::Error> for DataError {
    fn from(error: sqlx::Error) -> Self {
        let unavailable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) if db.constraint() == Some(EMAIL_INDEX) => {
                return Self::EmailTaken;
            }
            // 22: data exception (a NUL byte in text, a value out of range).
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
                return Self::InvalidInput(db.message().to_owned());
            }
            sqlx::Error::Database(db) => db.code().is_some_and(|code| is_servers_trouble(&code)),
            _ => false,
        };
        if unavailable {
            tracing::warn!(%error, "database unavailable");
            Self::DatabaseUnavailable
        } else {
            tracing::error!(%error, "database error");
            Self::Database(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_trouble_is_503_and_a_bug_here_is_500() {
        for code in [
            "08006", "57P01", "53100", "53200", "53300", "25006", "40001", "40P01",
        ] {
            assert!(is_servers_trouble(code), "{code}");
        }
        // A syntax error, an unknown column, a check constraint: bugs here.
        for code in ["42601", "42703", "23514"] {
            assert!(!is_servers_trouble(code), "{code}");
        }
    }
}
