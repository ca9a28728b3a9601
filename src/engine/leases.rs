//! Quota leases: the blocks of a limited total (a coupon's uses, a campaign's uses or budget)
//! this instance took from PostgreSQL and spends from memory, so that a limited redeem
//! waits on the database only when its block runs out.
//!
//! Invariant: a unit is spent here only if PostgreSQL granted it to this instance's lease
//! and it was not spent or given back before; PostgreSQL's `quota_grant` never grants past
//! the limit. So the limit holds across every instance, whatever the routing, the crashes
//! or the clocks: a unit in doubt is unavailable, never granted twice.
//!
//! Sizing: a grant asks for what the scope's recent rate spends in `target` (at least what
//! the waiting requests need); a refill starts in the background when less than `refill_at`
//! of stock is left; PostgreSQL halves the free units among the holders, so blocks shrink
//! geometrically near the end. Units idle for `idle_return`, asked back by another instance
//! (a reclaim), or far beyond the rate, go back.
//!
//! A grant or a return is in doubt when its statement fails: it may have committed with its
//! answer lost. Both are numbered per lease, and one in doubt is asked again under its number
//! until PostgreSQL answers for it, which then answers what the first call did: a doubtful
//! grant's units are neither lost nor granted twice, a doubtful return's units wait aside,
//! neither sold nor returned twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::ports::Scope;
use crate::engine::ports::{ClusterPort, Grant};

/// Why units could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// Nothing is free and no other instance holds any: the limit is reached.
    Exhausted,
    /// Units may exist but cannot be had now (held by other instances, in doubt after a
    /// crash, or PostgreSQL unreachable): retry shortly.
    Unavailable,
}

/// How leases are sized and kept.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// A grant asks for what the recent rate spends in this long.
    pub target: Duration,
    /// A refill starts when less than this long of stock is left.
    pub refill_at: Duration,
    /// How long a request waits for units before it is answered `Unavailable`.
    pub claim_wait: Duration,
    /// Units not spent for this long go back.
    pub idle_return: Duration,
    /// After a grant found the limit reached, refusals are answered locally for this long.
    pub exhausted_for: Duration,
}

impl LeaseSettings {
    /// How long a "limit reached" from a grant is believed without asking again: not a
    /// setting, because it only trades a round trip for a refusal's freshness.
    pub const EXHAUSTED_FOR: Duration = Duration::from_millis(200);
}

/// Counts for `/metrics` and the admin statistics.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Takes that found their units in memory.
    pub local: AtomicU64,
    /// Takes that waited for a grant.
    pub waited: AtomicU64,
    pub grants: AtomicU64,
    pub empty_grants: AtomicU64,
    pub failed_grants: AtomicU64,
    pub returns: AtomicU64,
    pub units_returned: AtomicU64,
}

/// What one grant round said, for the requests waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Granted,
    Exhausted,
    HeldElsewhere,
    Failed,
}

#[derive(Debug)]
struct State {
    available: u64,
    /// Units the waiting requests need.
    waiting: u64,
    in_flight: bool,
    /// Completed grant rounds, and what the last said.
    rounds: u64,
    verdict: Verdict,
    exhausted_until: Option<Instant>,
    /// Units spent since the rate was last updated, and the rate (units a second).
    spent: u64,
    rate: f64,
    last_spend: Instant,
    /// Another instance asked for units back.
    reclaim: bool,
    /// A return sent and not yet answered for: its units are out of `available`.
    returning: Option<Return>,
    /// The number of the last return made of this lease.
    returns_made: u64,
    /// The number of the last grant asked for, and whether its answer is still owed.
    grants_made: u64,
    grant_in_doubt: bool,
    /// When the last grant round ended.
    answered: Instant,
}

/// A request among a lease's waiting ones: leaves the count when answered, or when dropped
/// (its client went away), so that an abandoned wait never keeps units from going back.
struct Waiting<'a> {
    lease: &'a ScopeLease,
    units: u64,
    counted: bool,
}

impl Waiting<'_> {
    /// Leaves the count, under the lock the caller holds.
    fn leave(&mut self, st: &mut State) {
        if std::mem::take(&mut self.counted) {
            st.waiting = st.waiting.saturating_sub(self.units);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut st = self.lease.state.lock().expect("lease");
            st.waiting = st.waiting.saturating_sub(self.units);
        }
    }
}

