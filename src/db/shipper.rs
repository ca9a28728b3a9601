//! Ships the journal to PostgreSQL: redemptions, holds, confirmations, releases and spilled
//! validation log rows, in batches.
//!
//! Invariants:
//! - Every record's effects happen once, however often it is shipped (a commit whose answer
//!   was lost, a checkpoint not written before a crash): each transaction records, in
//!   `journal_shipped`, the position of the last record it wrote for this `DATA_DIR`, and
//!   skips what is at or before it. Besides, every event carries its redemption's revision
//!   and a row only takes a newer one, so an older event after a newer one changes nothing.
//! - Nothing is lost and nothing wedges. An error that may be PostgreSQL's (unreachable,
//!   restarting, anything unknown) is retried with backoff, never skipped. Only a record
//!   PostgreSQL refuses for good (bad data or a broken constraint, alone in its batch) is set
//!   aside in `rejected.jsonl`, counted and shown, for an operator to retry.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::JournalSettings;
use crate::db::health::DatabaseHealth;
use crate::db::identity::Identity;
use crate::db::{is_refusal, money, quota, validation_log};
use crate::domain::coupon::CouponId;
use crate::domain::event::{Confirmed, Event, Redeemed, Released, Validated};
use crate::domain::money::Cents;
use crate::engine::Engine;
use crate::journal::rejected::Rejected;
use crate::journal::{Entry, JournalError, JournalReader, Position};
use crate::metrics::Metrics;

/// Journal bytes read per batch.
const BATCH_BYTES: usize = 4 << 20;

/// Whether the shipper is making progress, for `/health`.
#[derive(Debug, Default)]
pub struct ShippingStatus {
    stalled: AtomicBool,
}

impl ShippingStatus {
    /// The shipper cannot read its journal or write its checkpoint (a full disk, no file
    /// descriptors): it retries, and says so here.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

/// Follows the journal and writes it to PostgreSQL.
#[derive(Debug)]
pub struct Shipper {
    pool: PgPool,
    reader: JournalReader,
    status: Arc<ShippingStatus>,
    rejected: Arc<Rejected>,
    metrics: Arc<Metrics>,
    health: Arc<DatabaseHealth>,
    settings: JournalSettings,
    position: Position,
    /// This instance's id: the maker of the rows it ships.
    instance: String,
    /// The id of the `DATA_DIR` whose journal this is.
    data_dir: Uuid,
    /// Told of the uses made here that did not land.
    engine: Arc<Engine>,
}

/// What one shipment wrote.
#[derive(Debug, Default)]
struct Written {
    uses: u64,
    logs: u64,
    conflicts: u64,
    overrun: u64,
    /// Orders whose use made here did not land (another row of the order was newer): the
    /// ledger, which counts that use, must read the order again.
    dropped: Vec<(CouponId, String)>,
}

impl Shipper {
    #[allow(clippy::too_many_arguments, reason = "one call site, App::build; each is a different part of the service")]
    pub fn new(
        pool: PgPool,
        reader: JournalReader,
        rejected: Arc<Rejected>,
        metrics: Arc<Metrics>,
        health: Arc<DatabaseHealth>,
        settings: JournalSettings,
        identity: &Identity,
        engine: Arc<Engine>,
    ) -> Shipper {
        let position = reader.checkpoint();
        let status = Arc::default();
        let (instance, data_dir) = (identity.instance.clone(), identity.data_dir);
        Shipper { pool, reader, status, rejected, metrics, health, settings, position, instance, data_dir, engine }
    }

    /// Whether it is making progress.
    pub fn status(&self) -> Arc<ShippingStatus> {
        self.status.clone()
    }

    /// Ships everything durable now, retrying while PostgreSQL is away, until done or
    /// `stop`. Used at start-up, before the ledger is loaded from PostgreSQL: loading first
    /// would miss acknowledged uses. Returns how many records were handled.
    pub(crate) async fn ship_all(&mut self, stop: &CancellationToken) -> Result<usize, JournalError> {
        let mut shipped = 0;
        let mut backoff = Backoff::new(self.settings.ship_retry_min, self.settings.ship_retry_max);
        while !stop.is_cancelled() {
            let (entries, next) = self.reader.read(self.position, BATCH_BYTES)?;
            if entries.is_empty() && next == self.position {
                break;
            }
            match self.deliver(&entries).await {
                Ok(()) => {
                    shipped += entries.len();
                    self.advance(next, entries.len())?;
                    backoff.reset();
                }
                Err(err) => self.wait_after(&err, entries.len(), &mut backoff, stop).await,
            }
        }
        Ok(shipped)
    }

