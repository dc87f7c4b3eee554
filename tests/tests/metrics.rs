//! cafsd's metrics endpoint on the real stack (helper as root, cafsd as `nobody`, real mounts): scraped over its
//! Unix socket before and after a job writes, commits and reads back through FUSE, and parsed by the Prometheus
//! project's own Python client (`prometheus_client`'s OpenMetrics parser), so the format is checked by a reader
//! that is not ours. The counters move by what was done; levels follow the mounts; other paths and methods are
//! refused; a non-loopback address is refused at start. Needs root and /dev/fuse.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cafs_tests::mount::bin;
use cafs_tests::stack::{Stack, ok, sh_as};

const JOB: u32 = 1000;

/// Parses OpenMetrics text with `prometheus_client` and prints each sample as `name{k="v",...} value`, labels
/// sorted, one per line.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value!r}")
"#;

/// One HTTP/1.1 request on the socket: the status code and the body.
fn http(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: cafsd\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP reply: {reply:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, body.to_string())
}

/// A scrape, parsed by `prometheus_client`: sample (`name{labels}`) to value.
fn scrape(socket: &Path) -> HashMap<String, f64> {
    let (status, body) = http(socket, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), &body).unwrap();
    // The distribution's Python, where its python3-prometheus-client package is (not some other python3 on PATH).
    let mut py = Command::new("/usr/bin/python3");
    py.args(["-c", PARSE]).stdin(Stdio::from(std::fs::File::open(text.path()).unwrap()));
    let out = cafs_tests::run_bounded(&mut py, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the scrape: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, sample: &str) -> f64 {
    *m.get(sample).unwrap_or_else(|| {
        let mut names: Vec<_> = m.keys().collect();
        names.sort();
        panic!("{sample} is not in the scrape: {names:#?}")
    })
}

