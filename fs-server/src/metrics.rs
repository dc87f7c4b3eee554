//! cafsd's metrics, in the Prometheus text format, for an operator's dashboards and alerts.
//!
//! One process-wide registry ([`metrics`]) holds what cafsd counts as it works: FUSE requests by kind with
//! their latency (counted where the vfs lets a request in), bytes read and written through FUSE, block store
//! and catalog calls by kind with their latency and errors (counted by [`MeteredStore`] and [`MeteredCatalog`],
//! which wrap the backends a node opens), blocks and bytes uploaded and fetched, commits and their conflicts.
//! What is a level rather than a count (mounts served, memory held for uploads, blocks queued, in flight or
//! failed, the journals' size) is read from the mounts when a scrape asks, and the block caches' hits, misses
//! and evictions from their process-wide totals.
//!
//! [`serve`] answers `GET /metrics` over HTTP/1.1 on a loopback address or a Unix socket (`[metrics] listen` in
//! the config; off by default): the numbers say which refs are busy, so they are not served to the network.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod backends;
mod http;

pub use backends::{MeteredCatalog, MeteredStore};
pub use http::serve;

/// Where metrics are served: `[metrics] listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback address and port.
    Tcp(std::net::SocketAddr),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResult {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

/// What is a level, not a count: read from the mounts when a scrape asks (by the server, which has them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    pub mounts: u64,
    pub held_bytes: u64,
    pub queued_blocks: u64,
    pub in_flight_blocks: u64,
    pub failed_blocks: u64,
    pub journal_bytes: u64,
}

type Latency = Family<Op, Histogram, fn() -> Histogram>;

/// Latency buckets from 10 µs to about 40 s, four times wider each.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

/// Every metric cafsd keeps, registered once.
pub struct Metrics {
    registry: Registry,
    fuse_requests: Family<Op, Counter>,
    fuse_latency: Latency,
    fuse_bytes: Family<Direction, Counter>,
    store_requests: Family<OpResult, Counter>,
    store_latency: Latency,
    store_bytes: Family<Direction, Counter>,
    catalog_requests: Family<OpResult, Counter>,
    catalog_latency: Latency,
    commits: Family<Outcome, Counter>,
    mounts: Gauge,
    held_bytes: Gauge,
    queued_blocks: Gauge,
    in_flight_blocks: Gauge,
    failed_blocks: Gauge,
    journal_bytes: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("cafs");
        let m = Self {
            fuse_requests: Family::default(),
            fuse_latency: Family::new_with_constructor(latency),
            fuse_bytes: Family::default(),
            store_requests: Family::default(),
            store_latency: Family::new_with_constructor(latency),
            store_bytes: Family::default(),
            catalog_requests: Family::default(),
            catalog_latency: Family::new_with_constructor(latency),
            commits: Family::default(),
            mounts: Gauge::default(),
            held_bytes: Gauge::default(),
            queued_blocks: Gauge::default(),
            in_flight_blocks: Gauge::default(),
            failed_blocks: Gauge::default(),
            journal_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("fuse_requests", "FUSE requests answered, by kind", m.fuse_requests.clone());
        r.register("fuse_request_duration_seconds", "Time to answer a FUSE request, by kind", m.fuse_latency.clone());
        r.register(
            "fuse_bytes",
            "Bytes read and written through FUSE (direction: read, written)",
            m.fuse_bytes.clone(),
        );
        r.register("store_requests", "Block store calls, by kind and result", m.store_requests.clone());
        r.register("store_request_duration_seconds", "Time of a block store call, by kind", m.store_latency.clone());
        r.register(
            "store_bytes",
            "Block bytes stored and fetched (direction: uploaded, fetched)",
            m.store_bytes.clone(),
        );
        r.register("catalog_requests", "Catalog calls, by kind and result", m.catalog_requests.clone());
        r.register("catalog_request_duration_seconds", "Time of a catalog call, by kind", m.catalog_latency.clone());
        r.register("commits", "Commits to refs, by result (ok, conflict, refused, error)", m.commits.clone());
        r.register("mounts", "Collections served (a namespace mount's open views each count)", m.mounts.clone());
        r.register("held_bytes", "Memory holding written data until the store has it", m.held_bytes.clone());
        r.register("queued_blocks", "Blocks waiting for an upload slot", m.queued_blocks.clone());
        r.register("in_flight_blocks", "Blocks being uploaded", m.in_flight_blocks.clone());
        r.register("failed_blocks", "Blocks whose upload failed and waits for the next flush", m.failed_blocks.clone());
        r.register(
            "journal_bytes",
            "Size of the writable mounts' journals (cut back to nothing at each commit)",
            m.journal_bytes.clone(),
        );
        r.register_collector(Box::new(CacheCollector));
        Self { registry, ..m }
    }

    /// Counts one FUSE request of kind `op` when the returned guard is dropped, with the time it was held.
    pub fn fuse(&self, op: &'static str) -> FuseRequest {
        FuseRequest { op, started: Instant::now() }
    }

    pub fn fuse_read(&self, bytes: usize) {
        self.fuse_bytes.get_or_create(&Direction { direction: "read" }).inc_by(bytes as u64);
    }

    pub fn fuse_written(&self, bytes: usize) {
        self.fuse_bytes.get_or_create(&Direction { direction: "written" }).inc_by(bytes as u64);
    }

