//! Two worker nodes, one cluster: two cafsd instances, each with its own state directory and its own helper,
//! sharing one Garage bucket and one PostgreSQL database that the test starts on loopback ports. Node A writes
//! and commits; node B mounts the ref read-only and reads identical bytes, then follows A's later commits; both
//! writing one ref, exactly one commit wins and the other node keeps its tree. Also `cafsd --check-config`
//! against the real servers, and the node's disk cache: a restarted node reads a collection again without one
//! GET to Garage (counted in Garage's request log), a damaged cached block is fetched again, a full cache disk
//! only means reads from the store, a read larger than the cache leaves it within its bound. Needs root and
//! /dev/fuse.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cafs_tests::servers::{Garage, Postgres};
use cafs_tests::stack::{NOBODY, Stack, ok, sh_as};
use cafs_tests::wait_for;

/// The size of a full block.
const BLOCK: u64 = 64 << 20;

const JOB: u32 = 1000;

/// Writes a node's configuration (S3 on `garage`, PostgreSQL database `db`), its secrets readable only by the
/// user cafsd runs as. Returns the config file.
fn node_config(dir: &Path, garage: &Garage, pg: &Postgres, db: &str, refresh: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let secret = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        p
    };
    let creds = secret(
        "s3.toml",
        &format!("access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n", garage.key_id, garage.secret),
    );
    let password = secret("pg.password", &format!("{}\n", pg.password));
    let config = dir.join("cafsd.toml");
    std::fs::write(
        &config,
        format!(
            "ref_refresh_seconds = {refresh}\n[store]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\n\
             prefix = \"blocks\"\ncredentials_file = \"{}\"\n[catalog]\nkind = \"postgres\"\nurl = \"{}\"\n\
             password_file = \"{}\"\n",
            garage.endpoint(0),
            garage.bucket,
            creds.display(),
            pg.url(db),
            password.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    config
}

/// Every entry below `dir` with its type, size, mode and (for a file) MD5, read as the job user (the mounts are
/// theirs: nobody else may enter them).
fn tree(dir: &Path) -> String {
    ok(&sh_as(
        JOB,
        dir,
        "find . -mindepth 1 -printf '%P %y %s %m ' -exec sh -c 'if [ -f \"$1\" ]; then md5sum < \"$1\"; else echo; fi' _ {} \\; | sort",
    ))
}

/// A test directory (others may enter it: cafsd and PostgreSQL run unprivileged), a Garage cluster of `nodes`
/// nodes and a PostgreSQL server with an empty database `db`.
fn servers(nodes: usize, db: &str) -> (tempfile::TempDir, Garage, Postgres) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let garage = Garage::start(&tmp.path().join("servers"), nodes);
    let pg = Postgres::start(&tmp.path().join("servers"));
    pg.create_db(db);
    (tmp, garage, pg)
}