/// A return of units, numbered one after the other per lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Return {
    seq: u64,
    units: u64,
}

#[derive(Debug)]
struct ScopeLease {
    state: Mutex<State>,
    changed: Notify,
}

/// Every lease of this instance.
#[derive(Debug)]
pub struct Leases {
    port: Arc<dyn ClusterPort>,
    /// Sharded: a take looks its scope up without a lock every scope shares.
    scopes: dashmap::DashMap<Scope, Arc<ScopeLease>>,
    settings: LeaseSettings,
    stats: LeaseStats,
}

/// How often upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_millis(100);
/// After "other instances hold the rest", how long before asking again.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(50);
/// What a first grant asks for, in multiples of the request, before any rate is known.
const FIRST_BLOCK: u64 = 256;

impl Leases {
    pub fn new(port: Arc<dyn ClusterPort>, settings: LeaseSettings) -> Arc<Leases> {
        Arc::new(Leases { port, scopes: dashmap::DashMap::new(), settings, stats: LeaseStats::default() })
    }

    /// The counts so far.
    pub fn stats(&self) -> &LeaseStats {
        &self.stats
    }

    /// Units held unspent in memory, across every scope.
    pub fn held(&self) -> u64 {
        let scopes: Vec<_> = self.scopes.iter().map(|entry| entry.value().clone()).collect();
        scopes.iter().map(|s| s.state.lock().expect("lease").available).sum()
    }

    /// Units of `scope` held unspent in memory.
    pub fn available(&self, scope: Scope) -> u64 {
        self.existing(scope).map_or(0, |s| s.state.lock().expect("lease").available)
    }

    fn existing(&self, scope: Scope) -> Option<Arc<ScopeLease>> {
        self.scopes.get(&scope).map(|entry| entry.value().clone())
    }

