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
