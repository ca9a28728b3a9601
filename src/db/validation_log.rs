//! Write-behind for the validation log: a bounded queue drained in batches, off the request path.
//!
//! Each batch is one transaction: the rows by COPY straight into their day's partition of
//! `validation_log` (narrow, no B-tree; PostgreSQL routes no row), and the batch's per-code,
//! per-hour counts added to `validation_counts`, so the statistics always agree with the
//! rows. Partitions for the days a batch needs are created on the way if missing (after a
//! long downtime, say).
//!
//! Invariant: a request only ever calls [`ValidationLog::record`], which never waits. While
//! PostgreSQL is away the writer holds its batch and retries with backoff; the queue fills
//! meanwhile and rows past its capacity spill into the journal (`db::shipper` writes them
//! later). A row is dropped, and counted, only if the journal refuses it too (its unshipped
//! budget, `validation_log.spill_max_bytes`, or the disk it keeps for uses), or if
//! PostgreSQL refuses that single row for good (input checks make that impossible).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};

use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::ValidationLogSettings;
pub use crate::db::copy_text::reason_code;
use crate::db::copy_text::{COLUMNS, CopyText};
use crate::db::health::DatabaseHealth;
use crate::db::is_refusal;
use crate::domain::event::{Event, Validated};
use crate::engine::ports::ValidationSink;
use crate::journal::{Journal, Position, SpareCounters};
use crate::metrics::ValidationLogMetrics;

/// How often a batch being filled looks at the queue.
const FILL_TICK: Duration = Duration::from_millis(5);

/// The request side of the queue: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct ValidationLog {
    tx: mpsc::Sender<Validated>,
    queued: Arc<AtomicUsize>,
    spill: Spill,
}

/// Where rows go when the queue is full: the journal, shipped later by `db::shipper`, while
/// what the journal holds unshipped stays within `validation_log.spill_max_bytes` and the disk
/// keeps `journal.reserved_bytes` free; past either a row is dropped and counted (uses always
/// have the journal: they are never spilled rows).
#[derive(Debug, Clone)]
struct Spill {
    journal: Journal,
    /// Spilled rows are counted by the journal's writer once written (or dropped).
    counters: SpareCounters,
    max_bytes: u64,
    /// The size of the last row refused for the budget (0: the last one spilled).
    refused: Arc<AtomicU64>,
}

impl Spill {
    fn rows(&self, rows: impl IntoIterator<Item = Validated>) {
        for row in rows {
            let record = Event::Validated(row).encode();
            let len = record.len() as u64;
            let within = self.journal.unshipped_bytes() + len <= self.max_bytes;
            if !within {
                self.refused.store(len, Ordering::Relaxed);
            }
            if within && self.journal.append_spare(&record, &self.counters) {
                self.refused.store(0, Ordering::Relaxed);
            } else {
                self.counters.dropped.increment(1);
            }
        }
    }
}

impl ValidationSink for ValidationLog {
    /// Queues a row; if the queue is full the row spills to the journal.
    fn record(&self, row: Validated) {
        // Count before sending so the writer can never decrement below zero.
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.tx.try_send(row) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.spill.rows([err.into_inner()]);
        }
    }
}

