//! The `coupon-engine` binary: `serve`, `migrate` and `seed`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use chrono::{Datelike, TimeZone, Utc};
use clap::{Parser, Subcommand};
use coupon_engine::app::{App, shutdown_signal};
use coupon_engine::config::Settings;
use coupon_engine::db::seed::{seed, seed_campaign, seed_cart_coupons};
use coupon_engine::seed::SeedParams;
use coupon_engine::{db, telemetry};

#[derive(Debug, Parser)]
#[command(version, about = "Cache-first coupon validation service")]
struct Cli {
    /// A TOML file layered over config/default.toml (the environment still wins).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve,
    /// Apply the SQL migrations and exit.
    Migrate,
    /// Fill an empty database with the reference data set.
    Seed {
        #[arg(long, default_value_t = 1_000_000)]
        users: u32,
        #[arg(long, default_value_t = 5_000)]
        coupons: u32,
        #[arg(long, default_value_t = 3_000)]
        usage: u32,
        #[arg(long, default_value_t = 42)]
        rng_seed: u64,
        /// Also add a campaign ("seed-campaign") with this many generated single-use codes.
        #[arg(long, default_value_t = 0)]
        campaign_codes: u32,
        /// Also add this many coupons that target carts (CART-…) over the seed's product
        /// catalogue (p-0000…p-0199 in cat-00…cat-09).
        #[arg(long, default_value_t = 0)]
        cart_coupons: u32,
        /// Replace the data of a non-empty database.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("coupon-engine: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => {
                let app = App::build(settings).await?;
                tracing::info!(addr = %app.local_addr(), "listening");
                app.run(shutdown_signal()).await?;
                Ok(())
            }
            Command::Migrate => {
                let pool = db::connect(&settings.database).await.context("cannot connect to the database")?;
                db::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Seed { users, coupons, usage, rng_seed, campaign_codes, cart_coupons, force } => {
                let pool = db::connect(&settings.database).await.context("cannot connect to the database")?;
                let today = Utc::now();
                let now = Utc
                    .with_ymd_and_hms(today.year(), today.month(), today.day(), 0, 0, 0)
                    .single()
                    .context("cannot compute today's midnight")?;
                let params = SeedParams { users, coupons, usage, rng_seed, now };
                let started = Instant::now();
                let report = seed(&pool, &params, force).await?;
                if campaign_codes > 0 {
                    seed_campaign(&pool, campaign_codes).await?;
                }
                if cart_coupons > 0 {
                    seed_cart_coupons(&pool, cart_coupons, rng_seed).await?;
                }
                tracing::info!(
                    users = report.users,
                    coupons = report.coupons,
                    usage = report.usage,
                    campaign_codes,
                    cart_coupons,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "seeded"
                );
                Ok(())
            }
        }
    })
}
