//! Ships the journal to PostgreSQL: redemptions, releases and spilled validation log rows,
//! in batches, retried with backoff while PostgreSQL is away.
//!
//! Invariant: shipping a record twice changes nothing the second time. Redemptions are
//! inserted `ON CONFLICT DO NOTHING` (their id is made by the service), a release only sets
//! `released_at` where it is still NULL, and spilled log rows carry their journal position
//! under a unique index. So the checkpoint may lag what PostgreSQL has (a crash between
//! COMMIT and checkpoint) without anything being counted twice.

use std::io::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::is_transient;
use crate::db::validation_log::ValidationLogRow;
use crate::domain::money::Cents;
use crate::journal::record::{Record, Redeemed, Released};
use crate::journal::{Entry, JournalError, JournalReader, Position};
use crate::metrics::Metrics;

/// Journal bytes read per batch.
const BATCH_BYTES: usize = 4 << 20;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A failure that stops shipping.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Follows the journal and writes it to PostgreSQL.
#[derive(Debug)]
pub struct Shipper {
    pool: PgPool,
    reader: JournalReader,
    metrics: std::sync::Arc<Metrics>,
    position: Position,
}

impl Shipper {
    pub fn new(pool: PgPool, reader: JournalReader, metrics: std::sync::Arc<Metrics>) -> Shipper {
        let position = reader.checkpoint();
        Shipper { pool, reader, metrics, position }
    }

    /// Ships everything durable now, failing on the first database error. Used at start-up,
    /// before the counters are loaded from PostgreSQL.
    pub async fn ship_all(&mut self) -> Result<usize, ShipError> {
        let mut shipped = 0;
        loop {
            let (entries, next) = self.reader.read(self.position, BATCH_BYTES)?;
            if entries.is_empty() && next == self.position {
                return Ok(shipped);
            }
            self.ship(&entries).await?;
            shipped += entries.len();
            self.advance(next, entries.len())?;
        }
    }

