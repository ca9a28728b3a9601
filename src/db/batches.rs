//! Batches of bulk codes in PostgreSQL: claiming a batch (its row, its rule coupon, and for a
//! generated batch its shape), writing its codes with COPY, imports checked against every
//! other code, what `GET /admin/batches/{id}` shows, and assign-next.
//!
//! A batch's codes become usable in one transaction that also marks it `done` and notifies
//! every instance: a batch that fails leaves no code behind. The connection that claims a
//! batch holds an advisory lock on it until the batch is finished, so a batch left `running`
//! by an instance that stopped is recognised (its lock is free) and marked `failed`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::db::{Error, coupons};
use crate::domain::batch::{GenerateSpec, MAX_LISTED_DUPLICATES};
use crate::domain::coupon::{BatchId, CampaignId, Coupon, RULE_CODE_PREFIX};

/// The first key of a batch's advisory lock (the second is its id).
pub const BATCH_LOCK: i32 = 72_015;
/// Bytes of COPY text sent at a time.
const COPY_CHUNK: usize = 1 << 20;

/// Where a batch's codes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Generated(GenerateSpec),
    /// Checked and normalised codes, in their order.
    Imported(Vec<String>),
}

impl Source {
    fn count(&self) -> usize {
        match self {
            Source::Generated(spec) => spec.count as usize,
            Source::Imported(codes) => codes.len(),
        }
    }
}

/// Why a batch could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("codes with prefix {0:?} could collide with existing codes")]
    ShapeTaken(String),
    #[error("the batch's rule: {0}")]
    Rule(#[from] coupons::WriteError),
    #[error(transparent)]
    Database(#[from] Error),
}

impl From<sqlx::Error> for ClaimError {
    fn from(err: sqlx::Error) -> ClaimError {
        ClaimError::Database(Error::Sqlx(err))
    }
}

/// A batch claimed by this instance: its row is `running` and its lock held on `conn` until
/// the batch is written or failed. `conn` is a connection of its own, not the pool's, so
/// that however the work ends (even dropped half-way) the lock goes with it.
#[derive(Debug)]
pub struct Claimed {
    pub id: BatchId,
    conn: PgConnection,
}

/// Creates a batch of `campaign`: its row (`running`), its rule (`rule`, a coupon whose code
/// is replaced by a reserved one) and, for a generated batch, its shape, which must not
/// overlap any code there is or may be.
pub async fn claim(
    pool: &PgPool,
    campaign: CampaignId,
    rule: &Coupon,
    uses_per_code: u32,
    source: &Source,
) -> Result<Claimed, ClaimError> {
    let mut conn = pool.connect_options().connect().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT codes_lock()").execute(&mut *tx).await?;
    let (kind, prefix, length) = match source {
        Source::Generated(spec) => ("generated", spec.prefix.as_str(), Some(spec.length)),
        Source::Imported(_) => ("imported", "", None),
    };
    if let Some(length) = length
        && shape_taken(&mut tx, prefix, prefix.len() + length).await?
    {
        return Err(ClaimError::ShapeTaken(prefix.to_owned()));
    }
    let count = i32::try_from(source.count()).expect("a batch holds at most 10,000,000 codes");
    let id: BatchId = sqlx::query_scalar(
        "INSERT INTO code_batches (campaign_id, kind, prefix, length, requested, uses_per_code) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(campaign)
    .bind(kind)
    .bind(prefix)
    .bind(length.map(|l| l as i32))
    .bind(count)
    .bind(i32::try_from(uses_per_code).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    let rule = Coupon {
        code: format!("{RULE_CODE_PREFIX}{id}").into(),
        campaign_id: Some(campaign),
        batch_id: Some(id),
        ..rule.clone()
    };
    let rule = coupons::insert(&mut *tx, &rule).await?;
    sqlx::query("UPDATE code_batches SET rule_id = $2 WHERE id = $1").bind(id).bind(rule.id).execute(&mut *tx).await?;
    // Session-level: taken before the row is visible, kept past this commit.
    sqlx::query("SELECT pg_advisory_lock($1, $2::int)").bind(BATCH_LOCK).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Claimed { id, conn })
}

/// Whether codes `prefix` + `total - prefix.len()` characters could collide with a coupon,
/// an imported code, or another generated batch that is running or done.
async fn shape_taken(conn: &mut PgConnection, prefix: &str, total: usize) -> Result<bool, sqlx::Error> {
    let total = total as i32;
    // Every code character is below 0x7F, so [prefix, prefix || 0x7F) is exactly the codes
    // that start with it, a range of batch_codes' bytewise unique index.
    let upper = format!("{prefix}\u{7f}");
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM code_batches b WHERE b.kind = 'generated' AND b.status <> 'failed' \
                AND (starts_with(b.prefix, $1) OR starts_with($1, b.prefix)) AND length(b.prefix) + b.length = $2) \
         OR EXISTS (SELECT 1 FROM coupons c WHERE c.batch_id IS NULL AND starts_with(c.code, $1) AND length(c.code) = $2) \
         OR EXISTS (SELECT 1 FROM batch_codes bc JOIN code_batches b ON b.id = bc.batch_id \
                WHERE b.kind = 'imported' AND bc.code >= $1 AND bc.code < $3 AND length(bc.code) = $2)",
    )
    .bind(prefix)
    .bind(total)
    .bind(upper)
    .fetch_one(conn)
    .await
}

