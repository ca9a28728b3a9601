//! Records set aside: journal records their destination refused for good (a redemption of
//! a coupon deleted by SQL before it shipped, say). They are kept, one JSON line each, in
//! `DATA_DIR/rejected.jsonl` with the refusal, until an operator retries them (they go back
//! into the journal) after fixing the cause.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::journal::Position;

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAside {
    /// Where the record was in the journal.
    pub segment: u64,
    pub offset: u64,
    /// Why it was refused.
    pub reason: String,
    /// The record's payload, as text (journal records are JSON).
    pub record: String,
}

/// The set-aside file.
#[derive(Debug)]
pub struct Rejected {
    path: PathBuf,
    count: AtomicU64,
    /// Held while the file is appended to or emptied.
    write: Mutex<()>,
}

impl Rejected {
    /// Opens (without creating) `path` and counts what it holds.
    pub fn open(path: &Path) -> io::Result<Rejected> {
        let count = match File::open(path) {
            Ok(file) => BufReader::new(file).lines().map_while(Result::ok).filter(|l| !l.is_empty()).count(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err),
        };
        Ok(Rejected { path: path.to_owned(), count: AtomicU64::new(count as u64), write: Mutex::new(()) })
    }

    /// Sets a record aside, durably, before its journal position is passed over.
    pub fn add(&self, position: Position, payload: &[u8], reason: &str) -> io::Result<()> {
        let line = SetAside {
            segment: position.segment,
            offset: position.offset,
            reason: reason.to_owned(),
            record: String::from_utf8_lossy(payload).into_owned(),
        };
        let mut text = serde_json::to_string(&line).map_err(io::Error::other)?;
        text.push('\n');
        let _write = self.write.lock().expect("rejected file");
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records set aside and not yet retried.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether nothing is set aside.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record set aside.
    pub(crate) fn list(&self) -> io::Result<Vec<SetAside>> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        BufReader::new(file)
            .lines()
            .filter(|line| line.as_ref().is_ok_and(|l| !l.is_empty()))
            .map(|line| serde_json::from_str(&line?).map_err(io::Error::other))
            .collect()
    }

    /// Hands every record to `requeue` (which puts it back into the journal) and empties
    /// the file once all are requeued. A crash in between requeues some twice, which
    /// shipping tolerates.
    pub async fn retry<F, Fut>(&self, requeue: F) -> io::Result<usize>
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = io::Result<()>>,
    {
        let records = self.list()?;
        for record in &records {
            requeue(record.record.clone().into_bytes()).await?;
        }
        let _write = self.write.lock().expect("rejected file");
        // Lines added after the list was read stay in the file.
        let still = self.list()?;
        let kept: Vec<&SetAside> = still.iter().skip(records.len()).collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut file = File::create(&tmp)?;
        for line in &kept {
            writeln!(file, "{}", serde_json::to_string(line).map_err(io::Error::other)?)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.count.store(kept.len() as u64, Ordering::Relaxed);
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn records_are_kept_counted_and_retried() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("rejected.jsonl");
        let rejected = Rejected::open(&path).unwrap();
        assert!(rejected.is_empty());
        rejected.add(Position { segment: 1, offset: 8 }, br#"{"type":"redeemed"}"#, "foreign key").unwrap();
        rejected.add(Position { segment: 1, offset: 90 }, b"\xffnot json", "undecodable").unwrap();
        assert_eq!(Rejected::open(&path).unwrap().len(), 2, "counted again after a restart");
        let listed = rejected.list().unwrap();
        assert_eq!((listed[0].reason.as_str(), listed[0].offset), ("foreign key", 8));
        let requeued = Arc::new(Mutex::new(Vec::new()));
        let n = rejected
            .retry(|payload| {
                let requeued = requeued.clone();
                async move {
                    requeued.lock().unwrap().push(payload);
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!((n, rejected.len()), (2, 0));
        assert_eq!(requeued.lock().unwrap()[0], br#"{"type":"redeemed"}"#.to_vec());
        assert!(rejected.list().unwrap().is_empty());
    }
}
