//! `loadgen`: load, drills and measurements against a running coupon-engine.

mod client;
mod propagation;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Load generator and drills for coupon-engine (loopback only)")]
struct Cli {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time from COMMIT of a coupon change to the first validate answer that reflects it.
    Propagation(propagation::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Propagation(args) => propagation::run(&cli.url, args).await,
        }
    })
}