/// How a claimed batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// An import named codes that exist (up to 100 of them): nothing was imported.
    Duplicates(Vec<String>),
}

impl Claimed {
    /// Writes the codes, marks the batch done and notifies every instance, in one
    /// transaction; `produced` follows the rows sent. Anything short of `Done` marks the
    /// batch failed, with the reason, and leaves no code.
    pub async fn write(mut self, source: &Source, produced: &AtomicU64) -> Result<Outcome, Error> {
        let result = match source {
            Source::Generated(spec) => self.write_generated(spec, produced).await.map(|()| Outcome::Done),
            Source::Imported(codes) => self.write_imported(codes, produced).await,
        };
        let failure = match &result {
            Ok(Outcome::Done) => None,
            Ok(Outcome::Duplicates(codes)) => Some(format!("codes that already exist: {}", codes.join(", "))),
            Err(err) => Some(format!("{err}")),
        };
        if let Some(why) = failure {
            produced.store(0, Ordering::Relaxed);
            fail(&mut self.conn, self.id, &why).await?;
        }
        // Closing the connection releases the batch's lock.
        let _ = self.conn.close().await;
        result
    }

    async fn write_generated(&mut self, spec: &GenerateSpec, produced: &AtomicU64) -> Result<(), Error> {
        let values = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || spec.generate(&mut rand::rng()))
                .await
                .map_err(|err| Error::Sqlx(sqlx::Error::Protocol(format!("code generation stopped: {err}"))))?
        };
        let mut tx = self.conn.begin().await?;
        let partition = create_partition(&mut tx, self.id).await?;
        let mut copy = tx.copy_in_raw(&copy_into(&partition)).await?;
        let mut text = String::with_capacity(COPY_CHUNK + 128);
        let suffix = format!("\t{}\t", self.id);
        for (position, value) in values.iter().enumerate() {
            spec.write_code(*value, &mut text);
            let _ = writeln!(text, "{suffix}{position}");
            if text.len() >= COPY_CHUNK {
                copy.send(std::mem::take(&mut text).into_bytes()).await?;
                text.reserve(COPY_CHUNK + 128);
                produced.store(position as u64 + 1, Ordering::Relaxed);
            }
        }
        if !text.is_empty() {
            copy.send(text.into_bytes()).await?;
        }
        copy.finish().await?;
        produced.store(values.len() as u64, Ordering::Relaxed);
        attach_partition(&mut tx, self.id, &partition).await?;
        finish(&mut tx, self.id, values.len()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_imported(&mut self, codes: &[String], produced: &AtomicU64) -> Result<Outcome, Error> {
        let mut tx = self.conn.begin().await?;
        // Against coupons and other imports, under the lock their writers take too.
        sqlx::query("SELECT codes_lock()").execute(&mut *tx).await?;
        let partition = create_partition(&mut tx, self.id).await?;
        let mut copy = tx.copy_in_raw(&copy_into(&partition)).await?;
        let mut text = String::with_capacity(COPY_CHUNK + 128);
        let id = self.id;
        for (position, code) in codes.iter().enumerate() {
            // Checked codes are printable ASCII without spaces: nothing to escape.
            let _ = writeln!(text, "{code}\t{id}\t{position}");
            if text.len() >= COPY_CHUNK {
                copy.send(std::mem::take(&mut text).into_bytes()).await?;
                text.reserve(COPY_CHUNK + 128);
            }
        }
        if !text.is_empty() {
            copy.send(text.into_bytes()).await?;
        }
        copy.finish().await?;
        // The new partition is not attached yet: batch_codes is every other batch.
        let duplicates: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "(SELECT i.code FROM {partition} i WHERE EXISTS (SELECT 1 FROM batch_codes b WHERE b.code = i.code) LIMIT $1) \
             UNION (SELECT i.code FROM {partition} i JOIN coupons c ON c.code = (i.code COLLATE \"default\") LIMIT $1) \
             UNION (SELECT i.code FROM {partition} i JOIN code_batches b ON b.kind = 'generated' \
                    AND b.status <> 'failed' AND starts_with(i.code, b.prefix) \
                    AND length(i.code) = length(b.prefix) + b.length LIMIT $1) \
             ORDER BY 1 LIMIT $1"
        )))
        .bind(MAX_LISTED_DUPLICATES as i64)
        .fetch_all(&mut *tx)
        .await?;
        if !duplicates.is_empty() {
            tx.rollback().await?;
            return Ok(Outcome::Duplicates(duplicates));
        }
        attach_partition(&mut tx, self.id, &partition).await?;
        produced.store(codes.len() as u64, Ordering::Relaxed);
        finish(&mut tx, self.id, codes.len()).await?;
        tx.commit().await?;
        Ok(Outcome::Done)
    }
}

