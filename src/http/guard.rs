//! Brute-force protection: a budget of failed lookups (`COUPON_NOT_FOUND`) per user and,
//! optionally, per client IP, in time-bounded moka caches so memory stays bounded whatever
//! the number of distinct users.
//!
//! Invariant: while nobody is over budget, a lookup costs one atomic load here; the caches
//! are touched only after a failed lookup, or when someone is blocked.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use moka::sync::Cache;

use crate::config::ProtectionSettings;
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// Keys kept at most, per cache; the least used go first past this.
const MAX_KEYS: u64 = 1_000_000;

/// Who went over budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Ip,
}

/// A refusal: who is over budget and for how much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub scope: Scope,
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    failures: AtomicU32,
}

/// One budget: failures per key per window.
struct Budget<K> {
    limit: u32,
    windows: Cache<K, Arc<Window>>,
}

/// The failed-lookup budgets of one service instance.
pub struct LookupGuard {
    users: Option<Budget<Box<str>>>,
    ips: Option<Budget<IpAddr>>,
    window: Duration,
    /// Keys currently over budget; zero means no lookup needs checking.
    blocked: Arc<AtomicUsize>,
    trusted_proxies: Vec<IpAddr>,
}

impl std::fmt::Debug for LookupGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupGuard").field("window", &self.window).finish_non_exhaustive()
    }
}

impl<K: std::hash::Hash + Eq + Send + Sync + 'static> Budget<K> {
    fn new(limit: u32, window: Duration, blocked: &Arc<AtomicUsize>) -> Option<Budget<K>> {
        if limit == 0 {
            return None;
        }
        let blocked = blocked.clone();
        let windows = Cache::builder()
            .max_capacity(MAX_KEYS)
            // Time to live, not idle: the window runs from the first failure.
            .time_to_live(window)
            .eviction_listener(move |_key, window: Arc<Window>, _cause| {
                if window.failures.load(Ordering::Relaxed) >= limit {
                    blocked.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .build();
        Some(Budget { limit, windows })
    }

    fn blocked_for(&self, key: &K, window: Duration) -> Option<Duration> {
        let current = self.windows.get(key)?;
        (current.failures.load(Ordering::Relaxed) >= self.limit)
            .then(|| window.saturating_sub(current.started.elapsed()).max(Duration::from_secs(1)))
    }

    fn fail(&self, key: K, blocked: &AtomicUsize) {
        let current =
            self.windows.get_with(key, || Arc::new(Window { started: Instant::now(), failures: AtomicU32::new(0) }));
        if current.failures.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            blocked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LookupGuard {
    pub fn new(settings: &ProtectionSettings) -> LookupGuard {
        let window = settings.window;
        let blocked = Arc::new(AtomicUsize::new(0));
        LookupGuard {
            users: Budget::new(settings.failed_lookups_per_user, window, &blocked),
            ips: Budget::new(settings.failed_lookups_per_ip, window, &blocked),
            window,
            blocked,
            trusted_proxies: settings.trusted_proxies.clone(),
        }
    }

    /// Refuses a lookup by a user or IP that has used up its failed lookups (429), and
    /// counts the refusal.
    pub fn admit(&self, user_id: &str, ip: IpAddr, metrics: &Metrics) -> Result<(), ApiError> {
        let Some(blocked) = self.check(user_id, ip) else { return Ok(()) };
        match blocked.scope {
            Scope::User => metrics.refused_by_user.increment(1),
            Scope::Ip => metrics.refused_by_ip.increment(1),
        }
        Err(ApiError::TooManyFailedLookups { retry_after_secs: blocked.retry_after.as_secs_f64().ceil() as u64 })
    }

    /// Before a lookup: whether this user or IP has used up its failures.
    pub fn check(&self, user_id: &str, ip: IpAddr) -> Option<Blocked> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let by_user = self.users.as_ref().and_then(|b| b.blocked_for(&Box::from(user_id), self.window));
        if let Some(retry_after) = by_user {
            return Some(Blocked { scope: Scope::User, retry_after });
        }
        let by_ip = self.ips.as_ref().and_then(|b| b.blocked_for(&ip, self.window));
        by_ip.map(|retry_after| Blocked { scope: Scope::Ip, retry_after })
    }

    /// After a lookup that found no coupon.
    pub fn record_failure(&self, user_id: &str, ip: IpAddr) {
        if let Some(users) = &self.users {
            users.fail(user_id.into(), &self.blocked);
        }
        if let Some(ips) = &self.ips {
            ips.fail(ip, &self.blocked);
        }
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For` (the one the proxies cannot have made up).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        // Walk from the right, past our own proxies; whatever is left of the first untrusted
        // hop was written by the client and proves nothing.
        for hop in hops.into_iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(addr) if self.trusted_proxies.contains(&addr) => continue,
                Ok(addr) => return addr,
                Err(_) => break,
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn guard(per_user: u32, per_ip: u32, trusted: &[&str]) -> LookupGuard {
        LookupGuard::new(&ProtectionSettings {
            failed_lookups_per_user: per_user,
            failed_lookups_per_ip: per_ip,
            window: Duration::from_secs(60),
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            max_active_holds_per_user: 3,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_user_is_blocked_after_the_budget_and_others_are_not() {
        let guard = guard(3, 0, &[]);
        let here = ip("192.0.2.1");
        for _ in 0..2 {
            guard.record_failure("u1", here);
        }
        assert_eq!(guard.check("u1", here), None, "two failures of three");
        guard.record_failure("u1", here);
        let blocked = guard.check("u1", here).expect("blocked");
        assert_eq!(blocked.scope, Scope::User);
        assert!(blocked.retry_after > Duration::from_secs(58) && blocked.retry_after <= Duration::from_secs(60));
        assert_eq!(guard.check("u2", here), None);
    }

    #[test]
    fn the_ip_budget_is_off_unless_configured() {
        let off = guard(0, 0, &[]);
        for n in 0..100 {
            off.record_failure(&format!("u{n}"), ip("192.0.2.1"));
        }
        assert_eq!(off.check("u1", ip("192.0.2.1")), None);
        let on = guard(0, 5, &[]);
        for n in 0..5 {
            on.record_failure(&format!("u{n}"), ip("192.0.2.1"));
        }
        assert_eq!(on.check("fresh-user", ip("192.0.2.1")).map(|b| b.scope), Some(Scope::Ip));
        assert_eq!(on.check("fresh-user", ip("192.0.2.2")), None);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let guard = guard(1, 1, &["10.0.0.1", "10.0.0.2"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 198.51.100.4, 10.0.0.2"));
        assert_eq!(guard.client_ip(ip("10.0.0.1"), &headers), ip("198.51.100.4"), "the nearest untrusted hop");
        assert_eq!(
            guard.client_ip(ip("192.0.2.7"), &headers),
            ip("192.0.2.7"),
            "an untrusted peer's header is ignored"
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage, 198.51.100.4"));
        assert_eq!(guard.client_ip(ip("10.0.0.1"), &headers), ip("198.51.100.4"), "client junk on the left is ignored");
        headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(guard.client_ip(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }
}
