//! Stage 7's account writers: what a zone loss does to acknowledged writes.
//!
//! Carts live in Redis; accounts live in PostgreSQL, whose standby in the
//! other zone is synchronous by default. A few writers each sign up once
//! and then rename themselves every 100 ms (`PUT /api/me`, name
//! `writer 3 #41`), remembering which renames the shop acknowledged
//! (200). After a rename that fails (the shop is failing over), and after
//! the run, each reads its profile back: every acknowledged rename *after*
//! the one it finds was lost (a later rename overwrites an earlier one, so
//! the name found says how far the database got; reading back before the
//! next rename keeps a later one from hiding a loss).
//!
//! A rename that got a 503 or no answer is not acknowledged, whatever
//! became of it: a client may not count on it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop::shopper::Shopper;

/// How many writers: enough to see a loss, few enough not to load the run.
const WRITERS: usize = 5;
/// Each writer's pause between renames.
const EVERY: Duration = Duration::from_millis(100);
/// How long a rename may take before the writer stops waiting for it.
const DEADLINE: Duration = Duration::from_secs(3);

/// What the writers found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Renames the shop answered 200.
    pub acknowledged: u64,
    /// Acknowledged renames the database no longer holds.
    pub lost: u64,
}

/// One writer: its shopper (its session) and what was acknowledged.
struct Writer {
    shopper: Shopper,
    number: usize,
    acknowledged: Vec<u64>,
}

impl Writer {
    fn name(&self, n: u64) -> String {
        format!("writer {} #{n}", self.number)
    }

    async fn rename(&self, n: u64) -> bool {
        let update = self
            .shopper
            .http()
            .put(self.shopper.url("/api/me"))
            .timeout(DEADLINE)
            .json(&json!({
                "name": self.name(n),
                "address": {"line1": "1 Zone Street", "city": "Dublin", "postcode": "D01", "country": "IE"},
            }))
            .send()
            .await;
        update.is_ok_and(|r| r.status().is_success())
    }

    /// Forgets the acknowledged renames after `found` (the database does
    /// not hold them) and returns how many there were.
    fn forget_after(&mut self, found: u64) -> u64 {
        let before = self.acknowledged.len();
        self.acknowledged.retain(|&a| a <= found);
        (before - self.acknowledged.len()) as u64
    }

    /// The rename number the database holds now, asked until it answers
    /// or `deadline` passes.
    async fn found(&self, deadline: Instant) -> Option<u64> {
        while Instant::now() < deadline {
            let me = self
                .shopper
                .http()
                .get(self.shopper.url("/api/me"))
                .timeout(DEADLINE)
                .send()
                .await;
            if let Ok(response) = me
                && response.status().is_success()
                && let Ok(profile) = response.json::<Value>().await
            {
                return profile["name"]
                    .as_str()
                    .and_then(|name| name.rsplit_once('#'))
                    .and_then(|(_, n)| n.parse().ok());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

/// Signs the writers up through `url`, has them rename themselves until
/// the run is `closing`, then reads back what survived.
pub async fn run(url: String, seed: u64, closing: crate::Closing) -> Tally {
    let mut tasks = Vec::new();
    for number in 1..=WRITERS {
        let url = url.clone();
        let closing = closing.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(shopper) = Shopper::new(&url) else {
                return Tally::default();
            };
            let signup = shopper
                .http()
                .post(shopper.url("/api/signup"))
                .timeout(DEADLINE)
                .json(&json!({
                    "email": format!("writer{number}-{seed}@example.com"),
                    "password": "correct horse battery staple",
                    "name": format!("writer {number} #0"),
                }))
                .send()
                .await;
            if !signup.is_ok_and(|r| r.status().is_success()) {
                return Tally::default();
            }
            let mut writer = Writer {
                shopper,
                number,
                acknowledged: vec![0],
            };
            let mut n = 0;
            let mut lost = 0;
            // After a rename that failed, something happened (a failover?):
            // read back what the database holds before going on. Later
            // renames would otherwise overwrite, and so hide, a lost one.
            let mut in_doubt = false;
            while !closing.is_closed() {
                if in_doubt {
                    match writer.found(Instant::now() + EVERY).await {
                        Some(found) => {
                            lost += writer.forget_after(found);
                            in_doubt = false;
                        }
                        None => continue,
                    }
                }
                n += 1;
                if writer.rename(n).await {
                    writer.acknowledged.push(n);
                } else {
                    in_doubt = true;
                }
                tokio::time::sleep(EVERY).await;
            }
            let acknowledged = writer.acknowledged.len() as u64 - 1 + lost;
            match writer.found(Instant::now() + Duration::from_secs(30)).await {
                Some(found) => lost += writer.forget_after(found),
                // The profile never answered again: every rename is in doubt.
                None => lost = acknowledged,
            }
            Tally { acknowledged, lost }
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.acknowledged += tally.acknowledged;
            total.lost += tally.lost;
        }
    }
    total
}
