//! Hold deadlines: one queue and one task for every hold, however many there are.
//!
//! The queue may hold stale entries (a hold confirmed or cancelled before its deadline):
//! expiring checks the slot under its lock and ignores anything that is not that same hold.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::engine::ledger::OrderKey;

/// Holds by deadline (ms since the epoch), earliest first.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<(i64, OrderKey)>>>,
    /// Woken when a deadline earlier than every other is added.
    earlier: Notify,
}

impl Deadlines {
    /// Adds the deadline of the hold at `key`.
    pub fn push(&self, until_ms: i64, key: OrderKey) {
        let earliest = {
            let mut heap = self.heap.lock().expect("deadlines");
            let earliest = heap.peek().is_none_or(|Reverse((first, _))| until_ms < *first);
            heap.push(Reverse((until_ms, key)));
            earliest
        };
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<i64> {
        self.heap.lock().expect("deadlines").peek().map(|Reverse((until, _))| *until)
    }

    /// Takes every entry due at `now_ms`, at most `max`.
    pub fn due(&self, now_ms: i64, max: usize) -> Vec<(i64, OrderKey)> {
        let mut heap = self.heap.lock().expect("deadlines");
        let mut due = Vec::new();
        while due.len() < max && heap.peek().is_some_and(|Reverse((until, _))| *until <= now_ms) {
            if let Some(Reverse(entry)) = heap.pop() {
                due.push(entry);
            }
        }
        due
    }

    /// Resolves when an earlier deadline is added.
    pub(crate) async fn earlier_added(&self) {
        self.earlier.notified().await;
    }

    /// Deadlines queued (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.lock().expect("deadlines").len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_deadline_order() {
        let deadlines = Deadlines::default();
        for (until, order) in [(30, 3), (10, 1), (20, 2), (40, 4)] {
            deadlines.push(until, (1, order));
        }
        assert_eq!(deadlines.next(), Some(10));
        assert_eq!(deadlines.due(25, 10), vec![(10, (1, 1)), (20, (1, 2))]);
        assert_eq!(deadlines.due(100, 1), vec![(30, (1, 3))], "at most max");
        assert_eq!(deadlines.len(), 1);
    }
}
