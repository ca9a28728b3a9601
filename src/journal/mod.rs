//! The local durable journal: opaque records appended and fsync'd (one fsync per group of
//! concurrent appends) before anyone hears yes. What the records mean is the caller's
//! business (`domain::event`); the journal only frames, syncs and reads them back.
//!
//! On disk, `DATA_DIR/journal/` holds numbered segment files of CRC-framed records
//! ([`frame`]) and a `checkpoint`: the position up to which the reader has confirmed every
//! record as handled (shipped to PostgreSQL, or set aside). A record after the checkpoint may
//! have been handled already (a crash between handling and checkpoint), so handling must be
//! idempotent.
//!
//! The disk is shared by records somebody waits for (uses, holds, releases) and spare ones
//! (validation rows that did not fit in memory, [`Journal::append_spare`]): spare records are
//! written only while the filesystem keeps `journal.reserved_bytes` free beyond them, and on a
//! full disk they give way, counted as dropped. Segments are an eighth of the filesystem (1 to
//! 64 MiB), so that a small `DATA_DIR` still frees space segment by segment as it ships.

mod checkpoint;
pub mod frame;
pub mod marks;
pub mod rejected;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot};

use metrics::Counter;

use crate::journal::checkpoint::Checkpoint;
use crate::journal::frame::Tail;
use crate::metrics::JournalMetrics;

/// A new segment is started once the current one passes an eighth of the filesystem, within
/// these bounds.
const SEGMENT_BYTES: std::ops::RangeInclusive<u64> = (1 << 20)..=(64 << 20);
/// Appends waiting for the writer; past this, `append` waits and `append_spare` refuses.
const QUEUE: usize = 16_384;
const SEGMENT_SUFFIX: &str = ".seg";
/// Below this much free space beyond the reserve, spare records count as refused.
const SPARE_ROOM: u64 = 64 << 10;

/// A failure of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "journal segment {segment} is damaged at byte {offset}; it is not the last segment, so this is not a torn write: inspect {dir}"
    )]
    Corrupt { segment: u64, offset: u64, dir: PathBuf },
    #[error("journal checkpoint in {dir} cannot be read: {text:?}")]
    BadCheckpoint { dir: PathBuf, text: String },
    #[error("the journal could not write this record; retry shortly")]
    WriteFailed,
    #[error("the journal writer has stopped after an I/O error it could not undo")]
    Stopped,
}

/// A place in the journal: a segment number and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    /// One number per record, unique for the life of a journal directory.
    pub fn as_i64(self) -> i64 {
        ((self.segment << 40) | self.offset) as i64
    }
}

struct Append {
    frame: Vec<u8>,
    ack: Option<oneshot::Sender<Result<(), JournalError>>>,
    /// A spare record's counters: nobody waits for it, and a full disk drops it.
    spare: Option<SpareCounters>,
}

/// What a spare record counts once the writer has written or dropped it.
#[derive(Debug, Clone)]
pub struct SpareCounters {
    pub written: Counter,
    pub dropped: Counter,
}

/// State shared by the writer, the appenders and the reader.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// End of the last fsync'd write.
    durable: Mutex<Position>,
    /// Records appended and not yet confirmed by the reader.
    pending: AtomicI64,
    /// Bytes of frames handed to the writer and not yet written (or refused).
    queued_bytes: AtomicU64,
    /// Bytes written and not yet confirmed by the reader.
    unshipped_bytes: AtomicU64,
    /// The last write failed (and was cut back off); cleared by the next good write.
    failing: AtomicBool,
    /// That failure was a full disk.
    full: AtomicBool,
    /// A failed write could not be cut back off: nothing more is accepted.
    stopped: AtomicBool,
    /// Free bytes kept for records somebody waits for (`journal.reserved_bytes`).
    reserved: u64,
    /// Free bytes beyond the reserve when last measured: what spare records may take.
    spare: AtomicU64,
    appended: Notify,
    /// Where the reader's checkpoint is, and a wake-up each time it moves.
    shipped: Mutex<Position>,
    shipped_moved: Notify,
}

impl Shared {
    /// Measures the filesystem's free space again (kept as it was if it cannot be measured).
    fn measure_space(&self) {
        if let Ok(space) = statvfs(&self.dir) {
            let free = space.f_bavail.saturating_mul(space.f_frsize);
            self.spare.store(free.saturating_sub(self.reserved), Ordering::Relaxed);
        }
    }
}

