//! The public library API end to end: a directory tree on disk → blocks + manifest + catalog entry → the same
//! bytes, sizes and tree back.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use cafs::Manifest;
use cafs::catalog::{Catalog, CollectionRecord, Commit, RefName, SqliteCatalog};
use cafs::store::{BlockStore, LocalDirStore};
use cafs::transfer::{ImportOptions, TransferError, export, import_dir};
use cafs_tests::snapshot;

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a b/c:d/deep")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::create_dir_all(root.join("nested/empty")).unwrap();
    fs::write(root.join("hello.txt"), b"hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("a b/back\\slash"), b"x").unwrap();
    fs::write(root.join("a b/c:d/deep/tab\tname"), b"tabbed").unwrap();
    fs::write(root.join("é ü"), "unicode".as_bytes()).unwrap();
    fs::write(root.join("odd\u{1}byte"), b"control").unwrap();
    // Larger than several blocks at the small block size used below, and not a multiple of it.
    let big: Vec<u8> = (0..1_000_003u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    for i in 0..200 {
        fs::write(root.join(format!("nested/small{i:03}")), format!("small file {i}\n")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_to_collection_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_tree(&src);
    let store = Arc::new(LocalDirStore::open(tmp.path().join("state/blocks")).unwrap());
    let catalog = SqliteCatalog::open(tmp.path().join("state/catalog.sqlite")).unwrap();

    let opts = ImportOptions { block_size: 256 << 10, max_in_flight: 2 };
    let manifest = import_dir(&src, store.clone(), opts.clone()).await.unwrap();
    // Small files are packed: 200 small files and the rest take a handful of blocks, not hundreds.
    assert!(manifest.blocks().len() <= 6, "{} blocks", manifest.blocks().len());
    for loc in manifest.blocks() {
        assert!(store.exists(loc).await.unwrap(), "block {loc} was uploaded");
    }

    let record = CollectionRecord::new(&manifest).unwrap();
    let name = RefName::new("roundtrip").unwrap();
    let commit = Commit {
        name: name.clone(),
        expected: None,
        record: record.clone(),
        sidecar: b"{}".to_vec(),
        committer: "test".into(),
        message: "import".into(),
        writer: None,
    };
    let v = catalog.commit(&commit).await.unwrap();
    assert_eq!(v.pdh, record.pdh());

    // Back out through the catalog, as a reader on another day would.
    let head = catalog.head(&name).await.unwrap().unwrap();
    let stored = catalog.get_collection(&head.pdh).await.unwrap().unwrap();
    let back = Manifest::parse(stored.manifest_text().as_bytes()).unwrap();
    assert_eq!(back.pdh(), head.pdh);
    export(&back, store.as_ref(), &dst).await.unwrap();
    assert_eq!(snapshot(&dst), snapshot(&src));

    // Importing the same tree again gives the same collection.
    let again = import_dir(&src, store.clone(), opts).await.unwrap();
    assert_eq!(again.pdh(), record.pdh());
}

#[tokio::test]
async fn symlinks_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(tmp.path().join("blocks")).unwrap());
    let e = import_dir(&src, store, ImportOptions::default()).await.unwrap_err();
    assert!(matches!(&e, TransferError::Unsupported { path, .. } if path.ends_with("link")), "{e}");
}

#[tokio::test]
async fn export_fails_loudly_on_a_missing_block() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    let store = Arc::new(LocalDirStore::open(tmp.path().join("blocks")).unwrap());
    let m = import_dir(&src, store.clone(), ImportOptions::default()).await.unwrap();
    fs::remove_file(store.block_path(&m.blocks()[0])).unwrap();
    let e = export(&m, store.as_ref(), &tmp.path().join("dst")).await.unwrap_err();
    assert!(matches!(e, TransferError::Store(cafs::store::StoreError::NotFound(_))), "{e}");
}

/// Counts `get` calls on the store it wraps.
#[derive(Debug)]
struct CountingStore {
    inner: LocalDirStore,
    gets: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl BlockStore for CountingStore {
    async fn put(&self, block: &cafs::store::Block) -> Result<(), cafs::store::StoreError> {
        self.inner.put(block).await
    }
    async fn get(&self, locator: &cafs::Locator) -> Result<bytes::Bytes, cafs::store::StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(locator).await
    }
    async fn get_range(&self, l: &cafs::Locator, o: u64, n: u64) -> Result<bytes::Bytes, cafs::store::StoreError> {
        self.inner.get_range(l, o, n).await
    }
    async fn exists(&self, locator: &cafs::Locator) -> Result<bool, cafs::store::StoreError> {
        self.inner.exists(locator).await
    }
}

#[tokio::test]
async fn export_fetches_each_block_once_for_interleaved_pieces() {
    use cafs::manifest::Segment;
    use cafs::store::Block;
    let tmp = tempfile::tempdir().unwrap();
    let store = CountingStore { inner: LocalDirStore::open(tmp.path().join("blocks")).unwrap(), gets: 0.into() };
    let (a, b) = (Block::new(vec![b'a'; 1 << 20]).unwrap(), Block::new(vec![b'b'; 1 << 20]).unwrap());
    store.put(&a).await.unwrap();
    store.put(&b).await.unwrap();
    let mut m = Manifest::new();
    let (ia, ib) = (m.add_block(a.locator().clone()), m.add_block(b.locator().clone()));
    let f = m.root_mut().file(b"interleaved").unwrap();
    for i in 0..100u64 {
        f.push(Segment { block: if i % 2 == 0 { ia } else { ib }, offset: i, len: 1 });
    }
    export(&m, &store, &tmp.path().join("out")).await.unwrap();
    let expected: Vec<u8> = (0..100).map(|i| if i % 2 == 0 { b'a' } else { b'b' }).collect();
    assert_eq!(fs::read(tmp.path().join("out/interleaved")).unwrap(), expected);
    assert_eq!(store.gets.load(std::sync::atomic::Ordering::Relaxed), 2, "each block fetched once");
}

#[tokio::test]
async fn bad_options_and_unstorable_trees_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(tmp.path().join("blocks")).unwrap());
    for opts in [
        ImportOptions { max_in_flight: 0, ..Default::default() },
        ImportOptions { block_size: 0, ..Default::default() },
        ImportOptions { block_size: (64 << 20) + 1, ..Default::default() },
    ] {
        let e = import_dir(&src, store.clone(), opts).await.unwrap_err();
        assert!(matches!(e, TransferError::InvalidOptions(_)), "{e}");
    }

    let fifo = src.join("pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let e = import_dir(&src, store.clone(), ImportOptions::default()).await.unwrap_err();
    assert!(matches!(&e, TransferError::Unsupported { path, .. } if path == &fifo), "{e}");
    fs::remove_file(&fifo).unwrap();

    let mut deep = src.clone();
    for _ in 0..=cafs::manifest::MAX_DEPTH {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let e = import_dir(&src, store.clone(), ImportOptions::default()).await.unwrap_err();
    assert!(matches!(e, TransferError::TooDeep { .. }), "{e}");
}
