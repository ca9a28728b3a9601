//! This instance's identity: its id, the lock that makes the id one process's, and the
//! heartbeat that keeps proving both, so that a process which lost them stops spending its
//! leases before anybody else may take them (`engine::standing`).
//!
//! The lock is a session advisory lock on a connection of its own, so it goes whenever that
//! connection does: a PostgreSQL restart, a cut link, `idle_session_timeout`. Alone it proves
//! nothing for long. Hence:
//! - every `beat` the heartbeat stamps `quota_stamps.seen_at` through the lock's
//!   connection, for this epoch while it is live; a stamp that commits proves the lock was
//!   held and the epoch live when it was sent; with it goes `shipped_through`, the latest
//!   time on PostgreSQL's clock before which every use this instance acknowledged has
//!   shipped (`journal::marks`);
//! - a lost connection is replaced and the lock taken again; meanwhile (and while a stamp
//!   is late) the engine spends nothing from leases once its window has passed;
//! - a write-off waits until the last stamp is the instance's own `identity_timeout` old by
//!   PostgreSQL's clock (twice its spending window), and then fences the epoch; the old process, when it
//!   reconnects, finds its epoch gone and stops;
//! - a new process with the same id starts only from the `DATA_DIR` of the id's live epoch
//!   (a crash's restart, whose journal holds what the epoch sold), or once that epoch is
//!   stopped or written off; two processes never share a `DATA_DIR` (a file lock).
//!   Otherwise the new one would settle leases whose sales are in a journal it cannot ship.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::Error;
use crate::engine::standing::Standing;
use crate::journal::marks::ShippedMarks;

/// The file in `DATA_DIR` that keeps a generated instance id.
const ID_FILE: &str = "instance_id";
/// The file in `DATA_DIR` that names the directory itself (a UUID made on first start).
const DIR_ID_FILE: &str = "data_dir_id";
/// The file in `DATA_DIR` locked by the process that uses it.
const LOCK_FILE: &str = "lock";

/// Who this process is among the instances.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `INSTANCE_ID` if set, else the one kept in `DATA_DIR` (generated there on first start).
    pub instance: String,
    /// The `DATA_DIR`'s own id, made on first start and kept in it.
    pub data_dir: Uuid,
}

impl Identity {
    pub fn of(configured: &str, data_dir: &Path) -> std::io::Result<Identity> {
        let instance = if configured.is_empty() {
            kept(data_dir, ID_FILE, || format!("i-{}", &Uuid::new_v4().simple().to_string()[..12]))?
        } else {
            configured.to_owned()
        };
        let text = kept(data_dir, DIR_ID_FILE, || Uuid::new_v4().to_string())?;
        let dir = Uuid::parse_str(&text).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
        Ok(Identity { instance, data_dir: dir })
    }
}

/// The text kept in `data_dir/name`, or `make()` kept there durably first.
fn kept(data_dir: &Path, name: &str, make: impl FnOnce() -> String) -> std::io::Result<String> {
    let path = data_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) | Err(_) => {
            std::fs::create_dir_all(data_dir)?;
            let text = make();
            let tmp = data_dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, &text)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(text)
        }
    }
}

/// One process per `DATA_DIR`: an exclusive lock on a file in it, which the kernel lets go
/// when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock; `Ok(None)` if another process holds it.
    pub fn take(data_dir: &Path) -> std::io::Result<Option<DataDirLock>> {
        std::fs::create_dir_all(data_dir)?;
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }
}

/// The live epoch of this instance id and the `DATA_DIR` (by its id) that runs it, if that
/// is another directory than this one's.
pub(crate) async fn live_elsewhere(pool: &sqlx::PgPool, identity: &Identity) -> Result<Option<(i64, Uuid)>, Error> {
    let row: Option<(i64, Option<Uuid>)> = sqlx::query_as(
        "SELECT epoch, data_dir_id FROM quota_instances WHERE instance_id = $1 AND state IN ('live', 'waiting')",
    )
    .bind(&identity.instance)
    .fetch_optional(pool)
    .await?;
    // An epoch begun before data_dir_id existed names no directory: taken as this one's.
    Ok(row.and_then(|(epoch, dir)| dir.filter(|dir| *dir != identity.data_dir).map(|dir| (epoch, dir))))
}

