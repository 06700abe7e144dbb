//! How many logins and signups a client, and an account, may try.
//!
//! Guessing passwords is cheap for an attacker and dear for us (see
//! [`crate::passwords`]), so attempts are counted in Redis, shared by every
//! instance, in fixed windows (`INCR`, with an expiry set on the first):
//!
//! | what | limit | window | key |
//! | --- | --- | --- | --- |
//! | logins and signups from one client address | [`PER_CLIENT`] | 1 minute | `myclothes:attempts:client:<ip>` |
//! | failed logins to one account | [`PER_ACCOUNT`] | 15 minutes | `myclothes:attempts:account:<sha256(email)>` |
//!
//! Past a limit: 429 `too_many_attempts`, with `Retry-After` saying when
//! the window ends. The account limit counts only failures and is reset by
//! a successful login, so a shopper who mistypes twice is not locked out
//! by it; an attacker trying passwords for one account is, whatever
//! addresses they come from. (A workshop behind one NAT shares the client
//! limit: sixty a minute is plenty for a room.)
//!
//! The client's address is the last `X-Forwarded-For` entry when the peer
//! is a balancer this instance trusts (`serve --trusted-proxy`, which `up`
//! passes: the entry the balancer itself appended), and the connection's
//! own peer otherwise: anyone else could write a new address in the header
//! on every try and never reach the limit. When Redis does not answer, attempts are let through (logged):
//! the limit is a defence in depth, and the login itself needs the same
//! Redis for its session anyway.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use shop::ApiError;
use shop::Instance;

use crate::error::DataError;

/// Logins and signups one client address may try per minute.
pub const PER_CLIENT: u64 = 60;
/// Failed logins one account may take per 15 minutes.
pub const PER_ACCOUNT: u64 = 10;
const CLIENT_WINDOW: Duration = Duration::from_secs(60);
const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
const KEY_PREFIX: &str = "myclothes:attempts:";

/// The attempt counters, in the sessions' Redis.
#[derive(Clone)]
pub struct Attempts {
    redis: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts").finish_non_exhaustive()
    }
}

/// Who is trying: the client's address, as a balancer `instance` trusts
/// says it, or the peer's own.
pub fn client_of(instance: &Instance, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    if !instance.trusts_proxy(peer.ip()) {
        return peer.ip();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or_else(|| peer.ip())
}

fn account_key(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    format!("{KEY_PREFIX}account:{}", hex::encode(digest))
}

impl Attempts {
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            redis: shop::services::redis::client(url, timeout)?,
            timeout,
        })
    }

    /// Counts one login or signup from `client`; refuses it past the limit.
    pub async fn client_attempt(&self, client: IpAddr) -> Result<(), ApiError> {
        let key = format!("{KEY_PREFIX}client:{client}");
        self.count(&key, CLIENT_WINDOW, PER_CLIENT).await
    }

    /// Refuses a login to an account that has failed too often lately.
    pub async fn account_open(&self, email: &str) -> Result<(), ApiError> {
        let key = account_key(email);
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let looked = tokio::time::timeout(
            self.timeout,
            pipe.query_async::<(Option<u64>, i64)>(&mut redis),
        )
        .await;
        match looked {
            Ok(Ok((Some(failures), ttl_ms))) if failures >= PER_ACCOUNT => Err(refused(ttl_ms)),
            Ok(Ok(_)) => Ok(()),
            _ => {
                tracing::warn!("attempt counters unavailable; letting the login through");
                Ok(())
            }
        }
    }

    /// Counts a failed login to an account.
    pub async fn account_failed(&self, email: &str) {
        let _ = self
            .count(&account_key(email), ACCOUNT_WINDOW, u64::MAX)
            .await;
    }

    /// Forgets an account's failures (it just logged in).
    pub async fn account_succeeded(&self, email: &str) {
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("DEL");
        command.arg(account_key(email));
        let _ = tokio::time::timeout(self.timeout, command.query_async::<i64>(&mut redis)).await;
    }

    /// `INCR` (with the window's expiry on the first), then the verdict.
    async fn count(&self, key: &str, window: Duration, limit: u64) -> Result<(), ApiError> {
        let mut redis = self.redis.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCR")
            .arg(key)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(window_ms)
            .arg("NX")
            .ignore()
            .cmd("PTTL")
            .arg(key);
        let counted =
            tokio::time::timeout(self.timeout, pipe.query_async::<(u64, i64)>(&mut redis)).await;
        match counted {
            Ok(Ok((count, ttl_ms))) if count > limit => Err(refused(ttl_ms)),
            Ok(Ok(_)) => Ok(()),
            _ => {
                tracing::warn!("attempt counters unavailable; letting the attempt through");
                Ok(())
            }
        }
    }
}

fn refused(ttl_ms: i64) -> ApiError {
    let retry_after_s = u32::try_from(ttl_ms.max(1_000) / 1_000).unwrap_or(u32::MAX);
    DataError::TooManyAttempts { retry_after_s }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancers_entry_names_the_client_and_no_one_elses() {
        let balancer: SocketAddr = "10.0.0.2:4000".parse().expect("addr");
        let anyone: SocketAddr = "10.9.9.9:4000".parse().expect("addr");
        let instance = Instance::new("i1")
            .expect("an id")
            .with_trusted_proxies([balancer.ip()]);
        let mut headers = HeaderMap::new();
        assert_eq!(
            client_of(&instance, &headers, balancer).to_string(),
            "10.0.0.2"
        );
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().expect("value"),
        );
        assert_eq!(
            client_of(&instance, &headers, balancer).to_string(),
            "198.51.100.7",
            "the entry the balancer appended"
        );
        assert_eq!(
            client_of(&instance, &headers, anyone).to_string(),
            "10.9.9.9",
            "a header from anyone else is theirs to make up"
        );
    }

    #[test]
    fn an_account_is_counted_whatever_the_case_of_its_email() {
        assert_eq!(
            account_key("Ada@Example.com "),
            account_key("ada@example.com")
        );
        assert!(!account_key("ada@example.com").contains("ada"));
    }
}
