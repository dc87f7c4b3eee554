use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn no_file_and_empty_sections_are_the_embedded_default() {
    let c = Config::parse("").unwrap();
    assert!(matches!(c.store, StoreConfig::Local { path: None }));
    assert!(matches!(c.catalog, CatalogConfig::Sqlite { path: None }));
    assert_eq!(c.ref_refresh_seconds, 5);
    assert!(Config::parse("[store]\nkind = \"local\"\n[catalog]\nkind = \"sqlite\"\n").is_ok());
}

#[test]
fn a_cluster_config_parses() {
    let c = Config::parse(
        "ref_refresh_seconds = 2\n[store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\n\
         prefix = \"p\"\n[catalog]\nkind = \"postgres\"\nurl = \"host=127.0.0.1 user=cafs dbname=cafs\"\n",
    )
    .unwrap();
    assert!(matches!(&c.store, StoreConfig::S3 { bucket, prefix: Some(p), .. } if bucket == "b" && p == "p"));
    assert!(matches!(&c.catalog, CatalogConfig::Postgres { .. }));
    assert_eq!(c.ref_refresh_seconds, 2);
    assert_eq!(c.describe(), "S3 http://127.0.0.1:3900 bucket b + PostgreSQL");
}

#[test]
fn typos_and_inline_secrets_are_errors_that_name_them() {
    for (text, names) in [
        ("[store]\nkind = \"s4\"\n", "s4"),
        (
            "[store]\nkind = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\nsecret_access_key = \"k\"\n",
            "secret_access_key",
        ),
        ("[stroe]\nkind = \"local\"\n", "stroe"),
        ("[catalog]\nkind = \"postgres\"\n", "url"),
        ("ref_refresh_seconds = \"soon\"\n", "ref_refresh_seconds"),
    ] {
        let e = Config::parse(text).unwrap_err();
        assert!(e.contains(names), "{text:?}: {e}");
    }
}

#[test]
fn s3_credentials_come_from_a_private_file_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.toml");
    std::fs::write(&creds, "access_key_id = \"GKid\"\nsecret_access_key = \"very-secret\"\n").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "[store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\ncredentials_file = {:?}\n",
        creds.display().to_string()
    );
    let c = Config::parse(&text).unwrap();
    let e = c.s3().unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s3 = c.s3().unwrap().unwrap();
    assert_eq!((s3.access_key_id.as_str(), s3.secret_access_key.as_str()), ("GKid", "very-secret"));
    assert!(!format!("{s3:?}").contains("very-secret"), "the secret is not in the debug form");
    assert!(!format!("{c:?}").contains("very-secret"));
    // A bad endpoint is a clear error, not a panic.
    let bad = Config::parse(&text.replace("http://127.0.0.1:1", "127.0.0.1:1")).unwrap();
    let e = bad.open_store(dir.path()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("http://"), "{e}");
}

#[test]
fn namespace_writable_patterns_are_checked() {
    let c = Config::parse("[namespace]\nwritable = [\"*\", \"scratch/*\", \"results\", \"run-*\"]\n").unwrap();
    assert_eq!(c.namespace.writable.len(), 4);
    assert!(Config::parse("").unwrap().namespace.writable.is_empty(), "nothing writable by default");
    for bad in ["\"a b\"", "\"/x\"", "\"a//*\"", "\"x*y\""] {
        let err = Config::parse(&format!("[namespace]\nwritable = [{bad}]\n")).unwrap_err();
        assert!(err.contains("namespace.writable"), "{bad}: {err}");
    }
    assert!(Config::parse("[namespace]\nwritabel = []\n").unwrap_err().contains("writabel"));
}

#[test]
fn refs_settings_resolve_names_and_modes() {
    let d = Config::parse("").unwrap().refs().unwrap();
    assert_eq!(d, RefsSettings::default());
    assert_eq!((d.default_mode, d.migration), (0o644, crate::catalog::RefAccess::LEGACY));
    let c = Config::parse(
        "[refs]\noperators = [\"root\", 1005]\ndefault_mode = \"0640\"\nmigration_owner = 1005\n\
         migration_group = \"root\"\nmigration_mode = 0o600\n",
    )
    .unwrap();
    let r = c.refs().unwrap();
    assert_eq!(r.operators, [0, 1005]);
    assert_eq!(r.default_mode, 0o640);
    assert_eq!(r.migration, crate::catalog::RefAccess { owner: 1005, gid: 0, mode: 0o600 });
    // A named owner brings its primary group.
    let r = Config::parse("[refs]\nmigration_owner = \"root\"\n").unwrap().refs().unwrap();
    assert_eq!((r.migration.owner, r.migration.gid), (0, 0));
}

#[test]
fn refs_settings_that_cannot_work_are_errors_that_name_them() {
    for (text, names) in [
        ("[refs]\noperators = [\"no-such-user-here\"]\n", "no-such-user-here"),
        ("[refs]\ndefault_mode = \"0755\"\n", "default_mode"),
        ("[refs]\ndefault_mode = \"rw-r--r--\"\n", "default_mode"),
        ("[refs]\nmigration_mode = 0o1644\n", "migration_mode"),
        ("[refs]\nmigration_owner = \"no-such-user-here\"\n", "migration_owner"),
        ("[refs]\nmigration_owner = 3999999\n", "migration_group"),
        ("[refs]\nmigration_group = \"no-such-group-here\"\n", "migration_group"),
        ("[refs]\noperator = [0]\n", "operator"),
    ] {
        let e = Config::parse(text).unwrap_err();
        assert!(e.contains(names), "{text:?}: {e}");
    }
}