/// The statement that takes the id's lock on the connection it runs on, answering whether
/// it did; `$1` is the id.
pub(crate) const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended('coupon-engine instance ' || $1, 0))";
/// Lets the id's lock go on this connection; `$1` is the id.
pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('coupon-engine instance ' || $1, 0))";

/// Whether the last stamp of `id`'s live epoch is older than its own identity timeout by
/// PostgreSQL's clock (or the instance is not live at all): only then may its units be taken.
/// While it decides alone, its alone timeout counts instead, if longer.
/// The last stamp is the heartbeat's (`quota_stamps`), or the epoch's start.
pub(crate) const STAMP_IS_OLD: &str = "SELECT NOT EXISTS (SELECT 1 FROM quota_instances q \
     LEFT JOIN quota_stamps s ON s.instance_id = q.instance_id AND s.epoch = q.epoch \
     WHERE q.instance_id = $1 AND q.state IN ('live', 'waiting') \
     AND greatest(q.seen_at, s.seen_at) > now() - greatest(q.identity_timeout, \
     coalesce((SELECT a.alone_timeout FROM quota_alone a WHERE a.instance_id = q.instance_id), interval '0')))";

/// The lock that makes an instance id one process's: held as long as its connection lives.
#[derive(Debug)]
pub struct InstanceLock {
    conn: PgConnection,
}

impl InstanceLock {
    /// Takes the id's lock; `Ok(None)` if another live process holds it.
    pub async fn take(url: &str, id: &str) -> Result<Option<InstanceLock>, Error> {
        let mut conn = PgConnection::connect(url).await?;
        let taken: bool = sqlx::query_scalar(TRY_LOCK).bind(id).fetch_one(&mut conn).await?;
        Ok(taken.then_some(InstanceLock { conn }))
    }