    fn lease(&self, scope: Scope) -> Arc<ScopeLease> {
        if let Some(lease) = self.existing(scope) {
            return lease;
        }
        self.scopes
            .entry(scope)
            .or_insert_with(|| {
                Arc::new(ScopeLease {
                    state: Mutex::new(State {
                        available: 0,
                        waiting: 0,
                        in_flight: false,
                        rounds: 0,
                        verdict: Verdict::Granted,
                        exhausted_until: None,
                        spent: 0,
                        rate: 0.0,
                        last_spend: Instant::now(),
                        reclaim: false,
                        returning: None,
                        returns_made: 0,
                        grants_made: 0,
                        grant_in_doubt: false,
                        answered: Instant::now(),
                    }),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    /// Takes `units` of `scope`: from memory when there are enough, else after a grant.
    /// Returns whether it waited for PostgreSQL.
    pub async fn take(self: &Arc<Self>, scope: Scope, units: u64) -> Result<bool, Shortage> {
        if units == 0 {
            return Ok(false);
        }
        let lease = self.lease(scope);
        let deadline = Instant::now() + self.settings.claim_wait;
        let mut waited = false;
        let mut seen_round = None;
        // Counted among the waiting until answered, or until the request is dropped.
        let mut guard = Waiting { lease: &lease, units, counted: false };
        loop {
            let notified = lease.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lease.state.lock().expect("lease");
                let now = Instant::now();
                if st.available >= units {
                    st.available -= units;
                    st.spent += units;
                    st.last_spend = now;
                    guard.leave(&mut st);
                    let low = (st.rate * self.settings.refill_at.as_secs_f64()).ceil().max(1.0) as u64;
                    if st.available < low && !st.in_flight && st.exhausted_until.is_none_or(|t| t <= now) {
                        self.start_grant(scope, &lease, &mut st, units);
                    }
                    let counter = if waited { &self.stats.waited } else { &self.stats.local };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(waited);
                }
                let mut leave = |st: &mut State, shortage| {
                    guard.leave(st);
                    Err(shortage)
                };
                if st.exhausted_until.is_some_and(|t| t > now) {
                    return leave(&mut st, Shortage::Exhausted);
                }
                if seen_round.is_some_and(|r| st.rounds > r) {
                    match st.verdict {
                        Verdict::Exhausted => return leave(&mut st, Shortage::Exhausted),
                        Verdict::Failed => return leave(&mut st, Shortage::Unavailable),
                        Verdict::Granted | Verdict::HeldElsewhere => {}
                    }
                }
                if now >= deadline {
                    return leave(&mut st, Shortage::Unavailable);
                }
                if !guard.counted {
                    st.waiting += units;
                    guard.counted = true;
                }
                // After an answer that others hold the rest, give them a moment to hand it
                // back before asking again.
                let pause = st.verdict == Verdict::HeldElsewhere && st.answered.elapsed() < ASK_AGAIN_AFTER;
                if !st.in_flight && !pause {
                    self.start_grant(scope, &lease, &mut st, units);
                }
                seen_round = Some(st.rounds);
            }
            waited = true;
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    fn start_grant(self: &Arc<Self>, scope: Scope, lease: &Arc<ScopeLease>, st: &mut State, units: u64) {
        let need = st.waiting;
        // Before a rate is known, a few uses' worth: the first requests need not all wait.
        let by_rate = (st.rate * self.settings.target.as_secs_f64()).ceil() as u64;
        let want = by_rate.max(need).max(FIRST_BLOCK * units);
        self.send_grant(scope, lease, st, want, need);
    }

    /// Sends a grant: the one in doubt again, under its number, or a new one.
    fn send_grant(self: &Arc<Self>, scope: Scope, lease: &Arc<ScopeLease>, st: &mut State, want: u64, need: u64) {
        st.in_flight = true;
        if !st.grant_in_doubt {
            st.grants_made += 1;
            st.grant_in_doubt = true;
        }
        let seq = st.grants_made;
        let (leases, lease) = (self.clone(), lease.clone());
        tokio::spawn(async move {
            let answer = leases.port.grant(scope, want, need, seq).await;
            leases.finish_grant(&lease, answer, want == 0);
        });
    }

    /// Takes a grant's answer; a `probe` (a doubtful grant asked again for nothing more)
    /// only brings what that grant gave, and says nothing of what is free.
    fn finish_grant(&self, lease: &ScopeLease, answer: Result<Grant, crate::engine::ports::PortError>, probe: bool) {
        let mut st = lease.state.lock().expect("lease");
        st.in_flight = false;
        if answer.is_ok() {
            st.grant_in_doubt = false;
        }
        if probe {
            if let Ok(grant) = answer {
                st.available += grant.granted;
            }
            drop(st);
            lease.changed.notify_waiters();
            return;
        }
        st.rounds += 1;
        st.answered = Instant::now();
        st.verdict = match answer {
            Ok(grant) if grant.fenced => {
                tracing::error!("this instance's epoch is fenced: another start of the same INSTANCE_ID took over");
                self.stats.failed_grants.fetch_add(1, Ordering::Relaxed);
                Verdict::Failed
            }
            Ok(grant) if grant.granted > 0 => {
                self.stats.grants.fetch_add(1, Ordering::Relaxed);
                st.available += grant.granted;
                st.exhausted_until = None;
                Verdict::Granted
            }
            Ok(grant) if grant.held_elsewhere > 0 => {
                self.stats.empty_grants.fetch_add(1, Ordering::Relaxed);
                Verdict::HeldElsewhere
            }
            Ok(_) => {
                self.stats.empty_grants.fetch_add(1, Ordering::Relaxed);
                st.exhausted_until = Some(Instant::now() + self.settings.exhausted_for);
                Verdict::Exhausted
            }
            Err(err) => {
                tracing::debug!(error = %err, "a quota grant failed");
                self.stats.failed_grants.fetch_add(1, Ordering::Relaxed);
                Verdict::Failed
            }
        };
        drop(st);
        lease.changed.notify_waiters();
    }

    /// Puts back units taken and not spent (a refusal later in the chain).
    pub(crate) fn put_back(&self, scope: Scope, units: u64) {
        if units == 0 {
            return;
        }
        let lease = self.lease(scope);
        let mut st = lease.state.lock().expect("lease");
        st.available += units;
        st.spent = st.spent.saturating_sub(units);
        drop(st);
        lease.changed.notify_waiters();
    }

    /// Another instance found nothing free while this one holds units of these scopes.
    pub(crate) fn reclaim(&self, scopes: impl IntoIterator<Item = Scope>) {
        for scope in scopes {
            if let Some(lease) = self.existing(scope) {
                lease.state.lock().expect("lease").reclaim = true;
            }
        }
    }

    /// Gives back every unit held, and answers whether nothing is left anywhere: no unit in
    /// memory, no grant or return unanswered, no request waiting. Only then may the instance
    /// count its totals alone (`engine::alone`); otherwise what is left is tried again by
    /// upkeep and by the next call.
    pub(crate) async fn give_back_all(self: &Arc<Self>) -> bool {
        for entry in &self.scopes {
            entry.value().state.lock().expect("lease").reclaim = true;
        }
        self.upkeep().await;
        self.scopes.iter().all(|entry| {
            let st = entry.value().state.lock().expect("lease");
            st.available == 0 && st.returning.is_none() && !st.in_flight && !st.grant_in_doubt && st.waiting == 0
        })
    }

    /// Forgets that the limit of `scope` was reached (it was raised, or uses came back).
    pub(crate) fn forget_exhausted(&self, scope: Scope) {
        if let Some(lease) = self.existing(scope) {
            lease.state.lock().expect("lease").exhausted_until = None;
        }
    }

    /// Updates rates and gives back what is idle, asked for, or far beyond the rate, until
    /// `stop`.
    pub(crate) async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut interval = tokio::time::interval(UPKEEP_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => self.upkeep().await,
            }
        }
    }

    /// One round of upkeep.
    pub(crate) async fn upkeep(self: &Arc<Self>) {
        let mut scopes: Vec<(Scope, Arc<ScopeLease>)> =
            self.scopes.iter().map(|entry| (*entry.key(), entry.value().clone())).collect();
        // In one order every time: the same history makes the same statements (simulation).
        scopes.sort_unstable_by_key(|(scope, _)| *scope);
        let tick = UPKEEP_EVERY.as_secs_f64();
        for (scope, lease) in scopes {
            let ret = {
                let mut st = lease.state.lock().expect("lease");
                // A grant in doubt that nobody is waiting for is asked again for nothing
                // more: its answer says whether (and what) it granted.
                if st.grant_in_doubt && !st.in_flight && st.waiting == 0 {
                    self.send_grant(scope, &lease, &mut st, 0, 0);
                }
                // Quick to rise (a sale starts at full speed), slow to fall.
                let instant_rate = st.spent as f64 / tick;
                st.rate = instant_rate.max(0.8 * st.rate + 0.2 * instant_rate);
                st.spent = 0;
                let give = if st.returning.is_some() || st.in_flight || st.waiting > 0 || st.available == 0 {
                    0
                } else if st.reclaim || st.last_spend.elapsed() >= self.settings.idle_return {
                    std::mem::take(&mut st.available)
                } else {
                    let keep = (2.0 * st.rate * self.settings.target.as_secs_f64()).ceil() as u64;
                    let surplus = st.available.saturating_sub(keep.max(1));
                    // Only a large surplus is worth a statement.
                    if surplus > keep.max(16) {
                        st.available -= surplus;
                        surplus
                    } else {
                        0
                    }
                };
                st.reclaim = false;
                if give > 0 {
                    // What goes back is free again: this instance's next request must ask,
                    // not be told the limit is reached by what an earlier grant said.
                    st.exhausted_until = None;
                    st.returns_made += 1;
                    st.returning = Some(Return { seq: st.returns_made, units: give });
                }
                // A return in doubt is asked again, as it was.
                st.returning
            };
            if let Some(ret) = ret {
                self.give_back(scope, &lease, ret).await;
            }
        }
    }

    async fn give_back(&self, scope: Scope, lease: &ScopeLease, ret: Return) {
        match self.port.give_back(scope, ret.units, ret.seq).await {
            Ok(returned) => {
                let mut st = lease.state.lock().expect("lease");
                if st.returning == Some(ret) {
                    st.returning = None;
                }
                drop(st);
                self.stats.returns.fetch_add(1, Ordering::Relaxed);
                self.stats.units_returned.fetch_add(returned, Ordering::Relaxed);
                if returned < ret.units {
                    // PostgreSQL holds fewer for this lease than memory did (it was settled
                    // or written off): keep only what it still backs.
                    tracing::warn!(
                        ?scope,
                        units = ret.units,
                        returned,
                        "a lease held fewer units than this instance thought"
                    );
                }
            }
            Err(err) => {
                // Perhaps committed, its answer lost: the units stay aside, unsold, and the
                // same return is asked again by the next upkeep.
                tracing::debug!(error = %err, seq = ret.seq, "a return of quota units is in doubt; asking again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::engine::ports::{Changed, ClaimOutcome, ClaimRequest, PortAnswer, PortError};

    /// PostgreSQL's `quota_grant` and `quota_return`, in memory, for several instances:
    /// units granted and not given back are allocated (spent ones included); what the other
    /// instances hold unspent is read from them.
    #[derive(Debug, Default)]
    struct Bank {
        limit: u64,
        allocated: Mutex<HashMap<usize, u64>>,
        instances: Mutex<Vec<std::sync::Weak<Leases>>>,
        up: std::sync::atomic::AtomicBool,
        /// Returns commit, and their answers are lost.
        lose_return_answers: std::sync::atomic::AtomicBool,
        /// The last return applied, per instance: (number, units).
        returned: Mutex<HashMap<usize, (u64, u64)>>,
        /// Grants commit, and their answers are lost.
        lose_grant_answers: std::sync::atomic::AtomicBool,
        /// The last grant applied, per instance: (number, units).
        granted: Mutex<HashMap<usize, (u64, u64)>>,
    }

    #[derive(Debug)]
    struct Port {
        bank: Arc<Bank>,
        me: usize,
    }

    impl Bank {
        fn total(&self) -> u64 {
            self.allocated.lock().unwrap().values().sum()
        }

        fn unspent_elsewhere(&self, me: usize) -> u64 {
            let instances = self.instances.lock().unwrap();
            instances
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .filter_map(|(_, l)| l.upgrade())
                .map(|l| l.available(SCOPE))
                .sum()
        }
    }

    impl ClusterPort for Port {
        fn grant(&self, _scope: Scope, want: u64, need: u64, seq: u64) -> PortAnswer<'_, Grant> {
            let answer = if !self.bank.up.load(Ordering::Relaxed) {
                Err(PortError("down".into()))
            } else {
                let elsewhere = self.bank.unspent_elsewhere(self.me);
                let mut granted = self.bank.granted.lock().unwrap();
                let last = granted.entry(self.me).or_default();
                let k = if last.0 >= seq {
                    last.1
                } else {
                    let mut allocated = self.bank.allocated.lock().unwrap();
                    let free = self.bank.limit - allocated.values().sum::<u64>();
                    let holders = u64::from(elsewhere > 0);
                    let k = want.min(free.div_ceil(2 * (holders + 1)).max(need)).min(free);
                    *allocated.entry(self.me).or_default() += k;
                    *last = (seq, k);
                    k
                };
                if self.bank.lose_grant_answers.load(Ordering::Relaxed) {
                    Err(PortError("connection lost after commit".into()))
                } else {
                    Ok(Grant { granted: k, held_elsewhere: elsewhere, fenced: false })
                }
            };
            Box::pin(std::future::ready(answer))
        }

        fn give_back(&self, _scope: Scope, units: u64, seq: u64) -> PortAnswer<'_, u64> {
            let mut returned = self.bank.returned.lock().unwrap();
            let last = returned.entry(self.me).or_default();
            let n = if last.0 >= seq {
                last.1
            } else {
                let mut allocated = self.bank.allocated.lock().unwrap();
                let mine = allocated.entry(self.me).or_default();
                let n = units.min(*mine);
                *mine -= n;
                *last = (seq, n);
                n
            };
            let answer = if self.bank.lose_return_answers.load(Ordering::Relaxed) {
                Err(PortError("connection lost after commit".into()))
            } else {
                Ok(n)
            };
            Box::pin(std::future::ready(answer))
        }

        fn claim<'a>(&'a self, _req: &'a ClaimRequest<'a>) -> PortAnswer<'a, ClaimOutcome> {
            unreachable!("not used by leases")
        }

        fn claim_set<'a>(
            &'a self,
            _claims: &'a [ClaimRequest<'a>],
            _group: &'a crate::domain::event::GroupMark,
        ) -> PortAnswer<'a, crate::engine::ports::SetClaim> {
            unreachable!("not used by leases")
        }

        fn change(&self, _id: uuid::Uuid, _rev: u32, _release: bool) -> PortAnswer<'_, Option<Changed>> {
            unreachable!("not used by leases")
        }

        fn claim_spent(&self, _id: uuid::Uuid, _at: chrono::DateTime<chrono::Utc>) -> PortAnswer<'_, bool> {
            unreachable!("not used by leases")
        }

