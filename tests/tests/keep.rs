//! The Keep block store against the test Arvados cluster, and the test cluster against Arvados's own client.
//!
//! The cluster (`cafs_tests::arvados`) is written from the Arvados source; the first test has the Python SDK's
//! `KeepClient` put and get through it, so the behaviour cafs is tested against here is the behaviour Arvados's
//! code expects of Keep.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cafs::locator::{Locator, hex};
use cafs::store::{Block, BlockStore, KeepConfig, KeepStore, Permit, Signatures, StoreError};
use cafs_tests::arvados::{Cluster, ClusterOptions};
use cafs_tests::stack::{Stack, ok, sh_as};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn config(cluster: &Cluster) -> KeepConfig {
    KeepConfig {
        api_host: cluster.api_host(),
        api_token: cluster.token.clone(),
        insecure: true,
        retry_delay: Duration::from_millis(50),
        ..KeepConfig::default()
    }
}

fn store(cfg: KeepConfig) -> KeepStore {
    KeepStore::new(cfg, Arc::new(Signatures::in_memory())).unwrap()
}

fn block(seed: u8, len: usize) -> Block {
    Block::new((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect::<Vec<u8>>()).unwrap()
}

/// Which keepstores hold a copy of `b`.
fn holders(cluster: &Cluster, n: usize, b: &Block) -> Vec<usize> {
    (0..n).filter(|&i| cluster.block(i, &hex(b.locator().md5())).is_some()).collect()
}

fn signed(store: &KeepStore, l: &Locator) -> String {
    match store.signatures().get(l) {
        Some(Permit::Signed(s)) => format!("{}{}", l.stripped_string(), s.hint()),
        other => panic!("no signature for {l}: {other:?}"),
    }
}

#[test]
fn the_test_cluster_serves_the_arvados_python_sdk() {
    let cluster = Cluster::start(ClusterOptions::default());
    let ways = [("through the proxy", cluster.proxy_url(), "1"), ("to the keepstores the API lists", "-".into(), "2")];
    for (how, target, seed) in ways {
        let before: Vec<usize> = (0..2).map(|i| cluster.blocks(i)).collect();
        let r = cluster.sdk(&["put-get", &target, seed]);
        let blocks = r["blocks"].as_array().unwrap();
        for b in blocks {
            assert_eq!(b["read_back"], true, "{how}: {r}");
        }
        let big = blocks[2]["signed"].as_str().unwrap();
        assert!(big.contains("+3145728+A") && big.len() == 32 + 8 + 2 + 40 + 1 + 8, "{how}: signed: {big}");
        assert!(!r["unsigned_read"].is_null(), "{how}: Keep served a block without a signature: {r}");
        assert!(!r["forged_read"].is_null(), "{how}: Keep served a block with a forged signature: {r}");
        for (i, b) in before.iter().enumerate() {
            // The empty block is the same in both rounds.
            assert!(cluster.blocks(i) >= b + 2, "{how}: keepstore {i} holds a copy of each new block");
        }
    }
}

#[test]
fn the_keep_store_passes_the_block_store_checks_on_a_cluster_without_signing() {
    let cluster = Cluster::start(ClusterOptions { blob_signing: false, ..ClusterOptions::default() });
    let s = Arc::new(store(config(&cluster)));
    rt().block_on(cafs::store::conformance::run_undamaged(s.clone()));
    // There, a block another client wrote is read without a signature.
    let b = block(1, 10);
    rt().block_on(s.put(&b)).unwrap();
    let other = store(config(&cluster));
    assert!(other.signatures().is_empty());
    assert_eq!(rt().block_on(other.get(b.locator())).unwrap(), b.data());
}

#[test]
fn blocks_get_their_replicas_and_the_sdk_reads_what_cafs_wrote() {
    let cluster = Cluster::start(ClusterOptions { keepstores: 3, ..ClusterOptions::default() });
    let s = store(config(&cluster));
    let rt = rt();
    let b = block(2, 3 << 20);
    assert!(!rt.block_on(s.exists(b.locator())).unwrap());
    rt.block_on(s.put(&b)).unwrap();
    assert_eq!(holders(&cluster, 3, &b).len(), 2, "two replicas, the cluster's default");
    assert!(rt.block_on(s.exists(b.locator())).unwrap());
    assert_eq!(rt.block_on(s.get(b.locator())).unwrap(), b.data());
    // Arvados's own client reads the block with the signature cafs holds.
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("block");
    cluster.sdk(&["get", &signed(&s, b.locator()), file.to_str().unwrap()]);
    assert_eq!(std::fs::read(&file).unwrap(), b.data().to_vec());

    // Through the proxy: one request carries both replicas.
    let proxied =
        store(KeepConfig { api_host: String::new(), services: vec![cluster.proxy_url()], ..config(&cluster) });
    let b = block(3, 1000);
    rt.block_on(proxied.put(&b)).unwrap();
    assert_eq!(holders(&cluster, 3, &b).len(), 2);
    assert_eq!(rt.block_on(proxied.get(b.locator())).unwrap(), b.data());
}

#[test]
fn failures_are_retried_passed_over_or_reported() {
    let cluster = Cluster::start(ClusterOptions { keepstores: 3, ..ClusterOptions::default() });
    let s = store(config(&cluster));
    let rt = rt();
    let order = |b: &Block| cluster.order(&hex(b.locator().md5()));

    // Writes go to the first two services of the block's rendezvous order, as every Keep client's do.
    let b = block(3, 100);
    rt.block_on(s.put(&b)).unwrap();
    assert_eq!(holders(&cluster, 3, &b), {
        let mut o = order(&b)[..2].to_vec();
        o.sort();
        o
    });

    // A 503 passes the block on to the next service in its order.
    let b = block(4, 5000);
    let f = order(&b)[0];
    cluster.fail_next(f, 503, 1);
    rt.block_on(s.put(&b)).unwrap();
    assert_eq!(holders(&cluster, 3, &b), {
        let mut o = order(&b)[1..].to_vec();
        o.sort();
        o
    });

    // A keepstore that dies costs nothing: its blocks go to the others, and are read from them.
    let b = block(5, 1 << 20);
    let f = order(&b)[0];
    cluster.kill(f);
    rt.block_on(s.put(&b)).unwrap();
    let held = holders(&cluster, 3, &b);
    assert!(held.len() == 2 && !held.contains(&f), "{held:?}");
    assert_eq!(rt.block_on(s.get(b.locator())).unwrap(), b.data());
    cluster.revive(f);

    // One that dies in the middle of receiving a block costs nothing either.
    let b = block(12, 16 << 20);
    let f = order(&b)[0];
    cluster.kill_during_next_put(f);
    rt.block_on(s.put(&b)).unwrap();
    let held = holders(&cluster, 3, &b);
    assert!(held.len() == 2 && !held.contains(&f), "{held:?}");
    cluster.revive(f);

    // With only two services for two replicas, a 503 is asked again after a pause.
    let small = Cluster::start(ClusterOptions { keepstores: 2, ..ClusterOptions::default() });
    let s2 = store(config(&small));
    let b = block(11, 100);
    small.fail_next(1, 503, 2);
    rt.block_on(s2.put(&b)).unwrap();
    assert_eq!(small.puts(1), 3, "asked three times");
    assert_eq!(holders(&small, 2, &b), [0, 1]);

    // A full keepstore (507) is not asked again; with too few others, the put fails and says why.
    let b = block(7, 100);
    let puts = small.puts(0);
    small.fail_next(0, 507, 10);
    let e = rt.block_on(s2.put(&b)).unwrap_err();
    assert!(e.to_string().contains("1 of 2 replicas") && e.to_string().contains("507"), "{e}");
    assert_eq!(small.puts(0), puts + 1, "a full service is not retried");
}

#[test]
fn a_damaged_copy_is_passed_over_and_never_served() {
    let cluster = Cluster::start(ClusterOptions::default());
    let s = store(config(&cluster));
    let rt = rt();
    for len in [1000usize, 300_000] {
        let b = block(8, len);
        rt.block_on(s.put(&b)).unwrap();
        let md5 = hex(b.locator().md5());
        let mut bad = b.data().to_vec();
        bad[len / 2] ^= 1;
        cluster.tamper(0, &md5, Bytes::from(bad.clone()));
        assert_eq!(rt.block_on(s.get(b.locator())).unwrap(), b.data(), "{len}: read from the good copy");
        cluster.tamper(1, &md5, Bytes::from(bad));
        let e = rt.block_on(s.get(b.locator())).unwrap_err();
        assert!(!matches!(e, StoreError::NotFound(_)), "{len}: {e}");
    }
}

#[test]
fn signatures_are_kept_renewed_and_bound_to_the_token() {
    let cluster = Cluster::start(ClusterOptions { signature_ttl: Duration::from_secs(4), ..ClusterOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keep-signatures");
    let rt = rt();
    let b = block(9, 4096);
    let first = {
        let s = KeepStore::new(config(&cluster), Arc::new(Signatures::open(&file).unwrap())).unwrap();
        rt.block_on(s.put(&b)).unwrap();
        signed(&s, b.locator())
    };
    // Another store (cafsd started again) reads the block with the signature kept in the file.
    let s = KeepStore::new(config(&cluster), Arc::new(Signatures::open(&file).unwrap())).unwrap();
    assert_eq!(rt.block_on(s.get(b.locator())).unwrap(), b.data());
    assert!(!std::fs::read_to_string(&file).unwrap().is_empty());
    // Past half its life, the block no longer counts as stored; the put that follows renews the signature.
    std::thread::sleep(Duration::from_millis(2200));
    assert!(!rt.block_on(s.exists(b.locator())).unwrap(), "a signature past half its life is renewed");
    rt.block_on(s.put(&b)).unwrap();
    assert_ne!(signed(&s, b.locator()), first);
    assert!(rt.block_on(s.exists(b.locator())).unwrap());
    std::thread::sleep(Duration::from_millis(2200));
    // The first signature has expired by now; the renewed one still reads the block.
    assert_eq!(rt.block_on(s.get(b.locator())).unwrap(), b.data());

    // A token the API does not accept fails clearly, at the first request.
    let wrong = store(KeepConfig { api_token: "v2/zzzzz-gj3su-000000000000009/nope".into(), ..config(&cluster) });
    let e = rt.block_on(wrong.put(&block(10, 10))).unwrap_err();
    assert!(matches!(e, StoreError::Refused(_)) && e.to_string().contains("refused the token"), "{e}");
    assert!(!e.to_string().contains("nope"), "the token is not in the message: {e}");
}

/// A job user's uid.
const JOB: u32 = 1000;

/// A node whose cafsd writes into `cluster`'s Keep (services from the API), its token in a file only cafsd's
/// user can read.
fn keep_node(tmp: &Path, cluster: &Cluster) -> Stack {
    Stack::start_configured(tmp, &cluster.cafsd_config(tmp, &cluster.token, false), false)
}

/// Every file below `dir` with its MD5, as the job user sees them.
fn tree(dir: &Path) -> String {
    ok(&sh_as(JOB, dir, "find . -path ./.cafs -prune -o -type f -print0 | sort -z | xargs -0 md5sum"))
}

/// `manifest` with each locator signed as `signatures` (a `keep-signatures` file) holds it.
fn signed_manifest(manifest: &str, signatures: &str) -> String {
    let held: std::collections::HashMap<&str, &str> = signatures
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter_map(|s| s.split_once("+A").map(|(l, _)| (l, s)))
        .collect();
    manifest
        .split('\n')
        .map(|line| line.split(' ').map(|tok| held.get(tok).copied().unwrap_or(tok)).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_job_writes_through_a_mount_into_keep_and_arvados_reads_it_back() {
    let cluster = Cluster::start(ClusterOptions { keepstores: 3, ..ClusterOptions::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut node = keep_node(tmp.path(), &cluster);
    let dir = node.job_dir("out", JOB);
    let d = dir.to_str().unwrap();
    ok(&node.fsctl(JOB, &["mount", "results", d]));
    ok(&sh_as(
        JOB,
        &dir,
        "head -c 150000000 /dev/urandom > big.bin && mkdir -p logs/deep && \
         for i in $(seq 200); do echo \"line $i\" > logs/f$i.txt; done && echo deep > logs/deep/x",
    ));
    let want = tree(&dir);
    ok(&node.fsctl(JOB, &["commit", d, "-m", "first"]));
    let manifest = ok(&sh_as(JOB, &dir, "cat .cafs/manifest"));
    let pdh = ok(&sh_as(JOB, &dir, "cat .cafs/hash")).trim().to_string();

    // Every block of the collection is in Keep, twice (the cluster's default replication), and nowhere else.
    let blocks: std::collections::BTreeSet<String> = manifest
        .split_whitespace()
        .filter(|t| t.len() > 33 && t.as_bytes()[32] == b'+' && !t.contains(':'))
        .map(|t| t[..32].to_string())
        .collect();
    for md5 in &blocks {
        let copies = (0..3).filter(|&i| cluster.block(i, md5).is_some()).count();
        assert_eq!(copies, 2, "block {md5}");
    }
    assert!(!node.state().join("blocks").exists(), "no local block directory");
    use std::os::unix::fs::PermissionsExt;
    let sigfile = node.state().join("keep-signatures");
    assert_eq!(std::fs::metadata(&sigfile).unwrap().permissions().mode() & 0o777, 0o600);
    let signatures = std::fs::read_to_string(&sigfile).unwrap();
    assert!(!signatures.contains(cluster.token.rsplit('/').next().unwrap()), "the token is not kept");

    // Arvados's own client reads the collection from Keep, byte for byte, with the signatures cafs holds.
    let mf = tmp.path().join("signed.manifest");
    std::fs::write(&mf, signed_manifest(&manifest, &signatures)).unwrap();
    let back = tmp.path().join("sdk-read");
    let r = cluster.sdk(&["read", mf.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(r["pdh"], pdh.as_str());
    assert_eq!(tree(&back), want);

    // After a restart of cafsd with the page cache dropped, the files come from Keep (no local copy, no cache).
    ok(&node.fsctl(JOB, &["umount", d]));
    node.stop_cafsd();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
    std::fs::remove_dir_all(node.state().join("cache")).unwrap();
    node.start_cafsd(&["--autocommit", "0", "--config", tmp.path().join("cafsd.toml").to_str().unwrap()]);
    let gets: u64 = (0..3).map(|i| cluster.gets(i)).sum();
    ok(&node.fsctl(JOB, &["mount", "results", d]));
    assert_eq!(tree(&dir), want);
    assert!((0..3).map(|i| cluster.gets(i)).sum::<u64>() >= gets + blocks.len() as u64, "read from Keep");

    // A keepstore that dies while the job writes costs nothing: the blocks go to the other two.
    cluster.kill(0);
    ok(&sh_as(JOB, &dir, "head -c 70000000 /dev/urandom > more.bin && rm logs/f1.txt"));
    let want = tree(&dir);
    ok(&node.fsctl(JOB, &["commit", d, "-m", "second"]));
    cluster.revive(0);
    ok(&node.fsctl(JOB, &["umount", d]));
    ok(&node.fsctl(JOB, &["mount", "results", d, "--ro"]));
    assert_eq!(tree(&dir), want);
    ok(&node.fsctl(JOB, &["umount", d]));
}

#[test]
fn arv_put_and_arv_get_round_trip_through_the_test_cluster() {
    let cluster = Cluster::start(ClusterOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub dir")).unwrap();
    std::fs::write(src.join("a.txt"), "hello\n").unwrap();
    std::fs::write(src.join("sub dir/b:c.bin"), (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
        .unwrap();
    let p = cluster.project();
    let uuid = cluster.arv(
        "arv-put",
        &["--no-resume", "--no-cache", "--project-uuid", &p, "--name", "rt", &format!("{}/", src.display())],
    );
    let uuid = uuid.trim();
    let stored = cluster.collections_named("rt");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].uuid, uuid);
    let back = tmp.path().join("back");
    std::fs::create_dir(&back).unwrap();
    cluster.arv("arv-get", &[&format!("{uuid}/"), &format!("{}/", back.display())]);
    assert_eq!(cafs_tests::snapshot(&back), cafs_tests::snapshot(&src));

    // The API checks signatures: the same manifest without them is refused, with them (as read) accepted.
    let manifest = stored[0].manifest.clone();
    let unsigned = tmp.path().join("unsigned.manifest");
    std::fs::write(&unsigned, &manifest).unwrap();
    assert_eq!(cluster.sdk(&["create", unsigned.to_str().unwrap()])["status"], 403);
}