    /// Ships as records arrive until `stop`, then ships what is left for up to the shutdown
    /// timeout. Whatever is still unshipped stays in the journal for the next start.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.ship_retry_min, self.settings.ship_retry_max);
        let mut deadline: Option<Instant> = None;
        let give_up = CancellationToken::new();
        loop {
            if stop.is_cancelled() && deadline.is_none() {
                deadline = Some(Instant::now() + self.settings.ship_shutdown_timeout);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let (entries, next) = match self.reader.read(self.position, BATCH_BYTES) {
                Ok(read) => read,
                Err(err) => {
                    self.stalled(&err, &mut backoff, if deadline.is_some() { &give_up } else { &stop }).await;
                    continue;
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
            match self.deliver(&entries).await {
                Ok(()) => {
                    self.metrics.coupon_usage.flush_seconds.record(started.elapsed().as_secs_f64());
                    // Shipping again after a failed checkpoint skips what was written.
                    if let Err(err) = self.advance(next, entries.len()) {
                        self.stalled(&err, &mut backoff, if deadline.is_some() { &give_up } else { &stop }).await;
                        continue;
                    }
                    self.status.stalled.store(false, Ordering::Relaxed);
                    backoff.reset();
                }
                Err(err) => {
                    let during_shutdown = if deadline.is_some() { &give_up } else { &stop };
                    self.wait_after(&err, entries.len(), &mut backoff, during_shutdown).await;
                }
            }
        }
    }

    async fn stalled(&self, err: &JournalError, backoff: &mut Backoff, stop: &CancellationToken) {
        self.status.stalled.store(true, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::error!(error = %err, retry_in_ms = delay.as_millis() as u64, "journal shipping stalled on local I/O; retrying");
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    async fn wait_after(&self, err: &sqlx::Error, records: usize, backoff: &mut Backoff, stop: &CancellationToken) {
        self.health.report_failure("journal shipper", err);
        let delay = backoff.next_delay();
        tracing::warn!(error = %err, records, retry_in_ms = delay.as_millis() as u64, "journal shipping failed; retrying");
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn advance(&mut self, next: Position, n: usize) -> Result<(), JournalError> {
        self.reader.confirm(next, n)?;
        self.position = next;
        Ok(())
    }

    /// Writes `entries`, setting aside each one PostgreSQL refuses for good; `Err` (retry
    /// later) for anything else.
    async fn deliver(&self, entries: &[Entry]) -> Result<(), sqlx::Error> {
        let mut events = Vec::with_capacity(entries.len());
        let mut undecodable = Vec::new();
        for entry in entries {
            match Event::decode(&entry.payload) {
                Ok(event) => events.push((entry.position, &entry.payload[..], event)),
                Err(err) => undecodable.push((entry, err)),
            }
        }
        self.deliver_events(&events).await?;
        // Only once the batch is through, so that a retry never sets a record aside twice.
        for (entry, err) in undecodable {
            self.set_aside(entry.position, &entry.payload, &format!("undecodable: {err}"));
        }
        Ok(())
    }

    /// Splits a refused batch in halves until the refused records are alone.
    fn deliver_events<'a>(
        &'a self,
        events: &'a [(Position, &'a [u8], Event)],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'a>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            match self.write(events).await {
                Ok(written) => {
                    self.metrics.coupon_usage.written.increment(written.uses);
                    self.metrics.validation_logs.rows.written.increment(written.logs);
                    self.engine.relearn(&written.dropped).await;
                    Ok(())
                }
                Err(err) if is_refusal(&err) && events.len() == 1 => {
                    let (position, payload, _) = &events[0];
                    self.set_aside(*position, payload, &err.to_string());
                    Ok(())
                }
                Err(err) if is_refusal(&err) => {
                    let (first, second) = events.split_at(events.len() / 2);
                    self.deliver_events(first).await?;
                    self.deliver_events(second).await
                }
                Err(err) => Err(err),
            }
        })
    }

