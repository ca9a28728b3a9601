//! Running load: closed loop (N requests, C in flight) or open loop (a fixed arrival rate),
//! in named phases. Open-loop latency is measured from when each request was due, not when
//! a worker got round to sending it, so a stalled server cannot hide its stall
//! (coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::conn::Conn;
use crate::mix::{Kind, Mix};
use crate::stats::Stats;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    /// `requests` in total, `concurrency` in flight at all times.
    Closed { requests: u64, concurrency: usize },
    /// `rate` requests per second for `duration`, at most `concurrency` in flight.
    Open { rate: f64, duration: Duration, concurrency: usize },
}

/// A named part of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) shape: Shape,
}

/// What a phase measured.
#[derive(Debug, Clone)]
pub(crate) struct PhaseResult {
    pub(crate) phase: Phase,
    pub(crate) stats: Stats,
    pub(crate) elapsed: Duration,
}

impl PhaseResult {
    pub(crate) fn throughput(&self) -> f64 {
        self.stats.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `name:duration:rate[:concurrency]`, as in `warm-up:10s:200` or `peak:20s:5000:400`.
pub(crate) fn parse_phase(spec: &str, default_concurrency: usize) -> anyhow::Result<Phase> {
    let parts: Vec<&str> = spec.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        bail!("phase {spec:?}: expected name:duration:rate[:concurrency], e.g. warm-up:10s:200");
    }
    let seconds: f64 = parts[1].trim_end_matches('s').parse().with_context(|| format!("phase {spec:?}: duration"))?;
    let rate: f64 = parts[2].parse().with_context(|| format!("phase {spec:?}: rate"))?;
    let concurrency = match parts.get(3) {
        Some(c) => c.parse().with_context(|| format!("phase {spec:?}: concurrency"))?,
        None => default_concurrency,
    };
    if seconds <= 0.0 || rate <= 0.0 || concurrency == 0 {
        bail!("phase {spec:?}: duration, rate and concurrency must be positive");
    }
    Ok(Phase {
        name: parts[0].to_owned(),
        shape: Shape::Open { rate, duration: Duration::from_secs_f64(seconds), concurrency },
    })
}

/// A request the workers share a counter of.
/// Connections are spread over `targets` in turn (several instances without a balancer).
pub(crate) async fn run_phase(targets: Vec<SocketAddr>, mix: Arc<Mix>, phase: Phase, offset: u64) -> PhaseResult {
    let (concurrency, limit, rate, duration) = match phase.shape {
        Shape::Closed { requests, concurrency } => (concurrency, requests, None, None),
        Shape::Open { rate, duration, concurrency } => {
            (concurrency, (rate * duration.as_secs_f64()).ceil() as u64, Some(rate), Some(duration))
        }
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let addr = targets[worker % targets.len()];
            let (mix, next) = (mix.clone(), next.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut stats = Stats::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= limit {
                        return stats;
                    }
                    // Open loop: request n is due at n / rate; closed loop: now.
                    let due = match rate {
                        Some(rate) => started + Duration::from_secs_f64(n as f64 / rate),
                        None => Instant::now(),
                    };
                    if duration.is_some_and(|d| due > started + d) {
                        return stats;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let (path, body, kind) = mix.request(offset + n);
                    let answer = conn.post(path, body).await;
                    let created = record(&mut stats, due - started, due.elapsed(), kind, answer);
                    // A checkout's confirmation: measured from when it was sent.
                    if let Some((path, body, kind)) = mix.follow_up(offset + n, kind).filter(|_| created) {
                        let sent = Instant::now();
                        let answer = conn.post(path, body).await;
                        record(&mut stats, due - started, sent.elapsed(), kind, answer);
                    }
                }
            })
        })
        .collect();
    let mut stats = Stats::new();
    for worker in workers {
        if let Ok(worker_stats) = worker.await {
            stats.merge(&worker_stats);
        }
    }
    PhaseResult { phase, stats, elapsed: started.elapsed() }
}

/// Records one answer (keeping the redemption id of a 201); true if it was a 201.
fn record(
    stats: &mut Stats,
    at: Duration,
    latency: Duration,
    kind: Kind,
    answer: anyhow::Result<(u16, Bytes)>,
) -> bool {
    match answer {
        Ok((status, body)) => {
            stats.record(at, latency, Some(status), Mix::is_expected(kind, status, &body));
            if status == 201 {
                stats.acknowledge(&body);
            }
            status == 201
        }
        Err(_) => {
            stats.record(at, latency, None, false);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse() {
        let phase = parse_phase("warm-up:10s:200", 64).unwrap();
        assert_eq!(phase.name, "warm-up");
        assert_eq!(phase.shape, Shape::Open { rate: 200.0, duration: Duration::from_secs(10), concurrency: 64 });
        let phase = parse_phase("peak:2.5:5000:400", 64).unwrap();
        assert_eq!(phase.shape, Shape::Open { rate: 5000.0, duration: Duration::from_millis(2500), concurrency: 400 });
        for bad in ["x", "x:1s", "x:0s:10", "x:1s:0", "x:1s:10:0", "x:ten:1"] {
            assert!(parse_phase(bad, 1).is_err(), "{bad}");
        }
    }
}
