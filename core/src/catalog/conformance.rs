//! The catalog conformance suite: what every [`Catalog`] implementation must do, independent of its backend.
//!
//! [`run_all`] takes a factory that returns two handles on one *fresh, empty* catalog (two connections, or two
//! clients as two nodes would have), and runs every check on its own fresh catalog. Backends call it from their
//! own tests; the checks panic with a message naming what broke.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    AccessChange, Catalog, CatalogError, CollectionRecord, Commit, Principal, RefAccess, RefName, Version, Writer,
};
use crate::locator::Locator;
use crate::manifest::{Manifest, Segment};

type Pair = (Arc<dyn Catalog>, Arc<dyn Catalog>);

/// Runs every check, each on a fresh catalog from `fresh`.
pub async fn run_all<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Pair>,
{
    empty_catalog(fresh().await).await;
    collections_round_trip(fresh().await).await;
    history_and_heads(fresh().await).await;
    stale_commits_conflict_and_change_nothing(fresh().await).await;
    sidecars_belong_to_versions(fresh().await).await;
    invalid_input_is_refused(fresh().await).await;
    concurrent_commits_lose_nothing(fresh().await).await;
    commits_are_checked_against_the_refs_owner(fresh().await).await;
    created_refs_keep_their_first_creator(fresh().await).await;
    chown_and_chmod_are_checked(fresh().await).await;
}

/// A collection with one file holding `content`.
pub fn record(content: &str) -> CollectionRecord {
    let mut m = Manifest::new();
    let id = m.add_block(Locator::of(content.as_bytes()));
    m.root_mut().file(b"data.txt").expect("valid name").push(Segment {
        block: id,
        offset: 0,
        len: content.len() as u64,
    });
    CollectionRecord::new(&m).expect("a flat collection is representable")
}

/// A commit of `rec` whose sidecar names the message (so sidecars differ between commits).
fn commit(name: &RefName, expected: Option<u64>, rec: &CollectionRecord, msg: &str) -> Commit {
    Commit {
        name: name.clone(),
        expected,
        record: rec.clone(),
        sidecar: format!("{{\"message\":{msg:?}}}").into_bytes(),
        committer: "conformance".into(),
        message: msg.into(),
        writer: None,
    }
}

fn user(uid: u32, groups: &[u32]) -> Principal {
    Principal { uid, groups: groups.to_vec(), privileged: false }
}

/// `commit` by `who`, a ref it creates owned by it with `mode`.
fn commit_by(who: &Principal, mode: u32, c: Commit) -> Commit {
    let new_ref = RefAccess { owner: who.uid, gid: who.groups[0], mode };
    Commit { writer: Some(Writer { principal: who.clone(), new_ref }), ..c }
}

fn r(name: &str) -> RefName {
    RefName::new(name).expect("valid ref name")
}

async fn empty_catalog((c, _): Pair) {
    assert!(c.head(&r("nothing")).await.unwrap().is_none());
    assert!(c.list_refs().await.unwrap().is_empty());
    assert!(c.history(&r("nothing")).await.unwrap().is_empty());
    assert!(c.get_collection(&record("x").pdh()).await.unwrap().is_none());
}

async fn collections_round_trip((a, b): Pair) {
    let rec = record("hello");
    a.put_collection(&rec).await.unwrap();
    a.put_collection(&rec).await.expect("a second put of the same collection is a no-op");
    let back = b.get_collection(&rec.pdh()).await.unwrap().expect("stored collection is visible to other handles");
    assert_eq!(back, rec);
    assert_eq!(back.manifest_text(), rec.manifest_text());
    // A large manifest (10,000 files) stores and reads back whole.
    let mut m = Manifest::new();
    let id = m.add_block(Locator::of(&[0u8; 10_000]));
    for i in 0..10_000u64 {
        m.root_mut().file(format!("f{i:05}").as_bytes()).unwrap().push(Segment { block: id, offset: i, len: 1 });
    }
    let big = CollectionRecord::new(&m).unwrap();
    a.put_collection(&big).await.unwrap();
    assert_eq!(b.get_collection(&big.pdh()).await.unwrap().unwrap(), big);
}

