//! Brute-force protection: budgets of failed lookups (unknown codes, unknown orders to
//! release) and of failed admin authentications, in time-bounded caches.
//!
//! Who is counted depends on who calls. A trusted backend (the API token, or none configured)
//! vouches for its users: it is budgeted per user. An anonymous caller is budgeted per user
//! *at its address* (so one address cannot lock a user out elsewhere) and per address (so
//! rotating the user id does not escape the budget); an IPv6 address counts by its /64.
//!
//! Invariants: while nobody is over budget, a lookup costs one atomic load here. Keys are
//! keyed 64-bit hashes and windows two counters, so an entry has a fixed size whatever the
//! ids' lengths, and every table is capped: the whole guard stays under [`MAX_BYTES`]. A
//! full table first drops expired windows, then the oldest quarter (the nearest to expiry).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper::HeaderMap;

use crate::config::ProtectionSettings;
use crate::http::connections::address_key;
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// The guard's memory at its cap, all budgets together.
pub const MAX_BYTES: u64 = 64 << 20;
/// Shards per budget, so that failures from many connections rarely wait on one lock.
const SHARDS: usize = 64;
/// Bytes a table slot costs: the key, the window, hashbrown's control byte.
const SLOT_BYTES: u64 = std::mem::size_of::<(u64, Window)>() as u64 + 1;

/// Whose budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A user, as a trusted backend names it.
    User,
    /// A user, as callers from one address name it.
    UserAtAddress,
    /// An address (an IPv6 /64).
    Address,
}

impl Scope {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::UserAtAddress => "user_address",
            Scope::Address => "address",
        }
    }
}

/// A refusal: who is over budget and for how much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub scope: Scope,
    pub retry_after: Duration,
}

/// Failures of one key since `started` (seconds since the guard's epoch).
#[derive(Debug, Clone, Copy)]
struct Window {
    started: u32,
    failures: u32,
}

/// One budget: failures per key per window.
struct Budget {
    limit: u32,
    /// The window, in whole seconds (at least one).
    window: u32,
    shards: Box<[Mutex<HashMap<u64, Window, ahash::RandomState>>]>,
    /// Keys a shard holds at most: 7/8 of a power-of-two table, so it never grows past it.
    per_shard: usize,
}