    /// Lets the lock go (at the end of a clean stop).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

/// Stamps this epoch as live, with the time it has shipped through (if it knows one);
/// answers PostgreSQL's clock as it stamped, or `None` if the epoch is not live (written off,
/// or taken over). Written apart from the instance's row, which every claim and grant holds
/// while it runs.
async fn stamp(
    conn: &mut PgConnection,
    id: &str,
    epoch: i64,
    shipped_through: Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(sqlx::query_scalar(
        "INSERT INTO quota_stamps (instance_id, epoch, seen_at, shipped_through) SELECT $1, $2, now(), $3 \
         WHERE EXISTS (SELECT 1 FROM quota_instances \
                       WHERE instance_id = $1 AND epoch = $2 AND state IN ('live', 'waiting')) \
         ON CONFLICT (instance_id) DO UPDATE SET seen_at = EXCLUDED.seen_at, \
           shipped_through = CASE WHEN quota_stamps.epoch = EXCLUDED.epoch \
             THEN greatest(quota_stamps.shipped_through, EXCLUDED.shipped_through) \
             ELSE EXCLUDED.shipped_through END, \
           epoch = EXCLUDED.epoch \
         RETURNING now()",
    )
    .bind(id)
    .bind(epoch)
    .bind(shipped_through)
    .fetch_optional(conn)
    .await?)
}

/// What a reconnection found.
enum Reconnected {
    Locked(InstanceLock),
    /// The lock is held elsewhere for the moment (a write-off looking, or another process).
    Busy,
    /// The epoch is no longer live: this process is done.
    Fenced,
}

/// The heartbeat of one epoch (see the module documentation).
#[derive(Debug)]
pub struct Heartbeat {
    pub url: String,
    pub id: String,
    pub epoch: i64,
    pub standing: Arc<Standing>,
    /// How often a stamp is sent; also how long one may take.
    pub every: Duration,
    /// What this instance's journal has shipped, published with each stamp.
    pub shipped: ShippedMarks,
    /// Woken when another instance waits for what every instance has shipped.
    pub shipping_wanted: Arc<tokio::sync::Notify>,
}

impl Heartbeat {
    /// Beats until `stop`, and returns the lock (if held) for the clean stop to let go. If
    /// the epoch turns out fenced, marks the standing so and cancels `fenced`.
    pub async fn run(
        mut self,
        lock: InstanceLock,
        stop: CancellationToken,
        fenced: CancellationToken,
    ) -> Option<InstanceLock> {
        let mut lock = Some(lock);
        let mut interval = tokio::time::interval(self.every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Asked for: a stamp read PostgreSQL's clock after the asking instance's question, and
        // is to be published once the shipper has passed it, without waiting for a beat.
        let mut publish_next = false;
        loop {
            if !std::mem::take(&mut publish_next) {
                tokio::select! {
                    () = stop.cancelled() => return lock,
                    _ = interval.tick() => {}
                    () = self.shipping_wanted.notified() => publish_next = true,
                }
            }
            let sent = Instant::now();
            let Some(held) = lock.as_mut() else {
                match tokio::time::timeout(self.every, self.reconnect()).await {
                    Ok(Ok(Reconnected::Locked(taken))) => {
                        tracing::info!(instance = %self.id, "instance lock taken again");
                        lock = Some(taken);
                        self.standing.proved(sent);
                    }
                    Ok(Ok(Reconnected::Busy)) => {
                        tracing::warn!(instance = %self.id, "instance lock held by another session; trying again");
                    }
                    Ok(Ok(Reconnected::Fenced)) => return self.fenced(&fenced),
                    Ok(Err(err)) => tracing::debug!(error = %err, "instance lock: cannot reconnect yet"),
                    Err(_) => tracing::debug!("instance lock: reconnecting timed out"),
                }
                continue;
            };
            let through = self.shipped.shipped_through();
            match tokio::time::timeout(self.every, stamp(&mut held.conn, &self.id, self.epoch, through)).await {
                Ok(Ok(Some(at))) => {
                    self.standing.proved(sent);
                    self.shipped.passed(at);
                    if publish_next {
                        self.shipped.wait_shipped(self.every).await;
                    }
                }
                Ok(Ok(None)) => return self.fenced(&fenced),
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(
                        instance = %self.id,
                        "instance lock's connection lost; leases are not spent until it is taken again"
                    );
                    if let Some(lost) = lock.take() {
                        // Closing may hang on a stalled link: let it go in the background.
                        tokio::spawn(async move {
                            drop(tokio::time::timeout(Duration::from_secs(5), lost.release()).await)
                        });
                    }
                }
            }
        }
    }

    fn fenced(&self, fenced: &CancellationToken) -> Option<InstanceLock> {
        tracing::error!(
            instance = %self.id,
            epoch = self.epoch,
            "this instance's epoch was written off or taken over by another process with its id: \
             it spends nothing more and stops"
        );
        self.standing.fence();
        fenced.cancel();
        None
    }

    async fn reconnect(&self) -> Result<Reconnected, Error> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let taken: bool = sqlx::query_scalar(TRY_LOCK).bind(&self.id).fetch_one(&mut conn).await?;
        if taken {
            return Ok(match stamp(&mut conn, &self.id, self.epoch, None).await? {
                Some(_) => Reconnected::Locked(InstanceLock { conn }),
                None => Reconnected::Fenced,
            });
        }
        // Not stamped without the lock: a process waiting out this one must see it fall silent.
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM quota_instances \
             WHERE instance_id = $1 AND epoch = $2 AND state IN ('live', 'waiting'))",
        )
        .bind(&self.id)
        .bind(self.epoch)
        .fetch_one(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(if live { Reconnected::Busy } else { Reconnected::Fenced })
    }
}
