//! The nemesis: on a seeded schedule, episodes of one or two faults at once, each held for a
//! few seconds and then healed: an instance SIGKILLed (and started again on its `DATA_DIR`),
//! SIGSTOPped (and SIGCONTed), its link to PostgreSQL cut, stalled or slowed; PostgreSQL
//! restarted with `-m immediate`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::clients::now_us;
use super::fleet::{Instance, tool};
use super::proxy::LinkState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(usize),
    Pause(usize),
    Cut(usize),
    Stall(usize),
    Slow(usize, u64),
    RestartPostgres,
}

impl Fault {
    fn instance(self) -> Option<usize> {
        match self {
            Fault::Kill(i) | Fault::Pause(i) | Fault::Cut(i) | Fault::Stall(i) | Fault::Slow(i, _) => Some(i),
            Fault::RestartPostgres => None,
        }
    }
}

/// One episode, as recorded beside the requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Episode {
    pub(crate) faults: Vec<String>,
    pub(crate) start_us: i64,
    pub(crate) end_us: i64,
}

/// What the instances run from and on.
pub(crate) struct Bench {
    pub(crate) bin: PathBuf,
    pub(crate) database: String,
}

/// Runs episodes until `stop`; returns them.
pub(crate) async fn run(
    seed: u64,
    bench: Arc<Bench>,
    instances: Arc<Mutex<Vec<Instance>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Episode>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut episodes = Vec::new();
    let nodes = instances.lock().await.len();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut faults = vec![draw(&mut rng, nodes)];
        if rng.random_bool(0.25) {
            let second = draw(&mut rng, nodes);
            let clash = faults.iter().any(|f| {
                f.instance() == second.instance() || *f == Fault::RestartPostgres || second == Fault::RestartPostgres
            });
            if !clash {
                faults.push(second);
            }
        }
        let start_us = now_us();
        for fault in &faults {
            apply(*fault, &instances).await?;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..6_000))).await;
        for fault in &faults {
            heal(*fault, &bench, &instances).await?;
        }
        let episode = Episode { faults: faults.iter().map(|f| format!("{f:?}")).collect(), start_us, end_us: now_us() };
        println!("fault-campaign: {:?} for {} ms", episode.faults, (episode.end_us - episode.start_us) / 1000);
        episodes.push(episode);
    }
    Ok(episodes)
}

fn draw(rng: &mut ChaCha8Rng, nodes: usize) -> Fault {
    let i = rng.random_range(0..nodes);
    match rng.random_range(0..12) {
        0..=2 => Fault::Kill(i),
        3..=4 => Fault::Pause(i),
        5..=6 => Fault::Cut(i),
        7..=8 => Fault::Stall(i),
        9..=10 => Fault::Slow(i, rng.random_range(20..300)),
        _ => Fault::RestartPostgres,
    }
}

async fn apply(fault: Fault, instances: &Mutex<Vec<Instance>>) -> anyhow::Result<()> {
    let mut instances = instances.lock().await;
    match fault {
        Fault::Kill(i) => instances[i].kill(),
        Fault::Pause(i) => instances[i].pause(),
        Fault::Cut(i) => instances[i].link.set(LinkState::Cut),
        Fault::Stall(i) => instances[i].link.set(LinkState::Stalled),
        Fault::Slow(i, ms) => instances[i].link.set(LinkState::Slow(Duration::from_millis(ms))),
        Fault::RestartPostgres => {
            drop(instances);
            tokio::task::spawn_blocking(|| tool("pg", &["crash"])).await??;
        }
    }
    Ok(())
}

async fn heal(fault: Fault, bench: &Bench, instances: &Mutex<Vec<Instance>>) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(i) => restart(i, bench, instances).await,
        Fault::Pause(i) => {
            instances.lock().await[i].resume();
            Ok(())
        }
        Fault::Cut(i) | Fault::Stall(i) | Fault::Slow(i, _) => {
            instances.lock().await[i].heal_link();
            Ok(())
        }
        Fault::RestartPostgres => Ok(tokio::task::spawn_blocking(|| tool("pg", &["start"])).await??),
    }
}

/// Starts instance `i` again; a start can fail while PostgreSQL is still coming back.
pub(crate) async fn restart(i: usize, bench: &Bench, instances: &Mutex<Vec<Instance>>) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..10 {
        let mut guard = instances.lock().await;
        match guard[i].start(&bench.bin, &bench.database, Duration::from_secs(30)).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        drop(guard);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last.expect("ten attempts"))
}
