//! The Arvados catalog against the test Arvados cluster (`cafs_tests::arvados`, itself checked against the
//! Arvados SDK and tools in `keep.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cafs::arvados::{Api, ApiConfig};
use cafs::catalog::{ArvadosCatalog, Catalog};
use cafs::store::{KeepConfig, KeepStore, Signatures};
use cafs_tests::arvados::{Cluster, ClusterOptions};
use cafs_tests::stack::{Stack, ok, sh_as};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn keep(cluster: &Cluster) -> Arc<KeepStore> {
    let cfg = KeepConfig {
        api_host: cluster.api_host(),
        api_token: cluster.token.clone(),
        insecure: true,
        retry_delay: Duration::from_millis(50),
        ..KeepConfig::default()
    };
    Arc::new(KeepStore::new(cfg, Arc::new(Signatures::in_memory())).unwrap())
}

fn catalog(cluster: &Cluster, project: &str) -> Arc<dyn Catalog> {
    let api = Api::new(ApiConfig {
        host: cluster.api_host(),
        token: cluster.token.clone(),
        insecure: true,
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    Arc::new(ArvadosCatalog::new(api, project.to_string(), keep(cluster)).unwrap())
}

#[test]
fn the_arvados_catalog_passes_the_catalog_checks() {
    // Without blob signing: the suite's collections name blocks that were never written.
    let cluster = Cluster::start(ClusterOptions { blob_signing: false, ..ClusterOptions::default() });
    let mut n = 0;
    rt().block_on(cafs::catalog::conformance::run_all(|| {
        n += 1;
        // Each check in a project of its own: a fresh, empty catalog, two handles as two nodes would have.
        let project = format!("zzzzz-j7d0g-{n:015}");
        let pair = (catalog(&cluster, &project), catalog(&cluster, &project));
        async move { pair }
    }));
}

const JOB: u32 = 1000;

/// A node on `cluster`: Keep for blocks, the cluster's collections in its project for refs; the token in a file
/// only cafsd's user reads. `token` replaces the cluster's (a wrong one, for a test).
fn arvados_node(tmp: &Path, cluster: &Cluster, token: &str) -> Stack {
    Stack::start_configured(tmp, &cluster.cafsd_config(tmp, token, true), false)
}

/// `md5sum` of every file below `dir` (but `.cafs`), sorted: run as `uid`.
fn files(uid: u32, dir: &Path) -> String {
    ok(&sh_as(uid, dir, "find . -path ./.cafs -prune -o -type f -print0 | sort -z | xargs -0 md5sum"))
}

#[test]
fn a_job_commits_arvados_collections_that_arvados_tools_read() {
    let cluster = Cluster::start(ClusterOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let node = arvados_node(tmp.path(), &cluster, &cluster.token.clone());
    let dir = node.job_dir("out", JOB);
    let d = dir.to_str().unwrap();
    ok(&node.fsctl(JOB, &["mount", "results", d]));
    ok(&sh_as(
        JOB,
        &dir,
        "head -c 70000000 /dev/urandom > big.bin && mkdir -p 'sub dir' && echo one > 'sub dir/a b.txt' && \
         for i in $(seq 50); do echo $i > n$i; done && ln -s big.bin link && chmod 600 n1 && \
         setfattr -n user.prop.sample -v S-42 . && setfattr -n user.prop.stage -v raw .",
    ));
    let first = files(JOB, &dir);
    ok(&node.fsctl(JOB, &["commit", d, "-m", "first"]));
    let pdh1 = ok(&sh_as(JOB, &dir, "cat .cafs/hash")).trim().to_string();

    // The ref is a collection of the project, named after it, with cafs's PDH.
    let made = cluster.collections_named("results");
    assert_eq!(made.len(), 1, "one collection for the ref");
    let uuid = made[0].uuid.clone();
    assert_eq!(made[0].owner_uuid, cluster.project());
    assert_eq!(cafs_tests::arvados::collections::pdh(&made[0].manifest), pdh1);
    // The root's properties are the collection's.
    assert_eq!(
        (made[0].properties["sample"].as_str(), made[0].properties["stage"].as_str()),
        (Some("S-42"), Some("raw"))
    );
    // arv-get (the real client) fetches it from Keep byte for byte.
    let back = tmp.path().join("arv-get");
    std::fs::create_dir(&back).unwrap();
    cluster.arv("arv-get", &[&format!("{uuid}/"), &format!("{}/", back.display())]);
    let got = files(0, &back);
    // A manifest holds no symlinks (the sidecar does): arv-get has the files.
    assert_eq!(got, first.lines().filter(|l| !l.ends_with("./link")).collect::<Vec<_>>().join("\n") + "\n");

    // A second commit is a second version of the same collection; `fsctl log` lists Arvados's versions.
    ok(&sh_as(JOB, &dir, "echo two >> 'sub dir/a b.txt' && rm n2 && setfattr -x user.prop.stage ."));
    ok(&node.fsctl(JOB, &["commit", d, "-m", "second"]));
    let pdh2 = ok(&sh_as(JOB, &dir, "cat .cafs/hash")).trim().to_string();
    assert_ne!(pdh1, pdh2);
    let versions = cluster.versions(&uuid);
    let pdhs: Vec<String> = versions.iter().map(|c| cafs_tests::arvados::collections::pdh(&c.manifest)).collect();
    assert!(pdhs.ends_with(&[pdh1.clone(), pdh2.clone()]), "{pdhs:?}");
    let now = &cluster.collections_named("results")[0];
    assert_eq!(now.properties["sample"], "S-42");
    assert!(!now.properties.contains_key("stage"), "a property removed from the root is removed");
    let log = ok(&node.fsctl(JOB, &["log", "results"]));
    assert!(log.contains("first") && log.contains("second") && log.contains(&pdh1) && log.contains(&pdh2), "{log}");

    // `.arvados#collection`, as a job runner reads it: the tree's manifest signed for the token, which the API
    // takes as a new collection with the same PDH (crunch-run saves a container's output so).
    ok(&sh_as(JOB, &dir, "echo three > n3"));
    let record: serde_json::Value = serde_json::from_str(&ok(&sh_as(JOB, &dir, "cat .arvados#collection"))).unwrap();
    let text = record["manifest_text"].as_str().unwrap();
    assert!(text.contains("+A"), "signed: {text}");
    let saved = tmp.path().join("output.manifest");
    std::fs::write(&saved, text).unwrap();
    let r = cluster.sdk(&["create", saved.to_str().unwrap()]);
    assert_eq!((r["status"].as_u64(), &r["portable_data_hash"]), (Some(200), &record["portable_data_hash"]), "{r}");
    assert!(!ok(&sh_as(JOB, &dir, "ls -a")).contains("arvados"), "not listed");
    ok(&node.fsctl(JOB, &["commit", d, "-m", "third"]));
    ok(&node.fsctl(JOB, &["umount", d]));

    // Mounted again, the tree is as committed, modes and symlink included (the sidecar came back from the
    // collection's properties); the collection mounts by its UUID too, read-only.
    ok(&node.fsctl(JOB, &["mount", "results", d]));
    let second = files(JOB, &dir);
    assert_eq!(ok(&sh_as(JOB, &dir, "readlink link; stat -c %a n1")), "big.bin\n600\n");
    ok(&node.fsctl(JOB, &["umount", d]));
    ok(&node.fsctl(JOB, &["mount", &uuid, d, "--ro"]));
    assert_eq!(files(JOB, &dir), second);
    ok(&node.fsctl(JOB, &["umount", d]));
    // And an earlier version by its PDH (Arvados keeps it as a past version): a PDH names the manifest only.
    ok(&node.fsctl(JOB, &["mount", &pdh1, d]));
    assert_eq!(files(JOB, &dir), first);
    ok(&node.fsctl(JOB, &["umount", d]));

    // A job wrapped by `fsctl run`: its output is a collection when it exits, under the ref it names.
    let job = node.job_dir("job", JOB);
    let script = "seq 100000 > numbers.txt && mkdir logs && echo done > logs/run.log";
    let out =
        ok(&node.fsctl(JOB, &["run", "--ref", "runs/job-1", "--dir", job.to_str().unwrap(), "--", "sh", "-c", script]));
    let pdh = out.lines().last().unwrap();
    let made = cluster.collections_named("runs/job-1");
    assert_eq!(made.len(), 1);
    assert_eq!(cafs_tests::arvados::collections::pdh(&made[0].manifest), pdh);
    let back = tmp.path().join("job-back");
    std::fs::create_dir(&back).unwrap();
    cluster.arv("arv-get", &[&format!("{}/", made[0].uuid), &format!("{}/", back.display())]);
    let want: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(std::fs::read_to_string(back.join("numbers.txt")).unwrap(), want);
    assert_eq!(std::fs::read_to_string(back.join("logs/run.log")).unwrap(), "done\n");
}

/// The configuration of a node on `cluster` with `token`, written under `dir`; returns the file.
fn arvados_config(dir: &Path, cluster: &Cluster, token: &str) -> std::path::PathBuf {
    let conf = dir.join("cafsd.toml");
    std::fs::write(&conf, cluster.cafsd_config(dir, token, true)).unwrap();
    conf
}

#[test]
fn check_config_tries_keep_and_the_api_and_a_wrong_token_is_named() {
    let cluster = Cluster::start(ClusterOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let check = |conf: &Path| {
        let mut cmd = std::process::Command::new(cafs_tests::mount::bin("cafsd"));
        cmd.arg("--config").arg(conf).arg("--state-dir").arg(tmp.path().join("state")).arg("--check-config");
        cafs_tests::run_bounded(&mut cmd, Duration::from_secs(120))
    };
    let good = tmp.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let out = check(&arvados_config(&good, &cluster, &cluster.token));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("block store: ok") && text.contains("catalog: ok"), "{text}");
    assert!(!text.contains(cluster.token.rsplit('/').next().unwrap()), "no token printed: {text}");

    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let out = check(&arvados_config(&bad, &cluster, "v2/zzzzz-gj3su-000000000000009/wrongsecretwrongsecret"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused the token"), "{err}");
    assert!(!err.contains("wrongsecret"), "the token is not shown: {err}");
}

#[test]
fn signatures_are_renewed_before_a_commit_needs_them() {
    // A 6 s signature lifetime: a commit 3.5 s after a block was written renews its signature (writes the block
    // again), so a commit after the first signature expired still names the block with one Keep accepts.
    let cluster = Cluster::start(ClusterOptions { signature_ttl: Duration::from_secs(6), ..ClusterOptions::default() });
    let tmp = tempfile::tempdir().unwrap();
    let node = arvados_node(tmp.path(), &cluster, &cluster.token.clone());
    let dir = node.job_dir("out", JOB);
    let d = dir.to_str().unwrap();
    ok(&node.fsctl(JOB, &["mount", "renewed", d]));
    ok(&sh_as(JOB, &dir, "head -c 5000000 /dev/urandom > kept.bin && echo 1 > n"));
    ok(&node.fsctl(JOB, &["commit", d, "-m", "1"]));
    let puts = |c: &Cluster| (0..2).map(|i| c.puts(i)).sum::<u64>();
    let before = puts(&cluster);
    std::thread::sleep(Duration::from_millis(3500));
    ok(&sh_as(JOB, &dir, "echo 2 > n"));
    ok(&node.fsctl(JOB, &["commit", d, "-m", "2"]));
    assert!(puts(&cluster) >= before + 2 * 2, "kept.bin's block and n's written again, twice each");
    std::thread::sleep(Duration::from_millis(3500));
    // The first signatures have expired now.
    ok(&sh_as(JOB, &dir, "echo 3 > n"));
    ok(&node.fsctl(JOB, &["commit", d, "-m", "3"]));
    ok(&node.fsctl(JOB, &["umount", d]));
    let uuid = cluster.collections_named("renewed")[0].uuid.clone();
    let back = tmp.path().join("back");
    std::fs::create_dir(&back).unwrap();
    cluster.arv("arv-get", &[&format!("{uuid}/"), &format!("{}/", back.display())]);
    assert_eq!(std::fs::read_to_string(back.join("n")).unwrap(), "3\n");
    assert_eq!(std::fs::metadata(back.join("kept.bin")).unwrap().len(), 5_000_000);
}

#[test]
fn the_smoke_script_for_real_clusters_passes_on_the_test_cluster() {
    let cluster = Cluster::start(ClusterOptions::default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/arvados-smoke.sh");
    // cafsd as the tests build it, and the SDK's python3 and arv-get, first on PATH.
    let cafsd_dir = cafs_tests::mount::bin("cafsd").parent().unwrap().to_path_buf();
    let sdk_dir = cafs_tests::sdk::python().parent().unwrap().to_path_buf();
    let path = format!("{}:{}:{}", cafsd_dir.display(), sdk_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg(cluster.project()).envs(cluster.env()).env("PATH", path);
    let out = cafs_tests::run_bounded(&mut cmd, Duration::from_secs(300));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed") && text.contains("identical: 101 files"), "{text}");
    assert!(text.contains("trashed collection"), "{text}");
    assert!(!text.contains(cluster.token.rsplit('/').next().unwrap()), "no token printed");
    let list = cluster.state.collections.lock().unwrap();
    let made: Vec<_> = list.iter().filter(|c| c.name.starts_with("cafs-smoke-")).collect();
    assert!(!made.is_empty() && made.iter().all(|c| c.trashed), "the script's collection, trashed: {made:?}");
}