    /// Ships as records arrive until `stop`, then ships what is left for up to `grace`.
    /// Whatever is still unshipped stays in the journal for the next start.
    pub async fn run(mut self, stop: CancellationToken, grace: Duration) {
        let mut delay = RETRY_MIN;
        let mut deadline: Option<Instant> = None;
        loop {
            if stop.is_cancelled() && deadline.is_none() {
                deadline = Some(Instant::now() + grace);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let (entries, next) = match self.reader.read(self.position, BATCH_BYTES) {
                Ok(read) => read,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the journal; shipping stopped");
                    return;
                }
            };
            if entries.is_empty() && next == self.position {
                if deadline.is_some() {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = self.reader.appended() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let started = Instant::now();
            match self.ship(&entries).await {
                Ok(()) => {
                    self.metrics.coupon_usage.flush_seconds.record(started.elapsed().as_secs_f64());
                    if let Err(err) = self.advance(next, entries.len()) {
                        tracing::error!(error = %err, "cannot write the journal checkpoint; shipping stopped");
                        return;
                    }
                    delay = RETRY_MIN;
                }
                Err(ShipError::Database(err)) if is_transient(&err) => {
                    tracing::warn!(error = %err, records = entries.len(), retry_in_ms = delay.as_millis() as u64, "journal shipping failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(err) => {
                    tracing::error!(error = %err, records = entries.len(), "journal batch refused; shipping records one by one");
                    self.ship_one_by_one(&entries).await;
                    if let Err(err) = self.advance(next, entries.len()) {
                        tracing::error!(error = %err, "cannot write the journal checkpoint; shipping stopped");
                        return;
                    }
                }
            }
        }
    }

    fn advance(&mut self, next: Position, n: usize) -> Result<(), JournalError> {
        self.reader.confirm(next, n)?;
        self.position = next;
        Ok(())
    }

    /// A record PostgreSQL refuses for a reason other than being away (a coupon deleted
    /// before its redemption shipped, say) must not block the rest: it goes to
    /// `rejected.jsonl` beside the journal, loudly, instead of being lost.
    async fn ship_one_by_one(&self, entries: &[Entry]) {
        for entry in entries {
            if let Err(err) = self.ship(std::slice::from_ref(entry)).await {
                tracing::error!(error = %err, position = ?entry.position, "journal record refused by PostgreSQL; kept in rejected.jsonl");
                self.metrics.coupon_usage.dropped.increment(1);
                let line = serde_json::to_string(&entry.record).unwrap_or_default();
                let path = self.reader.dir().join("rejected.jsonl");
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut file| writeln!(file, "{line}").and_then(|()| file.sync_data()));
                if let Err(io) = written {
                    tracing::error!(error = %io, record = %line, "cannot keep a refused journal record");
                }
            }
        }
    }

    /// Writes a batch in one transaction: redemptions, then releases (a release always
    /// follows its redemption in the journal), then spilled log rows.
    async fn ship(&self, entries: &[Entry]) -> Result<(), ShipError> {
        let mut redeemed = Vec::new();
        let mut released = Vec::new();
        let mut logs = Vec::new();
        for entry in entries {
            match &entry.record {
                Record::Redeem(r) => redeemed.push(r),
                Record::Release(r) => released.push(r),
                Record::ValidationLog(row) => logs.push((entry.position, row)),
            }
        }
        let mut tx = self.pool.begin().await?;
        let inserted = insert_redemptions(&mut tx, &redeemed).await?;
        let updated = apply_releases(&mut tx, &released).await?;
        let logged = insert_spilled_logs(&mut tx, &logs).await?;
        tx.commit().await?;
        self.metrics.coupon_usage.written.increment(inserted + updated);
        self.metrics.validation_logs.written.increment(logged);
        if inserted < redeemed.len() as u64 || updated < released.len() as u64 {
            tracing::debug!(
                redemptions = redeemed.len(),
                inserted,
                releases = released.len(),
                updated,
                "replayed journal records were already in PostgreSQL"
            );
        }
        Ok(())
    }
}

fn cents(amount: Cents) -> i64 {
    i64::try_from(amount.get()).unwrap_or(i64::MAX)
}

async fn insert_redemptions(tx: &mut Transaction<'_, Postgres>, rows: &[&Redeemed]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let coupons: Vec<i64> = rows.iter().map(|r| r.coupon_id).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let values: Vec<i64> = rows.iter().map(|r| cents(r.order_value)).collect();
    let discounts: Vec<i64> = rows.iter().map(|r| cents(r.discount)).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.used_at).collect();
    let result = sqlx::query(
        "INSERT INTO coupon_usage (id, coupon_id, user_id, order_id, order_value, discount_applied, used_at) \
         SELECT id, cid, uid, oid, round(ov::numeric / 100, 2), round(disc::numeric / 100, 2), at \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::timestamptz[]) \
         AS t(id, cid, uid, oid, ov, disc, at) \
         ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(coupons)
    .bind(users)
    .bind(orders)
    .bind(values)
    .bind(discounts)
    .bind(times)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

async fn apply_releases(tx: &mut Transaction<'_, Postgres>, rows: &[&Released]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.released_at).collect();
    let result = sqlx::query(
        "UPDATE coupon_usage u SET released_at = r.at \
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS r(id, at) \
         WHERE u.id = r.id AND u.released_at IS NULL",
    )
    .bind(ids)
    .bind(times)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

async fn insert_spilled_logs(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(Position, &ValidationLogRow)],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let positions: Vec<i64> = rows.iter().map(|(p, _)| p.as_i64()).collect();
    let codes: Vec<&str> = rows.iter().map(|(_, r)| r.coupon_code.as_str()).collect();
    let coupon_ids: Vec<Option<i64>> = rows.iter().map(|(_, r)| r.coupon_id).collect();
    let users: Vec<&str> = rows.iter().map(|(_, r)| r.user_id.as_str()).collect();
    let orders: Vec<Option<&str>> = rows.iter().map(|(_, r)| r.order_id.as_deref()).collect();
    let values: Vec<i64> = rows.iter().map(|(_, r)| cents(r.order_value)).collect();
    let valid: Vec<bool> = rows.iter().map(|(_, r)| r.is_valid).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|(_, r)| r.reason.map(|x| x.as_str())).collect();
    let discounts: Vec<i64> = rows.iter().map(|(_, r)| cents(r.discount)).collect();
    let finals: Vec<i64> = rows.iter().map(|(_, r)| cents(r.final_amount)).collect();
    let ips: Vec<Option<String>> = rows.iter().map(|(_, r)| r.ip_address.map(|ip| ip.to_string())).collect();
    let agents: Vec<Option<&str>> = rows.iter().map(|(_, r)| r.user_agent.as_deref()).collect();
    let micros: Vec<i64> = rows.iter().map(|(_, r)| i64::try_from(r.response_time_us).unwrap_or(i64::MAX)).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.validated_at).collect();
    let result = sqlx::query(
        "INSERT INTO validation_logs (journal_pos, coupon_code, coupon_id, user_id, order_id, order_value, is_valid, \
         validation_reason, discount_applied, final_amount, ip_address, user_agent, response_time_ms, validated_at) \
         SELECT pos, code, cid, uid, oid, round(ov::numeric / 100, 2), ok, reason, round(disc::numeric / 100, 2), \
         round(fin::numeric / 100, 2), ip::inet, ua, round(us::numeric / 1000, 3), at \
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], $7::bool[], $8::text[], \
         $9::int8[], $10::int8[], $11::text[], $12::text[], $13::int8[], $14::timestamptz[]) \
         AS t(pos, code, cid, uid, oid, ov, ok, reason, disc, fin, ip, ua, us, at) \
         ON CONFLICT (journal_pos) WHERE journal_pos IS NOT NULL DO NOTHING",
    )
    .bind(positions)
    .bind(codes)
    .bind(coupon_ids)
    .bind(users)
    .bind(orders)
    .bind(values)
    .bind(valid)
    .bind(reasons)
    .bind(discounts)
    .bind(finals)
    .bind(ips)
    .bind(agents)
    .bind(micros)
    .bind(times)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}