/// Creates the table that becomes the batch's partition of `batch_codes`: its constraints
/// (the format check is evaluated as rows arrive), no index yet but the always-empty partial
/// one. Returns its name.
async fn create_partition(conn: &mut PgConnection, id: BatchId) -> Result<String, sqlx::Error> {
    // An integer id: nothing but digits reaches the statements.
    let name = format!("batch_codes_{id}");
    let statements = format!(
        "CREATE TABLE {name} (LIKE batch_codes INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
         ALTER TABLE {name} ADD CONSTRAINT {name}_batch CHECK (batch_id = {id}); \
         CREATE INDEX {name}_assigned_idx ON {name} (batch_id) WHERE assigned_to IS NOT NULL"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements)).execute(conn).await?;
    Ok(name)
}

/// COPY into a table created in this transaction: FREEZE writes the rows frozen, so nobody
/// rewrites ten million rows' hint bits later.
fn copy_into(partition: &str) -> String {
    format!("COPY {partition} (code, batch_id, position) FROM STDIN WITH (FREEZE)")
}

/// Builds the partition's indexes in one pass each and attaches it (its CHECK constraint
/// spares PostgreSQL a scan to prove the rows belong).
async fn attach_partition(conn: &mut PgConnection, id: BatchId, partition: &str) -> Result<(), sqlx::Error> {
    let statements = format!(
        "ALTER TABLE {partition} ADD PRIMARY KEY (batch_id, position); \
         CREATE UNIQUE INDEX {partition}_code_key ON {partition} (code, batch_id); \
         ALTER TABLE batch_codes ATTACH PARTITION {partition} FOR VALUES IN ({id})"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements)).execute(conn).await?;
    Ok(())
}