    /// The metrics as a scrape sees them, with `levels` (read from the mounts just now) when given.
    pub fn render(&self, levels: Option<&Levels>) -> String {
        if let Some(l) = levels {
            let level = |g: &Gauge, n: u64| g.set(i64::try_from(n).unwrap_or(i64::MAX));
            level(&self.mounts, l.mounts);
            level(&self.held_bytes, l.held_bytes);
            level(&self.queued_blocks, l.queued_blocks);
            level(&self.in_flight_blocks, l.in_flight_blocks);
            level(&self.failed_blocks, l.failed_blocks);
            level(&self.journal_bytes, l.journal_bytes);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The node's disk cache, once one is open (one a process).
static DISK_CACHE: std::sync::OnceLock<std::sync::Arc<crate::store::DiskCache>> = std::sync::OnceLock::new();

/// Counts `cache` in the metrics (the first one given; a process opens one).
pub fn watch_disk_cache(cache: std::sync::Arc<crate::store::DiskCache>) {
    let _ = DISK_CACHE.set(cache);
}

/// The block caches' totals, read at each scrape (they are counted where blocks are read, below this layer).
#[derive(Debug)]
struct CacheCollector;

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = crate::fs::cache::totals();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        let mut counters = vec![
            ("block_cache_hits", "Block reads served from a mount's memory cache", load(&t.hits)),
            ("block_cache_misses", "Block reads that waited for a fetch from the store", load(&t.misses)),
            ("block_cache_evictions", "Blocks let go to keep a cache within its size", load(&t.evicted)),
        ];
        let mut gauges = Vec::new();
        if let Some(d) = DISK_CACHE.get().map(|c| c.stats()) {
            counters.extend([
                ("disk_cache_hits", "Block fetches served from the node's disk cache", d.hits),
                ("disk_cache_misses", "Block fetches that went to the remote store", d.misses),
                ("disk_cache_fills", "Blocks kept in the disk cache", d.fills),
                ("disk_cache_skipped", "Blocks not kept: no room above min_free, or a failed write", d.skipped),
                ("disk_cache_evictions", "Blocks let go to keep the disk cache within max_size", d.evictions),
                ("disk_cache_corrupt", "Cached blocks that failed their check and were deleted", d.corrupt),
            ]);
            gauges.extend([
                ("disk_cache_blocks", "Blocks in the disk cache", d.blocks),
                ("disk_cache_bytes", "Bytes of blocks in the disk cache", d.bytes),
            ]);
        }
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        for (name, help, value) in gauges {
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// A FUSE request being answered; counted when dropped.
pub struct FuseRequest {
    op: &'static str,
    started: Instant,
}

impl Drop for FuseRequest {
    fn drop(&mut self) {
        let m = metrics();
        let op = Op { op: self.op };
        m.fuse_requests.get_or_create(&op).inc();
        m.fuse_latency.get_or_create(&op).observe(self.started.elapsed().as_secs_f64());
    }
}

/// Parses `[metrics] listen`: `HOST:PORT` with a loopback host, or an absolute path (a Unix socket).
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.starts_with('/') {
        return Ok(Listen::Unix(PathBuf::from(text)));
    }
    let addr: std::net::SocketAddr = text
        .parse()
        .map_err(|_| format!("[metrics] listen = {text:?}: give a loopback IP:PORT or an absolute socket path"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "[metrics] listen = {text:?}: metrics are served on loopback or a Unix socket only (put a proxy in \
             front to publish them)"
        ));
    }
    Ok(Listen::Tcp(addr))
}

/// Times `call` and counts it under `op` in `requests` and `latency`; `classify` names the result.
async fn timed<T, E>(
    requests: &Family<OpResult, Counter>,
    latency: &Latency,
    op: &'static str,
    classify: impl FnOnce(&Result<T, E>) -> &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let r = call.await;
    latency.get_or_create(&Op { op }).observe(started.elapsed().as_secs_f64());
    requests.get_or_create(&OpResult { op, result: classify(&r) }).inc();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_loopback_or_a_socket_path() {
        assert_eq!(parse_listen("127.0.0.1:9464"), Ok(Listen::Tcp("127.0.0.1:9464".parse().unwrap())));
        assert_eq!(parse_listen("[::1]:9464"), Ok(Listen::Tcp("[::1]:9464".parse().unwrap())));
        assert_eq!(parse_listen("/run/cafs/metrics.sock"), Ok(Listen::Unix("/run/cafs/metrics.sock".into())));
        assert!(parse_listen("0.0.0.0:9464").unwrap_err().contains("loopback"));
        assert!(parse_listen("10.1.2.3:9464").unwrap_err().contains("loopback"));
        assert!(parse_listen("localhost:9464").is_err());
        assert!(parse_listen("metrics.sock").is_err());
    }

    #[test]
    fn a_request_shows_in_the_text_format() {
        drop(metrics().fuse("statfs"));
        metrics().fuse_written(10);
        let text = metrics().render(None);
        assert!(text.contains("cafs_fuse_requests_total{op=\"statfs\"}"), "{text}");
        assert!(text.contains("cafs_fuse_request_duration_seconds_bucket{le="), "{text}");
        assert!(text.contains("cafs_fuse_bytes_total{direction=\"written\"}"), "{text}");
        assert!(text.contains("# TYPE cafs_mounts gauge"), "{text}");
        assert!(text.contains("# TYPE cafs_journal_bytes gauge"), "{text}");
        assert!(text.contains("cafs_block_cache_hits_total "), "{text}");
        assert!(text.contains("# TYPE cafs_block_cache_misses counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
