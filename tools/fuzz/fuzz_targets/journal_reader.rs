//! The journal reader on arbitrary bytes (a damaged disk): never a panic, never a frame
//! whose checksum fails, and events decode or are refused, never misread.
#![no_main]

use coupon_engine::journal::frame::{self, HEADER_LEN, Tail};
use coupon_engine::domain::event::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (frames, end, tail) = frame::scan(data);
    assert!(end <= data.len());
    assert_eq!(tail == Tail::Clean, end == data.len());
    let mut expected_offset = 0;
    for found in &frames {
        assert_eq!(found.offset, expected_offset);
        let header = &data[found.offset..found.offset + HEADER_LEN];
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        assert_eq!(crc32fast::hash(found.payload), crc);
        expected_offset = found.offset + HEADER_LEN + found.payload.len();
        if let Ok(event) = Event::decode(found.payload) {
            // What decodes must encode back to a frame that scans to the same event.
            let mut again = Vec::new();
            frame::encode(&event.encode(), &mut again);
            let (reframed, _, _) = frame::scan(&again);
            assert_eq!(Event::decode(reframed[0].payload).ok(), Some(event));
        }
    }
    assert_eq!(expected_offset, end);
});
