//! Retry delays: doubling from a minimum to a maximum, with jitter so that instances that
//! lost PostgreSQL together do not all come back in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// The delays of one retry loop.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt: a random point in the upper half of the current
    /// step, which then doubles up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// After a success: the next failure starts from the minimum again.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_maximum_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        for step in [100, 200, 400, 800, 1000, 1000] {
            let delay = backoff.next_delay();
            assert!(delay >= ms(step / 2) && delay <= ms(step), "{delay:?} for a step of {step} ms");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }
}
