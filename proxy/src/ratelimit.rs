//! The original's limit on the admin API: so many requests per minute per client IP, 429
//! beyond. Kept for compatibility; `FAAS_ADMIN_RATE_LIMIT=0` turns it off.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Clients tracked before the ones back at a full allowance are forgotten.
const TRACKED: usize = 10_000;

/// Admin requests allowed per client IP: a burst of `per_minute`, one more every
/// `60 / per_minute` seconds.
pub struct AdminLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// The configured limit, for messages.
    pub per_minute: u32,
}

impl AdminLimit {
    /// A limit of `per_minute` requests per client IP; 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        AdminLimit {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            per_minute,
        }
    }

    /// `Err(seconds)`: `ip` is over its limit and may retry after that long.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > TRACKED {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_per_client_then_says_when_to_retry() {
        let limit = AdminLimit::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limit.check(a), Ok(()));
        }
        let wait = limit.check(a).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert_eq!(
            limit.check(b),
            Ok(()),
            "another client has its own allowance"
        );
        let off = AdminLimit::new(0);
        assert!((0..100).all(|_| off.check(a).is_ok()));
    }
}