impl Budget {
    fn new(limit: u32, window: Duration, max_bytes: u64) -> Option<Budget> {
        if limit == 0 {
            return None;
        }
        let slots = (max_bytes / SHARDS as u64 / SLOT_BYTES).max(16);
        let slots = 1usize << slots.ilog2();
        let hasher = ahash::RandomState::new();
        Some(Budget {
            limit,
            window: u32::try_from(window.as_secs()).unwrap_or(u32::MAX).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(hasher.clone()))).collect(),
            per_shard: slots / 8 * 7,
        })
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Window, ahash::RandomState>> {
        // Keys are keyed hashes already: their top bits pick the shard evenly.
        self.shards[(key >> 58) as usize % SHARDS].lock().expect("guard shard")
    }

    fn is_live(&self, window: &Window, now: u32) -> bool {
        now.saturating_sub(window.started) < self.window
    }

    /// How long `key` stays over budget, if it is.
    fn blocked_for(&self, key: u64, now: u32) -> Option<Duration> {
        let window = *self.shard(key).get(&key)?;
        (self.is_live(&window, now) && window.failures >= self.limit)
            .then(|| Duration::from_secs(u64::from((window.started + self.window).saturating_sub(now).max(1))))
    }

    /// Counts a failure of `key`; returns when its window ends if this failure used up the
    /// budget.
    fn fail(&self, key: u64, now: u32) -> Option<u32> {
        let mut shard = self.shard(key);
        let live = shard.get(&key).is_some_and(|w| self.is_live(w, now));
        if !live && !shard.contains_key(&key) && shard.len() >= self.per_shard {
            self.make_room(&mut shard, now);
        }
        let window = shard.entry(key).or_insert(Window { started: now, failures: 0 });
        if !live {
            *window = Window { started: now, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
        (window.failures == self.limit).then_some(window.started.saturating_add(self.window))
    }

    /// Frees at least a quarter of a full shard: expired windows, then the oldest. Each call
    /// costs a pass over the shard and buys a quarter of a shard of inserts. The survivors
    /// move to a fresh table: removing in place would leave tombstones, and hashbrown would
    /// double the table to get rid of them.
    fn make_room(&self, shard: &mut HashMap<u64, Window, ahash::RandomState>, now: u32) {
        let mut starts: Vec<u32> = shard.values().filter(|w| self.is_live(w, now)).map(|w| w.started).collect();
        let excess = starts.len().saturating_sub(self.per_shard / 4 * 3);
        // Drop the `excess` oldest: every window started before `cut`, and `ties` of those
        // started at `cut`.
        let (cut, mut ties) = match excess {
            0 => (0, 0),
            _ => {
                let (older, cut, _) = starts.select_nth_unstable(excess);
                let cut = *cut;
                (cut, older.iter().filter(|s| **s == cut).count())
            }
        };
        let mut fresh = HashMap::with_capacity_and_hasher(self.per_shard, shard.hasher().clone());
        fresh.extend(shard.drain().filter(|(_, w)| {
            let dropped = !self.is_live(w, now) || w.started < cut || (w.started == cut && ties > 0);
            if self.is_live(w, now) && w.started == cut && ties > 0 {
                ties -= 1;
            }
            !dropped
        }));
        *shard = fresh;
    }

    fn keys(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().expect("guard shard").len() as u64).sum()
    }
}

/// The budgets of one service instance.
pub struct LookupGuard {
    users: Option<Budget>,
    users_at_addresses: Option<Budget>,
    addresses: Option<Budget>,
    admin: Option<Budget>,
    /// Anonymous validations per address per minute.
    validations: Option<Budget>,
    window: Duration,
    /// Until when (seconds since `epoch`, exclusive) some key may be over budget; zero or past
    /// means no lookup needs checking.
    blocked_until: AtomicU32,
    epoch: Instant,
    keys: ahash::RandomState,
    trusted_proxies: Vec<IpAddr>,
}

impl std::fmt::Debug for LookupGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupGuard").field("window", &self.window).finish_non_exhaustive()
    }
}

impl LookupGuard {
    pub fn new(settings: &ProtectionSettings) -> LookupGuard {
        let window = settings.window;
        // Five tables share the memory cap.
        let bytes = MAX_BYTES / 5;
        LookupGuard {
            users: Budget::new(settings.failed_lookups_per_user, window, bytes),
            users_at_addresses: Budget::new(settings.failed_lookups_per_user, window, bytes),
            addresses: Budget::new(settings.failed_lookups_per_address, window, bytes),
            admin: Budget::new(settings.failed_admin_auths_per_address, window, bytes),
            validations: Budget::new(settings.anonymous_validations_per_minute, Duration::from_secs(60), bytes),
            window,
            blocked_until: AtomicU32::new(0),
            epoch: Instant::now(),
            keys: ahash::RandomState::new(),
            trusted_proxies: settings.trusted_proxies.clone(),
        }
    }

    /// Refuses a lookup (429) by a caller over budget, and counts the refusal by scope.
    pub(crate) fn admit(&self, user_id: &str, ip: IpAddr, backend: bool, metrics: &Metrics) -> Result<(), ApiError> {
        let Some(blocked) = self.check(user_id, ip, backend) else { return Ok(()) };
        metrics.refused_lookups.inc(blocked.scope.label());
        Err(ApiError::TooManyFailedLookups { retry_after_secs: blocked.retry_after.as_secs_f64().ceil() as u64 })
    }