/// How much `sample` grew from `before` to `after` (absent before: from 0).
fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, sample: &str) -> f64 {
    get(after, sample) - before.get(sample).copied().unwrap_or(0.0)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_scrape_counts_what_a_job_did() {
    let tmp = tempfile::tempdir().unwrap();
    // The stack's cafsd (as `nobody`) owns tmp/stack/run, where its gRPC socket is.
    let socket = tmp.path().join("stack/run/metrics.sock");
    let stack = Stack::start_configured(tmp.path(), &format!("[metrics]\nlisten = \"{}\"\n", socket.display()), false);

    let before = scrape(&socket);
    assert_eq!(get(&before, "cafs_mounts{}"), 0.0);

    // A job: 6 MB in one file and 20 small ones, flushed, committed, unmounted.
    let dir = stack.job_dir("out", JOB);
    ok(&stack.fsctl(JOB, &["mount", "results", s(&dir)]));
    ok(&sh_as(JOB, &dir, "head -c 6000000 /dev/urandom > big && for i in $(seq 20); do echo $i > s$i; done"));
    let during = scrape(&socket);
    assert_eq!(get(&during, "cafs_mounts{}"), 1.0);
    // 21 files made and written, not committed: each is a journal record.
    assert!(get(&during, "cafs_journal_bytes{}") > 21.0 * 20.0, "{during:?}");
    ok(&stack.fsctl(JOB, &["flush", s(&dir), "--wait"]));
    let pdh = ok(&stack.fsctl(JOB, &["commit", s(&dir), "-m", "metrics"])).trim().to_string();
    ok(&stack.fsctl(JOB, &["umount", s(&dir)]));
    // Read back by hash in a fresh mount: through FUSE, not the page cache of the writable one.
    let ro = stack.job_dir("ro", JOB);
    ok(&stack.fsctl(JOB, &["mount", &pdh, s(&ro)]));
    ok(&sh_as(JOB, &ro, "cat big s* > /dev/null"));
    let read_once = scrape(&socket);
    // Again, past the page cache (O_DIRECT): the blocks come from the mount's block cache this time.
    ok(&sh_as(JOB, &ro, "dd if=big of=/dev/null bs=1M iflag=direct status=none"));
    let read_twice = scrape(&socket);
    ok(&stack.fsctl(JOB, &["umount", s(&ro)]));
    let after = scrape(&socket);

    // FUSE: the writes and reads, counted and timed by kind.
    assert!(grew(&before, &after, "cafs_fuse_bytes_total{direction=\"written\"}") >= 6_000_020.0);
    assert!(grew(&before, &after, "cafs_fuse_bytes_total{direction=\"read\"}") >= 6_000_020.0);
    let writes = grew(&before, &after, "cafs_fuse_requests_total{op=\"write\"}");
    assert!(writes >= 21.0, "{writes} writes");
    assert_eq!(
        get(&after, "cafs_fuse_request_duration_seconds_count{op=\"write\"}"),
        get(&after, "cafs_fuse_requests_total{op=\"write\"}")
    );
    assert!(grew(&before, &after, "cafs_fuse_requests_total{op=\"create\"}") >= 21.0);
    assert!(grew(&before, &after, "cafs_fuse_requests_total{op=\"lookup\"}") >= 1.0);
    // The store got the bytes; the catalog the commit.
    assert!(grew(&before, &after, "cafs_store_bytes_total{direction=\"uploaded\"}") >= 6_000_000.0);
    assert!(grew(&before, &after, "cafs_store_requests_total{op=\"put\",result=\"ok\"}") >= 1.0);
    assert!(get(&after, "cafs_store_request_duration_seconds_count{op=\"put\"}") >= 1.0);
    assert!(grew(&before, &after, "cafs_commits_total{result=\"ok\"}") >= 1.0);
    assert!(grew(&before, &after, "cafs_catalog_requests_total{op=\"commit\",result=\"ok\"}") >= 1.0);
    // The first read fetched the blocks (misses), the second found them in memory (hits, no new misses).
    assert!(grew(&before, &read_once, "cafs_block_cache_misses_total{}") >= 1.0, "{read_once:?}");
    assert!(grew(&read_once, &read_twice, "cafs_block_cache_hits_total{}") >= 1.0, "{read_twice:?}");
    assert_eq!(grew(&read_once, &read_twice, "cafs_block_cache_misses_total{}"), 0.0);
    assert_eq!(get(&after, "cafs_journal_bytes{}"), 0.0, "no writable mount is left");
    // Nothing held or failed once all is stored and unmounted.
    for level in ["cafs_mounts{}", "cafs_held_bytes{}", "cafs_queued_blocks{}", "cafs_failed_blocks{}"] {
        assert_eq!(get(&after, level), 0.0, "{level}");
    }

    // fsctl stats: the same numbers through the gRPC API, for any user.
    let stats: serde_json::Value = serde_json::from_str(&ok(&stack.fsctl(JOB, &["stats", "--json"]))).unwrap();
    let written = stats["cafs_fuse_bytes_total{direction=\"written\"}"].as_f64().unwrap();
    assert!(written >= get(&after, "cafs_fuse_bytes_total{direction=\"written\"}"), "{stats}");
    assert_eq!(stats["cafs_mounts"].as_f64(), Some(0.0), "{stats}");
    let table = ok(&stack.fsctl(JOB, &["stats"]));
    assert!(table.contains("cafs_fuse_request_duration_seconds_mean{op=\"write\"}"), "{table}");
    assert!(ok(&stack.fsctl(JOB, &["stats", "--raw"])).ends_with("# EOF\n"));

    // fsctl status --watch: a status every half second, one JSON object a line, until interrupted.
    ok(&stack.fsctl(JOB, &["mount", "results", s(&dir)]));
    let watch = stack.fsctl_cmd(JOB, &["status", s(&dir), "--watch", "--json"]);
    let mut timeout = Command::new("timeout");
    timeout.args(["-s", "INT", "2"]).arg(watch.get_program()).args(watch.get_args());
    std::os::unix::process::CommandExt::uid(&mut timeout, JOB);
    let out = cafs_tests::run_bounded(&mut timeout, Duration::from_secs(30));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 3, "{} replies in 2 s: {out:?}", lines.len());
    assert!(lines.iter().all(|l| l["mounts"][0]["mount"]["mount_point"].as_str() == Some(s(&dir))), "{lines:?}");
    ok(&stack.fsctl(JOB, &["umount", s(&dir)]));

    // Only GET (or HEAD) /metrics.
    assert_eq!(http(&socket, "GET", "/").0, 404);
    assert_eq!(http(&socket, "POST", "/metrics").0, 405);
    assert_eq!(http(&socket, "HEAD", "/metrics").0, 200);
}

#[test]
fn metrics_are_not_served_to_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    for (listen, why) in
        [("0.0.0.0:9464", "loopback"), ("localhost:9464", "loopback IP:PORT"), ("metrics.sock", "absolute")]
    {
        let conf = tmp.path().join("bad.toml");
        std::fs::write(&conf, format!("[metrics]\nlisten = \"{listen}\"\n")).unwrap();
        let out = cafs_tests::run_bounded(
            Command::new(bin("cafsd"))
                .arg("--config")
                .arg(&conf)
                .arg("--state-dir")
                .arg(tmp.path().join("state"))
                .arg("--check"),
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{listen}: {err}");
    }
}