#[test]
fn two_nodes_share_blocks_and_collections() {
    let (tmp, garage, pg) = servers(1, "cluster");
    let (base_a, base_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&base_a).unwrap();
    std::fs::create_dir_all(&base_b).unwrap();
    let conf_a = node_config(&tmp.path().join("conf-a"), &garage, &pg, "cluster", 1);
    let conf_b = node_config(&tmp.path().join("conf-b"), &garage, &pg, "cluster", 1);
    let a = Stack::start(&base_a, &["--autocommit", "0", "--config", conf_a.to_str().unwrap()]);
    let b = Stack::start(&base_b, &["--autocommit", "0", "--config", conf_b.to_str().unwrap()]);

    // Node A writes a large file (several blocks), small files and a tree, and commits.
    let dir_a = a.job_dir("out", JOB);
    let da = dir_a.to_str().unwrap().to_string();
    ok(&a.fsctl(JOB, &["mount", "results", &da]));
    ok(&sh_as(
        JOB,
        &dir_a,
        "head -c 150000000 /dev/urandom > big.bin && mkdir -p sub/deep && for i in $(seq 200); do echo \"file $i\" > sub/f$i.txt; done \
         && echo deep > sub/deep/x && chmod 640 sub/f7.txt",
    ));
    let v1 = ok(&a.fsctl(JOB, &["commit", &da, "-m", "from node A"])).trim().to_string();

    // Node B, its own state directory, mounts the ref read-only: the same bytes, modes and hash.
    let dir_b = b.job_dir("view", JOB);
    let db_ = dir_b.to_str().unwrap().to_string();
    ok(&b.fsctl(JOB, &["mount", "results", &db_, "--ro"]));
    let (ta, tb) = (tree(&dir_a), tree(&dir_b));
    assert!(ta.lines().count() > 200, "{ta}");
    assert_eq!(ta, tb, "node B reads what node A committed");
    let status_b = ok(&b.fsctl(JOB, &["status", &db_, "--json"]));
    assert!(status_b.contains(&v1), "B shows A's hash {v1}: {status_b}");
    // No block lives on B's disk: they are all in the shared bucket.
    assert!(!b.state().join("blocks").exists(), "node B keeps no local block store");

    // A commits again; B follows within its refresh interval (1 s here) without remounting.
    ok(&sh_as(JOB, &dir_a, "echo changed > sub/f1.txt && rm sub/f2.txt && echo added > new.txt"));
    let v2 = ok(&a.fsctl(JOB, &["commit", &da, "-m", "second"])).trim().to_string();
    assert_ne!(v1, v2);
    let read_b = |script: &str| String::from_utf8_lossy(&sh_as(JOB, &dir_b, script).stdout).into_owned();
    wait_for("node B shows the new version", Duration::from_secs(15), || {
        read_b("cat new.txt 2>/dev/null") == "added\n"
    });
    assert_eq!(read_b("cat sub/f1.txt"), "changed\n");
    assert_eq!(read_b("test -e sub/f2.txt || echo gone"), "gone\n");
    assert_eq!(tree(&dir_a), tree(&dir_b), "node B shows exactly A's second version");
    assert!(ok(&b.fsctl(JOB, &["status", &db_, "--json"])).contains(&v2));
    // The read-only view refuses writes.
    let w = sh_as(JOB, &dir_b, "echo x > nope.txt");
    assert!(!w.status.success());

    // Both nodes write the same ref: exactly one commit wins, the other is refused and keeps its tree.
    let dir_b2 = b.job_dir("writer", JOB);
    let db2 = dir_b2.to_str().unwrap().to_string();
    ok(&b.fsctl(JOB, &["mount", "results", &db2]));
    ok(&sh_as(JOB, &dir_a, "echo from-a > race.txt"));
    ok(&sh_as(JOB, &dir_b2, "echo from-b > race.txt"));
    ok(&a.fsctl(JOB, &["commit", &da, "-m", "A wins"]));
    let lost = b.fsctl(JOB, &["commit", &db2, "-m", "B loses"]);
    assert_eq!(lost.status.code(), Some(1), "the later commit is refused: {}", String::from_utf8_lossy(&lost.stderr));
    assert!(String::from_utf8_lossy(&lost.stderr).contains("conflict"), "{}", String::from_utf8_lossy(&lost.stderr));
    assert_eq!(ok(&sh_as(JOB, &dir_b2, "cat race.txt")), "from-b\n", "B's tree is kept");
    let log = ok(&a.fsctl(JOB, &["log", "results"]));
    assert_eq!(log.lines().filter(|l| !l.trim().is_empty()).count(), 3, "three versions, none lost: {log}");
    // B keeps its work under another ref.
    ok(&b.fsctl(JOB, &["commit", &db2, "--into", "results.conflict", "-m", "B's tree"]));

    ok(&b.fsctl(JOB, &["umount", &db2, "--discard"]));
    ok(&b.fsctl(JOB, &["umount", &db_]));
    ok(&a.fsctl(JOB, &["umount", &da]));
}