impl ValidationLog {
    /// The queue, and the writer that drains it (see [`LogWriter::run`]).
    pub fn new(
        pool: PgPool,
        settings: &ValidationLogSettings,
        metrics: ValidationLogMetrics,
        journal: Journal,
        health: Arc<DatabaseHealth>,
    ) -> (ValidationLog, LogWriter) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let spill = Spill {
            journal,
            counters: SpareCounters { written: metrics.spilled.clone(), dropped: metrics.dropped.clone() },
            max_bytes: settings.spill_max_bytes,
            refused: Arc::new(AtomicU64::new(0)),
        };
        let writer = LogWriter {
            pool,
            rx,
            queued: queued.clone(),
            spill: spill.clone(),
            metrics,
            health,
            settings: settings.clone(),
            days: Days::default(),
        };
        (ValidationLog { tx, queued, spill }, writer)
    }

    /// Rows accepted and not yet written (queued or in the batch being written).
    /// Whether rows that do not fit in memory are being dropped for the journal's reserved
    /// disk (`journal.reserved_bytes`): the filesystem has no more free space than it.
    pub(crate) fn disk_budget_spent(&self) -> bool {
        self.spill.journal.in_reserve()
    }

    /// Whether rows that do not fit in memory are being dropped: the last one refused would
    /// still not fit in `validation_log.spill_max_bytes`.
    pub(crate) fn spill_budget_spent(&self) -> bool {
        let refused = self.spill.refused.load(Ordering::Relaxed);
        refused > 0 && self.spill.journal.unshipped_bytes() + refused > self.spill.max_bytes
    }

    pub(crate) fn queue_size(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Drains the queue into PostgreSQL.
pub struct LogWriter {
    pool: PgPool,
    rx: mpsc::Receiver<Validated>,
    queued: Arc<AtomicUsize>,
    spill: Spill,
    metrics: ValidationLogMetrics,
    health: Arc<DatabaseHealth>,
    settings: ValidationLogSettings,
    days: Days,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Writes batches until `stop` is cancelled, then writes what is queued (trying for at
    /// most the shutdown timeout, spilling the rest) and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        let batch_size = self.settings.batch_size;
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            let received = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                n = self.rx.recv_many(&mut batch, batch_size) => n,
            };
            if received == 0 {
                break;
            }
            // Fill the batch until it is full or the interval since its first row has passed,
            // looking at the queue every FILL_TICK rather than being woken by every row: a
            // wake per validation cost a task switch per request and queued the writer
            // ahead of requests on their worker. Stop cuts the wait short: the drain below
            // writes the partial batch.
            let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
            loop {
                let open = self.take_ready(&mut batch, batch_size);
                let now = tokio::time::Instant::now();
                if !open || batch.len() >= batch_size || now >= deadline {
                    break;
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until((now + FILL_TICK).min(deadline)) => {}
                }
            }
            if stop.is_cancelled() {
                break;
            }
            self.write_until_done(&mut batch, &stop).await;
        }
        self.drain(batch).await;
    }

    /// Moves the rows already queued into `batch`, up to `batch_size`, without waiting;
    /// false once the queue is closed.
    fn take_ready(&mut self, batch: &mut Vec<Validated>, batch_size: usize) -> bool {
        while batch.len() < batch_size {
            match self.rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    /// Writes what is left after `stop`: no new rows are accepted, everything queued is tried
    /// until the shutdown timeout, and what is still unwritten then spills to the journal.
    async fn drain(&mut self, mut batch: Vec<Validated>) {
        self.rx.close();
        while let Ok(row) = self.rx.try_recv() {
            batch.push(row);
        }
        let give_up = CancellationToken::new();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let mut chunk: Vec<Validated> = rest.by_ref().take(self.settings.batch_size).collect();
            tokio::select! {
                () = self.write_until_done(&mut chunk, &give_up) => {}
                () = tokio::time::sleep_until(deadline) => give_up.cancel(),
            }
            if give_up.is_cancelled() {
                chunk.extend(rest.by_ref());
            }
            if !chunk.is_empty() {
                self.forget(chunk.len());
                tracing::warn!(
                    rows = chunk.len(),
                    "validation log rows not written before shutdown; spilled to the journal"
                );
                self.spill.rows(chunk);
            }
        }
    }

    /// Writes `batch`, retrying with backoff while PostgreSQL is unreachable, until it is
    /// written or `stop` fires. On return, `batch` holds what was not written.
    async fn write_until_done(&mut self, batch: &mut Vec<Validated>, stop: &CancellationToken) {
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        while !batch.is_empty() {
            let started = Instant::now();
            let written = async {
                let mut conn = self.pool.acquire().await?;
                write_batch(&mut conn, &mut self.days, batch).await
            };
            match written.await {
                Ok(_) => {
                    self.metrics.rows.flush_seconds.record(started.elapsed().as_secs_f64());
                    self.metrics.rows.written.increment(batch.len() as u64);
                    self.forget(batch.len());
                    batch.clear();
                    return;
                }
                Err(err) if is_refusal(&err) => {
                    tracing::error!(error = %err, rows = batch.len(), "validation log batch refused; writing rows one by one");
                    self.write_one_by_one(std::mem::take(batch)).await;
                    return;
                }
                Err(err) => {
                    self.health.report_failure("validation log writer", &err);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, rows = batch.len(), retry_in_ms = delay.as_millis() as u64, "validation log write failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Isolates the rows PostgreSQL refuses, so one bad row cannot hold the queue hostage.
    async fn write_one_by_one(&mut self, rows: Vec<Validated>) {
        for row in rows {
            let written = async {
                let mut conn = self.pool.acquire().await?;
                write_batch(&mut conn, &mut self.days, std::slice::from_ref(&row)).await
            };
            match written.await {
                Ok(_) => self.metrics.rows.written.increment(1),
                Err(err) if is_refusal(&err) => {
                    tracing::error!(error = %err, "validation log row refused; dropped");
                    self.metrics.dropped.increment(1);
                }
                Err(_) => self.spill.rows([row]),
            }
            self.forget(1);
        }
    }

    fn forget(&self, rows: usize) {
        self.queued.fetch_sub(rows, Ordering::Relaxed);
    }
}

/// The UTC days this process knows have their partitions, with each partition's name.
#[derive(Debug, Default)]
struct Days(BTreeMap<NaiveDate, String>);

impl Days {
    /// Creates the partitions of the days from the first to the last of `times` that this
    /// process has not seen yet, and learns their names.
    async fn ensure(
        &mut self,
        conn: &mut PgConnection,
        times: impl Iterator<Item = DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        let Some((first, last)) = times.fold(None, |span: Option<(DateTime<Utc>, DateTime<Utc>)>, t| {
            Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))))
        }) else {
            return Ok(());
        };
        let (first, last) = (first.date_naive(), last.date_naive());
        if first.iter_days().take_while(|d| *d <= last).all(|d| self.0.contains_key(&d)) {
            return Ok(());
        }
        sqlx::query("SELECT validation_log_add_days($1, $2)").bind(first).bind(last).execute(&mut *conn).await?;
        let named: Vec<(NaiveDate, String)> = sqlx::query_as(
            "SELECT day::date, validation_log_partition(day::date) FROM generate_series($1::date, $2::date, interval '1 day') AS day",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&mut *conn)
        .await?;
        self.0.extend(named);
        Ok(())
    }

    /// The partition of `day`, which [`Days::ensure`] has made.
    fn partition(&self, day: NaiveDate) -> &str {
        self.0.get(&day).map(String::as_str).expect("Days::ensure covers every day of the batch")
    }
}

