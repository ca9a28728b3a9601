//! Keeps the catalog true to PostgreSQL: LISTEN, load everything, then apply notifications.
//!
//! Invariant: after every (re)connection the catalog is reloaded in full *after* LISTEN took
//! effect, because notifications sent while disconnected are gone. Every change is then
//! either in the load or in a later notification, possibly both; applying re-reads rows by
//! id, so both is harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::{ListenerSettings, Secret};
use crate::db::health::DatabaseHealth;
use crate::db::{Error, batches, catalog};
use crate::domain::coupon::{BatchId, CampaignId, CouponId};
use crate::engine::Engine;
use crate::engine::catalog::{CouponChanges, Publisher};
use crate::metrics::Metrics;

/// The channel the triggers notify.
pub const CHANNEL: &str = "coupon_changes";
/// The payload of the liveness probe the refresher sends itself.
const HEARTBEAT: &str = r#"{"op":"heartbeat"}"#;
/// The payload an instance sends when it waits for the others to publish what they have
/// shipped (`ClusterPort::shipped_everywhere`): each heartbeat then publishes at once.
pub const SHIPPING_WANTED: &str = r#"{"op":"shipping"}"#;

/// Where the listener is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    Connecting,
    Listening,
    Down,
}

impl ListenerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerState::Connecting => "connecting",
            ListenerState::Listening => "listening",
            ListenerState::Down => "down",
        }
    }
}

/// What `/health` and the admin stats show of the listener.
#[derive(Debug)]
pub struct ListenerStatus {
    state: AtomicU8,
    notifications: AtomicU64,
    reconnects: AtomicU64,
}

