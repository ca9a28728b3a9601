//! Everything that talks to PostgreSQL: the pool, migrations, loading, seeding, write-behind.

pub mod coupons;
pub mod health;
pub mod listener;
pub mod load;
pub mod seed;
pub mod shipper;
pub mod validation_log;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A failure talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("coupon {id} in the database cannot be served: {what}")]
    BadCoupon { id: i64, what: String },
    #[error("the database is not empty: pass --force to replace its data")]
    NotEmpty,
    #[error("change listener lost: {0}")]
    ListenerLost(&'static str),
}

/// Opens a pool and checks that the database answers.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .connect(settings.url.expose())
        .await?;
    Ok(pool)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether an error means "PostgreSQL is unreachable or restarting" (worth retrying as is),
/// as opposed to a problem with what was sent.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            // 08: connection exception, 53: insufficient resources, 57: operator
            // intervention (shutdown, crash recovery), 40: transaction rollback.
            let code = db.code();
            let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
            matches!(class, Some("08" | "53" | "57" | "40"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