/// Writes `rows` and their counts in one transaction. A day's partition dropped behind this
/// process's back (by hand) is created again, once.
async fn write_batch(conn: &mut PgConnection, days: &mut Days, rows: &[Validated]) -> Result<u64, sqlx::Error> {
    match try_write_batch(conn, days, rows).await {
        Err(err) if is_missing_partition(&err) => {
            days.0.clear();
            try_write_batch(conn, days, rows).await
        }
        other => other,
    }
}

async fn try_write_batch(conn: &mut PgConnection, days: &mut Days, rows: &[Validated]) -> Result<u64, sqlx::Error> {
    days.ensure(conn, rows.iter().map(|r| r.validated_at)).await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let written = copy_rows(&mut tx, days, CopyRows::Log(rows)).await?;
    add_counts(&mut tx, rows.iter()).await?;
    tx.commit().await?;
    Ok(written)
}

/// A log partition that no longer exists (undefined_table, 42P01), or no partition of
/// `validation_counts` for a row (check_violation 23514, "no partition of relation …").
fn is_missing_partition(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| match e.code().as_deref() {
        Some("42P01") => true,
        Some("23514") => e.message().contains("no partition"),
        _ => false,
    })
}

/// A count's hour (its Unix second), code and outcome.
type CountKey<'a> = (i64, &'a str, i16);

