//! Write-behind for `validation_logs`: a bounded queue drained in batches, off the request path.
//!
//! Invariant: a request only ever calls [`ValidationLog::record`], which never waits. While
//! PostgreSQL is away the writer holds its batch and retries with backoff; the queue fills
//! meanwhile and rows past its capacity spill into the journal (`db::shipper` writes them
//! later); a row is dropped, and counted, only if the journal refuses it too.

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
use crate::domain::rules::Reason;
use crate::journal::Journal;
use crate::journal::record::Record;
use crate::metrics::WriteBehindMetrics;

/// One `validation_logs` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ValidationLogRow {
    pub coupon_code: String,
    pub coupon_id: Option<i64>,
    pub user_id: String,
    pub order_id: Option<String>,
    pub order_value: Cents,
    pub is_valid: bool,
    pub reason: Option<Reason>,
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
    spill: Spill,
}

/// Where rows go when the queue is full: the journal, shipped later by `db::shipper`.
#[derive(Debug, Clone)]
struct Spill {
    journal: Journal,
    metrics: WriteBehindMetrics,
}

impl Spill {
    fn rows(&self, rows: impl IntoIterator<Item = ValidationLogRow>) {
        for row in rows {
            if self.journal.append_nowait(&Record::ValidationLog(row)) {
                self.metrics.spilled.increment(1);
            } else {
                self.metrics.dropped.increment(1);
            }
        }
    }
}

impl ValidationLog {
    /// Starts the writer. It runs until `stop` is cancelled, then writes what is queued
    /// (trying for at most `shutdown_timeout_ms`) and returns.
    pub fn spawn(
        pool: PgPool,
        settings: &ValidationLogSettings,
        metrics: WriteBehindMetrics,
        journal: Journal,
        stop: CancellationToken,
    ) -> (ValidationLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let spill = Spill { journal, metrics: metrics.clone() };
        let writer = Writer {
            pool,
            rx,
            queued: queued.clone(),
            spill: spill.clone(),
            metrics,
            batch_size: settings.batch_size,
            flush_interval: settings.flush_interval(),
            retry_min: Duration::from_millis(settings.retry_min_ms),
            retry_max: Duration::from_millis(settings.retry_max_ms),
            shutdown_timeout: Duration::from_millis(settings.shutdown_timeout_ms),
        };
        let handle = tokio::spawn(writer.run(stop));
        (ValidationLog { tx, queued, spill }, handle)
    }

    /// Queues a row; if the queue is full the row spills to the journal.
    pub fn record(&self, row: ValidationLogRow) {
        // Count before sending so the writer can never decrement below zero.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.tx.try_send(row) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.spill.rows([err.into_inner()]);
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
    spill: Spill,
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
                tracing::warn!(
                    rows = chunk.len(),
                    "validation log rows not written before shutdown; spilled to the journal"
                );
                self.spill.rows(chunk);
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
                Err(err) if is_transient(&err) => self.spill.rows([row]),
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

/// One COPY of the batch: about four times the rows per second of a multi-row INSERT
/// (TECH-NOTES §2), and rows here need no conflict handling.
async fn insert(pool: &PgPool, rows: &[ValidationLogRow]) -> Result<(), sqlx::Error> {
    let mut text = String::with_capacity(rows.len() * 160);
    for row in rows {
        write_row(&mut text, row);
    }
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY validation_logs (coupon_code, coupon_id, user_id, order_id, order_value, is_valid, \
             validation_reason, discount_applied, final_amount, ip_address, user_agent, response_time_ms, \
             validated_at) FROM STDIN WITH (FORMAT text)",
        )
        .await?;
    if let Err(err) = copy.send(text.as_bytes()).await {
        let _ = copy.abort("send failed").await;
        return Err(err);
    }
    copy.finish().await?;
    Ok(())
}

/// One line of COPY text format: tab-separated, `\N` for NULL, text fields escaped.
fn write_row(out: &mut String, row: &ValidationLogRow) {
    use std::fmt::Write as _;
    escape(out, Some(&row.coupon_code));
    out.push('\t');
    match row.coupon_id {
        Some(id) => {
            let _ = write!(out, "{id}");
        }
        None => out.push_str("\\N"),
    }
    out.push('\t');
    escape(out, Some(&row.user_id));
    out.push('\t');
    escape(out, row.order_id.as_deref());
    let _ = write!(out, "\t{}\t{}\t", row.order_value, if row.is_valid { 't' } else { 'f' });
    escape(out, row.reason.map(Reason::as_str));
    let _ = write!(out, "\t{}\t{}\t", row.discount, row.final_amount);
    match row.ip_address {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push_str("\\N"),
    }
    out.push('\t');
    escape(out, row.user_agent.as_deref());
    let _ = writeln!(
        out,
        "\t{}.{:03}\t{}",
        row.response_time_us / 1000,
        row.response_time_us % 1000,
        row.validated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
}

/// A text field for COPY: backslash, tab, newline and carriage return escaped; `None` is NULL.
fn escape(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn copy_lines_escape_text_and_spell_nulls() {
        let row = ValidationLogRow {
            coupon_code: "A\\B\tC".into(),
            coupon_id: None,
            user_id: "u\n1".into(),
            order_id: None,
            order_value: Cents::new(1250).unwrap(),
            is_valid: false,
            reason: Some(Reason::CouponNotFound),
            discount: Cents::ZERO,
            final_amount: Cents::new(1250).unwrap(),
            ip_address: Some("127.0.0.1".parse().unwrap()),
            user_agent: Some("x\ry".into()),
            response_time_us: 1_234_567,
            validated_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        };
        let mut line = String::new();
        write_row(&mut line, &row);
        assert_eq!(
            line,
            "A\\\\B\\tC\t\\N\tu\\n1\t\\N\t12.5\tf\tCOUPON_NOT_FOUND\t0\t12.5\t127.0.0.1\tx\\ry\t1234.567\t2026-01-02T03:04:05.000000Z\n"
        );
    }
}