#[test]
fn check_config_tests_each_backend_with_clear_messages() {
    let (tmp, mut garage, pg) = servers(1, "checked");
    let conf = node_config(&tmp.path().join("conf"), &garage, &pg, "checked", 5);
    let state = tmp.path().join("state");
    let check = |conf: &Path| {
        let mut cmd = std::process::Command::new(cafs_tests::mount::bin("cafsd"));
        cmd.arg("--config").arg(conf).arg("--state-dir").arg(&state).arg("--check-config");
        cafs_tests::run_bounded(&mut cmd, Duration::from_secs(120))
    };
    let out = check(&conf);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", text, String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("block store: ok") && text.contains("catalog: ok"), "{text}");
    assert!(!text.contains(&garage.secret) && !text.contains(&pg.password), "no secret is printed");

    // A wrong database password: exit 1, saying so, and no secret printed.
    let bad = tmp.path().join("conf/bad-pg.toml");
    std::fs::write(&bad, std::fs::read_to_string(&conf).unwrap().replace("pg.password", "wrong.password")).unwrap();
    let wrong = tmp.path().join("conf/wrong.password");
    std::fs::write(&wrong, "nope\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("catalog") && err.contains("password authentication failed"), "{err}");
    // A secret file others can read is refused.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = String::from_utf8_lossy(&check(&bad).stderr).into_owned();
    assert!(err.contains("chmod 600"), "{err}");
    // The store down: exit 1, naming the block store.
    garage.kill_node(0);
    let out = check(&conf);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("block store"), "{err}");
    // A typo in the file: exit 1, naming the key.
    let typo = tmp.path().join("conf/typo.toml");
    std::fs::write(&typo, "[store]\nkind = \"s3\"\nendpiont = \"http://x\"\nbucket = \"b\"\n").unwrap();
    let err = String::from_utf8_lossy(&check(&typo).stderr).into_owned();
    assert!(err.contains("endpiont"), "{err}");
}