    fn set_aside(&self, position: Position, payload: &[u8], reason: &str) {
        tracing::error!(?position, reason, "journal record refused by PostgreSQL; set aside in rejected.jsonl");
        self.metrics.journal_rejected.increment(1);
        if let Err(err) = self.rejected.add(position, payload, reason) {
            // Not kept: say so loudly, with the record, rather than stop every later one.
            tracing::error!(error = %err, record = %String::from_utf8_lossy(payload), "cannot keep a refused journal record");
        }
    }

    /// Writes the events in one transaction, again once if another instance's row for the
    /// same order was being inserted at the same moment: `ON CONFLICT (id)` arbitrates only
    /// the primary key, so the race can surface as a violation of the order's unique key,
    /// which the second try (the row committed by then) meets as the conflict it is.
    async fn write(&self, events: &[(Position, &[u8], Event)]) -> Result<Written, sqlx::Error> {
        match self.write_once(events).await {
            Err(err) if is_order_race(&err) => self.write_once(events).await,
            other => other,
        }
    }

    /// Writes the events in one transaction. An id appears at most once per wave, so that
    /// one statement never meets the same row twice; waves run in journal order.
    async fn write_once(&self, events: &[(Position, &[u8], Event)]) -> Result<Written, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut written = Written::default();
        let shipped: Option<i64> =
            sqlx::query_scalar("SELECT position FROM journal_shipped WHERE data_dir_id = $1 FOR UPDATE")
                .bind(self.data_dir)
                .fetch_optional(&mut *tx)
                .await?;
        let (fresh, again): (Vec<_>, Vec<_>) =
            events.iter().partition(|(position, _, _)| shipped.is_none_or(|done| position.as_i64() > done));
        // Written before, its answer lost: whether each use landed then is not known here, so
        // the ledger reads those orders again (harmless if they did).
        for (_, _, event) in again {
            for change in event.changes() {
                if let Event::Redeemed(r) = change {
                    written.dropped.push((r.coupon_id, r.order_id.clone()));
                }
            }
        }
        // The changes a record keeps together are written in this one transaction too.
        let mut wave = Wave { instance: &self.instance, ..Wave::default() };
        for (position, _, event) in fresh {
            for change in event.changes() {
                if event_id(change).is_some_and(|id| wave.ids.contains(&id)) {
                    wave.write(&mut tx, &mut written).await?;
                    wave = Wave { instance: &self.instance, ..Wave::default() };
                }
                wave.push(*position, change);
            }
        }
        wave.write(&mut tx, &mut written).await?;
        if let Some((last, _, _)) = events.last() {
            sqlx::query(
                "INSERT INTO journal_shipped (data_dir_id, position) VALUES ($1, $2) \
                 ON CONFLICT (data_dir_id) DO UPDATE SET position = greatest(journal_shipped.position, EXCLUDED.position)",
            )
            .bind(self.data_dir)
            .bind(last.as_i64())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.metrics.quota.order_conflicts.increment(written.conflicts);
        self.metrics.quota.overrun.increment(written.overrun);
        Ok(written)
    }
}

/// A violation of `coupon_usage`'s `(coupon_id, order_id)` key.
fn is_order_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some("coupon_usage_order_unique"))
}

fn event_id(event: &Event) -> Option<Uuid> {
    match event {
        Event::Redeemed(e) => Some(e.id),
        Event::Confirmed(e) => Some(e.id),
        Event::Released(e) => Some(e.id),
        Event::Validated(_) | Event::Together { .. } => None,
    }
}

/// Events that can be written together: at most one per redemption id.
#[derive(Default)]
struct Wave<'a> {
    instance: &'a str,
    ids: HashSet<Uuid>,
    redeemed: Vec<&'a Redeemed>,
    confirmed: Vec<&'a Confirmed>,
    released: Vec<&'a Released>,
    logs: Vec<(Position, &'a Validated)>,
}

impl<'a> Wave<'a> {
    fn push(&mut self, position: Position, event: &'a Event) {
        if let Some(id) = event_id(event) {
            self.ids.insert(id);
        }
        match event {
            Event::Redeemed(e) => self.redeemed.push(e),
            Event::Confirmed(e) => self.confirmed.push(e),
            Event::Released(e) => self.released.push(e),
            Event::Validated(e) => self.logs.push((position, e)),
            Event::Together { events } => events.iter().for_each(|e| self.push(position, e)),
        }
    }

