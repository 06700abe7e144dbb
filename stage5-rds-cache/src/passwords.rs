//! Password hashing, with admission control.
//!
//! argon2id costs about 19 MiB of memory and tens of milliseconds of CPU
//! per hash, on purpose: that is what makes a stolen table of hashes slow
//! to attack. It is also what makes a login a weapon: a few hundred
//! concurrent logins with made-up passwords would each get a blocking
//! thread (tokio's blocking pool grows to 512) and their 19 MiB, and the
//! instance would swap while its other requests waited behind them.
//!
//! So hashing is admitted like a balancer admits requests: at most one hash
//! per core at a time ([`Passwords::new`]), a short queue behind them, and
//! past that an immediate 503 `too_busy` with `Retry-After`. The queue
//! waits a bounded time too. Everything else the instance serves stays
//! fast, because at most that many threads are ever busy hashing.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use shop::ApiError;
use tokio::sync::Semaphore;

use crate::error::DataError;

/// How long a login may wait for its turn to hash.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// The hashing slots, shared by every request of this instance.
#[derive(Debug)]
pub struct Passwords {
    slots: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Passwords {
    /// One slot per core, and twice that many may wait.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_slots(cores, 2 * cores)
    }

    /// `slots` hashes at once, `max_waiting` more waiting their turn.
    pub fn with_slots(slots: usize, max_waiting: usize) -> Self {
        Self {
            slots: Semaphore::new(slots.max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Hashes a new password (argon2id, a fresh random salt).
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.admitted(move || {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|_| ApiError::Internal)?;
            let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::Internal)?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|_| ApiError::Internal)
        })
        .await
    }

    /// Whether `password` matches `hash`. With no hash (no such account),
    /// checks against a hash of a password nobody has, so that an unknown
    /// email costs as much as a wrong password and the timing tells nothing.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let matches = self
            .admitted(move || {
                let parsed = PasswordHash::new(&hash).map_err(|_| ApiError::Internal)?;
                Ok(Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on the blocking pool once a slot is free.
    async fn admitted<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                let joined = self
                    .waiting
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.max_waiting).then_some(n + 1)
                    })
                    .is_ok();
                if !joined {
                    return Err(DataError::TooBusy.into());
                }
                let waited = tokio::time::timeout(QUEUE_TIMEOUT, self.slots.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match waited {
                    Ok(Ok(slot)) => slot,
                    _ => return Err(DataError::TooBusy.into()),
                }
            }
        };
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| ApiError::Internal)?;
        drop(slot);
        result
    }
}

/// A real argon2id hash of a password nobody has (see [`Passwords::verify`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_and_an_unknown_account_never_does() {
        let passwords = Passwords::with_slots(1, 1);
        let hash = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("wrong".into(), Some(hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("not anyone's password".into(), None)
                .await
                .expect("verify")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn past_the_slots_and_the_queue_hashing_is_refused_at_once() {
        let passwords = std::sync::Arc::new(Passwords::with_slots(1, 1));
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let passwords = std::sync::Arc::clone(&passwords);
                tokio::spawn(async move { passwords.hash("a password".into()).await })
            })
            .collect();
        let mut refused = 0;
        for attempt in attempts {
            if let Err(error) = attempt.await.expect("task") {
                assert_eq!(error.code(), "too_busy");
                refused += 1;
            }
        }
        assert!(
            refused >= 1,
            "eight at once, one slot and one place in the queue"
        );
    }
}
