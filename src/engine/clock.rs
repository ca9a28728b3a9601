//! The engine's clock, passed in so that deadlines can be tested on a paused clock.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

/// Wall-clock time as the engine sees it.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall-clock time that moves with tokio's clock, so `tokio::time::pause` and `advance`
/// move it too (tests only; a long-running process would drift from the system's clock).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock {
    wall: DateTime<Utc>,
    at: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    /// Starts at `wall` now.
    pub(crate) fn starting_at(wall: DateTime<Utc>) -> TokioClock {
        TokioClock { wall, at: tokio::time::Instant::now() }
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.at.elapsed()).unwrap_or(chrono::Duration::MAX);
        self.wall + elapsed
    }
}

/// A clock that moves only when told to (tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    now: std::sync::Mutex<DateTime<Utc>>,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new(now: DateTime<Utc>) -> ManualClock {
        ManualClock { now: std::sync::Mutex::new(now) }
    }

    /// Sets the time.
    pub(crate) fn set(&self, now: DateTime<Utc>) {
        *self.now.lock().expect("clock") = now;
    }

    /// Moves the clock forward.
    pub(crate) fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().expect("clock");
        *now += chrono::Duration::from_std(by).expect("a test duration");
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock")
    }
}