async fn history_and_heads((a, b): Pair) {
    let before = SystemTime::now() - Duration::from_secs(1);
    let (r1, r2, r3) = (record("one"), record("two"), record("three"));
    let main = r("proj/main");
    let v1 = a.commit(&commit(&main, None, &r1, "first")).await.unwrap();
    assert_eq!((v1.version, v1.pdh, v1.parent), (1, r1.pdh(), None));
    assert!(v1.committed_at >= before && v1.committed_at <= SystemTime::now() + Duration::from_secs(1));
    let v2 = b.commit(&commit(&main, Some(1), &r2, "second")).await.unwrap();
    assert_eq!((v2.version, v2.pdh, v2.parent), (2, r2.pdh(), Some(r1.pdh())));
    let v3 = a.commit(&commit(&main, Some(2), &r1, "back to one")).await.unwrap();
    assert_eq!((v3.version, v3.pdh, v3.parent), (3, r1.pdh(), Some(r2.pdh())));
    let other = r("other");
    a.commit(&commit(&other, None, &r3, "o")).await.unwrap();

    assert_eq!(b.head(&main).await.unwrap().as_ref(), Some(&v3));
    let history = b.history(&main).await.unwrap();
    assert_eq!(history, vec![v1.clone(), v2.clone(), v3.clone()]);
    assert_eq!(history[1].message, "second");
    assert_eq!(history[1].committer, "conformance");
    let heads: Vec<(String, u64)> =
        b.list_refs().await.unwrap().into_iter().map(|v| (v.name.to_string(), v.version)).collect();
    assert_eq!(heads, [("other".to_string(), 1), ("proj/main".to_string(), 3)]);
    // Committed collections are retrievable.
    for rec in [&r1, &r2, &r3] {
        assert_eq!(b.get_collection(&rec.pdh()).await.unwrap().as_ref(), Some(rec));
    }
}

async fn stale_commits_conflict_and_change_nothing((a, b): Pair) {
    let name = r("contested");
    let (r1, r2, loser) = (record("base"), record("winner"), record("loser"));
    a.commit(&commit(&name, None, &r1, "base")).await.unwrap();
    a.commit(&commit(&name, Some(1), &r2, "winner")).await.unwrap();
    let cases = [(None, Some(2)), (Some(1), Some(2)), (Some(3), Some(2))];
    for (expected, current) in cases {
        match b.commit(&commit(&name, expected, &loser, "loser")).await {
            Err(CatalogError::Conflict { name: n, expected: e, current: c }) => {
                assert_eq!((n.as_str(), e, c), ("contested", expected, current));
            }
            other => panic!("stale commit (expected {expected:?}) must conflict, got {other:?}"),
        }
    }
    match b.commit(&commit(&r("absent"), Some(1), &loser, "x")).await {
        Err(CatalogError::Conflict { current: None, .. }) => {}
        other => panic!("commit expecting a version of an absent ref must conflict, got {other:?}"),
    }
    assert_eq!(a.history(&name).await.unwrap().len(), 2);
    assert_eq!(a.head(&name).await.unwrap().unwrap().pdh, r2.pdh());
    assert!(a.head(&r("absent")).await.unwrap().is_none());
    assert!(a.get_collection(&loser.pdh()).await.unwrap().is_none(), "a refused commit stores nothing");
}

async fn invalid_input_is_refused((a, _): Pair) {
    assert!(matches!(RefName::new("../etc"), Err(CatalogError::InvalidRef { .. })));
    assert!(matches!(CollectionRecord::from_text("garbage"), Err(CatalogError::BadManifest(_))));
    assert!(a.list_refs().await.unwrap().is_empty());
}

/// The PDH names the manifest only: versions of one collection that differ in metadata (a chmod, a touch) keep
/// their own sidecars, and each reads back exactly.
async fn sidecars_belong_to_versions((a, b): Pair) {
    let name = r("meta");
    let rec = record("same bytes");
    let with = |expected, sidecar: &[u8]| Commit { sidecar: sidecar.to_vec(), ..commit(&name, expected, &rec, "m") };
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
    let sidecars: [&[u8]; 4] = [b"{\"mode\":420}", b"{\"mode\":493}", b"", &big];
    for (i, sc) in sidecars.iter().enumerate() {
        let v = a.commit(&with((i > 0).then_some(i as u64), sc)).await.unwrap();
        assert_eq!(v.pdh, rec.pdh());
    }
    let history = b.history(&name).await.unwrap();
    assert_eq!(history.len(), sidecars.len());
    for (v, sc) in history.iter().zip(sidecars) {
        assert_eq!(b.get_sidecar(&v.sidecar).await.unwrap().as_deref(), Some(sc), "version {}", v.version);
    }
    assert_ne!(history[0].sidecar, history[1].sidecar);
    assert!(b.get_sidecar(&record("nothing").pdh()).await.unwrap().is_none());
}

