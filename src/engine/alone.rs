//! Who decides: this instance alone, in memory (API.md §6, "one instance decides alone"), or
//! together with the others through leases and claims; and the fenced switch between the two.
//!
//! While no other instance is live, the one that holds PostgreSQL's `quota_alone` row
//! decides every shape from its ledger (totals, per-user limits, codes, holds) and
//! acknowledges after its journal's fsync: no request waits on PostgreSQL, and an outage
//! changes nothing for half of `alone_timeout`. Its states, one step per
//! [`Engine::consider_mode`] (every 200 ms in the service):
//!
//! | mode | decides limited uses | changes holds and others' uses; releases | next |
//! | --- | --- | --- | --- |
//! | `Sharing` | leases and claims | through PostgreSQL | `Joining` once nobody else is live and it took the row (journal shipped, doubts settled, leases given back first) |
//! | `Joining` | no (`503`) | no (`503`): its ledger may lag | `Alone` once its feed has read every use there was when it took the row; `Sharing` (row given up) if another instance came |
//! | `Alone` | from memory, journalled | in its journal | `Handing` when another instance is live or waiting |
//! | `Handing` | no (`503`) | in its journal | `Sharing` once its journal is shipped, and then it gives the row up; `Alone` if the other went |
//! | `Waiting` | no (`503`) | no (`503`): the one deciding alone may not have shipped | `Sharing` once PostgreSQL says it is live (the row was given up) |
//!
//! Why it is exact: PostgreSQL lets nobody else decide while the row stands (an epoch
//! begun meanwhile is `waiting`, and grants and claims need `live`); the row is given up
//! only after every alone decision is shipped (so leases and claims elsewhere count them),
//! and taken only with this instance's leases settled and every other instance stopped or
//! written off (so the ledger, once the feed has caught up, holds every live use). A switch
//! waits for the decisions in flight (a write lock on [`Engine`]'s `decisions`). Lost
//! answers change nothing: taking and giving up the row are asked again until answered, and
//! the engine turns `Alone` only on an answer. A process that may have lost its identity
//! stops deciding alone after half of its `alone_timeout` (the standing), and a write-off
//! waits for all of it.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use crate::engine::Engine;
use crate::engine::cluster::Cluster;

/// How this instance decides (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sharing,
    Joining,
    Alone,
    Handing,
    Waiting,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sharing => "sharing",
            Mode::Joining => "joining",
            Mode::Alone => "alone",
            Mode::Handing => "handing",
            Mode::Waiting => "waiting",
        }
    }

    fn from_u8(n: u8) -> Mode {
        match n {
            0 => Mode::Sharing,
            1 => Mode::Joining,
            2 => Mode::Alone,
            3 => Mode::Handing,
            _ => Mode::Waiting,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Mode::Sharing => 0,
            Mode::Joining => 1,
            Mode::Alone => 2,
            Mode::Handing => 3,
            Mode::Waiting => 4,
        }
    }

    /// Whether changes of holds and of other instances' uses go through PostgreSQL (and,
    /// where what this instance knows may lag, are refused).
    pub fn shares(self) -> bool {
        !matches!(self, Mode::Alone | Mode::Handing)
    }

    /// Whether what this instance knows of uses may lag behind what was decided: it then
    /// takes no use, changes none, and answers no release (`503`).
    pub(crate) fn lags(self) -> bool {
        matches!(self, Mode::Joining | Mode::Waiting)
    }
}

/// The state of the switch, kept with the cluster.
#[derive(Debug)]
pub struct Deciding {
    mode: AtomicU8,
    /// How far the usage feed has read with nothing missing before it (`Feed`).
    fed: AtomicI64,
    /// The feed position PostgreSQL answered when this instance took the row.
    target: AtomicI64,
    /// `cluster.alone_timeout`; `None`: this instance never decides alone.
    alone_timeout: Option<Duration>,
}