    async fn write(&self, conn: &mut PgConnection, written: &mut Written) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = self
            .redeemed
            .iter()
            .map(|r| r.id)
            .chain(self.confirmed.iter().map(|c| c.id))
            .chain(self.released.iter().map(|r| r.id))
            .collect();
        let before = quota::rows_before(conn, &ids).await?;
        let inserted = insert_redemptions(conn, &self.redeemed, self.instance).await?;
        written.uses += inserted.len() as u64;
        written.uses += confirm_holds(conn, &self.confirmed).await?;
        let released = apply_releases(conn, &self.released).await?;
        written.uses += released.len() as u64;
        written.logs += validation_log::insert_spilled(conn, &self.logs).await?;
        // A row another instance committed while this batch waited on it was not seen
        // before: read it now, to tell a replay from another user's order.
        let unseen: Vec<Uuid> = self
            .redeemed
            .iter()
            .map(|r| r.id)
            .filter(|id| !inserted.contains(id) && !before.contains_key(id))
            .collect();
        let before = quota::also(conn, before, &unseen).await?;
        let mut effects = quota::Effects::default();
        let mut confirm_found = Vec::new();
        for r in &self.redeemed {
            let old = before.get(&r.id);
            if inserted.contains(&r.id) {
                if let Some(old) = old.filter(|o| o.live) {
                    effects.row(old.coupon_id, old.campaign_id, old.cents, -1);
                }
                effects.row(r.coupon_id, r.campaign, r.discount.get(), 1);
                if let Some(funding) = &r.funded_by {
                    effects.spend(r.coupon_id, r.campaign, funding);
                }
            } else {
                // Not this use's row (a replay made on another instance too, or another
                // user's order): what its lease paid goes back.
                written.dropped.push((r.coupon_id, r.order_id.clone()));
                if let Some(funding) = &r.funded_by {
                    effects.refund(r.coupon_id, r.campaign, funding);
                }
                match old {
                    Some(old) if old.user_id != r.user_id => {
                        quota::record_conflict(conn, r, &old.user_id, self.instance).await?;
                        written.conflicts += 1;
                    }
                    // The order's hold (made on another instance) was redeemed here before
                    // this instance knew of it: the redemption acknowledged here stands.
                    Some(old) if old.hold && r.hold_until.is_none() => confirm_found.push(r.id),
                    _ => {}
                }
            }
        }
        for r in &self.released {
            if let Some(old) = before.get(&r.id).filter(|o| o.live && released.contains(&r.id)) {
                effects.row(old.coupon_id, old.campaign_id, old.cents, -1);
            }
        }
        if !confirm_found.is_empty() {
            sqlx::query(
                "UPDATE coupon_usage SET hold_expires_at = NULL, rev = rev + 1 \
                 WHERE id = ANY($1) AND released_at IS NULL AND hold_expires_at IS NOT NULL",
            )
            .bind(&confirm_found)
            .execute(&mut *conn)
            .await?;
        }
        written.overrun += effects.apply(conn).await?;
        Ok(())
    }
}

fn rev(rev: u32) -> i32 {
    i32::try_from(rev).unwrap_or(i32::MAX)
}

