//! Where the shipper has confirmed the journal to, kept in place: a 64-byte file of two slots
//! written in turn, each `seq | segment | offset` (u64 LE) and a CRC-32 of them. A new
//! checkpoint needs no new file and no rename, so a full disk cannot stop the shipper from
//! moving on and deleting what it shipped (which is what frees the disk); a torn write spoils
//! only the slot being written, and the other one (one step older: its records are shipped
//! again, once each) is read instead.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::journal::{JournalError, Position, io_error, sync_dir};

const SLOT: usize = 32;
const FILE_LEN: u64 = 2 * SLOT as u64;

/// The checkpoint file, open for writing in place.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    path: PathBuf,
    file: File,
    seq: u64,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir` and reads where it is (the start when there is none). A
    /// checkpoint of the older text format, or none, is rewritten whole once, here.
    pub(crate) fn open(dir: &Path) -> Result<(Checkpoint, Position), JournalError> {
        let path = dir.join("checkpoint");
        let (seq, position) = match fs::read(&path) {
            Ok(bytes) if bytes.len() as u64 == FILE_LEN => {
                let newest = [slot(&bytes[..SLOT]), slot(&bytes[SLOT..])].into_iter().flatten().max_by_key(|s| s.0);
                newest.ok_or_else(|| JournalError::BadCheckpoint {
                    dir: dir.to_owned(),
                    text: "neither slot of the checkpoint is whole".into(),
                })?
            }
            Ok(bytes) => (0, legacy(dir, &bytes)?),
            Err(err) if err.kind() == io::ErrorKind::NotFound => (0, Position::default()),
            Err(source) => return Err(io_error(&path, source)),
        };
        let seq = if fs::metadata(&path).map(|m| m.len()).ok() == Some(FILE_LEN) {
            seq
        } else {
            write_whole(dir, &path, seq.max(1), position)?;
            seq.max(1)
        };
        let file = OpenOptions::new().write(true).open(&path).map_err(|source| io_error(&path, source))?;
        Ok((Checkpoint { path, file, seq }, position))
    }

    /// Records `position` in the slot not holding the newest one, and makes it durable.
    pub(crate) fn write(&mut self, position: Position) -> Result<(), JournalError> {
        let seq = self.seq + 1;
        let at = (seq % 2) * SLOT as u64;
        self.file
            .write_all_at(&encode(seq, position), at)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| io_error(&self.path, source))?;
        self.seq = seq;
        Ok(())
    }
}

fn encode(seq: u64, position: Position) -> [u8; SLOT] {
    let mut out = [0u8; SLOT];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&position.segment.to_le_bytes());
    out[16..24].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A whole slot's sequence and position.
fn slot(bytes: &[u8]) -> Option<(u64, Position)> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    (crc32fast::hash(&bytes[..24]) == crc && word(0) > 0)
        .then(|| (word(0), Position { segment: word(8), offset: word(16) }))
}

/// The older format: `segment offset` as text.
fn legacy(dir: &Path, bytes: &[u8]) -> Result<Position, JournalError> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
        _ => Err(JournalError::BadCheckpoint { dir: dir.to_owned(), text }),
    }
}

/// Writes the whole file beside it and renames it into place: only when there is none yet
/// (or an old one), at start.
fn write_whole(dir: &Path, path: &Path, seq: u64, position: Position) -> Result<(), JournalError> {
    let tmp = dir.join("checkpoint.tmp");
    let mut bytes = [0u8; FILE_LEN as usize];
    let at = (seq % 2) as usize * SLOT;
    bytes[at..at + SLOT].copy_from_slice(&encode(seq, position));
    let file = File::create(&tmp).map_err(|source| io_error(&tmp, source))?;
    file.write_all_at(&bytes, 0).and_then(|()| file.sync_all()).map_err(|source| io_error(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_error(path, source))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("checkpoint-test-").tempdir().unwrap()
    }

    #[test]
    fn moves_in_place_and_survives_a_torn_slot() {
        let temp = temp();
        let dir = temp.path();
        let (mut checkpoint, start) = Checkpoint::open(dir).unwrap();
        assert_eq!(start, Position::default());
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first_inode = inode(&dir.join("checkpoint"));
        for n in 1..=5 {
            checkpoint.write(Position { segment: n, offset: n * 10 }).unwrap();
        }
        assert_eq!(inode(&dir.join("checkpoint")), first_inode, "written in place, never renamed");
        drop(checkpoint);
        assert_eq!(Checkpoint::open(dir).unwrap().1, Position { segment: 5, offset: 50 });
        // A torn write of the newest slot: the one before it is read.
        let path = dir.join("checkpoint");
        let mut bytes = fs::read(&path).unwrap();
        // The start was seq 1, segments 1 to 5 seqs 2 to 6: the newest is in slot 6 % 2 = 0.
        bytes[3] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::open(dir).unwrap().1, Position { segment: 4, offset: 40 });
    }

    #[test]
    fn reads_the_older_text_format_and_rewrites_it() {
        let temp = temp();
        let dir = temp.path();
        fs::write(dir.join("checkpoint"), "7 1234\n").unwrap();
        let (mut checkpoint, position) = Checkpoint::open(dir).unwrap();
        assert_eq!(position, Position { segment: 7, offset: 1234 });
        assert_eq!(fs::metadata(dir.join("checkpoint")).unwrap().len(), FILE_LEN);
        checkpoint.write(Position { segment: 8, offset: 0 }).unwrap();
        assert_eq!(Checkpoint::open(dir).unwrap().1, Position { segment: 8, offset: 0 });
        fs::write(dir.join("checkpoint"), "garbage").unwrap();
        assert!(matches!(Checkpoint::open(dir), Err(JournalError::BadCheckpoint { .. })));
    }
}