    /// Before a lookup: whether this caller has used up its failures.
    pub fn check(&self, user_id: &str, ip: IpAddr, backend: bool) -> Option<Blocked> {
        let now = self.someone_blocked()?;
        self.budgets(user_id, ip, backend).into_iter().find_map(|(scope, budget, key)| {
            budget.blocked_for(key, now).map(|retry_after| Blocked { scope, retry_after })
        })
    }

    /// After a lookup that found nothing (an unknown code, an unknown order to release).
    pub fn record_failure(&self, user_id: &str, ip: IpAddr, backend: bool) {
        let now = self.now();
        for (_, budget, key) in self.budgets(user_id, ip, backend) {
            self.note_blocked(budget.fail(key, now));
        }
    }

    /// Seconds since the guard's epoch.
    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// The time now if some key may be over budget; `None` (after one atomic load, while
    /// nobody has been) if none can be.
    fn someone_blocked(&self) -> Option<u32> {
        let until = self.blocked_until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = self.now();
        if now >= until {
            // Nobody is blocked any more; a key blocked meanwhile moved `until` and stays.
            let _ = self.blocked_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        Some(now)
    }

    fn note_blocked(&self, until: Option<u32>) {
        if let Some(until) = until {
            self.blocked_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// The budgets that count this caller, with its key in each.
    fn budgets(&self, user_id: &str, ip: IpAddr, backend: bool) -> Vec<(Scope, &Budget, u64)> {
        let address = address_key(ip);
        let user = self.keys.hash_one(("user", user_id));
        let candidates = if backend {
            [(Scope::User, self.users.as_ref(), user), (Scope::Address, None, 0), (Scope::UserAtAddress, None, 0)]
        } else {
            [
                (
                    Scope::UserAtAddress,
                    self.users_at_addresses.as_ref(),
                    self.keys.hash_one(("user@", user_id, address)),
                ),
                (Scope::Address, self.addresses.as_ref(), self.keys.hash_one(("address", address))),
                (Scope::User, None, 0),
            ]
        };
        candidates.into_iter().filter_map(|(scope, budget, key)| Some((scope, budget?, key))).collect()
    }

    /// Counts a validate by an anonymous caller against its address's minute
    /// (`protection.anonymous_validations_per_minute`); past it, `429` until the minute ends.
    /// A backend is not counted: it validates for its shoppers, from one address.
    pub(crate) fn admit_validation(&self, ip: IpAddr, backend: bool, metrics: &Metrics) -> Result<(), ApiError> {
        let Some(budget) = self.validations.as_ref().filter(|_| !backend) else { return Ok(()) };
        let key = self.keys.hash_one(("validations", address_key(ip)));
        let now = self.now();
        if let Some(wait) = budget.blocked_for(key, now) {
            metrics.refused_lookups.inc("validations");
            return Err(ApiError::TooManyValidations { retry_after_secs: wait.as_secs_f64().ceil() as u64 });
        }
        budget.fail(key, now);
        Ok(())
    }

    /// Refuses an admin call from an address that failed to authenticate too often.
    pub(crate) fn admit_admin(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(admin) = &self.admin else { return Ok(()) };
        let Some(now) = self.someone_blocked() else { return Ok(()) };
        match admin.blocked_for(self.keys.hash_one(("admin", address_key(ip))), now) {
            Some(wait) => Err(ApiError::TooManyFailedLookups { retry_after_secs: wait.as_secs_f64().ceil() as u64 }),
            None => Ok(()),
        }
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub(crate) fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// After an admin call with a missing or wrong token.
    pub fn record_admin_failure(&self, ip: IpAddr) {
        if let Some(admin) = &self.admin {
            self.note_blocked(admin.fail(self.keys.hash_one(("admin", address_key(ip))), self.now()));
        }
    }

    /// Keys held, every budget together.
    pub fn keys(&self) -> u64 {
        [&self.users, &self.users_at_addresses, &self.addresses, &self.admin]
            .iter()
            .flat_map(|b| b.as_ref())
            .map(Budget::keys)
            .sum()
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For` (the one the proxies cannot have made up).
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
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
            match forwarded_address(hop) {
                Some(addr) if self.trusted_proxies.contains(&addr) => continue,
                Some(addr) => return addr,
                None => break,
            }
        }
        peer
    }
}

/// An `X-Forwarded-For` entry's address: `ip`, `ip:port` or `[v6]:port` (some proxies write
/// the port; reading those as garbage fell back to the proxy's own address, one budget for
/// everyone behind it).
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip())
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn guard(per_user: u32, per_address: u32, trusted: &[&str]) -> LookupGuard {
        LookupGuard::new(&ProtectionSettings {
            failed_lookups_per_user: per_user,
            failed_lookups_per_address: per_address,
            window: Duration::from_secs(60),
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            failed_admin_auths_per_address: 10,
            max_active_holds_per_user: 3,
            assigned_codes_per_user: 10,
            anonymous_validations_per_minute: 0,
            hold_share_percent: 0,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_backend_user_is_blocked_after_the_budget_and_others_are_not() {
        let guard = guard(3, 100, &[]);
        let here = ip("192.0.2.1");
        for _ in 0..2 {
            guard.record_failure("u1", here, true);
        }
        assert_eq!(guard.check("u1", here, true), None, "two failures of three");
        guard.record_failure("u1", here, true);
        let blocked = guard.check("u1", here, true).expect("blocked");
        assert_eq!(blocked.scope, Scope::User);
        assert!(blocked.retry_after > Duration::from_secs(58) && blocked.retry_after <= Duration::from_secs(60));
        assert_eq!(guard.check("u2", here, true), None);
        assert!(guard.check("u1", ip("198.51.100.1"), true).is_some(), "a backend's user is blocked everywhere");
    }

    #[test]
    fn an_anonymous_caller_cannot_rotate_users_or_lock_a_user_out_elsewhere() {
        let guard = guard(3, 10, &[]);
        let attacker = ip("203.0.113.7");
        for n in 0..3 {
            guard.record_failure("victim", attacker, false);
            assert!(n < 2 || guard.check("victim", attacker, false).is_some());
        }
        assert_eq!(guard.check("victim", attacker, false).map(|b| b.scope), Some(Scope::UserAtAddress));
        assert_eq!(guard.check("victim", ip("198.51.100.1"), false), None, "the victim elsewhere is not locked out");
        assert_eq!(guard.check("victim", attacker, true), None, "nor through the shop's backend");
        // Rotating the user id: the address runs out after ten failures in all.
        for n in 0..7 {
            guard.record_failure(&format!("rotated-{n}"), attacker, false);
        }
        assert_eq!(guard.check("anyone-new", attacker, false).map(|b| b.scope), Some(Scope::Address));
        // An IPv6 /64 is one address.
        let six = super::tests::guard(3, 2, &[]);
        six.record_failure("a", ip("2001:db8:1:2::1"), false);
        six.record_failure("b", ip("2001:db8:1:2:ffff::9"), false);
        assert_eq!(six.check("c", ip("2001:db8:1:2::abcd"), false).map(|b| b.scope), Some(Scope::Address));
        assert_eq!(six.check("c", ip("2001:db8:1:3::1"), false), None);
    }

    #[test]
    fn admin_failures_are_throttled_per_address() {
        let guard = guard(0, 0, &[]);
        for _ in 0..10 {
            assert!(guard.admit_admin(ip("192.0.2.1")).is_ok());
            guard.record_admin_failure(ip("192.0.2.1"));
        }
        assert!(matches!(guard.admit_admin(ip("192.0.2.1")), Err(ApiError::TooManyFailedLookups { .. })));
        assert!(guard.admit_admin(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn keys_are_fixed_size_and_capped() {
        let guard = guard(1_000, 1_000_000, &[]);
        let long = "x".repeat(10_000);
        guard.record_failure(&long, ip("192.0.2.1"), false);
        assert_eq!(guard.keys(), 2);
        assert_eq!(SLOT_BYTES, 17);
    }

    #[test]
    fn a_window_ends_on_time_and_starts_afresh() {
        let budget = Budget::new(2, Duration::from_secs(60), 1 << 20).unwrap();
        assert_eq!(budget.fail(7, 100), None);
        assert_eq!(budget.fail(7, 110), Some(160), "the second failure uses the budget up");
        assert_eq!(budget.blocked_for(7, 110), Some(Duration::from_secs(50)));
        assert_eq!(budget.blocked_for(7, 159), Some(Duration::from_secs(1)));
        assert_eq!(budget.blocked_for(7, 160), None, "the window is over");
        assert_eq!(budget.fail(7, 160), None, "a new window counts from one");
        assert_eq!(budget.fail(7, 161), Some(220));
        assert_eq!(budget.fail(7, 162), None, "over budget is reported once");
    }

    #[test]
    fn a_full_table_drops_expired_then_oldest_windows_and_stays_capped() {
        // 16 slots a shard: at most 14 keys in each of the 64 shards. Keys below 2^58 all
        // fall in the first shard.
        let budget = Budget::new(1, Duration::from_secs(60), 64 * 16 * SLOT_BYTES).unwrap();
        assert_eq!(budget.per_shard, 14);
        for key in 0..14 {
            budget.fail(key, key as u32);
        }
        assert_eq!(budget.shard(0).len(), 14);
        // Full of live windows: the oldest (started at 0 to 4) make room for a quarter.
        assert_eq!(budget.fail(100, 20), Some(80));
        assert_eq!(budget.shard(0).len(), 10);
        assert!((0..5).all(|key| budget.blocked_for(key, 20).is_none()));
        assert!((5..14).chain([100]).all(|key| budget.blocked_for(key, 20).is_some()));
        // Ties at the cut: only as many as needed go.
        let tied = Budget::new(1, Duration::from_secs(60), 64 * 16 * SLOT_BYTES).unwrap();
        for key in 0..14 {
            tied.fail(key, 7);
        }
        tied.fail(100, 8);
        assert_eq!(tied.shard(0).len(), 10);
        // Every window expired: a full shard drops them all.
        for key in 200..204 {
            budget.fail(key, 21);
        }
        assert_eq!(budget.fail(300, 1_000), Some(1_060));
        assert_eq!(budget.shard(0).len(), 1);
        // Many more keys than room: never more than the cap, and no table grew past it.
        for key in 0..100_000u64 {
            budget.fail(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), 2_000 + (key / 1_000) as u32);
        }
        let cap = SHARDS * budget.per_shard;
        assert!(budget.keys() <= cap as u64);
        let slots: usize = budget.shards.iter().map(|s| s.lock().unwrap().capacity()).sum();
        assert!(slots <= cap, "no shard grew past its table: {slots}");
    }

    #[test]
    fn nobody_blocked_costs_no_lookup() {
        let guard = guard(1, 100, &[]);
        assert_eq!(guard.blocked_until.load(Ordering::Relaxed), 0);
        guard.record_failure("u1", ip("192.0.2.1"), true);
        assert!(guard.blocked_until.load(Ordering::Relaxed) >= 60);
        assert!(guard.check("u1", ip("192.0.2.1"), true).is_some());
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
        // Entries with a port are addresses too.
        for (entry, expected) in [
            ("198.51.100.4:51234", "198.51.100.4"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            (" 198.51.100.4:1 , 10.0.0.2:8080", "198.51.100.4"),
        ] {
            headers.insert("x-forwarded-for", HeaderValue::from_static(entry));
            assert_eq!(guard.client_ip(ip("10.0.0.1"), &headers), ip(expected), "{entry}");
        }
    }
}
