//! Several instances on one database: this instance's identity and epoch, the port the
//! engine asks for leases, claims and changes, and the feed that brings the other
//! instances' uses into the ledger.
//!
//! Invariants:
//! - One live process per instance id (`db::identity`): the id's lock, proved by a
//!   heartbeat; a second start is refused while the lock is held, and waits out a process
//!   that lost it.
//! - A lease is settled only once every use it paid for is in PostgreSQL: at a clean stop
//!   after the journal is wholly shipped, at a restart after the old journal is shipped, or
//!   by an operator's write-off (the journal is lost) once the instance is silent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::Error;
use crate::db::claims::Claims;
use crate::db::health::DatabaseHealth;
use crate::db::identity::{self, Identity};
use crate::db::listener;
use crate::db::usage::{USAGE_COLUMNS, UsageRow};
use crate::domain::event::GroupMark;
use crate::engine::Engine;
use crate::engine::ports::Scope;
use crate::engine::ports::{
    ChangeAnswer, Changed, ClaimOutcome, ClaimRequest, ClusterPort, Grant, ModeFacts, PortAnswer, PortError, SetClaim,
};
use crate::metrics::Metrics;

/// Starts a new epoch of this instance from its `DATA_DIR`, silent after
/// `identity_timeout` without a heartbeat (creating it on first start), and answers it with
/// its state: live, or waiting while another instance decides alone.
pub(crate) async fn begin_epoch(
    pool: &PgPool,
    identity: &Identity,
    identity_timeout: Duration,
) -> Result<(i64, crate::engine::alone::Mode), Error> {
    let (epoch, state): (i64, String) = sqlx::query_as("SELECT epoch, state FROM quota_begin_epoch($1, $2, $3)")
        .bind(&identity.instance)
        .bind(identity.data_dir)
        .bind(identity_timeout.as_secs_f64())
        .fetch_one(pool)
        .await?;
    let mode =
        if state == "waiting" { crate::engine::alone::Mode::Waiting } else { crate::engine::alone::Mode::Sharing };
    Ok((epoch, mode))
}

/// Gives back everything the leases of `id` hold for epochs up to `epoch`; answers the
/// units.
/// The last run's journal is shipped, so what it decided alone is in PostgreSQL: its hold
/// on deciding alone goes too.
pub(crate) async fn settle(pool: &PgPool, id: &str, epoch: i64) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let units = sqlx::query_scalar("SELECT quota_settle($1, $2)").bind(id).bind(epoch).fetch_one(&mut *tx).await?;
    sqlx::query("SELECT quota_release_alone($1) FROM quota_alone WHERE instance_id = $1 AND epoch <= $2")
        .bind(id)
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(units)
}

/// A clean stop: every use is shipped, so the leases go back whole.
pub async fn stop(pool: &PgPool, id: &str, epoch: i64) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let units: i64 = sqlx::query_scalar("SELECT quota_settle($1, $2)").bind(id).bind(epoch).fetch_one(&mut *tx).await?;
    sqlx::query(
        "UPDATE quota_instances SET state = 'stopped', stopped_at = now() WHERE instance_id = $1 AND epoch = $2",
    )
    .bind(id)
    .bind(epoch)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT quota_release_alone($1)").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(units)
}

/// What a write-off did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOff {
    /// Its leases went back: so many units.
    Done {
        units: i64,
        epoch: i64,
    },
    NotFound,
    /// The instance is running, or was moments ago (its lock is held, or its last stamp is
    /// younger than its `identity_timeout`): it may still spend its leases.
    Live,
}

