//! Whether this instance may still spend its quota leases: the proof, renewed by its
//! identity's heartbeat, that it still holds its id and its epoch.
//!
//! Leases are spent from memory, so nothing in PostgreSQL can stop a process that has lost
//! its identity from selling units that are no longer its: its id's lock goes with a
//! PostgreSQL restart or a cut link, and then an operator may write it off or a second
//! process may start with its id, and either gives its units to the others. So units are
//! spent only within `spend_window` of the last proof (a heartbeat that committed on the
//! connection holding the lock, for an epoch still live), and nobody takes the id or its
//! units until that proof is `2 × spend_window` old by PostgreSQL's clock
//! (`db::identity`). Each side measures time elapsed on its own clock; no two clocks are
//! compared, and an offset between them changes nothing.
//!
//! States: `live` (proved within the window: spends), `unconfirmed` (no proof for a window:
//! sells nothing from leases, answers `503 QUOTA_UNAVAILABLE`, until a proof comes), `fenced`
//! (its epoch was written off or taken over: never spends again; the process stops).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// See the module documentation.
#[derive(Debug)]
pub struct Standing {
    start: Instant,
    /// Milliseconds after `start` of the last proof, sent then (a proof counts from the
    /// moment its statement was sent, never from when its answer came back).
    proved_ms: AtomicU64,
    fenced: AtomicBool,
    spend_window: Duration,
    /// How long it decides alone after the last proof (`engine::alone`).
    alone_window: Duration,
}

/// What `/health` says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandingState {
    Live,
    Unconfirmed,
    Fenced,
}

impl StandingState {
    pub fn as_str(self) -> &'static str {
        match self {
            StandingState::Live => "live",
            StandingState::Unconfirmed => "unconfirmed",
            StandingState::Fenced => "fenced",
        }
    }
}

impl Standing {
    /// Proved now (the lock was just taken and the epoch just begun).
    pub fn new(spend_window: Duration, alone_window: Duration) -> Standing {
        Standing {
            start: Instant::now(),
            proved_ms: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
            spend_window,
            alone_window,
        }
    }

    /// A proof whose statement was sent at `sent`.
    pub fn proved(&self, sent: Instant) {
        let ms = u64::try_from(sent.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.proved_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// The epoch is no longer this process's: for good.
    pub(crate) fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    /// Whether units may be spent from leases now.
    pub(crate) fn may_spend(&self) -> bool {
        self.state() == StandingState::Live
    }

    /// Whether it may decide alone now: proved within the alone window, which is longer than
    /// the spending window so that one instance rides out a PostgreSQL outage.
    pub(crate) fn may_decide_alone(&self) -> bool {
        !self.fenced.load(Ordering::Acquire) && self.since_proof() < self.alone_window
    }

    fn since_proof(&self) -> Duration {
        (self.start + Duration::from_millis(self.proved_ms.load(Ordering::Acquire))).elapsed()
    }

    pub fn state(&self) -> StandingState {
        if self.fenced.load(Ordering::Acquire) {
            return StandingState::Fenced;
        }
        if self.since_proof() < self.spend_window { StandingState::Live } else { StandingState::Unconfirmed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spends_only_within_the_window_of_the_last_proof() {
        let standing = Standing::new(Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(standing.state(), StandingState::Live);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(standing.may_spend());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(standing.state(), StandingState::Unconfirmed);
        // A proof sent a second ago renews the window from when it was sent.
        let sent = Instant::now() - Duration::from_secs(1);
        standing.proved(sent);
        assert!(standing.may_spend());
        tokio::time::advance(Duration::from_millis(3_999)).await;
        assert!(standing.may_spend());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!standing.may_spend());
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_proof_arriving_late_does_not_move_the_window_back() {
        let standing = Standing::new(Duration::from_secs(5), Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(3)).await;
        let early = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        standing.proved(Instant::now());
        standing.proved(early);
        tokio::time::advance(Duration::from_millis(4_500)).await;
        assert!(standing.may_spend(), "the newer proof stands");
    }

    #[tokio::test(start_paused = true)]
    async fn decides_alone_for_the_longer_window_and_never_once_fenced() {
        let standing = Standing::new(Duration::from_secs(5), Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!standing.may_spend(), "past the spending window");
        assert!(standing.may_decide_alone(), "within the alone window: an outage is ridden out");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!standing.may_decide_alone());
        standing.proved(Instant::now());
        assert!(standing.may_decide_alone());
        standing.fence();
        assert!(!standing.may_decide_alone());
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_is_for_good() {
        let standing = Standing::new(Duration::from_secs(5), Duration::from_secs(30));
        standing.fence();
        standing.proved(Instant::now());
        assert_eq!(standing.state(), StandingState::Fenced);
        assert!(!standing.may_spend());
    }
}