        fn forget_claims_before(&self, _before: chrono::DateTime<chrono::Utc>) -> PortAnswer<'_, ()> {
            unreachable!("not used by leases")
        }

        fn mode(&self) -> PortAnswer<'_, crate::engine::ports::ModeFacts> {
            unreachable!("not used by leases")
        }

        fn shipped_everywhere(
            &self,
            _since: Option<chrono::DateTime<chrono::Utc>>,
        ) -> PortAnswer<'_, (chrono::DateTime<chrono::Utc>, bool)> {
            unreachable!("not used by leases")
        }

        fn take_alone(&self, _alone_timeout: Duration) -> PortAnswer<'_, Option<i64>> {
            unreachable!("not used by leases")
        }

        fn release_alone(&self) -> PortAnswer<'_, ()> {
            unreachable!("not used by leases")
        }
    }

    fn fast() -> LeaseSettings {
        LeaseSettings {
            target: Duration::from_secs(5),
            refill_at: Duration::from_secs(1),
            claim_wait: Duration::from_millis(300),
            idle_return: Duration::from_millis(100),
            exhausted_for: Duration::from_millis(50),
        }
    }

    fn bank(limit: u64) -> Arc<Bank> {
        let bank = Arc::new(Bank { limit, ..Bank::default() });
        bank.up.store(true, Ordering::Relaxed);
        bank
    }

    fn instances(bank: &Arc<Bank>, n: usize) -> Vec<Arc<Leases>> {
        let leases: Vec<_> = (0..n).map(|me| Leases::new(Arc::new(Port { bank: bank.clone(), me }), fast())).collect();
        *bank.instances.lock().unwrap() = leases.iter().map(Arc::downgrade).collect();
        leases
    }

    const SCOPE: Scope = Scope::CouponUses(1);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_instances_never_spend_more_than_the_limit_and_spend_all_of_it() {
        for limit in [1, 2, 7, 50, 333] {
            let bank = bank(limit);
            let leases = instances(&bank, 3);
            let mut buyers = Vec::new();
            for i in 0..(limit as usize * 3 + 30) {
                let leases = leases[i % 3].clone();
                buyers.push(tokio::spawn(async move {
                    // A buyer told "unavailable" retries, as a client does after Retry-After.
                    for _ in 0..50 {
                        match leases.take(SCOPE, 1).await {
                            Ok(_) => return true,
                            Err(Shortage::Exhausted) => return false,
                            Err(Shortage::Unavailable) => {
                                leases.upkeep().await;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    panic!("a buyer was never answered");
                }));
            }
            let mut won = 0;
            for buyer in buyers {
                won += u64::from(buyer.await.unwrap());
            }
            assert_eq!(won, limit, "limit {limit}");
            assert_eq!(bank.total(), limit, "every granted unit was spent");
        }
    }

    #[tokio::test]
    async fn units_put_back_are_spent_again_and_idle_ones_go_back() {
        let bank = bank(10);
        let leases = instances(&bank, 1).pop().unwrap();
        assert_eq!(leases.take(SCOPE, 1).await, Ok(true), "the first take waits for a grant");
        let held = bank.total();
        assert!(held >= 1);
        leases.put_back(SCOPE, 1);
        assert_eq!(leases.available(SCOPE), held);
        tokio::time::sleep(Duration::from_millis(150)).await;
        leases.upkeep().await;
        assert_eq!(leases.available(SCOPE), 0, "idle units go back");
        assert_eq!(bank.total(), 0);
    }

    #[tokio::test]
    async fn while_the_database_is_away_only_units_held_are_spent() {
        let bank = bank(100);
        let leases = instances(&bank, 1).pop().unwrap();
        leases.take(SCOPE, 1).await.unwrap();
        let held = leases.available(SCOPE);
        bank.up.store(false, Ordering::Relaxed);
        for _ in 0..held {
            leases.take(SCOPE, 1).await.unwrap();
        }
        assert_eq!(leases.take(SCOPE, 1).await, Err(Shortage::Unavailable));
        bank.up.store(true, Ordering::Relaxed);
        assert!(leases.take(SCOPE, 1).await.is_ok());
    }

    /// CI once sold 61 of 60: a return committed, its answer was lost to a cut, and the
    /// instance kept the units as its own while PostgreSQL had freed them for the others.
    #[tokio::test]
    async fn a_return_whose_answer_was_lost_is_neither_sold_nor_returned_twice() {
        let bank = bank(10);
        let leases = instances(&bank, 2);
        let (a, b) = (&leases[0], &leases[1]);
        a.take(SCOPE, 1).await.unwrap();
        let held = a.available(SCOPE);
        assert!(held > 0, "a holds the rest of its first block");
        bank.lose_return_answers.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.upkeep().await;
        assert_eq!(bank.total(), 1, "the return committed");
        assert_eq!(a.available(SCOPE), 0, "units in doubt are not for sale");
        // b gets what went back; a can sell nothing of it.
        for _ in 0..9 {
            b.take(SCOPE, 1).await.unwrap();
        }
        assert!(a.take(SCOPE, 1).await.is_err());
        a.upkeep().await;
        assert_eq!(bank.returned.lock().unwrap()[&0], (1, held), "asked again as return 1, not applied twice");
        bank.lose_return_answers.store(false, Ordering::Relaxed);
        a.upkeep().await;
        assert_eq!(a.stats().units_returned.load(Ordering::Relaxed), held, "answered once it could be");
        assert_eq!(bank.total(), 10, "never more allocated than the limit");
        assert_eq!(a.take(SCOPE, 1).await, Err(Shortage::Exhausted));
        assert_eq!(b.take(SCOPE, 1).await, Err(Shortage::Exhausted));
    }

    /// A grant that committed with its answer lost once left its units in the lease,
    /// unknown here, for as long as the instance ran (and a false "limit reached" at the end).
    #[tokio::test]
    async fn a_grant_whose_answer_was_lost_is_neither_lost_nor_granted_twice() {
        let bank = bank(4);
        let leases = instances(&bank, 1);
        let a = &leases[0];
        bank.lose_grant_answers.store(true, Ordering::Relaxed);
        assert_eq!(a.take(SCOPE, 1).await, Err(Shortage::Unavailable), "no answer, no units");
        let stranded = bank.total();
        assert!(stranded > 0, "the grant committed");
        a.upkeep().await;
        tokio::task::yield_now().await;
        assert_eq!(bank.total(), stranded, "asked again under its number: not granted twice");
        bank.lose_grant_answers.store(false, Ordering::Relaxed);
        a.upkeep().await;
        tokio::task::yield_now().await;
        assert_eq!(a.available(SCOPE), stranded, "the answer, at last, brings the units");
        for _ in 0..4 {
            a.take(SCOPE, 1).await.unwrap();
        }
        assert_eq!(a.take(SCOPE, 1).await, Err(Shortage::Exhausted), "every unit sold, none twice");
        assert_eq!(bank.total(), 4);
    }

    #[tokio::test]
    async fn a_reached_limit_is_answered_without_asking_again() {
        let bank = bank(1);
        let leases = instances(&bank, 1).pop().unwrap();
        leases.take(SCOPE, 1).await.unwrap();
        assert_eq!(leases.take(SCOPE, 1).await, Err(Shortage::Exhausted));
        let grants = leases.stats().empty_grants.load(Ordering::Relaxed);
        assert_eq!(leases.take(SCOPE, 1).await, Err(Shortage::Exhausted));
        assert_eq!(leases.stats().empty_grants.load(Ordering::Relaxed), grants, "answered from memory");
    }
}
