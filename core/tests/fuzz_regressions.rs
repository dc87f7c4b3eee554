//! Inputs the fuzzers found (`fuzz/regressions/`) and their seeds (`fuzz/seeds/`), replayed on every test run with
//! the fuzz targets' own checks. `manifest_parse`: no panic, and what parses normalizes to a fixed point; its
//! inputs are the files directly in those directories. `journal_decode`: the checks of
//! `fuzz/fuzz_targets/journal_checks.rs`, on the files in their `journal/` subdirectories.

use std::fs;
use std::path::{Path, PathBuf};

use cafs_core::Manifest;
use cafs_core::journal::{self, Header, Made, MadeKind, Record, StoredRange};

#[path = "../fuzz/fuzz_targets/journal_checks.rs"]
mod journal_checks;

#[test]
fn fuzz_inputs_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue; // another target's inputs
            }
            let data = fs::read(&path).unwrap();
            count += 1;
            if let Ok(m) = Manifest::parse(&data) {
                let text = m.to_text();
                let again = Manifest::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: normalized text does not parse: {e}", path.display()));
                assert_eq!(again.to_text(), text, "{}", path.display());
                assert_eq!(again.pdh(), m.pdh(), "{}", path.display());
                // The stripped text (what the PDH names and the catalog stores) is a fixed point too.
                let stripped = m.to_stripped_text();
                let reparsed = Manifest::parse(stripped.as_bytes()).unwrap();
                assert_eq!(reparsed.to_stripped_text(), stripped, "{}", path.display());
                assert_eq!(reparsed.pdh(), m.pdh(), "{}", path.display());
            }
        }
    }
    assert!(count >= 3, "the seed inputs are present");
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The journal seeds: whole journals of this format that use every kind of record and the extremes of each
/// field, a torn one, and one that `Journal::open` refuses (a second header).
fn journal_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let header = |base_version, inos: &[(&[u8], u64)], next_ino| {
        Record::Header(Header {
            format: Header::FORMAT,
            ref_name: "job".into(),
            mount_point: b"/scratch/job".to_vec(),
            base_version,
            inos: inos.iter().map(|(p, i)| (p.to_vec(), *i)).collect(),
            next_ino,
        })
    };
    let meta = Made { perm: 0o644, uid: 1000, gid: 1000, mtime_ns: 1_700_000_000_000_000_000 };
    let make = |path: &[u8], ino, kind| Record::Make { path: path.to_vec(), ino, kind, meta: meta.clone() };
    let range = |at, len, offset| StoredRange { at, len, locator: "acbd18db4cc2f85cedef654fccc4a4d8+3".into(), offset };
    let every_kind = vec![
        header(7, &[(b"a", 2), (b"d/f", 3)], 4),
        make(b"d", 4, MadeKind::Dir),
        make(b"d/g", 5, MadeKind::File),
        make(b"d/l", 6, MadeKind::Symlink(b"../a".to_vec())),
        Record::Stored { path: b"d/g".to_vec(), ranges: vec![range(0, 3, 0), range(3, 2, 1)], mtime_ns: 5 },
        Record::SetAttr {
            path: b"d/g".to_vec(),
            size: Some(4),
            perm: Some(0o600),
            uid: Some(0),
            gid: Some(0),
            mtime_ns: Some(-1),
        },
        Record::SetAttr { path: b"a".to_vec(), size: None, perm: None, uid: None, gid: None, mtime_ns: None },
        Record::Rename { from: b"d/g".to_vec(), to: b"h".to_vec(), mode: 0 },
        Record::Rename { from: b"h".to_vec(), to: b"a".to_vec(), mode: 1 },
        Record::Rename { from: b"a".to_vec(), to: b"d/l".to_vec(), mode: 2 },
        Record::Committing { after: 3, version: 8, pdh: "d41d8cd98f00b204e9800998ecf8427e+0".into() },
        Record::Unlink { path: b"d/l".to_vec() },
        Record::Rmdir { path: b"d".to_vec() },
    ];
    let extremes = vec![
        header(u64::MAX, &[(b"", 1), (b"\xff\x00/\x80", u64::MAX)], u64::MAX),
        Record::Make {
            path: b"\xff\xfe \x01".to_vec(),
            ino: u64::MAX,
            kind: MadeKind::Symlink(vec![0xc3; 300]),
            meta: Made { perm: u32::MAX, uid: u32::MAX, gid: u32::MAX, mtime_ns: i64::MIN },
        },
        Record::Stored { path: Vec::new(), ranges: vec![range(u64::MAX, u64::MAX, u64::MAX); 20], mtime_ns: i64::MAX },
        Record::Committing { after: u64::MAX, version: u64::MAX, pdh: String::new() },
    ];
    let encoded = |records: &[Record]| {
        let mut out = Vec::new();
        for r in records {
            journal::encode(r, &mut out);
        }
        out
    };
    let whole = encoded(&every_kind);
    let last = encoded(&every_kind[every_kind.len() - 1..]).len();
    let mut two_headers = encoded(&every_kind[..2]);
    two_headers.extend(encoded(&[header(0, &[], 0)]));
    vec![
        ("header-only.journal", encoded(&[header(0, &[], 0)])),
        ("every-kind.journal", whole.clone()),
        ("torn-tail.journal", whole[..whole.len() - last / 2].to_vec()),
        ("extremes.journal", encoded(&extremes)),
        ("second-header.journal", two_headers),
    ]
}

/// The seeds on disk are what `journal_seeds` makes now: a change of the journal's encoding shows here, and the
/// seeds must follow it (`CAFS_WRITE_FUZZ_SEEDS=1 cargo test -p cafs-core --test fuzz_regressions` rewrites them).
#[test]
fn journal_seeds_are_current() {
    let dir = fuzz_dir().join("seeds/journal");
    let write = std::env::var_os("CAFS_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in journal_seeds() {
        let path = dir.join(name);
        if write {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &bytes).unwrap();
        }
        let on_disk = fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is not what the seed generator makes now (set CAFS_WRITE_FUZZ_SEEDS=1 to rewrite it)",
            path.display()
        );
    }
}

#[test]
fn journal_fuzz_inputs_replay_cleanly() {
    let mut count = 0;
    for dir in ["seeds/journal", "regressions/journal"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            journal_checks::check(&data);
            count += 1;
        }
    }
    assert!(count >= journal_seeds().len(), "the journal seeds are present");
}