/// Two handles race to commit to one ref, each re-reading the head after a conflict, until each has landed
/// `per_writer` commits: every landed commit is in the history exactly once, versions are 1..=N with no gaps,
/// and each version's parent is the previous version's collection.
async fn concurrent_commits_lose_nothing((a, b): Pair) {
    let name = r("raced");
    let per_writer = 25;
    let writer = |cat: Arc<dyn Catalog>, tag: &'static str| {
        let name = name.clone();
        tokio::spawn(async move {
            let (mut landed, mut conflicts) = (Vec::new(), 0);
            while landed.len() < per_writer {
                let expected = cat.head(&name).await.unwrap().map(|v| v.version);
                let rec = record(&format!("{tag}-{}", landed.len()));
                match cat.commit(&commit(&name, expected, &rec, tag)).await {
                    Ok(v) => landed.push(v),
                    Err(CatalogError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("commit failed: {e}"),
                }
            }
            (landed, conflicts)
        })
    };
    let (ta, tb) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
    let (la, _) = ta.await.unwrap();
    let (lb, _) = tb.await.unwrap();
    let history = a.history(&name).await.unwrap();
    assert_eq!(history.len(), 2 * per_writer, "every landed commit is in the history");
    let mut landed: Vec<Version> = la.into_iter().chain(lb).collect();
    landed.sort_by_key(|v| v.version);
    assert_eq!(landed, history, "history is exactly the commits that were acknowledged");
    for (i, v) in history.iter().enumerate() {
        assert_eq!(v.version, i as u64 + 1);
        assert_eq!(v.parent, if i == 0 { None } else { Some(history[i - 1].pdh) });
    }
}

/// A commit is checked against the ref's record in the transaction that moves the ref; a refused one stores
/// nothing; the commit that creates a ref records its writer; a chmod lets others in.
async fn commits_are_checked_against_the_refs_owner((a, b): Pair) {
    let name = r("owned");
    let (owner, member, other) = (user(1000, &[1000]), user(1001, &[1001, 1000]), user(1002, &[1002]));
    assert_eq!(a.access(&name).await.unwrap(), None);
    a.commit(&commit_by(&owner, 0o640, commit(&name, None, &record("one"), "first"))).await.unwrap();
    let made = RefAccess { owner: 1000, gid: 1000, mode: 0o640 };
    assert_eq!(b.access(&name).await.unwrap(), Some(made), "the creator owns the ref, on every handle");
    assert_eq!(b.list_access().await.unwrap(), [(name.clone(), made)]);

    for who in [&member, &other] {
        let loser = record(&format!("by {}", who.uid));
        match b.commit(&commit_by(who, 0o644, commit(&name, Some(1), &loser, "refused"))).await {
            Err(CatalogError::Denied(d)) => assert_eq!((d.uid, d.what, d.access), (who.uid, "write", made)),
            other => panic!("uid {} must not write a 0640 ref of uid 1000: {other:?}", who.uid),
        }
        assert!(a.get_collection(&loser.pdh()).await.unwrap().is_none(), "a refused commit stores nothing");
    }
    assert_eq!(a.history(&name).await.unwrap().len(), 1);
    assert_eq!(a.access(&name).await.unwrap(), Some(made), "a refused commit changes no record");
    // Permission is checked before the version: a stale commit of someone who may not write is refused as such.
    let stale = b.commit(&commit_by(&other, 0o644, commit(&name, None, &record("stale"), "stale"))).await;
    assert!(matches!(stale, Err(CatalogError::Denied(_))), "{stale:?}");

    // The owner lets the group write: the member may commit, others still not.
    let chmod = AccessChange { mode: Some(0o660), ..Default::default() };
    a.change_access(&name, &chmod, &owner).await.unwrap();
    b.commit(&commit_by(&member, 0o644, commit(&name, Some(1), &record("two"), "member"))).await.unwrap();
    let e = b.commit(&commit_by(&other, 0o644, commit(&name, Some(2), &record("x"), "x"))).await.unwrap_err();
    assert!(matches!(e, CatalogError::Denied(_)), "{e}");
    // Root and operators pass; a commit of the library itself (no writer) is not checked.
    let operator = Principal { uid: 1005, groups: vec![1005], privileged: true };
    a.commit(&commit_by(&operator, 0o644, commit(&name, Some(2), &record("three"), "operator"))).await.unwrap();
    a.commit(&commit(&name, Some(3), &record("four"), "library")).await.unwrap();
    assert_eq!(b.access(&name).await.unwrap().unwrap().owner, 1000, "writers other than the creator own nothing");
    let unowned = r("unowned");
    a.commit(&commit(&unowned, None, &record("u"), "library")).await.unwrap();
    assert_eq!(b.access(&unowned).await.unwrap(), Some(RefAccess::LEGACY));
}

