//! The journal's on-disk framing: `len (u32 LE) | crc32 (u32 LE) | payload`, and a reader
//! that stops at the first frame that is short or fails its checksum.

/// Bytes before each payload.
pub const HEADER_LEN: usize = 8;
/// No record comes near this; a larger length field means garbage, not a huge record.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Appends one frame holding `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One frame found by [`scan`]: where it starts and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub offset: usize,
    pub payload: &'a [u8],
}

/// What follows the last good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The buffer ends exactly after a frame.
    Clean,
    /// A frame starts but is cut short: a write interrupted by a crash.
    Torn,
    /// A complete frame whose checksum or length is wrong.
    Corrupt,
}

/// The good frames at the start of `buf`, the offset just after the last of them, and why
/// scanning stopped. A frame is never misread: anything after a bad one is ignored.
pub fn scan(buf: &[u8]) -> (Vec<Frame<'_>>, usize, Tail) {
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &buf[offset..];
        if rest.is_empty() {
            return (frames, offset, Tail::Clean);
        }
        if rest.len() < HEADER_LEN {
            return (frames, offset, Tail::Torn);
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return (frames, offset, Tail::Corrupt);
        }
        if rest.len() < HEADER_LEN + len {
            return (frames, offset, Tail::Torn);
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        if crc32fast::hash(payload) != crc {
            return (frames, offset, Tail::Corrupt);
        }
        frames.push(Frame { offset, payload });
        offset += HEADER_LEN + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for payload in payloads {
            encode(payload, &mut buf);
        }
        buf
    }

    #[test]
    fn reads_back_what_was_written() {
        let buf = journal_of(&[b"one", b"", b"three"]);
        let (frames, end, tail) = scan(&buf);
        let payloads: Vec<&[u8]> = frames.iter().map(|f| f.payload).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!((end, tail), (buf.len(), Tail::Clean));
        assert_eq!(frames[1].offset, HEADER_LEN + 3);
    }

    #[test]
    fn a_torn_last_frame_is_dropped_at_every_cut() {
        let buf = journal_of(&[b"first", b"second record"]);
        let first_end = HEADER_LEN + 5;
        for cut in first_end + 1..buf.len() {
            let (frames, end, tail) = scan(&buf[..cut]);
            assert_eq!((frames.len(), end, tail), (1, first_end, Tail::Torn), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_last_frame_is_never_misread() {
        let buf = journal_of(&[b"first", b"second record"]);
        let first_end = HEADER_LEN + 5;
        for idx in first_end..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[idx] ^= 1 << bit;
                let (frames, end, tail) = scan(&damaged);
                assert_eq!(frames.len(), 1, "byte {idx} bit {bit}");
                assert_eq!(end, first_end);
                assert_ne!(tail, Tail::Clean);
            }
        }
    }

    #[test]
    fn an_absurd_length_is_corrupt_not_a_reason_to_wait() {
        let mut buf = journal_of(&[b"ok"]);
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        let (frames, _, tail) = scan(&buf);
        assert_eq!((frames.len(), tail), (1, Tail::Corrupt));
    }
}