/// Writes off instance `id` whose journal is lost: its unspent and unshipped units go back
/// and its epoch is fenced. If it ever comes back with its journal, the uses it ships are
/// counted anyway (`quota_overrun_total`).
pub async fn write_off(pool: &PgPool, id: &str) -> Result<WriteOff, Error> {
    let mut conn = pool.acquire().await?;
    let free: bool = sqlx::query_scalar(identity::TRY_LOCK).bind(id).fetch_one(&mut *conn).await?;
    if !free {
        return Ok(WriteOff::Live);
    }
    // Its lock is free, but it may only have lost it (a PostgreSQL restart, a cut link) and
    // still spend its leases until its last stamp is old enough.
    let silent: bool = match sqlx::query_scalar(identity::STAMP_IS_OLD).bind(id).fetch_one(&mut *conn).await {
        Ok(silent) => silent,
        Err(err) => {
            let _ = sqlx::query(identity::UNLOCK).bind(id).execute(&mut *conn).await;
            return Err(err.into());
        }
    };
    if !silent {
        let _ = sqlx::query(identity::UNLOCK).bind(id).execute(&mut *conn).await;
        return Ok(WriteOff::Live);
    }
    let result = async {
        let mut tx = (*conn).begin().await?;
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE quota_instances SET state = 'written_off', epoch = epoch + 1, stopped_at = now() \
             WHERE instance_id = $1 RETURNING epoch",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(epoch) = epoch else { return Ok::<_, sqlx::Error>(WriteOff::NotFound) };
        let units: i64 =
            sqlx::query_scalar("SELECT quota_settle($1, $2)").bind(id).bind(epoch).fetch_one(&mut *tx).await?;
        sqlx::query("SELECT quota_release_alone($1)").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(WriteOff::Done { units, epoch })
    }
    .await;
    let _ = sqlx::query(identity::UNLOCK).bind(id).execute(&mut *conn).await;
    Ok(result?)
}

/// The engine's [`ClusterPort`] on PostgreSQL. Grants and returns have connections of
/// their own: a refill must never queue behind a crowd of claims.
#[derive(Debug)]
pub struct PgCluster {
    pool: PgPool,
    leases: PgPool,
    instance: String,
    epoch: i64,
    health: Arc<DatabaseHealth>,
    /// Claims go together (`db::claims`).
    claims: Claims,
}

impl PgCluster {
    /// The port of this instance's epoch; starts the task that sends its claims.
    pub fn new(
        pool: PgPool,
        leases: PgPool,
        instance: String,
        epoch: i64,
        health: Arc<DatabaseHealth>,
        metrics: Arc<Metrics>,
    ) -> PgCluster {
        let claims = Claims::start(pool.clone(), instance.clone(), epoch, health.clone(), metrics);
        PgCluster { pool, leases, instance, epoch, health, claims }
    }

    /// A call failed: `/health` hears of it at once when PostgreSQL may be why.
    fn port_error(&self, err: sqlx::Error) -> PortError {
        if super::is_transient(&err) {
            self.health.report_failure("cluster", &err);
        }
        PortError(err.to_string())
    }
}

