//! How much one page may send: a token bucket per socket.
//!
//! Every message a page sends costs the shop work, and a `say` costs more
//! than most: an entry in Redis (the Redis that keeps every cart) and a
//! message to every page in the room, on every instance. A WebSocket is a
//! pipe the page holds open, so nothing but the shop itself stops a page,
//! or a script pasted in a browser's console, from sending in a loop.
//!
//! So each socket has an allowance: a burst at once (a page that opens
//! sends three or four messages), then a steady rate, as chat services
//! allow. A message past it is refused (the page is told, nothing is
//! done); a page that goes on sending regardless is closed with 1008
//! ("policy violation").
//!
//! Rejected alternatives: one limit per instance or per room (one page
//! flooding would silence every other page), and counting in Redis (a
//! round trip per message, to protect Redis from messages).

use std::time::Instant;

/// Messages allowed at once, before the rate applies.
pub(crate) const BURST: u32 = 40;
/// Refused messages in a row after which the page is closed.
pub(crate) const REFUSALS_ALLOWED: u32 = 20;

/// What to do with the message a page just sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the allowance: act on it.
    Allowed,
    /// Over it: tell the page, do nothing.
    Refused,
    /// Over it again and again: close the socket.
    Close,
}

/// One socket's allowance.
#[derive(Debug)]
pub(crate) struct Allowance {
    /// Messages a second, once the burst is spent; `None`: no limit.
    per_second: Option<u32>,
    /// Messages that may be sent now (fractions accrue between them).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    refused_in_a_row: u32,
}

impl Allowance {
    /// A full allowance at `now`: [`BURST`] at once, then `per_second`.
    pub(crate) fn new(per_second: Option<u32>, now: Instant) -> Self {
        Self {
            per_second,
            tokens: f64::from(BURST),
            at: now,
            refused_in_a_row: 0,
        }
    }

    /// Takes one message's worth at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let Some(per_second) = self.per_second else {
            return Verdict::Allowed;
        };
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(per_second);
        self.tokens = (self.tokens + earned).min(f64::from(BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allowed;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > REFUSALS_ALLOWED {
            Verdict::Close
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_then_refusals_then_the_end() {
        let start = Instant::now();
        let mut allowance = Allowance::new(Some(10), start);
        for n in 0..BURST {
            assert_eq!(allowance.take(start), Verdict::Allowed, "message {n}");
        }
        for n in 0..REFUSALS_ALLOWED {
            assert_eq!(allowance.take(start), Verdict::Refused, "refusal {n}");
        }
        // 150 ms later, one and a half messages' worth: one more message.
        let later = start + Duration::from_millis(150);
        assert_eq!(allowance.take(later), Verdict::Allowed);
        assert_eq!(allowance.take(later), Verdict::Refused, "and only one");
        for _ in 1..REFUSALS_ALLOWED {
            assert_eq!(allowance.take(later), Verdict::Refused);
        }
        assert_eq!(
            allowance.take(later),
            Verdict::Close,
            "a page that will not stop"
        );
    }

    #[test]
    fn a_page_at_the_rate_is_never_refused() {
        let start = Instant::now();
        let mut allowance = Allowance::new(Some(10), start);
        for n in 0..10_000u32 {
            let at = start + Duration::from_millis(100) * n;
            assert_eq!(allowance.take(at), Verdict::Allowed, "message {n}");
        }
    }

    #[test]
    fn a_quiet_page_earns_back_its_burst_and_no_more() {
        let start = Instant::now();
        let mut allowance = Allowance::new(Some(10), start);
        for _ in 0..BURST {
            allowance.take(start);
        }
        let much_later = start + Duration::from_secs(3600);
        for n in 0..BURST {
            assert_eq!(allowance.take(much_later), Verdict::Allowed, "message {n}");
        }
        assert_eq!(allowance.take(much_later), Verdict::Refused);
    }

    #[test]
    fn without_a_rate_everything_is_allowed() {
        let start = Instant::now();
        let mut allowance = Allowance::new(None, start);
        for _ in 0..100_000 {
            assert_eq!(allowance.take(start), Verdict::Allowed);
        }
    }
}