/// A three-node Garage cluster (replication factor 3, each node its own zone): one node is killed in the middle
/// of a large write, before the commit. The writer sees no error, the commit succeeds, and the collection reads
/// back intact — mounted again, from the store — while that node is still down.
#[test]
fn losing_a_storage_node_mid_write_loses_nothing() {
    let (tmp, mut garage, pg) = servers(3, "nodeloss");
    let conf = node_config(&tmp.path().join("conf"), &garage, &pg, "nodeloss", 1);
    std::fs::create_dir_all(tmp.path().join("node")).unwrap();
    let node = Stack::start(&tmp.path().join("node"), &["--autocommit", "0", "--config", conf.to_str().unwrap()]);
    let dir = node.job_dir("big", JOB);
    let d = dir.to_str().unwrap().to_string();
    ok(&node.fsctl(JOB, &["mount", "nodeloss", &d]));

    // A writer streams 400 MB of random bytes (with its MD5 computed on the way) and fsyncs; node 2 dies
    // when about a third is written.
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg("head -c 400000000 /dev/urandom | tee big.bin | md5sum > ../big.md5 && sync big.bin")
        .current_dir(&dir)
        .uid(JOB)
        .gid(JOB)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = cafs_tests::Terminate(writer);
    wait_for("a third written", Duration::from_secs(120), || {
        let out = sh_as(JOB, &dir, "stat -c %s big.bin 2>/dev/null");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().is_ok_and(|n| n > 130_000_000)
    });
    garage.kill_node(2);
    let status = loop {
        if let Some(s) = writer.0.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(writer.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "the writer saw no error: {err}");
    let pdh = ok(&node.fsctl(JOB, &["commit", &d, "-m", "one node down"])).trim().to_string();
    assert!(!pdh.is_empty());
    ok(&node.fsctl(JOB, &["umount", &d]));

    // Node 2 is still down: the committed hash mounts and reads back byte for byte.
    let view = node.job_dir("view", JOB);
    let v = view.to_str().unwrap().to_string();
    ok(&node.fsctl(JOB, &["mount", &pdh, &v]));
    let want = std::fs::read_to_string(node.base.join("jobs/big.md5")).unwrap();
    let got = ok(&sh_as(JOB, &view, "md5sum < big.bin"));
    assert_eq!(got, want, "the collection reads back intact with a storage node down");
    ok(&node.fsctl(JOB, &["umount", &v]));
}

/// The blocks files under a node's disk cache.
fn cached_blocks(cache: &Path) -> Vec<PathBuf> {
    let fans = std::fs::read_dir(cache).map(|d| d.flatten().filter(|f| f.file_name().len() == 2).collect::<Vec<_>>());
    fans.unwrap_or_default()
        .iter()
        .flat_map(|f| std::fs::read_dir(f.path()).unwrap().flatten().map(|e| e.path()))
        .collect()
}

/// A node on `garage` and `pg` with `[cache]` set to `cache` (TOML lines), where a job has written and committed
/// `blocks` full blocks of random bytes and one of 8 MiB as `big.bin` in the ref `inputs`.
struct CacheNode {
    node: Stack,
    args: Vec<String>,
    dir: PathBuf,
    /// `md5sum big.bin` as the job saw it written.
    want: String,
}

impl CacheNode {
    fn start(tmp: &Path, garage: &Garage, pg: &Postgres, db: &str, cache: &str, blocks: u64) -> Self {
        let base = tmp.join("node");
        std::fs::create_dir_all(&base).unwrap();
        let conf = node_config(&tmp.join("conf"), garage, pg, db, 0);
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}[cache]\n{cache}")).unwrap();
        let args: Vec<String> =
            ["--autocommit", "0", "--config", conf.to_str().unwrap()].iter().map(|a| a.to_string()).collect();
        let node = Stack::start(&base, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let dir = node.job_dir("data", JOB);
        let d = dir.to_str().unwrap();
        ok(&node.fsctl(JOB, &["mount", "inputs", d]));
        let size = blocks * BLOCK + (8 << 20);
        let job = format!("head -c {size} /dev/urandom | tee big.bin | md5sum | sed s/-/big.bin/");
        let want = ok(&sh_as(JOB, &dir, &job));
        ok(&node.fsctl(JOB, &["commit", d, "-m", "inputs"]));
        ok(&node.fsctl(JOB, &["umount", d]));
        Self { node, args, dir, want }
    }

    /// `md5sum big.bin` through a read-only mount of `inputs`.
    fn read(&self) -> String {
        let d = self.dir.to_str().unwrap();
        ok(&self.node.fsctl(JOB, &["mount", "inputs", d, "--ro"]));
        let got = ok(&sh_as(JOB, &self.dir, "md5sum big.bin"));
        ok(&self.node.fsctl(JOB, &["umount", d]));
        got
    }

    /// cafsd stopped and started again, with the page cache dropped in between.
    fn restart(&mut self) {
        self.node.stop_cafsd();
        std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
        self.node.start_cafsd(&self.args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&self.node.fsctl(JOB, &["status", "--json"]))).unwrap()
    }
}