/// The append side: cheap to clone, shared by request handlers.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Append>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Append")
    }
}

/// The read side, owned by the shipper.
#[derive(Debug)]
pub struct JournalReader {
    shared: Arc<Shared>,
    checkpoint: Position,
    checkpoint_file: Checkpoint,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`: drops a torn tail left by a crash,
    /// counts what is not yet shipped, and starts the writer on a fresh segment. Spare records
    /// leave `reserved` bytes of the filesystem free.
    pub fn open(dir: &Path, reserved: u64, metrics: JournalMetrics) -> Result<(Journal, JournalReader), JournalError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let (checkpoint_file, checkpoint) = Checkpoint::open(dir)?;
        let segments = list_segments(dir)?;
        let mut pending = 0i64;
        let mut unshipped_bytes = 0u64;
        for (idx, &segment) in segments.iter().enumerate() {
            if segment < checkpoint.segment {
                continue;
            }
            let path = segment_path(dir, segment);
            let bytes = fs::read(&path).map_err(|source| io_error(&path, source))?;
            let (frames, end, tail) = frame::scan(&bytes);
            if tail != Tail::Clean {
                if idx + 1 != segments.len() {
                    return Err(JournalError::Corrupt { segment, offset: end as u64, dir: dir.to_owned() });
                }
                tracing::warn!(segment, dropped_bytes = bytes.len() - end, ?tail, "dropping the journal's torn tail");
                let file = OpenOptions::new().write(true).open(&path).map_err(|source| io_error(&path, source))?;
                file.set_len(end as u64).and_then(|()| file.sync_all()).map_err(|source| io_error(&path, source))?;
            }
            let start = if segment == checkpoint.segment { checkpoint.offset as usize } else { 0 };
            pending += frames.iter().filter(|f| f.offset >= start).count() as i64;
            unshipped_bytes += end.saturating_sub(start) as u64;
        }
        // Never a segment number used before (positions are unique for the life of the
        // directory: PostgreSQL keeps how far it has shipped by them).
        let next = segments.last().map_or(1, |last| last + 1).max(checkpoint.segment + 1);
        let file = create_segment(dir, next)?;
        let space = statvfs(dir).map_err(|source| io_error(dir, source))?;
        let segment_bytes = (space.f_blocks * space.f_frsize / 8).clamp(*SEGMENT_BYTES.start(), *SEGMENT_BYTES.end());
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            durable: Mutex::new(Position { segment: next, offset: 0 }),
            pending: AtomicI64::new(pending),
            queued_bytes: AtomicU64::new(0),
            unshipped_bytes: AtomicU64::new(unshipped_bytes),
            failing: AtomicBool::new(false),
            full: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            reserved,
            spare: AtomicU64::new(0),
            appended: Notify::new(),
            shipped: Mutex::new(checkpoint),
            shipped_moved: Notify::new(),
        });
        shared.measure_space();
        if shared.spare.load(Ordering::Relaxed) == 0 {
            tracing::warn!(dir = %dir.display(), reserved, "the journal's disk has no more free space than journal.reserved_bytes: validation rows will not spill to it");
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer { shared: shared.clone(), rx, file, segment: next, len: 0, segment_bytes, metrics };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| io_error(dir, source))?;
        Ok((Journal { tx, shared: shared.clone() }, JournalReader { shared, checkpoint, checkpoint_file }))
    }

    /// Appends a record and returns once it is on disk (fsync'd).
    pub async fn append(&self, payload: &[u8]) -> Result<(), JournalError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(JournalError::Stopped);
        }
        let (ack, done) = oneshot::channel();
        let append = Append { frame: framed(payload), ack: Some(ack), spare: None };
        let bytes = append.frame.len() as u64;
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(append).await.is_err() {
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(JournalError::Stopped);
        }
        match done.await {
            Ok(result) => result,
            Err(_) => Err(JournalError::Stopped),
        }
    }

    /// Appends a spare record without waiting for it, in the next group commit: one the
    /// service can do without (a validation row). False, and nothing counted, if the journal
    /// is stopped, its queue is full, or the record would eat into the reserved disk; once
    /// handed over, the writer counts it written, or dropped if the disk fills.
    pub(crate) fn append_spare(&self, payload: &[u8], counters: &SpareCounters) -> bool {
        if self.shared.stopped.load(Ordering::Acquire) {
            return false;
        }
        let append = Append { frame: framed(payload), ack: None, spare: Some(counters.clone()) };
        let bytes = append.frame.len() as u64;
        let queued = self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let sent = queued <= self.shared.spare.load(Ordering::Relaxed) && self.tx.try_send(append).is_ok();
        if !sent {
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        sent
    }

    /// Whether spare records are refused for the reserve: the filesystem has less than
    /// `journal.reserved_bytes` free beyond what is queued and a little room (measured now).
    pub(crate) fn in_reserve(&self) -> bool {
        self.shared.measure_space();
        self.shared.spare.load(Ordering::Relaxed) < self.shared.queued_bytes.load(Ordering::Relaxed) + SPARE_ROOM
    }

    /// Records appended and not yet confirmed by the reader.
    pub fn backlog(&self) -> u64 {
        u64::try_from(self.shared.pending.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Where the journal is durable to now: every record acknowledged so far lies before it.
    pub(crate) fn durable_end(&self) -> Position {
        *self.shared.durable.lock().expect("journal position")
    }

    /// Bytes appended and not yet confirmed by the reader: what the journal holds, or is
    /// about to hold, on disk for PostgreSQL.
    pub(crate) fn unshipped_bytes(&self) -> u64 {
        self.shared.unshipped_bytes.load(Ordering::Relaxed) + self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Whether the reader has confirmed (shipped) every record before `end`.
    pub(crate) fn shipped_to(&self, end: Position) -> bool {
        *self.shared.shipped.lock().expect("journal position") >= end || self.backlog() == 0
    }

    /// Waits (at most `within`) until everything durable now has been confirmed by the reader.
    pub(crate) async fn wait_shipped(&self, within: std::time::Duration) {
        let target = self.durable_end();
        let wait = async {
            loop {
                let moved = self.shared.shipped_moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.shipped_to(target) {
                    return;
                }
                moved.await;
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
    }

    /// Whether the last write failed for a full disk.
    pub(crate) fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Acquire)
    }

    /// Whether the last write succeeded and the writer is accepting records.
    pub(crate) fn is_healthy(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire) && !self.shared.failing.load(Ordering::Acquire)
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + frame::HEADER_LEN);
    frame::encode(payload, &mut out);
    out
}

/// Owns the current segment file; runs on its own thread because write and fsync block.
struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Append>,
    file: File,
    segment: u64,
    len: u64,
    segment_bytes: u64,
    metrics: JournalMetrics,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            // Group commit: everything that queued up during the last fsync shares this one.
            while batch.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            frames_of(&batch, &mut buf);
            let queued = buf.len() as u64;
            let mut written = self.write(&buf, batch.len());
            if matches!(&written, Err(Failure::CutBack(err)) if err.is_disk_full())
                && batch.iter().any(|a| a.spare.is_some())
            {
                // The disk is full: spare records give way to those somebody waits for.
                batch.retain(|append| match &append.spare {
                    Some(counters) => {
                        counters.dropped.increment(1);
                        false
                    }
                    None => true,
                });
                frames_of(&batch, &mut buf);
                if !batch.is_empty() {
                    written = self.write(&buf, batch.len());
                }
            }
            // Written or refused, the batch is no longer on its way.
            self.shared.queued_bytes.fetch_sub(queued, Ordering::Relaxed);
            self.shared.measure_space();
            let full = matches!(&written, Err(Failure::CutBack(err) | Failure::Stuck(err)) if err.is_disk_full());
            self.shared.full.store(full, Ordering::Release);
            match &written {
                Ok(()) => self.shared.failing.store(false, Ordering::Release),
                Err(Failure::CutBack(err)) => {
                    // Nothing of the batch is on disk: its appenders hear no, the next batch
                    // tries again (a full disk or a passing EIO need not stop the service).
                    tracing::error!(error = %err, records = batch.len(), "journal write failed; the batch was refused");
                    self.shared.failing.store(true, Ordering::Release);
                }
                Err(Failure::Stuck(err)) => {
                    tracing::error!(error = %err, "journal write failed and could not be undone; refusing further appends");
                    self.shared.stopped.store(true, Ordering::Release);
                }
            }
            for append in batch.drain(..) {
                if let Some(counters) = append.spare {
                    match &written {
                        Ok(()) => counters.written.increment(1),
                        Err(_) => counters.dropped.increment(1),
                    }
                }
                if let Some(ack) = append.ack {
                    let result = match &written {
                        Ok(()) => Ok(()),
                        Err(Failure::CutBack(_)) => Err(JournalError::WriteFailed),
                        Err(Failure::Stuck(_)) => Err(JournalError::Stopped),
                    };
                    let _ = ack.send(result);
                }
            }
            if self.shared.stopped.load(Ordering::Acquire) {
                // Refuse everything still queued, then stop.
                self.rx.close();
                while let Ok(append) = self.rx.try_recv() {
                    self.shared.queued_bytes.fetch_sub(append.frame.len() as u64, Ordering::Relaxed);
                    if let Some(counters) = append.spare {
                        counters.dropped.increment(1);
                    }
                    if let Some(ack) = append.ack {
                        let _ = ack.send(Err(JournalError::Stopped));
                    }
                }
                return;
            }
        }
    }

    fn write(&mut self, buf: &[u8], n_records: usize) -> Result<(), Failure> {
        if self.len > 0 && self.len + buf.len() as u64 > self.segment_bytes {
            self.next_segment().map_err(Failure::CutBack)?;
        }
        let started = Instant::now();
        let path = segment_path(&self.shared.dir, self.segment);
        if let Err(source) = self.file.write_all(buf).and_then(|()| self.file.sync_data()) {
            // Take back whatever part of the batch reached the file, so that no half-frame
            // is ever followed by later frames; if even that fails, the writer stops.
            let err = io_error(&path, source);
            return match self.file.set_len(self.len).and_then(|()| self.file.sync_data()) {
                Ok(()) => {
                    if err.is_disk_full() {
                        self.start_segment_for_space();
                    }
                    Err(Failure::CutBack(err))
                }
                Err(_) => Err(Failure::Stuck(err)),
            };
        }
        self.metrics.fsync_seconds.record(started.elapsed().as_secs_f64());
        self.metrics.bytes.increment(buf.len() as u64);
        self.len += buf.len() as u64;
        self.shared.pending.fetch_add(n_records as i64, Ordering::Relaxed);
        self.shared.unshipped_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        *self.shared.durable.lock().expect("journal position") = Position { segment: self.segment, offset: self.len };
        self.shared.appended.notify_one();
        Ok(())
    }

    /// On a full disk, moves on to a new (empty) segment, so that the reader can delete the
    /// current one once it has shipped it: what frees the disk must not wait for a write that
    /// needs the space first.
    fn start_segment_for_space(&mut self) {
        if self.len > 0 {
            let _ = self.next_segment();
        }
    }

    /// Moves on to a new segment; one that cannot be created leaves the current one as it is.
    fn next_segment(&mut self) -> Result<(), JournalError> {
        self.file = create_segment(&self.shared.dir, self.segment + 1)?;
        self.segment += 1;
        self.len = 0;
        // Everything acknowledged lies before the new segment's start.
        *self.shared.durable.lock().expect("journal position") = Position { segment: self.segment, offset: 0 };
        self.shared.appended.notify_one();
        Ok(())
    }
}

/// Puts the frames of `batch` in `buf`, in order.
fn frames_of(batch: &[Append], buf: &mut Vec<u8>) {
    buf.clear();
    for append in batch {
        buf.extend_from_slice(&append.frame);
    }
}

/// How a write failed.
enum Failure {
    /// Nothing of the batch remains in the file.
    CutBack(JournalError),
    /// The file may hold part of the batch.
    Stuck(JournalError),
}

/// A record read back, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub payload: Vec<u8>,
}

impl JournalReader {
    /// Where shipping resumes: everything before it is confirmed in PostgreSQL.
    pub(crate) fn checkpoint(&self) -> Position {
        self.checkpoint
    }

    /// Durable records from `from` on, up to about `max_bytes`, and the position after them.
    pub fn read(&self, from: Position, max_bytes: usize) -> Result<(Vec<Entry>, Position), JournalError> {
        let durable = *self.shared.durable.lock().expect("journal position");
        let dir = &self.shared.dir;
        let mut entries = Vec::new();
        let mut at = from;
        let mut budget = max_bytes;
        for segment in list_segments(dir)?.into_iter().filter(|s| *s >= from.segment && *s <= durable.segment) {
            let start = if segment == from.segment { from.offset } else { 0 };
            let path = segment_path(dir, segment);
            let mut file = File::open(&path).map_err(|source| io_error(&path, source))?;
            let end = if segment == durable.segment {
                durable.offset
            } else {
                file.metadata().map_err(|source| io_error(&path, source))?.len()
            };
            let len = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX).min(budget + frame::MAX_PAYLOAD);
            let mut bytes = vec![0; len];
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|source| io_error(&path, source))?;
            let (frames, consumed, _) = frame::scan(&bytes);
            for found in frames {
                let position = Position { segment, offset: start + found.offset as u64 };
                budget = budget.saturating_sub(found.payload.len() + frame::HEADER_LEN);
                entries.push(Entry { position, payload: found.payload.to_vec() });
            }
            at = Position { segment, offset: start + consumed as u64 };
            if budget == 0 || (at.offset < end) {
                break;
            }
        }
        Ok((entries, at))
    }

    /// Records that `n` more records are handled and reading resumes at `next`:
    /// persists the checkpoint, then deletes the segments wholly before it.
    pub fn confirm(&mut self, next: Position, n: usize) -> Result<(), JournalError> {
        let shipped = self.bytes_between(self.checkpoint, next);
        self.checkpoint_file.write(next)?;
        self.checkpoint = next;
        self.shared.pending.fetch_sub(n as i64, Ordering::Relaxed);
        let left = self.shared.unshipped_bytes.load(Ordering::Relaxed);
        self.shared.unshipped_bytes.fetch_sub(shipped.min(left), Ordering::Relaxed);
        *self.shared.shipped.lock().expect("journal position") = next;
        self.shared.shipped_moved.notify_waiters();
        for segment in list_segments(&self.shared.dir)?.into_iter().filter(|s| *s < next.segment) {
            let path = segment_path(&self.shared.dir, segment);
            fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
        }
        self.shared.measure_space();
        Ok(())
    }

    /// Bytes from `from` to `to`, both in segments still on disk (a segment wholly passed
    /// counts its length; one already gone counts nothing).
    fn bytes_between(&self, from: Position, to: Position) -> u64 {
        if to <= from {
            return 0;
        }
        if to.segment == from.segment {
            return to.offset - from.offset;
        }
        let len = |segment| fs::metadata(segment_path(&self.shared.dir, segment)).map_or(0, |m| m.len());
        let first = len(from.segment).saturating_sub(from.offset);
        let middle: u64 = (from.segment + 1..to.segment).map(len).sum();
        first + middle + to.offset
    }

    /// Waits until something new is durable (or a moment has passed).
    pub async fn appended(&self) {
        self.shared.appended.notified().await;
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let name = entry.file_name();
        if let Some(number) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)).and_then(|n| n.parse().ok()) {
            segments.push(number);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// The filesystem `dir` is on: its size and free space.
fn statvfs(dir: &Path) -> io::Result<rustix::fs::StatVfs> {
    rustix::fs::statvfs(dir).map_err(io::Error::from)
}

fn create_segment(dir: &Path, segment: u64) -> Result<File, JournalError> {
    let path = segment_path(dir, segment);
    let file =
        OpenOptions::new().create_new(true).append(true).open(&path).map_err(|source| io_error(&path, source))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a created, renamed or removed file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| io_error(dir, source))
}

impl JournalError {
    /// Whether it is a full disk (or quota).
    fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

fn io_error(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::metrics::Metrics;

    fn record(n: u32) -> Vec<u8> {
        format!("record {n}").into_bytes()
    }

    fn open(dir: &Path) -> Result<(Journal, JournalReader), JournalError> {
        Journal::open(dir, 0, Metrics::new(&[]).journal)
    }

    fn uncounted() -> SpareCounters {
        SpareCounters { written: Counter::noop(), dropped: Counter::noop() }
    }

    fn temp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("journal-test-").tempdir().unwrap()
    }

    #[tokio::test]
    async fn survives_a_torn_tail_and_resumes_from_the_checkpoint() {
        let temp = temp();
        let dir = temp.path();
        let written: Vec<Vec<u8>> = (0..3).map(record).collect();
        let (journal, reader) = open(dir).unwrap();
        for r in &written {
            journal.append(r).await.unwrap();
        }
        assert_eq!(journal.backlog(), 3);
        let (entries, end) = reader.read(reader.checkpoint(), 1 << 20).unwrap();
        assert_eq!(entries.iter().map(|e| &e.payload).collect::<Vec<_>>(), written.iter().collect::<Vec<_>>());
        drop((journal, reader));

        // A crash mid-write: half a frame at the end of the last segment.
        let segment = segment_path(dir, end.segment);
        let mut half = Vec::new();
        frame::encode(br#"{"type":"release","half":"#, &mut half);
        half.truncate(half.len() / 2);
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&half).unwrap();

        let (journal, mut reader) = open(dir).unwrap();
        assert_eq!(fs::metadata(&segment).unwrap().len(), end.offset, "the torn tail is cut off");
        assert_eq!(journal.backlog(), 3, "nothing shipped yet");
        let (entries, next) = reader.read(reader.checkpoint(), 1 << 20).unwrap();
        assert_eq!(entries.len(), 3);
        // New appends go to a fresh segment and are read after the old ones.
        journal.append(&record(9)).await.unwrap();
        let (more, after) = reader.read(next, 1 << 20).unwrap();
        assert_eq!((more.len(), after.segment), (1, end.segment + 1));
        reader.confirm(after, 4).unwrap();
        assert_eq!(journal.backlog(), 0);
        assert!(!segment.exists(), "shipped segments are removed");
        drop((journal, reader));

        let (journal, reader) = open(dir).unwrap();
        assert_eq!(reader.checkpoint(), after);
        assert_eq!(reader.read(after, 1 << 20).unwrap().0.len(), 0, "nothing is shipped twice");
        assert_eq!(journal.backlog(), 0);
    }

    #[tokio::test]
    async fn unshipped_bytes_count_what_waits_for_postgres() {
        let temp = temp();
        let (journal, reader) = open(temp.path()).unwrap();
        assert_eq!(journal.unshipped_bytes(), 0);
        let framed_len = |n| framed(&record(n)).len() as u64;
        journal.append(&record(1)).await.unwrap();
        assert_eq!(journal.unshipped_bytes(), framed_len(1));
        // Handed to the writer and not yet written counts too.
        assert!(journal.append_spare(&record(2), &uncounted()));
        assert!(journal.unshipped_bytes() >= framed_len(1) + framed_len(2));
        journal.append(&record(3)).await.unwrap();
        assert_eq!(journal.unshipped_bytes(), framed_len(1) + framed_len(2) + framed_len(3));
        // A restart finds them on disk.
        drop((journal, reader));
        let (journal, mut reader) = open(temp.path()).unwrap();
        assert_eq!(journal.unshipped_bytes(), framed_len(1) + framed_len(2) + framed_len(3));
        journal.append(&record(4)).await.unwrap();
        let (entries, end) = reader.read(reader.checkpoint(), 1 << 20).unwrap();
        assert_eq!(entries.len(), 4);
        reader.confirm(end, entries.len()).unwrap();
        assert_eq!(journal.unshipped_bytes(), 0, "shipped, across two segments");
    }

    #[tokio::test]
    async fn spare_records_leave_the_reserve_alone_and_others_do_not_need_to() {
        let temp = temp();
        let (journal, _reader) = Journal::open(temp.path(), u64::MAX, Metrics::new(&[]).journal).unwrap();
        assert!(journal.in_reserve());
        assert!(!journal.append_spare(&record(1), &uncounted()), "no disk beyond the reserve");
        journal.append(&record(2)).await.expect("a use is written into the reserve");
        assert_eq!(journal.unshipped_bytes(), framed(&record(2)).len() as u64, "nothing left queued");
        drop(journal);
        let (journal, _reader) = open(temp.path()).unwrap();
        assert!(!journal.in_reserve());
        assert!(journal.append_spare(&record(3), &uncounted()));
    }

    #[tokio::test]
    async fn damage_in_an_older_segment_refuses_to_start() {
        let temp = temp();
        let dir = temp.path();
        let (journal, _reader) = open(dir).unwrap();
        journal.append(&record(1)).await.unwrap();
        drop((journal, _reader));
        let (journal, _reader) = open(dir).unwrap();
        journal.append(&record(2)).await.unwrap();
        drop((journal, _reader));
        let first = segment_path(dir, 1);
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        assert!(matches!(open(dir), Err(JournalError::Corrupt { segment: 1, .. })));
    }

    #[test]
    fn positions_are_unique_numbers() {
        let a = Position { segment: 1, offset: 0 }.as_i64();
        let b = Position { segment: 0, offset: 1 << 39 }.as_i64();
        let c = Position { segment: 2, offset: 5 }.as_i64();
        assert!(a != b && b != c && a < c);
    }
}
