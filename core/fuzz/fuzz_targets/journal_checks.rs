//! The checks of the `journal_decode` fuzz target, shared with `fs-server/tests/fuzz_regressions.rs` so that the
//! replayed inputs go through exactly what the fuzzer ran.
//!
//! Each input is checked twice: as it is, and with the CRC of every frame its length fields delimit set right.
//! Random bytes almost never carry a right CRC, so only the second reaches the postcard decoding of payloads.

use std::path::PathBuf;

use cafs_core::journal::{self, Header, Journal, JournalError, MAX_RECORD, Record};

/// Checks `data` and its CRC-repaired form.
pub fn check(data: &[u8]) {
    check_decode(data);
    let repaired = repair_crcs(data);
    check_decode(&repaired);
    check_open(&repaired);
}

/// `data` with the CRC field of each frame that fits in it set to the CRC of its payload (frames are found by
/// their length fields, as `decode` finds them; a length over the limit ends the walk).
pub fn repair_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while at + 8 <= out.len() {
        let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        if len > MAX_RECORD || at + 8 + len > out.len() {
            break;
        }
        let crc = crc32fast::hash(&out[at + 8..at + 8 + len]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at += 8 + len;
    }
    out
}

fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        journal::encode(r, &mut out);
    }
    out
}

/// Where each decoded frame of `bytes` ends, for its first `count` frames (which `decode` accepted, so their
/// length fields are right).
fn frame_ends(bytes: &[u8], count: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        ends.push(at);
    }
    ends
}

pub fn check_decode(data: &[u8]) {
    let (records, valid) = journal::decode(data);
    assert!(valid <= data.len(), "the valid prefix ({valid}) is longer than the input ({})", data.len());
    let ends = frame_ends(data, records.len());
    assert_eq!(ends.last().copied().unwrap_or(0), valid, "the valid prefix ends where the last record does");

    // The valid prefix alone decodes to the same records: what follows it took no part.
    assert_eq!(journal::decode(&data[..valid]), (records.clone(), valid), "the valid prefix decodes differently");

    // A torn tail (a cut anywhere) loses exactly the records whose frames the cut reaches into: cuts just inside
    // the last record, in the middle, at a place the input picks, and past the valid prefix.
    let last_start = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
    let pick = data.first().map_or(0, |&b| b as usize * data.len() / 256);
    for cut in [last_start + 1, valid.saturating_sub(1), valid / 2, pick, valid + 1] {
        let cut = cut.min(data.len());
        let whole = ends.iter().take_while(|&&e| e <= cut).count();
        let expected = (records[..whole].to_vec(), whole.checked_sub(1).map_or(0, |i| ends[i]));
        assert_eq!(journal::decode(&data[..cut]), expected, "cut at {cut}");
    }

    // Re-encoding gives the canonical frames of the same records: they decode back whole, and are never longer
    // than the frames they came from (those may carry bytes after the payload's record, or longer varints).
    let encoded = encode_all(&records);
    assert_eq!(journal::decode(&encoded), (records.clone(), encoded.len()), "re-encoded records do not round-trip");
    assert!(encoded.len() <= valid, "re-encoding grew {valid} bytes to {}", encoded.len());

    // Whatever follows a valid journal is read as frames of its own, never changing the records before it.
    let mut joined = encoded.clone();
    joined.extend_from_slice(data);
    let (all, all_len) = journal::decode(&joined);
    assert_eq!(all_len, encoded.len() + valid, "bytes after a valid journal changed its length");
    assert_eq!(all[..records.len()], records[..], "bytes after a valid journal changed its records");
    assert_eq!(all[records.len()..], records[..], "a valid journal changed how the bytes after it decode");
}

/// A scratch file for `Journal::open`, on tmpfs when there is one (its fsyncs cost nothing), one per process.
fn scratch() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("cafs-journal-fuzz-{}.journal", std::process::id()))
}

/// `Journal::open` on `data` as a file agrees with `decode`, cuts the file to the valid prefix, and appends after
/// it.
pub fn check_open(data: &[u8]) {
    let path = scratch();
    std::fs::write(&path, data).unwrap();
    let (records, valid) = journal::decode(data);
    let expect_header = match records.first() {
        Some(Record::Header(h)) if h.format == Header::FORMAT => {
            (!records[1..].iter().any(|r| matches!(r, Record::Header(_)))).then_some(h.clone())
        }
        _ => None,
    };
    match (Journal::open(&path), expect_header) {
        (Ok(Some((j, header, rest))), Some(expected)) => {
            assert_eq!(header, expected);
            assert_eq!(rest, records[1..]);
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, valid, "the torn tail is cut off");
            let extra = Record::Unlink { path: b"fuzz".to_vec() };
            assert_eq!(j.append(&extra), rest.len() as u64 + 1);
            j.sync().unwrap();
            drop(j);
            let (_, again_header, again) = Journal::open(&path).unwrap().expect("the journal is there");
            assert_eq!(again_header, expected);
            assert_eq!(again[..rest.len()], rest[..]);
            assert_eq!(again[rest.len()..], [extra]);
        }
        (Err(JournalError::Corrupt { .. }), None) => {
            assert_eq!(std::fs::read(&path).unwrap(), data, "a refused journal is left as it was");
        }
        (got, expected) => panic!("Journal::open gave {got:?}; a journal with header {expected:?} was expected"),
    }
    std::fs::remove_file(&path).unwrap();
}
