//! Runs claimed batches in the background, a few at a time, and keeps their progress for
//! `GET /admin/batches/{id}` on this instance (PostgreSQL learns the count at the end: the
//! codes arrive in one transaction).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::db::Error;
use crate::db::batches::{self, ClaimError, Outcome, Source};
use crate::domain::coupon::{BatchId, CampaignId, Coupon};

/// Batches written at once by one instance: each holds a connection and a core while it
/// writes.
const CONCURRENT: usize = 2;

/// The batches this instance is writing.
#[derive(Debug)]
pub struct BatchJobs {
    slots: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<BatchId, Arc<AtomicU64>>>>,
}

/// A batch being written: its id, and its end.
#[derive(Debug)]
pub struct Started {
    pub id: BatchId,
    pub done: JoinHandle<Result<Outcome, Error>>,
}

impl Default for BatchJobs {
    fn default() -> BatchJobs {
        BatchJobs { slots: Arc::new(Semaphore::new(CONCURRENT)), running: Arc::default() }
    }
}

impl BatchJobs {
    /// Waits for a free slot, claims the batch and writes it in the background.
    pub async fn start(
        &self,
        pool: &PgPool,
        campaign: CampaignId,
        rule: &Coupon,
        uses_per_code: u32,
        source: Source,
    ) -> Result<Started, ClaimError> {
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let claimed = batches::claim(pool, campaign, rule, uses_per_code, &source).await?;
        let id = claimed.id;
        let produced = Arc::new(AtomicU64::new(0));
        self.running.lock().expect("batch jobs").insert(id, produced.clone());
        let running = self.running.clone();
        let done = tokio::spawn(async move {
            let outcome = claimed.write(&source, &produced).await;
            running.lock().expect("batch jobs").remove(&id);
            drop(slot);
            if let Err(err) = &outcome {
                tracing::warn!(batch = id, error = %err, "batch of codes failed");
            }
            outcome
        });
        Ok(Started { id, done })
    }

    /// Codes written so far, if this instance is writing the batch.
    pub fn produced(&self, id: BatchId) -> Option<u64> {
        self.running.lock().expect("batch jobs").get(&id).map(|p| p.load(Ordering::Relaxed))
    }
}
