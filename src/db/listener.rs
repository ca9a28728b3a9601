//! Keeps the catalog true to PostgreSQL: LISTEN, load everything, then apply notifications.
//!
//! Invariant: after every (re)connection the catalog is reloaded in full *after* LISTEN took
//! effect, because notifications sent while disconnected are gone (TECH-NOTES §1). Every
//! change is then either in the load or in a later notification, possibly both; applying
//! re-reads rows by id, so both is harmless.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::{ListenerSettings, Secret};
use crate::db::{Error, load};
use crate::domain::coupon::CouponId;
use crate::metrics::Metrics;

/// The channel the `coupons` triggers notify.
pub const CHANNEL: &str = "coupon_changes";
/// The payload of the liveness probe the refresher sends itself.
const HEARTBEAT: &str = r#"{"op":"heartbeat"}"#;

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
    pub fn notifications_applied(&self) -> u64 {
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

/// Reloads every coupon definition; live usage counters are kept (DESIGN.md).
pub async fn reload(pool: &PgPool, cache: &Cache, metrics: &Metrics) -> Result<ReloadReport, Error> {
    let _writer = cache.writer().lock().await;
    let started = Instant::now();
    let coupons = load::all_coupons(pool).await?;
    let n = coupons.len();
    cache.replace_all(coupons);
    metrics.cache_reloads.increment(1);
    metrics.cache_coupons.set(n as f64);
    Ok(ReloadReport { coupons: n, duration: started.elapsed() })
}

/// The task that follows `coupon_changes`.
#[derive(Debug)]
pub struct Refresher {
    pub pool: PgPool,
    pub url: Secret,
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<ListenerStatus>,
    pub settings: ListenerSettings,
}

/// A listener that LISTENs and whose catalog load has been published.
#[derive(Debug)]
pub struct Following(PgListener);

#[derive(Deserialize)]
struct Payload {
    op: String,
    #[serde(default)]
    ids: Vec<CouponId>,
}

/// What a run of notifications asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    ids: BTreeSet<CouponId>,
    reload: bool,
    /// Change notifications, heartbeats excluded.
    changes: u64,
}

impl Changes {
    fn add(&mut self, payload: &str) {
        if payload == HEARTBEAT {
            return;
        }
        self.changes += 1;
        match serde_json::from_str::<Payload>(payload) {
            Ok(p) if p.op != "bulk" => self.ids.extend(p.ids),
            // "bulk", or a payload from a writer we do not know: the safe answer is everything.
            _ => self.reload = true,
        }
    }
}

impl Refresher {
    /// Connects a dedicated listener, LISTENs, then loads every coupon. At start-up an error
    /// here is fatal; afterwards it is retried.
    pub async fn listen_and_reload(&self) -> Result<Following, Error> {
        self.status.set(ListenerState::Connecting);
        let mut listener = PgListener::connect(self.url.expose()).await?;
        listener.listen(CHANNEL).await?;
        let report = reload(&self.pool, &self.cache, &self.metrics).await?;
        tracing::debug!(coupons = report.coupons, elapsed_ms = report.duration.as_millis() as u64, "catalog loaded");
        self.status.set(ListenerState::Listening);
        Ok(Following(listener))
    }

    /// Follows notifications until `stop`; on any loss, backs off, reconnects and reloads.
    pub async fn run(self, first: Following, stop: CancellationToken) {
        tokio::spawn(send_heartbeats(self.pool.clone(), self.heartbeat(), stop.clone()));
        let mut following = Some(first);
        let mut delay = self.retry_min();
        loop {
            let session = match following.take() {
                Some(listener) => Ok(listener),
                None => self.listen_and_reload().await,
            };
            let err = match session {
                Ok(listener) => {
                    delay = self.retry_min();
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
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "change listener lost; will reconnect and reload");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(self.settings.retry_max_ms));
        }
    }

    /// Applies notifications until `stop` (Ok) or a loss (Err).
    async fn follow(&self, Following(mut listener): Following, stop: &CancellationToken) -> Result<(), Error> {
        // Heartbeats arrive every `heartbeat`; three missed in a row means a dead connection
        // that TCP has not noticed (sqlx #3062).
        let silence = self.heartbeat() * 3;
        loop {
            // Dropping a pending try_recv (stop, timeout) is safe: the listener is dropped too.
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                received = tokio::time::timeout(silence, listener.try_recv()) => received,
            };
            let first = match received {
                Err(_) => return Err(Error::ListenerLost("no heartbeat within the deadline")),
                Ok(Ok(None)) => return Err(Error::ListenerLost("connection lost")),
                Ok(Err(err)) => return Err(err.into()),
                Ok(Ok(Some(notification))) => notification,
            };
            // Coalesce everything already buffered into one fetch and one swap.
            let mut changes = Changes::default();
            changes.add(first.payload());
            while let Some(notification) = listener.next_buffered() {
                changes.add(PgNotification::payload(&notification));
            }
            self.apply(changes).await?;
        }
    }

    async fn apply(&self, changes: Changes) -> Result<(), Error> {
        if changes.reload {
            let report = reload(&self.pool, &self.cache, &self.metrics).await?;
            tracing::info!(
                coupons = report.coupons,
                elapsed_ms = report.duration.as_millis() as u64,
                "bulk change; catalog reloaded"
            );
        } else if !changes.ids.is_empty() {
            let ids: Vec<CouponId> = changes.ids.into_iter().collect();
            let _writer = self.cache.writer().lock().await;
            let fetched = load::coupons_by_id(&self.pool, &ids).await?;
            let changed = self.cache.apply_changes(&ids, fetched);
            self.metrics.cache_coupons.set(self.cache.coupon_count() as f64);
            tracing::debug!(ids = ids.len(), changed, "coupon changes applied");
        }
        self.status.notifications.fetch_add(changes.changes, Ordering::Relaxed);
        self.metrics.notifications_applied.increment(changes.changes);
        Ok(())
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.settings.heartbeat_ms)
    }

    fn retry_min(&self) -> Duration {
        Duration::from_millis(self.settings.retry_min_ms)
    }
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
    fn notifications_coalesce() {
        let mut changes = Changes::default();
        for payload in [
            r#"{"op" : "update", "ids" : [3, 1]}"#,
            HEARTBEAT,
            r#"{"op" : "delete", "ids" : [1]}"#,
            r#"{"op" : "insert", "ids" : [7]}"#,
        ] {
            changes.add(payload);
        }
        assert_eq!(changes, Changes { ids: [1, 3, 7].into(), reload: false, changes: 3 });
        for payload in [r#"{"op" : "bulk", "count" : 900}"#, "not json", r#"{"ids": [1]}"#] {
            let mut changes = Changes::default();
            changes.add(payload);
            assert!(changes.reload, "{payload}");
        }
    }
}