/// Marks a batch done and notifies every instance (delivered at commit).
async fn finish(conn: &mut PgConnection, id: BatchId, produced: usize) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE code_batches SET status = 'done', produced = $2, finished_at = clock_timestamp() WHERE id = $1",
    )
    .bind(id)
    .bind(produced as i32)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "SELECT pg_notify('coupon_changes', json_build_object('entity', 'batch', 'op', 'done', 'ids', json_build_array($1::bigint))::text)",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

async fn fail(conn: &mut PgConnection, id: BatchId, why: &str) -> Result<(), Error> {
    sqlx::query("UPDATE code_batches SET status = 'failed', error = $2, produced = 0, finished_at = clock_timestamp() WHERE id = $1")
        .bind(id)
        .bind(why)
        .execute(conn)
        .await?;
    Ok(())
}

/// A batch as `GET /admin/batches/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Status {
    pub id: BatchId,
    pub campaign: String,
    pub kind: String,
    pub status: String,
    pub requested: i32,
    pub produced: i32,
    pub error: Option<String>,
}

/// The batch with this id, if any. A batch left running by an instance that stopped is
/// marked failed first.
pub async fn status(pool: &PgPool, id: BatchId) -> Result<Option<Status>, Error> {
    fail_interrupted(pool, Some(id)).await?;
    Ok(sqlx::query_as(
        "SELECT b.id, c.name AS campaign, b.kind, b.status, b.requested, b.produced, b.error \
         FROM code_batches b JOIN campaigns c ON c.id = b.campaign_id WHERE b.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Marks failed the running batches (all, or `only` one) whose claiming connection is gone:
/// their advisory lock is free. Returns how many.
///
/// The rows are locked first: a second marker at the same moment waits for the first to
/// commit and then finds the batch failed, where its try of the advisory lock (held by the
/// first marker's transaction) would have taken a dead writer's batch for a live one.
pub(crate) async fn fail_interrupted(pool: &PgPool, only: Option<BatchId>) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE code_batches SET status = 'failed', produced = 0, finished_at = now(), \
         error = 'interrupted: the instance writing it stopped before it was done' \
         WHERE id IN (SELECT id FROM code_batches WHERE status = 'running' AND ($1::bigint IS NULL OR id = $1) \
                      FOR UPDATE) \
           AND status = 'running' AND pg_try_advisory_xact_lock($2, id::int)",
    )
    .bind(only)
    .bind(BATCH_LOCK)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// What assign-next handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// A code newly assigned: its batch and position, for the in-memory index.
    New { code: String, batch: BatchId, position: u32 },
    /// The key was used before, for this user: the same code.
    Again { code: String },
    /// The key was used before for another user.
    KeyTaken,
    /// The user was handed as many codes of the campaign as one may be.
    UserLimit,
    /// No unassigned, unused code is left.
    Exhausted,
    /// A batch of the campaign is done but not yet loaded here: nothing is known of its
    /// codes' uses yet.
    NotLoaded,
}

/// What the caller's ledger says of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeUse {
    Free,
    /// Used (or assigned) already: never handed out.
    Taken,
    /// Its batch is not loaded here.
    Unknown,
}

/// Codes read per step while looking for an assignable one.
const ASSIGN_STEP: i64 = 256;