#[test]
fn a_node_reads_a_collection_again_from_its_disk_cache_without_asking_the_store() {
    let (tmp, garage, pg) = servers(1, "diskcache");
    // 2 GiB and 8 MiB: 32 blocks of 64 MiB and one of 8 MiB.
    let mut n = CacheNode::start(tmp.path(), &garage, &pg, "diskcache", "max_size = \"3GiB\"\n", 32);
    let cache = n.node.state().join("cache");
    assert!(cached_blocks(&cache).is_empty(), "uploads do not fill the cache (write-through is off)");

    // The first read fetches every block from Garage and keeps it.
    let gets = garage.get_object_requests();
    assert_eq!(n.read(), n.want);
    let fetched = garage.get_object_requests() - gets;
    assert!(fetched >= 33, "the blocks came from Garage: {fetched} GETs");
    wait_for("the blocks in the disk cache", Duration::from_secs(30), || cached_blocks(&cache).len() == 33);

    // After a restart of cafsd, with the page cache dropped: every byte from the disk cache, no GET.
    n.restart();
    let gets = garage.get_object_requests();
    assert_eq!(n.read(), n.want);
    assert_eq!(garage.get_object_requests() - gets, 0, "no GET to Garage for cached blocks");

    // A cached block damaged on disk is never served: it is deleted and fetched again, once.
    let damaged = cached_blocks(&cache).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[1000] ^= 0x40;
    let file = std::fs::OpenOptions::new().write(true).open(&damaged).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 0).unwrap();
    n.restart();
    let gets = garage.get_object_requests();
    assert_eq!(n.read(), n.want);
    assert_eq!(garage.get_object_requests() - gets, 1, "only the damaged block is fetched again");

    // What the cache holds and did, for any user; emptied by root only.
    let status = n.status();
    let cache_status = &status["server"]["disk_cache"];
    assert_eq!(cache_status["max_size"], 3u64 << 30, "{status}");
    assert!(cache_status["hits"].as_u64().unwrap() >= 32 && cache_status["corrupt"] == 1, "{status}");
    let refused = n.node.fsctl(JOB, &["cache", "drop"]);
    assert!(!refused.status.success(), "a job user may not drop the node's cache");
    wait_for("the refetched block back in the cache", Duration::from_secs(30), || cached_blocks(&cache).len() == 33);
    let dropped: serde_json::Value = serde_json::from_str(&ok(&n.node.fsctl(0, &["cache", "drop", "--json"]))).unwrap();
    assert_eq!(dropped["blocks"], 33, "{dropped}");
    assert!(cached_blocks(&cache).is_empty());
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0777"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_cache_disk_only_means_reads_from_the_store() {
    let (tmp, garage, pg) = servers(1, "fullcache");
    // A 100 MiB disk for a cache allowed 1 GiB: one 64 MiB block fits, the rest find the disk full.
    let disk = Tmpfs::mount(&tmp.path().join("cache-disk"), "100m");
    let cache = format!("dir = \"{}\"\nmax_size = \"1GiB\"\nmin_free = 0\n", disk.0.join("c").display());
    let mut n = CacheNode::start(tmp.path(), &garage, &pg, "fullcache", &cache, 4);
    for round in 0..2 {
        assert_eq!(n.read(), n.want, "round {round}: every byte, cached or not");
    }
    let status = n.status();
    let c = &status["server"]["disk_cache"];
    assert!(c["skipped"].as_u64().unwrap() >= 1, "fills found the disk full: {status}");
    assert!(c["bytes"].as_u64().unwrap() <= 100 << 20, "{status}");
    n.node.stop_cafsd();
    drop(n);
    drop(disk);
}

#[test]
fn the_disk_cache_stays_within_its_bound_under_a_larger_read() {
    let (tmp, garage, pg) = servers(1, "boundcache");
    // 264 MiB read through a cache of 130 MiB: at most two blocks of 64 MiB stay.
    let n = CacheNode::start(tmp.path(), &garage, &pg, "boundcache", "max_size = \"130MiB\"\n", 4);
    let cache = n.node.state().join("cache");
    for round in 0..2 {
        assert_eq!(n.read(), n.want, "round {round}");
        let status = n.status();
        let c = &status["server"]["disk_cache"];
        assert!(c["bytes"].as_u64().unwrap() <= 130 << 20, "{status}");
    }
    wait_for("the fills done", Duration::from_secs(30), || {
        let c = n.status()["server"]["disk_cache"].clone();
        c["fills"].as_u64().unwrap() >= 8 && c["evictions"].as_u64().unwrap() >= 6
    });
    let on_disk: u64 = cached_blocks(&cache).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(on_disk <= 130 << 20, "{on_disk} bytes on disk");
}
