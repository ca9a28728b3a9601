//! What a run measured: an HDR histogram of latencies, outcomes, and a per-second timeline.
//! Each worker keeps its own and they are merged at the end, so recording never contends.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Timeline latency buckets grow by 10%: percentiles per second are within that.
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 200;

/// Latencies of one second of the run.
#[derive(Debug, Clone)]
pub(crate) struct Second {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    buckets: Vec<u32>,
}

impl Default for Second {
    fn default() -> Second {
        Second { requests: 0, errors: 0, buckets: vec![0; BUCKETS] }
    }
}

impl Second {
    /// The latency (µs) at quantile `q`, from the 10% buckets.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().map(|b| u64::from(*b)).sum();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (idx, count) in self.buckets.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= target {
                return GROWTH.powi(idx as i32 + 1);
            }
        }
        GROWTH.powi(BUCKETS as i32)
    }
}

/// Everything one worker (or, merged, one run) saw.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    /// 2xx answers that were not the answer this request must get.
    pub(crate) wrong: u64,
    pub(crate) by_status: BTreeMap<u16, u64>,
    pub(crate) transport_errors: u64,
    pub(crate) timeline: Vec<Second>,
    /// The `redemptionId` (or a hold's `holdId`, the same id) of every 201 answer: what the
    /// service acknowledged.
    pub(crate) acknowledged: Vec<String>,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            ok: 0,
            failed: 0,
            wrong: 0,
            by_status: BTreeMap::new(),
            transport_errors: 0,
            timeline: Vec::new(),
            acknowledged: Vec::new(),
        }
    }

    /// One answered request: `at` is when it was due, relative to the start of the run.
    pub(crate) fn record(&mut self, at: Duration, latency: Duration, status: Option<u16>, expected: bool) {
        let us = (latency.as_micros() as u64).max(1);
        let _ = self.latency_us.record(us.min(120_000_000));
        let success = matches!(status, Some(200..=299));
        match status {
            Some(code) => *self.by_status.entry(code).or_default() += 1,
            None => self.transport_errors += 1,
        }
        if success {
            self.ok += 1;
            if !expected {
                self.wrong += 1;
            }
        } else {
            self.failed += 1;
        }
        let second = at.as_secs() as usize;
        if self.timeline.len() <= second {
            self.timeline.resize_with(second + 1, Second::default);
        }
        let slot = &mut self.timeline[second];
        slot.requests += 1;
        if !success {
            slot.errors += 1;
        }
        let bucket = ((us as f64).ln() / GROWTH.ln()).floor() as usize;
        slot.buckets[bucket.min(BUCKETS - 1)] += 1;
    }

    /// Keeps the redemption (or hold) id of a 201 answer.
    pub(crate) fn acknowledge(&mut self, body: &[u8]) {
        for key in [&br#""redemptionId":""#[..], &br#""holdId":""#[..]] {
            if let Some(at) = body.windows(key.len()).position(|w| w == key)
                && let Some(id) = body.get(at + key.len()..at + key.len() + 36)
            {
                self.acknowledged.push(String::from_utf8_lossy(id).into_owned());
                return;
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &Stats) {
        self.acknowledged.extend_from_slice(&other.acknowledged);
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.failed += other.failed;
        self.wrong += other.wrong;
        self.transport_errors += other.transport_errors;
        for (status, n) in &other.by_status {
            *self.by_status.entry(*status).or_default() += n;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize_with(other.timeline.len(), Second::default);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
            for (a, b) in mine.buckets.iter_mut().zip(&theirs.buckets) {
                *a += b;
            }
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.ok + self.failed
    }

    /// Latency at quantile `q` in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_and_quantiles() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for ms in 1..=100 {
            a.record(Duration::from_millis(10), Duration::from_millis(ms), Some(200), true);
        }
        b.record(Duration::from_millis(1500), Duration::from_millis(5), Some(503), false);
        b.record(Duration::from_millis(1600), Duration::from_millis(5), None, false);
        b.record(Duration::from_millis(1700), Duration::from_millis(5), Some(200), false);
        a.merge(&b);
        assert_eq!((a.total(), a.ok, a.failed, a.wrong, a.transport_errors), (103, 101, 2, 1, 1));
        assert!((a.ms(0.5) - 50.0).abs() < 1.0, "{}", a.ms(0.5));
        assert_eq!(a.timeline.len(), 2);
        assert_eq!((a.timeline[1].requests, a.timeline[1].errors), (3, 2));
        let p99 = a.timeline[0].quantile_us(0.99) / 1000.0;
        assert!((90.0..=110.0).contains(&p99), "{p99}");
        a.acknowledge(br#"{"redeemed":true,"redemptionId":"6f1c2b9e-2b2c-4a34-9d1d-0a0b0c0d0e0f","code":"X"}"#);
        a.acknowledge(br#"{"held":true,"holdId":"7f1c2b9e-2b2c-4a34-9d1d-0a0b0c0d0e0f","code":"X"}"#);
        assert_eq!(
            a.acknowledged,
            vec!["6f1c2b9e-2b2c-4a34-9d1d-0a0b0c0d0e0f".to_owned(), "7f1c2b9e-2b2c-4a34-9d1d-0a0b0c0d0e0f".to_owned()]
        );
    }
}
