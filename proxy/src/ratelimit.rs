//! The original's limit on the admin API: so many requests per minute per client IP, 429
//! beyond. Kept for compatibility; `FAAS_ADMIN_RATE_LIMIT=0` turns it off.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// When the table was last cleaned, ms since the epoch: at most once a second.
    cleaned_ms: AtomicU64,
}

impl AdminLimit {
    /// A limit of `per_minute` requests per client IP; 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        AdminLimit {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            per_minute,
            cleaned_ms: AtomicU64::new(0),
        }
    }

    /// `Err(seconds)`: `ip` is over its limit and may retry after that long.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let now = control::now_ms();
        if limiter.len() > TRACKED && now > self.cleaned_ms.load(Ordering::Relaxed) + 1000 {
            self.cleaned_ms.store(now, Ordering::Relaxed);
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&client(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64 (one host usually holds a whole /64,
/// so a per-address limit would not limit it).
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
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
        // One IPv6 /64 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let limit = AdminLimit::new(1);
        assert_eq!(limit.check(v6("2001:db8::1")), Ok(()));
        assert!(limit.check(v6("2001:db8::2")).is_err());
        assert_eq!(limit.check(v6("2001:db8:0:1::1")), Ok(()));
        let off = AdminLimit::new(0);
        assert!((0..100).all(|_| off.check(a).is_ok()));
    }
}
