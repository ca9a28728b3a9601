//! `loadgen`: the reference benchmark, open-loop phases, and drills against a running
//! coupon-engine. Traffic goes to loopback addresses only, and every run stops by itself.

mod campaign_race;
mod client;
mod cluster_chaos;
mod cluster_race;
mod codes;
mod conn;
mod drills;
mod fault_campaign;
mod holds;
mod hostile;
mod load;
mod log_scale;
mod mix;
mod propagation;
mod report;
mod scale;
mod scratch;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::load::{Phase, PhaseResult, Shape};
use crate::mix::Mix;

#[derive(Debug, Parser)]
#[command(version, about = "Load generator and drills for coupon-engine (loopback only)")]
struct Cli {
    /// Base URL of the service; must be a loopback address. The benchmark also takes several,
    /// comma-separated (instances without a balancer): connections are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// PostgreSQL the service uses: request mixes are built from its coupons.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The shop's backend token, sent with every load request (redeem, hold and release need
    /// it on a service started with one, as tools/up does: data/api_token).
    #[arg(long, env = "API_TOKEN", global = true, hide_env_values = true)]
    api_token: Option<String>,
    #[command(flatten)]
    bench: BenchArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The default run: the reference benchmark (1,000 requests, 100 concurrent), or phases.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Closed loop: total requests.
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Requests in flight (closed loop), or the most in flight (open loop).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Open loop instead: this many requests per second, for --duration seconds.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Open-loop phases run in order, each `name:duration:rate[:concurrency]`, e.g.
    /// --phase warm-up:10s:500 --phase sustained:30s:5000 --phase peak:10s:20000 --phase cool-down:10s:500
    #[arg(long = "phase")]
    phases: Vec<String>,
    /// validate (all outcomes), valid, campaign, redeem, limited-redeem, per-user-redeem,
    /// code-redeem, cart, stack (three codes on a cart: validates and set redeems), checkout
    /// (validate + redeem + holds) or shapes.
    #[arg(long, default_value = "validate")]
    mix: String,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The reference's four concurrency scenarios: light 10, moderate 50, heavy 200, stress 500.
    Scenarios(drills::ScenarioArgs),
    /// N buyers at once against a coupon with a usage limit: winners must equal the limit.
    Race(drills::RaceArgs),
    /// Several instances (tools/cluster up): rounds of 300 buyers for 50 uses through the
    /// balancer, then one user racing a one-use coupon on every instance.
    ClusterRace(cluster_race::ClusterRaceArgs),
    /// Several instances (tools/cluster up): buyers on one limited coupon through the balancer
    /// while an instance holding leases is SIGKILLed and restarted, then PostgreSQL is stopped.
    ClusterChaos(cluster_chaos::ClusterChaosArgs),
    /// Validate throughput and p99 against a bare hyper server, same load, same run.
    Budget(drills::BudgetArgs),
    /// Stops PostgreSQL (tools/pg) under load: success before/during/after, catch-up, rows lost.
    DbOutage(drills::OutageArgs),
    /// SIGKILLs the service under redeem load, restarts it, compares acknowledged with persisted.
    Crash(drills::CrashArgs),
    /// Holds 1,000 slow-loris sockets open and checks normal clients' p99 at most doubles.
    Slowloris(drills::SlowlorisArgs),
    /// Time from COMMIT of a coupon change to the first validate answer that reflects it.
    Propagation(propagation::Args),
    /// A scratch database with a million coupons: start-up time, memory, a 100,000-row change.
    Scale(scale::ScaleArgs),
    /// Bulk-code budgets on a scratch database: 1M and 10M codes generated and usable, memory
    /// a code, the CSV export, start-up with every code.
    Codes(codes::CodesArgs),
    /// Many buyers over many single-use codes of one campaign with a small cap, budget and
    /// per-customer limit: winners, used, spent and rows must be exact (runs its own service).
    CampaignRace(campaign_race::CampaignRaceArgs),
    /// Checkout holds: hold throughput and p99, 100,000 holds expiring in one second given back
    /// while validations keep their p99, nothing lost or counted twice (runs its own service).
    Holds(holds::HoldsArgs),
    /// The real fault campaign (tools/campaign): instances behind HAProxy, each behind a
    /// proxy to PostgreSQL, under a seeded nemesis; the history checked like the simulation's.
    FaultCampaign(fault_campaign::FaultCampaignArgs),
    /// The validation log at 100,000,000 rows on a scratch database: the admin statistics and
    /// recent reads must answer in under 100 ms.
    LogScale(log_scale::LogScaleArgs),
    /// Attacks of the hostile-client review (slow bodies, release guessing, a redeem/release
    /// memory loop, userId rotation) against a service it starts with an API token.
    Hostile(hostile::HostileArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(token) = cli.api_token.clone().filter(|t| !t.is_empty()) {
        let _ = conn::API_TOKEN.set(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let passed = runtime.block_on(async move {
        let targets = cli.url.split(',').map(loopback_addr).collect::<anyhow::Result<Vec<_>>>()?;
        let addr = targets[0];
        match cli.command {
            None => bench(&cli.url, &targets, cli.database_url.as_deref(), cli.bench).await,
            Some(Command::Scenarios(args)) => {
                drills::scenarios(addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Race(args)) => {
                drills::race(&cli.url, addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::ClusterChaos(args)) => {
                cluster_chaos::cluster_chaos(&cli.url, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::ClusterRace(args)) => {
                cluster_race::cluster_race(&cli.url, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Budget(args)) => drills::budget(addr, need_db(cli.database_url.as_deref())?, args).await,
            Some(Command::DbOutage(args)) => {
                drills::db_outage(&cli.url, addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Slowloris(args)) => {
                drills::slowloris(addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Crash(args)) => {
                drills::crash(&cli.url, addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Scale(args)) => scale::scale(need_db(cli.database_url.as_deref())?, args).await,
            Some(Command::CampaignRace(args)) => {
                campaign_race::campaign_race(need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Holds(args)) => holds::holds(need_db(cli.database_url.as_deref())?, args).await,
            Some(Command::FaultCampaign(args)) => {
                fault_campaign::fault_campaign(need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::LogScale(args)) => log_scale::log_scale(need_db(cli.database_url.as_deref())?, args).await,
            Some(Command::Codes(args)) => codes::codes(need_db(cli.database_url.as_deref())?, args).await,
            Some(Command::Hostile(args)) => {
                hostile::hostile(&cli.url, addr, need_db(cli.database_url.as_deref())?, args).await
            }
            Some(Command::Propagation(args)) => {
                propagation::run(&cli.url, need_db(cli.database_url.as_deref())?, args).await?;
                Ok(true)
            }
        }
    })?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

fn need_db(url: Option<&str>) -> anyhow::Result<&str> {
    url.context("set DATABASE_URL (or --database-url): this command reads or writes the service's database")
}

/// The address of `url`, refused unless it is on this machine.
fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").context("--url must start with http://")?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host_port}"))?
        .next()
        .context("no address")?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: loadgen only sends traffic to this machine");
    }
    Ok(addr)
}

async fn bench(url: &str, targets: &[SocketAddr], database_url: Option<&str>, args: BenchArgs) -> anyhow::Result<bool> {
    let mix = Arc::new(Mix::build(need_db(database_url)?, &args.mix, args.seed).await?);
    mix.wait_served(&client::ServiceClient::new(url)).await?;
    let phases: Vec<Phase> = if !args.phases.is_empty() {
        args.phases.iter().map(|spec| load::parse_phase(spec, args.concurrency)).collect::<Result<_, _>>()?
    } else if let Some(rate) = args.rate {
        vec![Phase {
            name: "open-loop".into(),
            shape: Shape::Open {
                rate,
                duration: Duration::from_secs_f64(args.duration),
                concurrency: args.concurrency,
            },
        }]
    } else {
        vec![Phase {
            name: "reference".into(),
            shape: Shape::Closed { requests: args.requests, concurrency: args.concurrency },
        }]
    };
    let mut results: Vec<PhaseResult> = Vec::new();
    let mut offset = 0;
    for phase in phases {
        let result = load::run_phase(targets.to_vec(), mix.clone(), phase, offset).await;
        offset += result.stats.total();
        print!("{}", report::results_block(&result));
        results.push(result);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(url, &args.mix, &results))
            .with_context(|| format!("write {}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(url, &args.mix, &results))
            .with_context(|| format!("write {}", path.display()))?;
        println!("HTML report: {}", path.display());
    }
    Ok(results.iter().all(report::passed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(loopback_addr("http://127.0.0.1:8080").is_ok());
        assert!(loopback_addr("http://localhost:8080/").is_ok());
        assert!(loopback_addr("http://[::1]:8080").is_ok());
        assert!(loopback_addr("http://10.0.0.1:8080").is_err());
        assert!(loopback_addr("https://127.0.0.1:8080").is_err());
    }
}
