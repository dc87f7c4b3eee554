//! Makes the collection that `bench/bigdir.sh` mounts: one directory of many small files, committed as the ref
//! `big` into a state directory that cafsd can serve (a local block store and a SQLite catalog).
//!
//! `cargo bench -p cafs-core --bench bigdir -- STATE_DIR [FILES]` (default 1,000,000 files). Prints the
//! collection's hash and how long making it took.

use std::sync::Arc;
use std::time::Instant;

use cafs_core::catalog::{Catalog, RefName, SqliteCatalog};
use cafs_core::collection::{Collection, OpenWith, Source};
use cafs_core::fs::inode::ROOT;
use cafs_core::fs::{FsOptions, Setup};
use cafs_core::store::{BlockStore, LocalDirStore};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let state = std::path::PathBuf::from(args.first().expect("usage: bigdir STATE_DIR [FILES]"));
    let files: usize = args.get(1).map_or(1_000_000, |n| n.parse().expect("FILES is a number"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalDirStore::open(state.join("blocks")).unwrap());
    let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(state.join("catalog.sqlite")).unwrap());
    let start = Instant::now();
    let existing = rt.block_on(catalog.head(&RefName::new("big").unwrap())).unwrap();
    let pdh = rt.block_on(async {
        if let Some(v) = existing {
            eprintln!("the state directory holds the ref big already: not made again");
            return v.pdh;
        }
        let name = RefName::new("big").unwrap();
        let coll =
            Collection::open(OpenWith::new(catalog.clone(), store.clone()), Source::Scratch(name)).await.unwrap();
        let fs = coll.fs();
        let dir = fs.mkdir(ROOT, b"d", 0o755, 0, 0).unwrap().ino;
        tokio::task::block_in_place(|| {
            for i in 0..files {
                let ino = fs.create(dir, format!("file-{i:07}").as_bytes(), 0o644, 0, 0).unwrap().ino;
                fs.write(ino, 0, format!("{i}\n").as_bytes()).unwrap();
            }
        });
        coll.commit("bench", "a directory of many files").await.unwrap().pdh
    });
    eprintln!("made {files} files and committed them in {:.2} s", start.elapsed().as_secs_f64());
    // What opening it costs cafsd, part by part (the mount's time is measured by bench/bigdir.sh).
    rt.block_on(async {
        let start = Instant::now();
        let record = catalog.get_collection(&pdh).await.unwrap().unwrap();
        let fetched = start.elapsed();
        let m = cafs_core::manifest::Manifest::parse(record.manifest_text().as_bytes()).unwrap();
        let parsed = start.elapsed();
        let head = catalog.head(&RefName::new("big").unwrap()).await.unwrap().unwrap();
        let sidecar = catalog.get_sidecar(&head.sidecar).await.unwrap().unwrap_or_default();
        let t = Instant::now();
        let sc = cafs_core::fs::sidecar::Sidecar::from_bytes(&sidecar).unwrap();
        let sc_parsed = t.elapsed();
        drop(sc);
        let t = Instant::now();
        let setup = Setup {
            store: store.clone(),
            rt: tokio::runtime::Handle::current(),
            opts: FsOptions::default(),
            uid: 0,
            gid: 0,
        };
        let fs = cafs_core::fs::Filesystem::load(&m, &sidecar, setup).unwrap();
        let loaded = t.elapsed();
        drop(fs);
        eprintln!(
            "sidecar {} bytes parsed in {:.2} s; load (sidecar parse included) {:.2} s",
            sidecar.len(),
            sc_parsed.as_secs_f64(),
            loaded.as_secs_f64()
        );
        drop(m);
        let start = Instant::now() - parsed;
        let name = RefName::new("big").unwrap();
        let coll =
            Collection::open(OpenWith::new(catalog.clone(), store.clone()), Source::Scratch(name)).await.unwrap();
        let opened = start.elapsed() - parsed;
        eprintln!(
            "manifest {} bytes: fetched in {:.2} s, parsed in {:.2} s; the ref opened (fetch, parse, load) in {:.2} s",
            record.manifest_text().len(),
            fetched.as_secs_f64(),
            (parsed - fetched).as_secs_f64(),
            opened.as_secs_f64()
        );
        drop(coll);
    });
    println!("{pdh}");
}