impl ListenerStatus {
    pub fn new() -> Arc<ListenerStatus> {
        Arc::new(ListenerStatus {
            state: AtomicU8::new(ListenerState::Connecting as u8),
            notifications: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> ListenerState {
        match self.state.load(Ordering::Relaxed) {
            0 => ListenerState::Connecting,
            1 => ListenerState::Listening,
            _ => ListenerState::Down,
        }
    }

    /// Change notifications received and applied (heartbeats excluded).
    pub(crate) fn notifications_applied(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Times the listener was rebuilt after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn set(&self, state: ListenerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// How long a full reload took and what it loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadReport {
    pub coupons: usize,
    pub duration: Duration,
}

/// Reloads every definition; the ledger's live counts are kept (PostgreSQL lags them). A
/// batch of codes already loaded is kept as it is: codes never change once a batch is done.
pub async fn reload(pool: &PgPool, engine: &Engine, metrics: &Metrics) -> Result<ReloadReport, Error> {
    let publisher = engine.catalog().publisher().await;
    let started = Instant::now();
    let coupons = catalog::all_coupons(pool).await?;
    let campaigns = catalog::all_campaigns(pool).await?;
    let current = publisher.current();
    let mut batches = Vec::new();
    for batch in catalog::done_batches(pool).await? {
        match current.codes().batch(batch.id) {
            Some(loaded) => {
                // Assignments made while notifications were not followed.
                catalog::load_assignments(pool, loaded).await?;
                batches.push(loaded.clone());
            }
            None => batches.push(catalog::batch_codes(pool, &batch).await?),
        }
    }
    let n = coupons.len();
    publisher.replace_all(coupons, campaigns, batches);
    count_new_user_limits(engine, &publisher);
    metrics.cache_reloads.increment(1);
    metrics.cache_coupons.set(n as f64);
    Ok(ReloadReport { coupons: n, duration: started.elapsed() })
}

/// The task that follows `coupon_changes`.
#[derive(Debug)]
pub struct Refresher {
    pub pool: PgPool,
    pub url: Secret,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<ListenerStatus>,
    pub health: Arc<DatabaseHealth>,
    pub settings: ListenerSettings,
    /// Woken when another instance asks for everyone's shipping (`SHIPPING_WANTED`).
    pub shipping_wanted: Arc<tokio::sync::Notify>,
}

/// A listener that LISTENs and whose catalog load has been published.
#[derive(Debug)]
pub struct Following(PgListener);

/// How long the parts of one statement's notification may take to all arrive; past it the
/// catalog is reloaded in full rather than applied in pieces.
const PARTS_WITHIN: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    entity: Option<String>,
    op: String,
    #[serde(default)]
    ids: Vec<i64>,
    /// The statement the chunk belongs to, and how many chunks it sent.
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    parts: Option<u32>,
    /// The batch of an assignment (whose `ids` are positions).
    #[serde(default)]
    batch: Option<BatchId>,
}

/// What a run of notifications asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    coupons: BTreeSet<CouponId>,
    campaigns: BTreeSet<CampaignId>,
    batches: BTreeSet<BatchId>,
    /// Codes handed to users: positions by batch.
    assignments: BTreeMap<BatchId, BTreeSet<i32>>,
    reload: bool,
    /// Another instance asked for everyone's shipping.
    shipping_wanted: bool,
    /// Change notifications, heartbeats excluded.
    changes: u64,
    /// Statements whose chunks have not all arrived: chunks seen, chunks sent.
    incomplete: HashMap<String, (u32, u32)>,
}

impl Changes {
    fn add(&mut self, payload: &str) {
        if payload == HEARTBEAT {
            return;
        }
        if payload == SHIPPING_WANTED {
            self.shipping_wanted = true;
            return;
        }
        self.changes += 1;
        match serde_json::from_str::<Payload>(payload) {
            Ok(p) if p.op == "bulk" => self.reload = true,
            Ok(p) => {
                if let (Some(group), Some(parts)) = (p.group, p.parts.filter(|n| *n > 1)) {
                    let seen = self.incomplete.entry(group.clone()).or_insert((0, parts));
                    seen.0 += 1;
                    if seen.0 >= seen.1 {
                        self.incomplete.remove(&group);
                    }
                }
                match p.entity.as_deref() {
                    None | Some("coupon") => self.coupons.extend(p.ids),
                    Some("campaign") => self.campaigns.extend(p.ids),
                    Some("batch") => self.batches.extend(p.ids),
                    Some("assignment") => match p.batch {
                        Some(batch) => {
                            let positions = p.ids.into_iter().filter_map(|id| i32::try_from(id).ok());
                            self.assignments.entry(batch).or_default().extend(positions);
                        }
                        None => self.reload = true,
                    },
                    Some(_) => self.reload = true,
                }
            }
            // A payload from a writer we do not know: the safe answer is everything.
            Err(_) => self.reload = true,
        }
    }

    /// Whether every statement seen so far sent all its chunks.
    fn is_complete(&self) -> bool {
        self.incomplete.is_empty()
    }
}

impl Refresher {
    /// Connects a dedicated listener, LISTENs, then loads every definition. At start-up an
    /// error here is fatal; afterwards it is retried.
    pub(crate) async fn listen_and_reload(&self) -> Result<Following, Error> {
        self.status.set(ListenerState::Connecting);
        let mut listener = PgListener::connect(self.url.expose()).await?;
        listener.listen(CHANNEL).await?;
        let report = reload(&self.pool, &self.engine, &self.metrics).await?;
        tracing::debug!(coupons = report.coupons, elapsed_ms = report.duration.as_millis() as u64, "catalog loaded");
        self.status.set(ListenerState::Listening);
        Ok(Following(listener))
    }

    /// Follows notifications until `stop`; on any loss, backs off, reconnects and reloads.
    pub async fn run(self, first: Following, stop: CancellationToken, tasks: TaskTracker) {
        tasks.spawn(send_heartbeats(self.pool.clone(), self.settings.heartbeat, stop.clone()));
        let mut following = Some(first);
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        loop {
            let session = match following.take() {
                Some(listener) => Ok(listener),
                None => self.listen_and_reload().await,
            };
            let err = match session {
                Ok(listener) => {
                    backoff.reset();
                    match self.follow(listener, &stop).await {
                        Ok(()) => return,
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            self.status.set(ListenerState::Down);
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
            self.metrics.listener_reconnects.increment(1);
            self.health.report_failure("change listener", &err);
            let delay = backoff.next_delay();
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "change listener lost; will reconnect and reload");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Applies notifications until `stop` (Ok) or a loss (Err).
    async fn follow(&self, Following(mut listener): Following, stop: &CancellationToken) -> Result<(), Error> {
        // Heartbeats arrive every `heartbeat`; three missed in a row means a dead connection
        // that TCP has not noticed (sqlx #3062).
        let silence = self.settings.heartbeat * 3;
        loop {
            // Dropping a pending try_recv (stop, timeout) is safe: the listener is dropped too.
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                received = tokio::time::timeout(silence, listener.try_recv()) => received,
            };
            let first = match received {
                Err(_) => return Err(lost("no heartbeat within the deadline")),
                Ok(Ok(None)) => return Err(lost("connection lost")),
                Ok(Err(err)) => return Err(err.into()),
                Ok(Ok(Some(notification))) => notification,
            };
            // Coalesce everything already buffered into one fetch and one swap, waiting for
            // the rest of a statement whose chunks are still arriving.
            let mut changes = Changes::default();
            changes.add(first.payload());
            let parts_by = tokio::time::Instant::now() + PARTS_WITHIN;
            loop {
                while let Some(notification) = listener.next_buffered() {
                    changes.add(PgNotification::payload(&notification));
                }
                if changes.is_complete() {
                    break;
                }
                match tokio::time::timeout_at(parts_by, listener.try_recv()).await {
                    Ok(Ok(Some(notification))) => changes.add(notification.payload()),
                    Ok(Ok(None)) => return Err(lost("connection lost")),
                    Ok(Err(err)) => return Err(err.into()),
                    Err(_) => {
                        changes.reload = true;
                        break;
                    }
                }
            }
            if changes.shipping_wanted {
                self.shipping_wanted.notify_one();
            }
            if changes.changes > 0 || changes.reload {
                self.apply(changes).await?;
            }
        }
    }

    async fn apply(&self, changes: Changes) -> Result<(), Error> {
        if changes.reload {
            let report = reload(&self.pool, &self.engine, &self.metrics).await?;
            tracing::info!(
                coupons = report.coupons,
                elapsed_ms = report.duration.as_millis() as u64,
                "catalog reloaded"
            );
        } else {
            let publisher = self.engine.catalog().publisher().await;
            if !changes.campaigns.is_empty() {
                let ids: Vec<CampaignId> = changes.campaigns.iter().copied().collect();
                let fetched = catalog::campaigns_by_id(&self.pool, &ids).await?;
                publisher.apply_campaigns(&ids, fetched);
            }
            if !changes.coupons.is_empty() {
                let ids: Vec<CouponId> = changes.coupons.iter().copied().collect();
                let upserts = catalog::coupons_by_id(&self.pool, &ids).await?;
                let changed = publisher.apply_coupons(CouponChanges { upserts, deleted: ids });
                tracing::debug!(ids = changes.coupons.len(), changed, "coupon changes applied");
            }
            if !changes.batches.is_empty() {
                let ids: Vec<BatchId> = changes.batches.iter().copied().collect();
                let current = publisher.current();
                let mut batches: Vec<_> =
                    current.codes().batches().iter().filter(|b| !changes.batches.contains(&b.id)).cloned().collect();
                for batch in catalog::done_batches_by_id(&self.pool, &ids).await? {
                    batches.push(catalog::batch_codes(&self.pool, &batch).await?);
                }
                publisher.replace_batches(batches);
            }
            count_new_user_limits(&self.engine, &publisher);
            for (batch, positions) in &changes.assignments {
                let positions: Vec<i32> = positions.iter().copied().collect();
                for (position, user) in batches::assignments(&self.pool, *batch, &positions).await? {
                    self.engine.assign_code(*batch, position as u32, &user);
                }
            }
            self.metrics.cache_coupons.set(publisher.current().coupon_count() as f64);
        }
        self.status.notifications.fetch_add(changes.changes, Ordering::Relaxed);
        self.metrics.notifications_applied.increment(changes.changes);
        Ok(())
    }
}

/// Back-fills the per-user counts a publish made necessary, before the next publish.
fn count_new_user_limits(engine: &Engine, publisher: &Publisher<'_>) {
    if publisher.added_user_limits() {
        let started = Instant::now();
        let counted = engine.count_new_user_limits();
        tracing::info!(counted, elapsed_ms = started.elapsed().as_millis() as u64, "per-user counts back-filled");
    }
}

fn lost(why: &str) -> Error {
    Error::Sqlx(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_owned())))
}

/// NOTIFYs the channel through the pool, so the listener hears from the server regularly.
async fn send_heartbeats(pool: PgPool, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {
                let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(HEARTBEAT).execute(&pool).await;
                if let Err(err) = sent {
                    tracing::debug!(error = %err, "heartbeat not sent");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunks_of_one_statement_complete_together() {
        let mut changes = Changes::default();
        changes.add(r#"{"entity":"coupon","op":"update","ids":[1,2],"group":"g","parts":3}"#);
        changes.add(r#"{"entity":"coupon","op":"update","ids":[9],"group":"h","parts":1}"#);
        changes.add(r#"{"entity":"coupon","op":"update","ids":[3],"group":"g","parts":3}"#);
        assert!(!changes.is_complete());
        changes.add(r#"{"entity":"coupon","op":"update","ids":[4],"group":"g","parts":3}"#);
        assert!(changes.is_complete());
        assert_eq!(changes.coupons, [1, 2, 3, 4, 9].into());
    }

    #[test]
    fn notifications_coalesce_by_entity() {
        let mut changes = Changes::default();
        for payload in [
            r#"{"entity" : "coupon", "op" : "update", "ids" : [3, 1]}"#,
            HEARTBEAT,
            SHIPPING_WANTED,
            r#"{"op" : "delete", "ids" : [1]}"#,
            r#"{"entity" : "campaign", "op" : "insert", "ids" : [7]}"#,
            r#"{"entity" : "batch", "op" : "done", "ids" : [2]}"#,
            r#"{"entity" : "assignment", "op" : "assign", "batch" : 2, "ids" : [40]}"#,
            r#"{"entity" : "assignment", "op" : "assign", "batch" : 2, "ids" : [41]}"#,
        ] {
            changes.add(payload);
        }
        let expected = Changes {
            coupons: [1, 3].into(),
            campaigns: [7].into(),
            batches: [2].into(),
            assignments: [(2, [40, 41].into())].into(),
            reload: false,
            shipping_wanted: true,
            changes: 6,
            incomplete: HashMap::new(),
        };
        assert_eq!(changes, expected);
        for payload in [
            r#"{"op" : "bulk", "count" : 900}"#,
            "not json",
            r#"{"ids": [1]}"#,
            r#"{"entity":"x","op":"y"}"#,
            r#"{"entity":"assignment","op":"assign","ids":[1]}"#,
        ] {
            let mut changes = Changes::default();
            changes.add(payload);
            assert!(changes.reload, "{payload}");
        }
    }
}