/// A count of units as PostgreSQL's BIGINT.
pub(super) fn units(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    granted: i64,
    held_elsewhere: i64,
    fenced: bool,
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    changed: bool,
    rev: i32,
    hold_until: Option<DateTime<Utc>>,
    released: bool,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl ClusterPort for PgCluster {
    fn grant(&self, scope: Scope, want: u64, need: u64, seq: u64) -> PortAnswer<'_, Grant> {
        Box::pin(async move {
            let row: GrantRow = sqlx::query_as(
                "SELECT granted, free, held_elsewhere, fenced FROM quota_grant($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(scope.kind())
            .bind(scope.id())
            .bind(&self.instance)
            .bind(self.epoch)
            .bind(units(want))
            .bind(units(need))
            .bind(units(seq))
            .fetch_one(&self.leases)
            .await
            .map_err(|e| self.port_error(e))?;
            Ok(Grant { granted: count(row.granted), held_elsewhere: count(row.held_elsewhere), fenced: row.fenced })
        })
    }

    fn give_back(&self, scope: Scope, n: u64, seq: u64) -> PortAnswer<'_, u64> {
        Box::pin(async move {
            let returned: i64 = sqlx::query_scalar("SELECT quota_return($1, $2, $3, $4, $5, $6)")
                .bind(scope.kind())
                .bind(scope.id())
                .bind(&self.instance)
                .bind(self.epoch)
                .bind(units(n))
                .bind(units(seq))
                .fetch_one(&self.leases)
                .await
                .map_err(|e| self.port_error(e))?;
            Ok(count(returned))
        })
    }

    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> PortAnswer<'a, ClaimOutcome> {
        Box::pin(self.claims.claim(req))
    }

    fn claim_set<'a>(&'a self, claims: &'a [ClaimRequest<'a>], group: &'a GroupMark) -> PortAnswer<'a, SetClaim> {
        Box::pin(self.claims.claim_set(claims, group))
    }

    fn claim_spent(&self, id: Uuid, at: DateTime<Utc>) -> PortAnswer<'_, bool> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM claim_spends WHERE instance_id = $1 AND epoch = $2 AND id = $3 AND at = $4)",
            )
            .bind(&self.instance)
            .bind(self.epoch)
            .bind(id)
            .bind(at)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.port_error(e))
        })
    }

    fn forget_claims_before(&self, before: DateTime<Utc>) -> PortAnswer<'_, ()> {
        Box::pin(async move {
            sqlx::query("DELETE FROM claim_spends WHERE instance_id = $1 AND (epoch < $2 OR at < $3)")
                .bind(&self.instance)
                .bind(self.epoch)
                .bind(before)
                .execute(&self.leases)
                .await
                .map_err(|e| self.port_error(e))?;
            Ok(())
        })
    }

    fn mode(&self) -> PortAnswer<'_, ModeFacts> {
        Box::pin(async move {
            let (own, others, alone_instance, alone_epoch): (Option<String>, bool, Option<String>, Option<i64>) =
                sqlx::query_as("SELECT own_state, others, alone_instance, alone_epoch FROM quota_mode($1, $2)")
                    .bind(&self.instance)
                    .bind(self.epoch)
                    .fetch_one(&self.leases)
                    .await
                    .map_err(|e| self.port_error(e))?;
            Ok(ModeFacts { live: own.as_deref() == Some("live"), others, alone: alone_instance.zip(alone_epoch) })
        })
    }

    fn take_alone(&self, alone_timeout: Duration) -> PortAnswer<'_, Option<i64>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT quota_take_alone($1, $2, $3)")
                .bind(&self.instance)
                .bind(self.epoch)
                .bind(alone_timeout.as_secs_f64())
                .fetch_one(&self.leases)
                .await
                .map_err(|e| self.port_error(e))
        })
    }

    fn release_alone(&self) -> PortAnswer<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT quota_release_alone($1)")
                .bind(&self.instance)
                .execute(&self.leases)
                .await
                .map_err(|e| self.port_error(e))?;
            Ok(())
        })
    }

    fn shipped_everywhere(&self, since: Option<DateTime<Utc>>) -> PortAnswer<'_, (DateTime<Utc>, bool)> {
        Box::pin(async move {
            // Asked the first time and not yet shipped everywhere: the others' heartbeats are
            // told to publish at once (their next stamps are read after `since`).
            let (since, shipped, _told): (DateTime<Utc>, bool, bool) = sqlx::query_as(
                "SELECT t.since, t.shipped, \
                   CASE WHEN NOT t.shipped AND $2::timestamptz IS NULL \
                     THEN (SELECT true FROM pg_notify($3, $4)) ELSE false END \
                 FROM (SELECT s.since, NOT EXISTS (SELECT 1 FROM quota_instances q \
                   LEFT JOIN quota_stamps st ON st.instance_id = q.instance_id AND st.epoch = q.epoch \
                   WHERE q.state IN ('live', 'waiting') AND q.instance_id <> $1 \
                   AND (st.shipped_through IS NULL OR st.shipped_through < s.since)) AS shipped \
                   FROM (SELECT coalesce($2, now()) AS since) s) t",
            )
            .bind(&self.instance)
            .bind(since)
            .bind(listener::CHANNEL)
            .bind(listener::SHIPPING_WANTED)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.port_error(e))?;
            Ok((since, shipped))
        })
    }

    fn change(&self, id: Uuid, rev: u32, release: bool) -> PortAnswer<'_, ChangeAnswer> {
        Box::pin(async move {
            let row: Option<ChangeRow> =
                sqlx::query_as("SELECT changed, rev, hold_until, released FROM change_use($1, $2, $3, now())")
                    .bind(id)
                    .bind(i32::try_from(rev).unwrap_or(i32::MAX))
                    .bind(release)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| self.port_error(e))?;
            Ok(row.map(|row| Changed {
                changed: row.changed,
                rev: u32::try_from(row.rev).unwrap_or(0),
                hold: row.hold_until.is_some(),
                released: row.released,
            }))
        })
    }
}

/// How long a missing change number is looked for again (a transaction that took it and
/// had not committed yet) before it is taken for a rollback.
const GAP_PATIENCE: Duration = Duration::from_secs(3);
/// At most so many missing numbers are looked for at once.
const MAX_GAPS: usize = 10_000;
/// Rows read per poll.
const FEED_BATCH: i64 = 20_000;

#[derive(sqlx::FromRow)]
struct FeedRow {
    seq: i64,
    #[sqlx(flatten)]
    row: UsageRow,
}

