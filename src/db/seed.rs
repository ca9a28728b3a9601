//! Loads the reference data set (see `crate::seed`) into an empty database with COPY.

use std::fmt::Write as _;

use sqlx::{PgConnection, PgPool};

use std::sync::atomic::AtomicU64;

use crate::db::batches::{self, Outcome, Source};
use crate::db::{campaigns, money};
use crate::domain::batch::GenerateSpec;
use crate::domain::campaign::Campaign;
use crate::domain::coupon::{Coupon, CouponKind, Discount};
use crate::domain::money::Cents;
use crate::seed::{SeedParams, SeedReport, SeedUsage, generate};

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the database is not empty: pass --force to replace its data")]
    NotEmpty,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the seed campaign: {0}")]
    Campaign(String),
    #[error("the cart coupons: {0}")]
    Coupons(String),
}

/// The campaign `seed --campaign-codes` adds, and the prefix of its codes.
pub const SEED_CAMPAIGN: &str = "seed-campaign";
pub const SEED_CODE_PREFIX: &str = "SEED-";

/// Adds a campaign with one batch of `count` generated single-use codes (5.00 off each), the
/// way `POST /admin/campaigns/{name}/batches` makes them.
pub async fn seed_campaign(pool: &PgPool, count: u32) -> Result<(), SeedError> {
    let failed = |err: &dyn std::fmt::Display| SeedError::Campaign(err.to_string());
    let campaign = campaigns::insert(pool, &Campaign::new(0, SEED_CAMPAIGN)).await.map_err(|e| failed(&e))?;
    let spec = GenerateSpec::new(u64::from(count), SEED_CODE_PREFIX, None).map_err(|e| failed(&e))?;
    let rule = Coupon::new(0, "~BATCH", CouponKind::TimeSpecific, Discount::Fixed(Cents::new(500).expect("5.00")));
    let source = Source::Generated(spec);
    let claimed = batches::claim(pool, campaign.id, &rule, 1, &source).await.map_err(|e| failed(&e))?;
    match claimed.write(&source, &AtomicU64::new(0)).await.map_err(|e| failed(&e))? {
        Outcome::Done => Ok(()),
        Outcome::Duplicates(codes) => Err(failed(&format!("codes exist already: {}", codes.join(", ")))),
    }
}

/// Adds `n` coupons that target carts over the seed's product catalogue
/// ([`crate::seed::cart_coupons`]), as the admin API would write them.
pub async fn seed_cart_coupons(pool: &PgPool, n: u32, rng_seed: u64) -> Result<(), SeedError> {
    let mut tx = pool.begin().await?;
    for coupon in crate::seed::cart_coupons(n, rng_seed) {
        crate::db::coupons::insert(&mut *tx, &coupon).await.map_err(|err| SeedError::Coupons(err.to_string()))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Fills the database; refuses a non-empty one unless `force`, which replaces its data.
pub async fn seed(pool: &PgPool, params: &SeedParams, force: bool) -> Result<SeedReport, SeedError> {
    let (coupons, usage) = generate(params);
    let mut tx = pool.begin().await?;
    let has_data: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM coupons) \
         OR EXISTS (SELECT 1 FROM coupon_usage) OR EXISTS (SELECT 1 FROM validation_log)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if has_data {
        if !force {
            return Err(SeedError::NotEmpty);
        }
        // Batch ids restart: their partitions go too.
        sqlx::raw_sql(
            "DO $$ DECLARE p regclass; BEGIN \
               FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'batch_codes'::regclass LOOP \
                 EXECUTE format('DROP TABLE %s', p); \
               END LOOP; END $$",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("TRUNCATE users, coupons, coupon_usage, validation_log, validation_counts, validation_log_spilled, campaigns, \
             code_batches, code_assignments RESTART IDENTITY")
            .execute(&mut *tx)
            .await?;
    }
    let users = copy_rows(&mut tx, COPY_USERS, 0..params.users, write_user).await?;
    let n_coupons = copy_rows(&mut tx, COPY_COUPONS, &coupons, write_coupon).await?;
    sqlx::query("SELECT setval(pg_get_serial_sequence('coupons', 'id'), GREATEST((SELECT max(id) FROM coupons), 1))")
        .execute(&mut *tx)
        .await?;
    let n_usage = copy_rows(&mut tx, COPY_USAGE, &usage, write_usage).await?;
    tx.commit().await?;
    sqlx::query("ANALYZE users, coupons, coupon_usage").execute(pool).await?;
    Ok(SeedReport { users, coupons: n_coupons, usage: n_usage })
}

const COPY_USERS: &str = "COPY users (id, email) FROM STDIN WITH (FORMAT text)";
const COPY_COUPONS: &str = "COPY coupons (id, code, type, status, discount_type, discount_value, max_discount, \
     min_order_value, usage_limit, per_user_limit, user_id, valid_from, valid_until) FROM STDIN WITH (FORMAT text)";
const COPY_USAGE: &str = "COPY coupon_usage (coupon_id, user_id, order_id, order_value, discount_applied, used_at) \
     FROM STDIN WITH (FORMAT text)";

/// Bytes sent per COPY message.
const CHUNK: usize = 1 << 20;

/// Streams `rows` through one COPY, about a megabyte per message.
async fn copy_rows<T>(
    conn: &mut PgConnection,
    statement: &'static str,
    rows: impl IntoIterator<Item = T>,
    write: fn(&mut String, T),
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = String::with_capacity(CHUNK + 1024);
    for row in rows {
        write(&mut buf, row);
        if buf.len() >= CHUNK {
            copy.send(buf.as_bytes()).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        copy.send(buf.as_bytes()).await?;
    }
    copy.finish().await
}

/// COPY text format: tab-separated, `\N` for NULL. Generated values never contain tabs,
/// newlines or backslashes, so nothing needs escaping.
fn field(buf: &mut String, value: Option<impl std::fmt::Display>) {
    match value {
        Some(value) => {
            let _ = write!(buf, "{value}");
        }
        None => buf.push_str("\\N"),
    }
}

fn write_user(buf: &mut String, idx: u32) {
    // The same text as `user_id`, written in place: a million rows, no allocation each.
    let _ = writeln!(buf, "user_{idx:07}\tuser_{idx:07}@example.com");
}

fn write_coupon(buf: &mut String, c: &Coupon) {
    let (discount_type, value, cap) = c.discount.parts();
    let _ = write!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}\t",
        c.id,
        c.code,
        c.kind.as_str(),
        c.status.as_str(),
        discount_type.as_str(),
        money::numeric(value)
    );
    field(buf, cap.map(money::numeric_cents));
    let _ = write!(buf, "\t{}\t", money::numeric_cents(c.min_order_value));
    field(buf, c.usage_limit);
    buf.push('\t');
    field(buf, c.per_user_limit);
    buf.push('\t');
    field(buf, c.user_id.as_deref());
    buf.push('\t');
    field(buf, c.valid_from.map(|t| t.to_rfc3339()));
    buf.push('\t');
    field(buf, c.valid_until.map(|t| t.to_rfc3339()));
    buf.push('\n');
}

fn write_usage(buf: &mut String, u: &SeedUsage) {
    let _ = writeln!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}",
        u.coupon_id,
        u.user_id,
        u.order_id,
        money::numeric_cents(u.order_value),
        money::numeric_cents(u.discount),
        u.used_at.to_rfc3339()
    );
}
