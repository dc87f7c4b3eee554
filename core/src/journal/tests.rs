use super::*;

fn header(v: u64) -> Header {
    Header {
        format: Header::FORMAT,
        ref_name: "job".into(),
        mount_point: b"/scratch/job".to_vec(),
        base_version: v,
        inos: Vec::new(),
        next_ino: 0,
    }
}

fn make(name: &str) -> Record {
    Record::Make {
        path: name.as_bytes().to_vec(),
        ino: 100 + name.len() as u64,
        kind: MadeKind::File,
        meta: Made { perm: 0o644, uid: 1, gid: 2, mtime_ns: -5 },
    }
}

#[test]
fn records_survive_a_reopen_and_sync_makes_them_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal");
    let j = Journal::create(&path, &header(0)).unwrap();
    let stored = Record::Stored {
        path: b"d/f".to_vec(),
        ranges: vec![StoredRange { at: 0, len: 3, locator: "acbd18db4cc2f85cedef654fccc4a4d8+3".into(), offset: 0 }],
        mtime_ns: 7,
    };
    assert_eq!(j.append(&make("a")), 1);
    assert_eq!(j.append(&stored), 2);
    // Written at once (a killed cafsd leaves them in the page cache), durable only after sync.
    let (_, h, recs) = Journal::open(&path).unwrap().unwrap();
    assert_eq!((h, recs.len()), (header(0), 2));
    j.sync().unwrap();
    drop(j);
    let (j, h, recs) = Journal::open(&path).unwrap().unwrap();
    assert_eq!(h, header(0));
    assert_eq!(recs, vec![make("a"), stored]);
    // Appends go after what was there.
    j.append(&make("b"));
    j.sync().unwrap();
    assert_eq!(Journal::open(&path).unwrap().unwrap().2.len(), 3);
    assert!(Journal::open(&dir.path().join("none")).unwrap().is_none());
}

#[test]
fn a_torn_or_corrupt_tail_ends_the_log_and_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal");
    let j = Journal::create(&path, &header(3)).unwrap();
    for n in ["a", "b", "c"] {
        j.append(&make(n));
    }
    j.sync().unwrap();
    drop(j);
    let full = std::fs::read(&path).unwrap();
    // Every cut inside the last frame loses exactly that record.
    let last = {
        let mut v = Vec::new();
        encode(&make("c"), &mut v);
        v.len()
    };
    for cut in 1..last {
        std::fs::write(&path, &full[..full.len() - cut]).unwrap();
        let (j, _, recs) = Journal::open(&path).unwrap().unwrap();
        assert_eq!(recs, vec![make("a"), make("b")], "cut {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full.len() - last, "the tail is cut off");
        j.append(&make("d"));
        j.sync().unwrap();
        assert_eq!(Journal::open(&path).unwrap().unwrap().2, vec![make("a"), make("b"), make("d")]);
    }
    // A flipped byte in a payload fails the CRC: the log ends before that record.
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(Journal::open(&path).unwrap().unwrap().2, vec![make("a"), make("b")]);
    // A huge length is not trusted.
    let mut huge = full[..full.len() - last].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 12]);
    std::fs::write(&path, &huge).unwrap();
    assert_eq!(Journal::open(&path).unwrap().unwrap().2.len(), 2);
    // No header at all is an error, not an empty journal.
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(Journal::open(&path), Err(JournalError::Corrupt { .. })));
    let mut no_header = Vec::new();
    encode(&make("x"), &mut no_header);
    std::fs::write(&path, &no_header).unwrap();
    assert!(matches!(Journal::open(&path), Err(JournalError::Corrupt { .. })));
}

#[test]
fn a_checkpoint_keeps_only_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal");
    let j = Journal::create(&path, &header(0)).unwrap();
    j.append(&make("a"));
    let seq = j.append(&make("b"));
    j.append(&make("c"));
    let numbering = Numbering { inos: vec![(b"a".to_vec(), 7), (b"b".to_vec(), 3)], next: 9 };
    j.checkpoint(1, seq, numbering).unwrap();
    j.append(&make("d"));
    j.sync().unwrap();
    let (_, h, recs) = Journal::open(&path).unwrap().unwrap();
    assert_eq!((h.base_version, recs), (1, vec![make("c"), make("d")]));
    // The base's inode numbers, for a cafsd that takes over the live mount.
    assert_eq!((h.inos, h.next_ino), (vec![(b"a".to_vec(), 7), (b"b".to_vec(), 3)], 9));
    // A second checkpoint counts from the first.
    let seq = j.append(&make("e"));
    j.append(&make("f"));
    j.checkpoint(2, seq, Numbering::default()).unwrap();
    let (_, h, recs) = Journal::open(&path).unwrap().unwrap();
    assert_eq!((h.base_version, recs), (2, vec![make("f")]));
    assert_eq!((h.ref_name.as_str(), j.header().base_version), ("job", 2));
    j.remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn decode_never_panics_on_garbage() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in 0..2000usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let (recs, valid) = decode(&bytes);
        assert!(valid <= bytes.len());
        assert!(recs.len() <= len / 8 + 1);
    }
}

#[test]
fn journals_are_per_ref_and_mount_point() {
    let d = Path::new("/state/journal");
    let a = path_for(d, "job", Path::new("/scratch/a"));
    assert_eq!(a, path_for(d, "job", Path::new("/scratch/a")));
    assert_ne!(a, path_for(d, "job", Path::new("/scratch/b")));
    assert_ne!(a, path_for(d, "job2", Path::new("/scratch/a")));
    assert!(a.starts_with(d) && a.extension().unwrap() == "journal");
}

#[test]
fn rebase_starts_from_the_last_commit_that_landed() {
    let mark = |after, version, pdh: &str| Record::Committing { after, version, pdh: pdh.into() };
    let records = vec![make("a"), make("b"), mark(1, 1, "p1"), make("c"), mark(0, 2, "p2"), make("d")];
    let all = vec![make("a"), make("b"), make("c"), make("d")];
    let rebased = |head_version, covered| Rebased { records: all.clone(), head_version, covered };
    // Every record but the markers is replayed on the journal's own base, whatever landed.
    // Neither landed: the head is the base.
    assert_eq!(rebase(0, records.clone(), |_, _| false), rebased(0, 0));
    // The first landed: it covered "a" (b came after its snapshot).
    assert_eq!(rebase(0, records.clone(), |v, p| v == 1 && p == "p1"), rebased(1, 1));
    // The second landed (and so did the first): it covered a, b and c; only "d" is new.
    assert_eq!(rebase(0, records.clone(), |_, _| true), rebased(2, 3));
    // A marker whose hash differs did not land, whatever the version.
    assert_eq!(rebase(0, records, |v, p| v == 2 && p == "other").head_version, 0);
}
