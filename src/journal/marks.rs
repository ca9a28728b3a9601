//! Times on PostgreSQL's clock before which everything this journal acknowledged has shipped:
//! what the heartbeat publishes (`quota_stamps.shipped_through`), so that another instance
//! asked to release an order it cannot find may say `404` only once no instance can still
//! hold that use unshipped.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::{Journal, Position};

/// Marks kept while shipping lags: one a heartbeat, so minutes of an outage.
const MAX_MARKS: usize = 1024;

/// Pairs of a time PostgreSQL read from its clock and where this journal was durable to once
/// its answer had arrived: every use acknowledged before that time lies before that place, so
/// once the shipper has confirmed past it, everything acknowledged before the time is shipped.
#[derive(Debug)]
pub struct ShippedMarks {
    journal: Journal,
    marks: VecDeque<(DateTime<Utc>, Position)>,
    through: Option<DateTime<Utc>>,
}

impl ShippedMarks {
    pub fn new(journal: Journal) -> ShippedMarks {
        ShippedMarks { journal, marks: VecDeque::new(), through: None }
    }

    /// PostgreSQL answered having read `at` from its clock: everything acknowledged before
    /// `at` is durable by now.
    pub fn passed(&mut self, at: DateTime<Utc>) {
        if self.marks.len() == MAX_MARKS {
            // Dropping the oldest only makes the published time later in coming.
            self.marks.pop_front();
        }
        self.marks.push_back((at, self.journal.durable_end()));
    }

    /// Waits (at most `within`) until what is durable now has shipped: then every mark so
    /// far counts.
    pub(crate) async fn wait_shipped(&self, within: std::time::Duration) {
        self.journal.wait_shipped(within).await;
    }

    /// The latest time before which every acknowledged use has shipped, once there is one.
    pub(crate) fn shipped_through(&mut self) -> Option<DateTime<Utc>> {
        while let Some(&(at, end)) = self.marks.front() {
            if !self.journal.shipped_to(end) {
                break;
            }
            self.through = self.through.max(Some(at));
            self.marks.pop_front();
        }
        self.through
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().expect("time")
    }

    #[tokio::test]
    async fn a_time_counts_once_what_was_durable_when_it_was_read_has_shipped() {
        let dir = tempfile::tempdir().expect("dir");
        let (journal, mut reader) = Journal::open(dir.path(), 0, Metrics::new(&[]).journal).expect("journal");
        let mut marks = ShippedMarks::new(journal.clone());
        // Nothing written: a time read now is shipped through at once.
        marks.passed(at(1));
        assert_eq!(marks.shipped_through(), Some(at(1)));

        journal.append(b"first").await.expect("append");
        marks.passed(at(2));
        journal.append(b"second").await.expect("append");
        marks.passed(at(3));
        assert_eq!(marks.shipped_through(), Some(at(1)), "nothing after 1 has shipped");

        let (entries, _) = reader.read(reader.checkpoint(), 1 << 20).expect("read");
        assert_eq!(entries.len(), 2);
        // Only the first record confirmed: time 2 is through, time 3 is not.
        let after_first = entries[1].position;
        reader.confirm(after_first, 1).expect("confirm");
        assert_eq!(marks.shipped_through(), Some(at(2)));
        let (_, end) = reader.read(after_first, 1 << 20).expect("read");
        reader.confirm(end, 1).expect("confirm");
        assert_eq!(marks.shipped_through(), Some(at(3)));
        // It never goes back.
        marks.passed(at(0));
        assert_eq!(marks.shipped_through(), Some(at(3)));
    }
}