/// Follows `coupon_usage` by its change sequence and merges every instance's uses into the
/// ledger; follows `quotas` for reclaims asked of this instance.
#[derive(Debug)]
pub struct Feed {
    pool: PgPool,
    engine: Arc<Engine>,
    health: Arc<DatabaseHealth>,
    interval: Duration,
    after: i64,
    gaps: BTreeMap<i64, Instant>,
    reclaims_after: i64,
}

impl Feed {
    /// A feed that starts after what PostgreSQL holds now; call before loading the ledger,
    /// so that a use committed meanwhile is in the load or in the feed (both is harmless).
    pub(crate) async fn start_here(
        pool: PgPool,
        engine: Arc<Engine>,
        health: Arc<DatabaseHealth>,
        interval: Duration,
    ) -> Result<Feed, Error> {
        let (after, reclaims_after): (i64, i64) = sqlx::query_as(
            "SELECT coalesce((SELECT max(seq) FROM coupon_usage), 0), \
             coalesce((SELECT max(reclaim_seq) FROM quotas), 0)",
        )
        .fetch_one(&pool)
        .await?;
        if let Some(cluster) = engine.cluster() {
            cluster.deciding.fed_to(after);
        }
        Ok(Feed { pool, engine, health, interval, after, gaps: BTreeMap::new(), reclaims_after })
    }

    /// Polls until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {
                    // Every 50 ms, busy or idle: the first to notice PostgreSQL gone.
                    if let Err(err) = self.poll().await {
                        self.health.report_failure("usage feed", &err);
                        tracing::debug!(error = %err, "usage feed poll failed; retrying");
                    }
                }
            }
        }
    }

    /// One poll: the rows changed since the last, and any reclaims.
    pub(crate) async fn poll(&mut self) -> Result<usize, Error> {
        let gaps: Vec<i64> = self.gaps.keys().copied().collect();
        let sql = format!(
            "SELECT seq, {USAGE_COLUMNS} FROM coupon_usage WHERE seq > $1 OR seq = ANY($2) ORDER BY seq LIMIT $3"
        );
        let rows: Vec<FeedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.after)
            .bind(&gaps)
            .bind(FEED_BATCH)
            .fetch(&self.pool)
            .try_collect()
            .await?;
        let now = Instant::now();
        let mut uses = Vec::with_capacity(rows.len());
        for FeedRow { seq, row } in rows {
            self.gaps.remove(&seq);
            if seq > self.after {
                for missing in (self.after + 1)..seq {
                    if self.gaps.len() < MAX_GAPS {
                        self.gaps.insert(missing, now);
                    }
                }
                self.after = seq;
            }
            match row.into_use() {
                Ok(stored) => uses.push(stored),
                Err(err) => tracing::warn!(error = %err, "a use the feed brought cannot be served; skipped"),
            }
        }
        self.gaps.retain(|_, seen| now.duration_since(*seen) < GAP_PATIENCE);
        let merged = self.engine.merge_uses(uses);
        if let Some(cluster) = self.engine.cluster() {
            // Read with nothing missing up to here: below the first gap still looked for.
            let whole = self.gaps.keys().next().map_or(self.after, |gap| gap - 1);
            cluster.deciding.fed_to(whole);
        }
        let reclaims: Vec<(i16, i64, i64)> =
            sqlx::query_as("SELECT kind, scope_id, reclaim_seq FROM quotas WHERE reclaim_seq > $1")
                .bind(self.reclaims_after)
                .fetch_all(&self.pool)
                .await?;
        if let Some(cluster) = self.engine.cluster() {
            for (_, _, seq) in &reclaims {
                self.reclaims_after = self.reclaims_after.max(*seq);
            }
            cluster.leases.reclaim(reclaims.iter().filter_map(|(kind, id, _)| Scope::from_row(*kind, *id)));
        }
        Ok(merged)
    }
}

/// Orders redeemed by two users on two instances at once, as admins see them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderConflict {
    pub redemption_id: Uuid,
    pub coupon_id: i64,
    pub order_id: String,
    pub kept_user: String,
    pub lost_user: String,
    pub instance_id: String,
    pub detected_at: DateTime<Utc>,
}

/// The latest order conflicts, newest first.
pub async fn order_conflicts(pool: &PgPool, limit: i64) -> Result<Vec<OrderConflict>, Error> {
    Ok(sqlx::query_as(
        "SELECT usage_id AS redemption_id, coupon_id, order_id, kept_user, lost_user, instance_id, detected_at \
         FROM order_conflicts ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