/// Hands an unassigned code of `campaign` that `usable(batch, position)` finds free (unused, as
/// the caller's ledger says) to `user_id`, once per `key`. Batches are taken in order, codes in
/// position order from each batch's cursor, which only moves forward: the cost of an
/// assignment does not grow with the codes already assigned.
pub(crate) async fn assign_next(
    pool: &PgPool,
    campaign: CampaignId,
    user_id: &str,
    key: &str,
    per_user: u32,
    usable: impl Fn(BatchId, u32) -> CodeUse,
) -> Result<Assignment, Error> {
    loop {
        let mut tx = pool.begin().await?;
        if let Some(found) = existing_assignment(&mut tx, campaign, user_id, key).await? {
            return Ok(found);
        }
        // One user's assignments are counted under its own lock, so that two at once cannot
        // both take the last one allowed.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assign:' || $1 || ':' || $2, 0))")
            .bind(campaign)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let handed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM code_assignments WHERE campaign_id = $1 AND user_id = $2")
                .bind(campaign)
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        if handed >= i64::from(per_user) {
            return Ok(Assignment::UserLimit);
        }
        let Some((batch, mut cursor)) = sqlx::query_as::<_, (BatchId, i32)>(
            "SELECT id, next_assign FROM code_batches WHERE campaign_id = $1 AND status = 'done' \
             AND next_assign < produced ORDER BY id LIMIT 1 FOR UPDATE",
        )
        .bind(campaign)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Assignment::Exhausted);
        };
        let mut chosen = None;
        loop {
            let rows: Vec<(i32, String, Option<String>)> = sqlx::query_as(
                "SELECT position, code, assigned_to FROM batch_codes WHERE batch_id = $1 AND position >= $2 \
                 ORDER BY position LIMIT $3",
            )
            .bind(batch)
            .bind(cursor)
            .bind(ASSIGN_STEP)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last().map(|r| r.0) else { break };
            for (position, code, assigned) in rows {
                match assigned.map_or_else(|| usable(batch, position as u32), |_| CodeUse::Taken) {
                    CodeUse::Free => {
                        chosen = Some((position, code));
                        break;
                    }
                    CodeUse::Taken => {}
                    // Never move the cursor past codes whose use is not known.
                    CodeUse::Unknown => return Ok(Assignment::NotLoaded),
                }
            }
            match &chosen {
                Some((position, _)) => {
                    cursor = position + 1;
                    break;
                }
                None => cursor = last + 1,
            }
        }
        sqlx::query("UPDATE code_batches SET next_assign = $2 WHERE id = $1")
            .bind(batch)
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        let Some((position, code)) = chosen else {
            // This batch has nothing left: move past it and look at the next.
            tx.commit().await?;
            continue;
        };
        sqlx::query("UPDATE batch_codes SET assigned_to = $3, assign_key = $4, assigned_at = now() WHERE batch_id = $1 AND position = $2")
            .bind(batch)
            .bind(position)
            .bind(user_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let recorded = sqlx::query(
            "INSERT INTO code_assignments (campaign_id, key, code, user_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(campaign)
        .bind(key)
        .bind(&code)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            // The same key was assigned concurrently: that assignment stands, this one goes.
            tx.rollback().await?;
            continue;
        }
        sqlx::query(
            "SELECT pg_notify('coupon_changes', json_build_object('entity', 'assignment', 'op', 'assign', \
             'batch', $1::bigint, 'ids', json_build_array($2::int))::text)",
        )
        .bind(batch)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Assignment::New { code, batch, position: position as u32 });
    }
}

async fn existing_assignment(
    conn: &mut PgConnection,
    campaign: CampaignId,
    user_id: &str,
    key: &str,
) -> Result<Option<Assignment>, sqlx::Error> {
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT code, user_id FROM code_assignments WHERE campaign_id = $1 AND key = $2")
            .bind(campaign)
            .bind(key)
            .fetch_optional(conn)
            .await?;
    Ok(existing.map(|(code, owner)| if owner == user_id { Assignment::Again { code } } else { Assignment::KeyTaken }))
}

/// The users codes at these positions of `batch` were assigned to.
pub async fn assignments(pool: &PgPool, batch: BatchId, positions: &[i32]) -> Result<Vec<(i32, String)>, Error> {
    Ok(sqlx::query_as(
        "SELECT position, assigned_to FROM batch_codes WHERE batch_id = $1 AND position = ANY($2) AND assigned_to IS NOT NULL",
    )
    .bind(batch)
    .bind(positions)
    .fetch_all(pool)
    .await?)
}