impl Deciding {
    pub fn new(start: Mode, alone_timeout: Option<Duration>) -> Deciding {
        Deciding {
            mode: AtomicU8::new(start.to_u8()),
            fed: AtomicI64::new(0),
            target: AtomicI64::new(i64::MAX),
            alone_timeout,
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    fn set(&self, mode: Mode) {
        let was = Mode::from_u8(self.mode.swap(mode.to_u8(), Ordering::AcqRel));
        if was != mode {
            tracing::info!(from = was.as_str(), to = mode.as_str(), "how this instance decides changed");
        }
    }

    /// The feed has read every use up to `position`.
    pub(crate) fn fed_to(&self, position: i64) {
        self.fed.fetch_max(position, Ordering::AcqRel);
    }
}

impl Engine {
    /// How this instance decides now (an engine outside any cluster decides alone).
    pub fn mode(&self) -> Mode {
        self.cluster().map_or(Mode::Alone, |c| c.deciding.mode())
    }

    /// Whether a use under a limit may be decided now: among instances by leases and claims;
    /// alone while its standing lasts; never while switching or waiting.
    pub(crate) fn may_take_limited(&self) -> bool {
        let Some(cluster) = self.cluster() else { return true };
        match cluster.deciding.mode() {
            Mode::Sharing => true,
            Mode::Alone => cluster.standing.may_decide_alone(),
            Mode::Joining | Mode::Handing | Mode::Waiting => false,
        }
    }

    /// Whether a use may be changed in the journal now: while this instance holds the right
    /// to decide alone, only while its standing lasts (a write-off may have given its uses to
    /// others after that).
    pub(crate) fn may_change_in_journal(&self) -> Result<(), crate::engine::EngineError> {
        let Some(cluster) = self.cluster() else { return Ok(()) };
        match cluster.deciding.mode() {
            Mode::Alone | Mode::Handing if !cluster.standing.may_decide_alone() => {
                Err(crate::engine::ports::PortError("deciding alone, and the identity is not proved lately".into())
                    .into())
            }
            _ => Ok(()),
        }
    }

    /// One step of the switch (see the module documentation); answers the mode after it.
    pub(crate) async fn consider_mode(&self) -> Mode {
        let Some(cluster) = self.cluster() else { return Mode::Alone };
        let facts = match cluster.port.mode().await {
            Ok(facts) => facts,
            Err(err) => {
                tracing::debug!(error = %err, "cannot ask who decides; asking again later");
                return cluster.deciding.mode();
            }
        };
        let mine = facts.alone.as_ref().is_some_and(|(instance, _)| *instance == cluster.instance);
        match cluster.deciding.mode() {
            Mode::Waiting if facts.live => cluster.deciding.set(Mode::Sharing),
            Mode::Waiting => {}
            Mode::Sharing if facts.others => {
                // Held from an earlier run, or taken by a call whose answer was lost.
                if mine {
                    let _ = cluster.port.release_alone().await;
                }
            }
            Mode::Sharing => self.try_alone(cluster).await,
            Mode::Joining if facts.others => self.share(cluster).await,
            Mode::Joining => {
                let deciding = &cluster.deciding;
                if mine && deciding.fed.load(Ordering::Acquire) >= deciding.target.load(Ordering::Acquire) {
                    deciding.set(Mode::Alone);
                }
            }
            Mode::Handing if facts.others => {
                let _decisions = self.decisions.write().await;
                if self.journal().backlog() == 0 {
                    self.share(cluster).await;
                }
            }
            Mode::Handing => cluster.deciding.set(Mode::Alone),
            Mode::Alone if facts.others => {
                let _decisions = self.decisions.write().await;
                cluster.deciding.set(Mode::Handing);
            }
            Mode::Alone => {}
        }
        cluster.deciding.mode()
    }

    /// Shares, then gives the row up: once that call is sent the others may be deciding,
    /// whether or not its answer comes back. Still holding the row (the call failed), this
    /// instance shares with nobody, and gives it up again at the next step. Everything it
    /// decided alone is shipped by now (the caller saw to it, and holds the write lock).
    async fn share(&self, cluster: &Cluster) {
        cluster.deciding.set(Mode::Sharing);
        if let Err(err) = cluster.port.release_alone().await {
            tracing::debug!(error = %err, "giving up the right to decide alone: asking again");
        }
    }

    /// From sharing to joining, if this instance may decide alone and nothing of its
    /// sharing is left unsettled: its journal shipped, no claim in doubt, every lease given
    /// back, and the row taken.
    async fn try_alone(&self, cluster: &Cluster) {
        let Some(alone_timeout) = cluster.deciding.alone_timeout else { return };
        if !cluster.standing.may_spend() || self.journal().backlog() > 0 || self.doubtful.len() > 0 {
            return;
        }
        let _decisions = self.decisions.write().await;
        if self.journal().backlog() > 0 || self.doubtful.len() > 0 || !cluster.leases.give_back_all().await {
            return;
        }
        match cluster.port.take_alone(alone_timeout).await {
            Ok(Some(position)) => {
                cluster.deciding.target.store(position, Ordering::Release);
                cluster.deciding.set(Mode::Joining);
            }
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "cannot take the right to decide alone yet"),
        }
    }

    /// Takes the next steps of the switch every `every`, until `stop`.
    pub(crate) async fn run_mode(
        self: std::sync::Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {
                    self.consider_mode().await;
                }
            }
        }
    }
}