/// Inserts (or moves on to a newer revision) the rows of `rows`; answers the ids written.
async fn insert_redemptions(
    conn: &mut PgConnection,
    rows: &[&Redeemed],
    instance: &str,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let revs: Vec<i32> = rows.iter().map(|r| rev(r.rev)).collect();
    let coupons: Vec<i64> = rows.iter().map(|r| r.coupon_id).collect();
    let codes: Vec<Option<&str>> = rows.iter().map(|r| r.code.as_deref()).collect();
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let orders: Vec<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let currency = |r: &Redeemed| r.cart.as_ref().map(|c| c.currency);
    let values: Vec<Decimal> = rows.iter().map(|r| money::numeric_in(r.order_value, currency(r))).collect();
    let discounts: Vec<Decimal> =
        rows.iter().map(|r| money::numeric_in(r.merchandise_discount(), currency(r))).collect();
    let currencies: Vec<Option<String>> = rows.iter().map(|r| currency(r).map(String::from)).collect();
    let items_hashes: Vec<Option<&[u8]>> =
        rows.iter().map(|r| r.cart.as_ref().map(|c| c.items_hash.as_slice())).collect();
    let shipping: Vec<Option<Decimal>> = rows
        .iter()
        .map(|r| {
            let minor = r.cart.as_ref().map(|c| Cents::new(c.shipping_discount).unwrap_or(Cents::ZERO));
            minor.map(|m| money::numeric_in(m, currency(r)))
        })
        .collect();
    let allocations: Vec<Option<&str>> = rows.iter().map(|r| r.cart.as_ref().map(|c| c.allocation.as_str())).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let holds: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.hold_until).collect();
    let campaigns: Vec<Option<i64>> = rows.iter().map(|r| r.campaign).collect();
    let groups: Vec<Option<Uuid>> = rows.iter().map(|r| r.group.as_ref().map(|g| g.id)).collect();
    let group_codes: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.group.as_ref().map(|g| serde_json::to_string(&g.codes).expect("codes serialise")))
        .collect();
    let written: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO coupon_usage (id, rev, coupon_id, code, user_id, order_id, order_value, discount_applied, \
         used_at, hold_expires_at, campaign_id, currency, items_hash, shipping_discount, allocation, group_id, \
         group_codes, instance_id) \
         SELECT r.*, $18 FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::text[], $5::text[], $6::text[], \
         $7::numeric[], $8::numeric[], $9::timestamptz[], $10::timestamptz[], $11::int8[], $12::text[], $13::bytea[], \
         $14::numeric[], $15::text[]::jsonb[], $16::uuid[], $17::text[]::jsonb[]) AS r \
         ON CONFLICT (id) DO UPDATE SET rev = EXCLUDED.rev, code = EXCLUDED.code, user_id = EXCLUDED.user_id, \
         order_value = EXCLUDED.order_value, discount_applied = EXCLUDED.discount_applied, used_at = EXCLUDED.used_at, \
         hold_expires_at = EXCLUDED.hold_expires_at, campaign_id = EXCLUDED.campaign_id, \
         currency = EXCLUDED.currency, items_hash = EXCLUDED.items_hash, \
         shipping_discount = EXCLUDED.shipping_discount, allocation = EXCLUDED.allocation, \
         group_id = EXCLUDED.group_id, group_codes = EXCLUDED.group_codes, \
         instance_id = EXCLUDED.instance_id, released_at = NULL \
         WHERE coupon_usage.rev < EXCLUDED.rev RETURNING id",
    )
    .bind(ids)
    .bind(revs)
    .bind(coupons)
    .bind(codes)
    .bind(users)
    .bind(orders)
    .bind(values)
    .bind(discounts)
    .bind(times)
    .bind(holds)
    .bind(campaigns)
    .bind(currencies)
    .bind(items_hashes)
    .bind(shipping)
    .bind(allocations)
    .bind(groups)
    .bind(group_codes)
    .bind(instance)
    .fetch_all(&mut *conn)
    .await?;
    Ok(written.into_iter().collect())
}

async fn confirm_holds(conn: &mut PgConnection, rows: &[&Confirmed]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let revs: Vec<i32> = rows.iter().map(|r| rev(r.rev)).collect();
    let result = sqlx::query(
        "UPDATE coupon_usage u SET hold_expires_at = NULL, rev = r.rev \
         FROM UNNEST($1::uuid[], $2::int4[]) AS r(id, rev) WHERE u.id = r.id AND u.rev < r.rev",
    )
    .bind(ids)
    .bind(revs)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected())
}

/// Releases the rows of `rows` that are at an older revision; answers the ids released.
async fn apply_releases(conn: &mut PgConnection, rows: &[&Released]) -> Result<HashSet<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let revs: Vec<i32> = rows.iter().map(|r| rev(r.rev)).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let released: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE coupon_usage u SET released_at = r.at, rev = r.rev \
         FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[]) AS r(id, rev, at) WHERE u.id = r.id AND u.rev < r.rev \
         RETURNING u.id",
    )
    .bind(ids)
    .bind(revs)
    .bind(times)
    .fetch_all(&mut *conn)
    .await?;
    Ok(released.into_iter().collect())
}