/// Adds the rows' validations to `validation_counts`, one upsert per code, hour and outcome,
/// with the newest validation of each (what the recent-validations read starts from).
async fn add_counts<'a>(conn: &mut PgConnection, rows: impl Iterator<Item = &'a Validated>) -> Result<(), sqlx::Error> {
    // Keyed by the hour's Unix second: chrono's truncation and SipHash cost more per row
    // than the rest of the batch's work here.
    let mut counts: HashMap<CountKey<'_>, (i64, DateTime<Utc>), ahash::RandomState> = HashMap::default();
    for row in rows {
        let hour = row.validated_at.timestamp().div_euclid(3600) * 3600;
        let (n, last) = counts
            .entry((hour, &row.coupon_code, reason_code(row.reason).unwrap_or(0)))
            .or_insert((0, row.validated_at));
        *n += 1;
        *last = (*last).max(row.validated_at);
    }
    let len = counts.len();
    let (mut hours, mut codes, mut reasons, mut ns, mut lasts) = (
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    );
    for ((hour, code, reason), (n, last)) in counts {
        hours.push(DateTime::<Utc>::from_timestamp(hour, 0).expect("an hour of a valid time"));
        codes.push(code);
        reasons.push(reason);
        ns.push(n);
        lasts.push(last);
    }
    sqlx::query(
        "INSERT INTO validation_counts (hour, coupon_code, reason, count, last_at) \
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::smallint[], $4::bigint[], $5::timestamptz[]) \
         ON CONFLICT (coupon_code, hour, reason) DO UPDATE SET count = validation_counts.count + EXCLUDED.count, \
         last_at = greatest(validation_counts.last_at, EXCLUDED.last_at)",
    )
    .bind(hours)
    .bind(codes)
    .bind(reasons)
    .bind(ns)
    .bind(lasts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts log rows that spilled into the journal, once each (their journal positions are
/// remembered in `validation_log_spilled`), with their counts. Runs in the caller's
/// transaction.
pub(crate) async fn insert_spilled(
    conn: &mut PgConnection,
    rows: &[(Position, &Validated)],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let fresh: Vec<i64> = {
        let positions: Vec<i64> = rows.iter().map(|(p, _)| p.as_i64()).collect();
        let days: Vec<NaiveDate> = rows.iter().map(|(_, r)| r.validated_at.date_naive()).collect();
        sqlx::query_scalar(
            "INSERT INTO validation_log_spilled (journal_pos, day) SELECT * FROM UNNEST($1::bigint[], $2::date[]) \
             ON CONFLICT DO NOTHING RETURNING journal_pos",
        )
        .bind(positions)
        .bind(days)
        .fetch_all(&mut *conn)
        .await?
    };
    let fresh: std::collections::HashSet<i64> = fresh.into_iter().collect();
    let rows: Vec<&(Position, &Validated)> = rows.iter().filter(|(p, _)| fresh.contains(&p.as_i64())).collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let mut days = Days::default();
    days.ensure(conn, rows.iter().map(|(_, r)| r.validated_at)).await?;
    let written = copy_rows(conn, &days, CopyRows::Spilled(&rows)).await?;
    add_counts(conn, rows.iter().map(|(_, row)| *row)).await?;
    Ok(written)
}

/// What [`copy_rows`] writes.
#[derive(Debug, Clone, Copy)]
enum CopyRows<'a> {
    /// Rows from the queue: no journal position.
    Log(&'a [Validated]),
    /// Rows that spilled into the journal: each carries its position.
    Spilled(&'a [&'a (Position, &'a Validated)]),
}

impl CopyRows<'_> {
    fn len(self) -> usize {
        match self {
            CopyRows::Log(rows) => rows.len(),
            CopyRows::Spilled(rows) => rows.len(),
        }
    }

    fn write(self, idx: usize, text: &mut CopyText) {
        match self {
            CopyRows::Log(rows) => text.row(None, &rows[idx]),
            CopyRows::Spilled(rows) => text.row(Some(rows[idx].0.as_i64()), rows[idx].1),
        }
    }

    /// The runs of consecutive rows of one UTC day, each with its day.
    fn days(self) -> Vec<(NaiveDate, Self)> {
        let same_day = |a: &Validated, b: &Validated| a.validated_at.date_naive() == b.validated_at.date_naive();
        match self {
            CopyRows::Log(rows) => rows
                .chunk_by(|a, b| same_day(a, b))
                .map(|run| (run[0].validated_at.date_naive(), CopyRows::Log(run)))
                .collect(),
            CopyRows::Spilled(rows) => rows
                .chunk_by(|a, b| same_day(a.1, b.1))
                .map(|run| (run[0].1.validated_at.date_naive(), CopyRows::Spilled(run)))
                .collect(),
        }
    }
}

/// COPY text sent per message: formatting a whole batch at once held a runtime worker for
/// milliseconds; in pieces of this size the writer yields between them.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// COPYs `rows` into their days' partitions, one COPY per run of rows of one day (a batch
/// is in time order, so that is one COPY unless it spans midnight). Routing each row
/// through `validation_log` cost PostgreSQL ~9% more CPU a row.
async fn copy_rows(conn: &mut PgConnection, days: &Days, rows: CopyRows<'_>) -> Result<u64, sqlx::Error> {
    let mut written = 0;
    for (day, run) in rows.days() {
        written += copy_day(conn, days.partition(day), run).await?;
    }
    Ok(written)
}

/// One COPY of `rows` into `partition`: about four times the rows per second of a
/// multi-row INSERT.
async fn copy_day(conn: &mut PgConnection, partition: &str, rows: CopyRows<'_>) -> Result<u64, sqlx::Error> {
    let statement = match rows {
        CopyRows::Log(_) => format!("COPY \"{partition}\" ({COLUMNS}) FROM STDIN WITH (FORMAT text)"),
        CopyRows::Spilled(_) => format!("COPY \"{partition}\" (journal_pos, {COLUMNS}) FROM STDIN WITH (FORMAT text)"),
    };
    let mut copy = conn.copy_in_raw(&statement).await?;
    let mut text = CopyText::default();
    let mut next = 0;
    while next < rows.len() {
        while next < rows.len() && text.len() < COPY_CHUNK_BYTES {
            rows.write(next, &mut text);
            next += 1;
        }
        if let Err(err) = copy.send(text.as_bytes()).await {
            let _ = copy.abort("send failed").await;
            return Err(err);
        }
        text.clear();
        tokio::task::yield_now().await;
    }
    copy.finish().await
}
