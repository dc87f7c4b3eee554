//! The Arvados Python SDK as an independent oracle, both ways, on real block files:
//! trees the SDK writes are read by cafs with identical bytes; collections cafs writes are read by the SDK with
//! identical bytes; both agree on the normalized text and the PDH, for fixed and for random manifests.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use cafs::Manifest;
use cafs::locator::Locator;
use cafs::store::LocalDirStore;
use cafs::transfer::{ImportOptions, export, import_dir};
use cafs_tests::{sdk, snapshot};

/// Names with every kind of byte the manifest escapes, raw UTF-8, packed small files, an empty file, an empty
/// directory, and a file of more than 64 MiB (so it spans two blocks).
fn awkward_tree(root: &Path) {
    fs::create_dir_all(root.join("dir with spaces/colon:dir")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::write(root.join("hello.txt"), b"hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("a:b c\\d"), b"colon space backslash").unwrap();
    fs::write(root.join("tab\there"), b"tab").unwrap();
    fs::write(root.join("new\nline"), b"newline").unwrap();
    fs::write(root.join("ünï cødé ✓"), "utf-8".as_bytes()).unwrap();
    fs::write(root.join("del\u{7f}"), b"del").unwrap();
    fs::write(root.join("dir with spaces/colon:dir/inner file"), b"inner").unwrap();
    for i in 0..50 {
        fs::write(root.join(format!("dir with spaces/small {i:02}")), format!("small {i}\n")).unwrap();
    }
    let big: Vec<u8> = (0..(70u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    fs::write(root.join("big.bin"), big).unwrap();
}

const WORKED: &str = ". b1946ac92492d2347c6235b4d2611184+6 0:6:hello.txt\n\
./a\\040b acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:c.txt\n\
./e d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n";

#[tokio::test]
async fn worked_example_agrees_with_the_sdk() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a b")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("hello.txt"), b"hello\n").unwrap();
    fs::write(src.join("a b/c.txt"), b"foo").unwrap();

    let by_sdk = sdk::write_tree(&tmp.path().join("keep"), &src);
    assert_eq!(by_sdk.manifest, WORKED);
    assert_eq!(by_sdk.pdh, "3e799a37d292ec16cf8a1395a8e31a1a+153");

    let store = Arc::new(LocalDirStore::open(tmp.path().join("store")).unwrap());
    // One block per file here, as the SDK does for separately written files.
    let by_cafs = import_dir(&src.join("a b"), store.clone(), ImportOptions::default()).await.unwrap();
    assert_eq!(by_cafs.to_text(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:c.txt\n");
    let parsed = Manifest::parse(by_sdk.manifest.as_bytes()).unwrap();
    assert_eq!(parsed.to_text(), by_sdk.manifest);
    assert_eq!(parsed.pdh().to_string(), by_sdk.pdh);
    assert_eq!(by_sdk.manifest.len(), 153);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_sdk_writes_cafs_reads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    awkward_tree(&src);
    let keep = tmp.path().join("keep");
    let by_sdk = sdk::write_tree(&keep, &src);

    let m = Manifest::parse(by_sdk.manifest.as_bytes()).unwrap();
    assert_eq!(m.to_text(), by_sdk.manifest, "cafs normalizes the SDK's text to itself");
    assert_eq!(m.pdh().to_string(), by_sdk.pdh);
    assert!(m.blocks().iter().any(|l| l.size() == 64 << 20), "the big file fills a 64 MiB block");

    let store = LocalDirStore::open(tmp.path().join("store")).unwrap();
    sdk::import_sdk_blocks(&keep, &store).await;
    let out = tmp.path().join("out");
    export(&m, &store, &out).await.unwrap();
    assert_eq!(snapshot(&out), snapshot(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cafs_writes_the_sdk_reads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    awkward_tree(&src);
    let store = Arc::new(LocalDirStore::open(tmp.path().join("store")).unwrap());
    let m = import_dir(&src, store.clone(), ImportOptions::default()).await.unwrap();
    assert!(m.blocks().len() >= 2, "70 MiB of data needs at least two 64 MiB blocks");

    let keep = tmp.path().join("keep");
    sdk::export_blocks_for_sdk(&store, &m, &keep);
    let out = tmp.path().join("out");
    let by_sdk = sdk::read_tree(&keep, &m.to_text(), &out);
    assert_eq!(snapshot(&out), snapshot(&src), "the SDK reads back every byte and every directory");
    assert_eq!(by_sdk.manifest, m.to_text(), "the SDK's normalized text of cafs's manifest is cafs's text");
    assert_eq!(by_sdk.pdh, m.pdh().to_string());
}

/// A small deterministic generator (xorshift), so a failure is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The SDK's `first_block` binary search (`arvados/_internal/streams.py`). It cannot find the block holding
/// `pos` when the search lands on an empty block that starts at `pos` and moves left; the SDK then drops the
/// file piece silently. Such inputs are not comparable: cafs keeps the bytes.
fn sdk_finds_first_block(sizes: &[u64], pos: u64) -> bool {
    let starts: Vec<u64> = sizes
        .iter()
        .scan(0, |acc, s| {
            let st = *acc;
            *acc += s;
            Some(st)
        })
        .collect();
    let (mut lo, mut hi) = (0usize, sizes.len());
    let mut i = (lo + hi) / 2;
    while !(pos >= starts[i] && pos < starts[i] + sizes[i]) {
        if lo == i {
            return false;
        }
        if pos > starts[i] {
            lo = i
        } else {
            hi = i
        }
        i = (lo + hi) / 2;
    }
    true
}

/// Whether an empty block lies strictly inside `pos..pos+len`: the SDK lists it in the normalized stream, cafs
/// does not (a file is exactly its byte ranges; see README and the pinned test below).
fn empty_block_inside(sizes: &[u64], pos: u64, len: u64) -> bool {
    let mut start = 0;
    sizes.iter().any(|&size| {
        let inside = size == 0 && pos < start && start < pos + len;
        start += size;
        inside
    })
}

/// A random, valid, usually non-normalized manifest: streams out of order and repeated, files in pieces across
/// tokens and streams, files in subdirectories by name, directory markers, empty and zero-length pieces, and
/// signed locators.
/// Also says whether it is comparable: the SDK reads it without dropping a piece (see [`sdk_finds_first_block`])
/// and no empty block lies inside a file's range (see [`empty_block_inside`]).
fn random_manifest(rng: &mut Rng) -> (String, bool) {
    let mut comparable = true;
    // Directory names and file names are disjoint, so files and directories never clash.
    let streams = [".", "./d", "./d/sub", "./sp\\040ace", "./ünï"];
    let files = ["f", "g\\072h", "b\\134s", "t\\011t", "é", "x\\040y", "z"];
    let mut text = String::new();
    for _ in 0..1 + rng.below(5) {
        text.push_str(rng.pick(&streams));
        let mut stream_len = 0;
        let mut sizes = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let size = rng.below(20);
            let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            let loc = Locator::of(&data);
            text.push(' ');
            text.push_str(&loc.to_string());
            if rng.below(4) == 0 {
                text.push_str(&format!("+A{:040x}@{:08x}", rng.next() as u128 * 7919, rng.next() as u32));
            }
            stream_len += size;
            sizes.push(size);
        }
        for _ in 0..1 + rng.below(5) {
            let pos = rng.below(stream_len + 1);
            let len = if rng.below(5) == 0 { 0 } else { rng.below(stream_len - pos + 1) };
            let name = match rng.below(10) {
                0 => "sub/\\056".to_string(),
                1 => format!("inner/{}", rng.pick(&files)),
                _ => rng.pick(&files).to_string(),
            };
            let (pos, len) = if name.ends_with("\\056") { (0, 0) } else { (pos, len) };
            if len > 0 && (!sdk_finds_first_block(&sizes, pos) || empty_block_inside(&sizes, pos, len)) {
                comparable = false;
            }
            text.push_str(&format!(" {pos}:{len}:{name}"));
        }
        text.push('\n');
    }
    (text, comparable)
}

#[test]
fn normalization_agrees_with_the_sdk_on_random_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (inputs, skipped): (Vec<String>, Vec<String>) = {
        let all: Vec<(String, bool)> = (0..400).map(|_| random_manifest(&mut rng)).collect();
        let (ok, bad): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, comparable)| *comparable);
        (ok.into_iter().map(|(t, _)| t).collect(), bad.into_iter().map(|(t, _)| t).collect())
    };
    assert!(inputs.len() >= 300, "only {} of 400 random manifests are comparable", inputs.len());
    let by_sdk = sdk::normalize(tmp.path(), &inputs);
    assert_eq!(by_sdk.len(), inputs.len());
    for (input, sdk) in inputs.iter().zip(&by_sdk) {
        let m = Manifest::parse(input.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{input}"));
        assert_eq!(m.to_text(), sdk.manifest, "normalized text differs for input:\n{input}");
        assert_eq!(m.pdh().to_string(), sdk.pdh, "PDH differs for input:\n{input}");
    }
    // Every input the SDK cannot read faithfully still parses in cafs, and keeps its bytes.
    for input in &skipped {
        Manifest::parse(input.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{input}"));
    }
}

/// The SDK bug that [`sdk_finds_first_block`] models, pinned: a piece starting where an empty block and a
/// non-empty one both start is dropped by the SDK, and kept by cafs.
#[test]
fn cafs_keeps_the_piece_the_sdk_drops_after_an_empty_block() {
    let tmp = tempfile::tempdir().unwrap();
    let input = ". 6d5d3fdf8befc654c1291d559b5f5a49+12 d41d8cd98f00b204e9800998ecf8427e+0 \
                 36ae4edfa3b3bbab48577364764809ff+5 12:1:f\n"
        .to_string();
    assert!(!sdk_finds_first_block(&[12, 0, 5], 12));
    let by_sdk = &sdk::normalize(tmp.path(), std::slice::from_ref(&input))[0];
    assert_eq!(by_sdk.manifest, ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:f\n", "the SDK drops the byte");
    let m = Manifest::parse(input.as_bytes()).unwrap();
    assert_eq!(m.to_text(), ". 36ae4edfa3b3bbab48577364764809ff+5 0:1:f\n");
}

/// The deliberate difference: an empty block strictly inside a file's range. The SDK keeps an empty piece for it
/// and lists the block; cafs treats a file as its byte ranges only, which keeps write → parse → write a fixed
/// point (the SDK's output is not, once signatures are stripped — the fuzzer found both cases).
#[test]
fn an_empty_block_inside_a_range_is_listed_by_the_sdk_not_by_cafs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = ". acbd18db4cc2f85cedef654fccc4a4d8+3 d41d8cd98f00b204e9800998ecf8427e+0 \
                 37b51d194a7513e45b56f6524f2d51f2+3 0:6:f\n"
        .to_string();
    assert!(empty_block_inside(&[3, 0, 3], 0, 6));
    let by_sdk = &sdk::normalize(tmp.path(), std::slice::from_ref(&input))[0];
    assert_eq!(by_sdk.manifest, input, "the SDK keeps the empty block in the stream");
    let m = Manifest::parse(input.as_bytes()).unwrap();
    assert_eq!(
        m.to_text(),
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 37b51d194a7513e45b56f6524f2d51f2+3 0:6:f\n",
        "cafs lists only blocks that carry bytes; the file's bytes are the same"
    );
}