/// A ref created before its first commit (a writable mount, `mkdir` in a namespace) keeps whoever created it
/// first, on every handle; the creation makes no version.
async fn created_refs_keep_their_first_creator((a, b): Pair) {
    let name = r("claimed");
    let first = RefAccess { owner: 1000, gid: 1000, mode: 0o600 };
    let second = RefAccess { owner: 1001, gid: 1001, mode: 0o666 };
    let (x, y) = tokio::join!(a.create_ref(&name, &first), b.create_ref(&name, &second));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x, y, "two creators at once: both see the one that won");
    assert!(x == first || x == second);
    assert_eq!(a.create_ref(&name, &second).await.unwrap(), x, "a later creation changes nothing");
    assert!(b.head(&name).await.unwrap().is_none());
    assert!(b.history(&name).await.unwrap().is_empty());
    assert_eq!(b.list_access().await.unwrap(), [(name.clone(), x)]);
    // The winner commits the first version; the loser may not.
    let winner = user(x.owner, &[x.gid]);
    let loser = user(if x.owner == 1000 { 1001 } else { 1000 }, &[1]);
    let lost = commit_by(&loser, 0o644, commit(&name, None, &record("l"), "l"));
    if x == first {
        assert!(matches!(b.commit(&lost).await, Err(CatalogError::Denied(_))));
    }
    a.commit(&commit_by(&winner, 0o644, commit(&name, None, &record("w"), "w"))).await.unwrap();
    assert_eq!(b.access(&name).await.unwrap(), Some(x), "the first commit keeps the record made at creation");
}

async fn chown_and_chmod_are_checked((a, b): Pair) {
    let name = r("changed");
    let (owner, other) = (user(1000, &[1000]), user(1001, &[1001]));
    let nothing = AccessChange { mode: Some(0o600), ..Default::default() };
    assert!(matches!(a.change_access(&name, &nothing, &Principal::root()).await, Err(CatalogError::NoSuchRef(_))));
    a.commit(&commit_by(&owner, 0o644, commit(&name, None, &record("c"), "c"))).await.unwrap();
    let was = RefAccess { owner: 1000, gid: 1000, mode: 0o644 };

    let chmod = AccessChange { mode: Some(0o600), ..Default::default() };
    let chown = AccessChange { owner: Some(1001), gid: Some(1001), mode: None };
    for (change, by) in [(&chmod, &other), (&chown, &owner), (&chown, &other)] {
        let e = b.change_access(&name, change, by).await.unwrap_err();
        assert!(matches!(e, CatalogError::Denied(_)), "{e}");
    }
    let bad = AccessChange { mode: Some(0o777), ..Default::default() };
    assert!(matches!(a.change_access(&name, &bad, &Principal::root()).await, Err(CatalogError::Denied(_))));
    assert_eq!(a.access(&name).await.unwrap(), Some(was), "refusals change nothing");

    assert_eq!(b.change_access(&name, &chmod, &owner).await.unwrap(), RefAccess { mode: 0o600, ..was });
    let given = a.change_access(&name, &chown, &Principal::root()).await.unwrap();
    assert_eq!(given, RefAccess { owner: 1001, gid: 1001, mode: 0o600 });
    assert_eq!(b.access(&name).await.unwrap(), Some(given));
    // The new owner writes and chmods; the old one no longer may.
    b.commit(&commit_by(&other, 0o644, commit(&name, Some(1), &record("d"), "d"))).await.unwrap();
    let e = a.commit(&commit_by(&owner, 0o644, commit(&name, Some(2), &record("e"), "e"))).await.unwrap_err();
    assert!(matches!(e, CatalogError::Denied(_)), "{e}");
    assert!(matches!(a.change_access(&name, &chmod, &owner).await, Err(CatalogError::Denied(_))));
    b.change_access(&name, &AccessChange { mode: Some(0o666), ..Default::default() }, &other).await.unwrap();
    a.commit(&commit_by(&owner, 0o644, commit(&name, Some(2), &record("e"), "e"))).await.unwrap();
}
