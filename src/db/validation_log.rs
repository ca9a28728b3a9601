//! Write-behind for `validation_logs`: a bounded queue drained in batches, off the request path.
//!
//! Invariant: a request only ever calls [`ValidationLog::record`], which never waits. While
//! PostgreSQL is away the writer holds its batch and retries with backoff; the queue fills
//! meanwhile and rows past its capacity are counted as dropped, never silently lost.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ValidationLogSettings;
use crate::db::is_transient;
use crate::domain::money::Cents;
use crate::metrics::WriteBehindMetrics;

/// One `validation_logs` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationLogRow {
    pub coupon_code: String,
    pub coupon_id: Option<i64>,
    pub user_id: String,
    pub order_id: Option<String>,
    pub order_value: Cents,
    pub is_valid: bool,
    pub reason: Option<&'static str>,
    pub discount: Cents,
    pub final_amount: Cents,
    pub ip_address: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub response_time_us: u64,
    pub validated_at: DateTime<Utc>,
}

/// The request side of the queue: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct ValidationLog {
    tx: mpsc::Sender<ValidationLogRow>,
    queued: Arc<AtomicUsize>,
    metrics: WriteBehindMetrics,
}

impl ValidationLog {
    /// Starts the writer. It runs until `stop` is cancelled, then writes what is queued
    /// (trying for at most `shutdown_timeout_ms`) and returns.
    pub fn spawn(
        pool: PgPool,
        settings: &ValidationLogSettings,
        metrics: WriteBehindMetrics,
        stop: CancellationToken,
    ) -> (ValidationLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            pool,
            rx,
            queued: queued.clone(),
            metrics: metrics.clone(),
            batch_size: settings.batch_size,
            flush_interval: settings.flush_interval(),
            retry_min: Duration::from_millis(settings.retry_min_ms),
            retry_max: Duration::from_millis(settings.retry_max_ms),
            shutdown_timeout: Duration::from_millis(settings.shutdown_timeout_ms),
        };
        let handle = tokio::spawn(writer.run(stop));
        (ValidationLog { tx, queued, metrics }, handle)
    }

    /// Queues a row; if the queue is full the row is counted as dropped.
    pub fn record(&self, row: ValidationLogRow) {
        // Count before sending so the writer can never decrement below zero.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(row).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.metrics.dropped.increment(1);
        }
    }

    /// Rows accepted and not yet written (queued or in the batch being written).
    pub fn queue_size(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

struct Writer {
    pool: PgPool,
    rx: mpsc::Receiver<ValidationLogRow>,
    queued: Arc<AtomicUsize>,
    metrics: WriteBehindMetrics,
    batch_size: usize,
    flush_interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let received = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                n = self.rx.recv_many(&mut batch, self.batch_size) => n,
            };
            if received == 0 {
                break;
            }
            // Fill the batch until it is full or the interval since its first row has passed.
            // Stop cuts the wait short: the drain below writes the partial batch.
            let deadline = tokio::time::sleep(self.flush_interval);
            tokio::pin!(deadline);
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = &mut deadline => break,
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 { break },
                }
            }
            if stop.is_cancelled() {
                break;
            }
            self.write_until_done(&mut batch, &stop).await;
        }
        self.drain(batch).await;
    }

    /// Writes what is left after `stop`: no new rows are accepted, everything queued is tried.
    async fn drain(&mut self, mut batch: Vec<ValidationLogRow>) {
        self.rx.close();
        while let Ok(row) = self.rx.try_recv() {
            batch.push(row);
        }
        let give_up = CancellationToken::new();
        let timer = {
            let give_up = give_up.clone();
            let timeout = self.shutdown_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                give_up.cancel();
            })
        };
        for mut chunk in batch.chunks(self.batch_size).map(<[_]>::to_vec) {
            self.write_until_done(&mut chunk, &give_up).await;
            if !chunk.is_empty() {
                self.forget(chunk.len());
                self.metrics.dropped.increment(chunk.len() as u64);
                tracing::error!(rows = chunk.len(), "validation log rows could not be written before shutdown");
            }
        }
        timer.abort();
        let unwritten = self.queued.load(Ordering::Relaxed);
        if unwritten > 0 {
            tracing::warn!(rows = unwritten, "validation log queue not empty at exit");
        }
    }

    /// Writes `batch`, retrying with backoff while PostgreSQL is unreachable, until it is
    /// written or `stop` fires. On return, `batch` holds what was not written.
    async fn write_until_done(&mut self, batch: &mut Vec<ValidationLogRow>, stop: &CancellationToken) {
        let mut delay = self.retry_min;
        while !batch.is_empty() {
            let started = Instant::now();
            match insert(&self.pool, batch).await {
                Ok(()) => {
                    self.metrics.flush_seconds.record(started.elapsed().as_secs_f64());
                    self.metrics.written.increment(batch.len() as u64);
                    self.forget(batch.len());
                    batch.clear();
                    return;
                }
                Err(err) if is_transient(&err) => {
                    tracing::warn!(error = %err, rows = batch.len(), retry_in_ms = delay.as_millis() as u64, "validation log write failed; retrying");
                }
                Err(err) => {
                    tracing::error!(error = %err, rows = batch.len(), "validation log batch refused; writing rows one by one");
                    self.write_one_by_one(std::mem::take(batch)).await;
                    return;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.retry_max);
        }
    }

    /// Isolates rows PostgreSQL refuses (which input checks should make impossible) so one
    /// bad row cannot hold the queue hostage.
    async fn write_one_by_one(&mut self, rows: Vec<ValidationLogRow>) {
        for row in rows {
            let single = std::slice::from_ref(&row);
            match insert(&self.pool, single).await {
                Ok(()) => self.metrics.written.increment(1),
                Err(err) => {
                    tracing::error!(error = %err, "validation log row refused; dropped");
                    self.metrics.dropped.increment(1);
                }
            }
            self.forget(1);
        }
    }

    fn forget(&self, rows: usize) {
        self.queued.fetch_sub(rows, Ordering::Relaxed);
    }
}

