//! The shared backends against real servers that the tests start on loopback ports: the S3 block store on
//! Garage and the PostgreSQL catalog, each passing the same conformance suite as the embedded backend (the
//! local block directory, SQLite), plus what only a remote store shows — a store that goes down and comes back,
//! bad credentials, a missing bucket — and the configuration file that selects them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cafs::catalog::{Catalog, PostgresCatalog};
use cafs::store::{Block, BlockStore, S3Store, StoreError};
use cafs_tests::servers::{Garage, Postgres};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

#[test]
fn s3_store_on_garage_passes_the_conformance_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::start(tmp.path(), 1);
    let store = Arc::new(S3Store::new(&garage.s3_config(0, "suite")).unwrap());
    let raw = store.clone();
    rt().block_on(cafs::store::conformance::run_all(store, move |loc, bytes| {
        let raw = raw.clone();
        async move { raw.put_raw(&loc, bytes).await.unwrap() }
    }));
}

#[test]
fn s3_store_errors_say_what_is_wrong_and_a_store_that_comes_back_works() {
    let tmp = tempfile::tempdir().unwrap();
    let mut garage = Garage::start(tmp.path(), 1);
    let rt = rt();
    let block = Block::new(Bytes::from(vec![42u8; 100_000])).unwrap();

    // Wrong secret: refused for good (not retried as if the store were down).
    let bad =
        S3Store::new(&cafs::store::S3Config { secret_access_key: "0".repeat(64), ..garage.s3_config(0, "x") }).unwrap();
    let e = rt.block_on(bad.put(&block)).unwrap_err();
    assert!(matches!(e, StoreError::Refused(_)) && !e.is_transient(), "{e}");
    // No such bucket.
    let none = S3Store::new(&cafs::store::S3Config { bucket: "absent".into(), ..garage.s3_config(0, "x") }).unwrap();
    let e = rt.block_on(none.put(&block)).unwrap_err();
    assert!(!e.to_string().is_empty(), "{e}");

    let cfg =
        cafs::store::S3Config { max_retries: 1, request_timeout: Duration::from_secs(5), ..garage.s3_config(0, "x") };
    let store = S3Store::new(&cfg).unwrap();
    rt.block_on(store.put(&block)).unwrap();

    // The store goes down: a transient error, never bytes; it comes back: the same calls work.
    garage.kill_node(0);
    let e = rt.block_on(store.get(block.locator())).unwrap_err();
    assert!(e.is_transient(), "a store that is down is worth retrying: {e}");
    let other = Block::new(Bytes::from(vec![7u8; 5000])).unwrap();
    assert!(rt.block_on(store.put(&other)).unwrap_err().is_transient());
    garage.restart_node(0);
    assert_eq!(rt.block_on(store.get(block.locator())).unwrap(), block.data());
    rt.block_on(store.put(&other)).unwrap();
    assert_eq!(rt.block_on(store.get(other.locator())).unwrap(), other.data());
}

#[test]
fn postgres_catalog_passes_the_conformance_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let rt = rt();
    let mut n = 0;
    rt.block_on(cafs::catalog::conformance::run_all(|| {
        n += 1;
        let db = format!("suite{n}");
        pg.create_db(&db);
        let url = pg.url_with_password(&db);
        // Two catalogs on one database, as two worker nodes have.
        async move {
            let a: Arc<dyn Catalog> = Arc::new(PostgresCatalog::connect(&url, 4).await.unwrap());
            let b: Arc<dyn Catalog> = Arc::new(PostgresCatalog::connect(&url, 4).await.unwrap());
            (a, b)
        }
    }));
}

#[test]
fn postgres_catalog_refuses_bad_credentials_a_newer_schema_and_tampered_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let rt = rt();
    pg.create_db("c");
    let wrong = format!("{} password=wrong", pg.url("c"));
    let e = rt.block_on(PostgresCatalog::connect(&wrong, 2)).unwrap_err();
    assert!(e.to_string().contains("password"), "{e}");

    let cat = rt.block_on(PostgresCatalog::connect(&pg.url_with_password("c"), 2)).unwrap();
    let rec = cafs::catalog::conformance::record("precious");
    let commit = cafs::catalog::Commit {
        name: cafs::catalog::RefName::new("r").unwrap(),
        expected: None,
        record: rec.clone(),
        sidecar: b"{}".to_vec(),
        committer: "t".into(),
        message: "m".into(),
        writer: None,
    };
    let v = rt.block_on(cat.commit(&commit)).unwrap();
    assert!(pg.psql("c", "UPDATE collections SET manifest = replace(manifest, 'data', 'dada')").status.success());
    assert!(pg.psql("c", "UPDATE sidecars SET data = '\\x7b2020207d'").status.success());
    let e = rt.block_on(cat.get_collection(&rec.pdh())).unwrap_err();
    assert!(matches!(e, cafs::catalog::CatalogError::Corrupt(_)), "{e}");
    let e = rt.block_on(cat.get_sidecar(&v.sidecar)).unwrap_err();
    assert!(matches!(e, cafs::catalog::CatalogError::Corrupt(_)), "{e}");

    assert!(pg.psql("c", "UPDATE cafs_schema SET version = 99").status.success());
    let e = rt.block_on(PostgresCatalog::connect(&pg.url_with_password("c"), 2)).unwrap_err();
    assert!(e.to_string().contains("newer"), "{e}");
}

/// A database made before refs had owners (schema 1: no `refs` table) is migrated by the first node that
/// connects: every ref gets the owner the configuration names, once; later connections change nothing.
#[test]
fn postgres_catalog_gives_the_refs_of_an_older_database_owners() {
    use cafs::catalog::{AccessChange, Principal, RefAccess, RefName};
    let tmp = tempfile::tempdir().unwrap();
    let pg = Postgres::start(tmp.path());
    let rt = rt();
    pg.create_db("old");
    let url = pg.url_with_password("old");
    let cat = rt.block_on(PostgresCatalog::connect(&url, 2)).unwrap();
    for name in ["a", "b/c"] {
        let commit = cafs::catalog::Commit {
            name: RefName::new(name).unwrap(),
            expected: None,
            record: cafs::catalog::conformance::record(name),
            sidecar: vec![],
            committer: "t".into(),
            message: "m".into(),
            writer: None,
        };
        rt.block_on(cat.commit(&commit)).unwrap();
    }
    drop(cat);
    assert!(pg.psql("old", "DROP TABLE refs; UPDATE cafs_schema SET version = 1").status.success());

    let legacy = RefAccess { owner: 1000, gid: 100, mode: 0o640 };
    let cat = rt.block_on(PostgresCatalog::connect_url_migrating(&url, 2, legacy)).unwrap();
    let all = rt.block_on(cat.list_access()).unwrap();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b/c"]);
    assert!(all.iter().all(|(_, a)| *a == legacy), "{all:?}");
    assert_eq!(String::from_utf8_lossy(&pg.psql("old", "SELECT version FROM cafs_schema").stdout).trim(), "2");
    let change = AccessChange { mode: Some(0o600), ..Default::default() };
    rt.block_on(cat.change_access(&RefName::new("a").unwrap(), &change, &Principal::root())).unwrap();
    // Another node connecting later, with other settings, migrates nothing again.
    let other = rt.block_on(PostgresCatalog::connect_url_migrating(&url, 2, RefAccess::LEGACY)).unwrap();
    let a = rt.block_on(other.access(&RefName::new("a").unwrap())).unwrap().unwrap();
    assert_eq!(a, RefAccess { mode: 0o600, ..legacy });
}
