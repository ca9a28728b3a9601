//! Everything that talks to PostgreSQL: the pool, migrations, loading definitions and uses,
//! the change listener, shipping the journal, the validation log, admin reads and writes.
//!
//! Invariant: nothing here runs on the request path of validate, redeem, hold or release;
//! the request path reaches `db/` only through the engine's ports (a queue that never
//! waits).

pub mod batch_jobs;
pub mod batches;
pub mod campaigns;
pub mod catalog;
pub mod claims;
pub mod cluster;
pub mod copy_text;
pub mod coupons;
pub mod health;
pub mod identity;
pub mod listener;
pub mod log_retention;
pub mod log_summary;
pub mod logs;
pub mod money;
pub mod quota;
pub mod seed;
pub mod shipper;
pub mod usage;
pub mod validation_log;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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
    #[error("{what} {id} in the database cannot be served: {problem}")]
    BadRow { what: &'static str, id: i64, problem: String },
}

impl Error {
    /// Whether retrying as is may succeed (PostgreSQL away or restarting).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Sqlx(err) => is_transient(err),
            Error::Migrate(_) | Error::BadRow { .. } => false,
        }
    }
}

/// Opens a pool and checks that the database answers.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, Error> {
    // JIT off: the planner prices a read of the partitioned log before pruning it at run
    // time, and then spends 20–150 ms compiling a query that reads a few pages.
    let options = settings.url.expose().parse::<PgConnectOptions>()?.options([("jit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether an error says "PostgreSQL is unreachable or restarting" (worth retrying as is),
/// as opposed to a problem with what was sent.
pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
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

/// Whether PostgreSQL refused what was sent for good: bad data (class 22) or a broken
/// constraint (class 23). Only such a refusal may set a record aside; anything else is
/// retried, because it may be the database, not the record.
pub(crate) fn is_refusal(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}