/// One multi-row INSERT: a parameter per column, arrays unnested on the server.
async fn insert(pool: &PgPool, rows: &[ValidationLogRow]) -> Result<(), sqlx::Error> {
    let n = rows.len();
    let mut codes = Vec::with_capacity(n);
    let mut coupon_ids = Vec::with_capacity(n);
    let mut user_ids = Vec::with_capacity(n);
    let mut order_ids = Vec::with_capacity(n);
    let mut order_values = Vec::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut discounts = Vec::with_capacity(n);
    let mut finals = Vec::with_capacity(n);
    let mut ips = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    let mut micros = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for row in rows {
        codes.push(row.coupon_code.as_str());
        coupon_ids.push(row.coupon_id);
        user_ids.push(row.user_id.as_str());
        order_ids.push(row.order_id.as_deref());
        order_values.push(cents_i64(row.order_value));
        valid.push(row.is_valid);
        reasons.push(row.reason);
        discounts.push(cents_i64(row.discount));
        finals.push(cents_i64(row.final_amount));
        ips.push(row.ip_address.map(|ip| ip.to_string()));
        agents.push(row.user_agent.as_deref());
        micros.push(i64::try_from(row.response_time_us).unwrap_or(i64::MAX));
        times.push(row.validated_at);
    }
    sqlx::query(
        "INSERT INTO validation_logs (coupon_code, coupon_id, user_id, order_id, order_value, is_valid, \
         validation_reason, discount_applied, final_amount, ip_address, user_agent, response_time_ms, validated_at) \
         SELECT code, cid, uid, oid, round(ov::numeric / 100, 2), ok, reason, round(disc::numeric / 100, 2), \
         round(fin::numeric / 100, 2), ip::inet, ua, round(us::numeric / 1000, 3), at \
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::bool[], $7::text[], \
         $8::int8[], $9::int8[], $10::text[], $11::text[], $12::int8[], $13::timestamptz[]) \
         AS t(code, cid, uid, oid, ov, ok, reason, disc, fin, ip, ua, us, at)",
    )
    .bind(codes)
    .bind(coupon_ids)
    .bind(user_ids)
    .bind(order_ids)
    .bind(order_values)
    .bind(valid)
    .bind(reasons)
    .bind(discounts)
    .bind(finals)
    .bind(ips)
    .bind(agents)
    .bind(micros)
    .bind(times)
    .execute(pool)
    .await?;
    Ok(())
}

fn cents_i64(amount: Cents) -> i64 {
    // Amounts are bounded by MAX_CENTS, far below i64::MAX.
    i64::try_from(amount.get()).unwrap_or(i64::MAX)
}
