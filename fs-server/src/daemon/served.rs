//! What one served mount is: a collection's mount ([`Served`]) or a namespace mount ([`NamespaceServed`]), who
//! may drive it, its upload rate, and how it ended.

use super::*;

/// What every served mount has, whatever it shows: its place, its owner, and how its kernel side is kept.
pub struct Point {
    pub dir: PathBuf,
    /// The mount's owner (the mount point's owner): who may drive it besides root.
    pub uid: u32,
    pub gid: u32,
    /// The helper, or systemd's fd store, holds a duplicate of the mount's fd: the mount can outlive this cafsd.
    pub held: bool,
    /// The name systemd's fd store keeps the mount's fd under, when it does.
    pub(super) fdname: Option<String>,
    /// In front of the mount's requests (closed to keep the mount for the next cafsd).
    pub(super) gate: Arc<Gate>,
}

/// One served collection: a mount of its own, or a collection opened in a namespace mount.
pub struct Served {
    pub at: Point,
    pub coll: Arc<Collection>,
    pub control: Arc<Control>,
    /// Zero: never.
    pub autocommit: Duration,
    /// Set by an unmount that drops uncommitted changes.
    pub(super) discard: AtomicBool,
    pub(super) throughput: Mutex<Throughput>,
    /// Set once the mount is gone and its last commit was attempted: the hash it ended at, or why that commit
    /// failed.
    pub(super) ended: Ending<Option<Pdh>>,
    /// For a collection shown in a namespace mount: that mount's point (it is unmounted as a whole).
    pub part_of: Option<PathBuf>,
}

/// A namespace mount: the whole catalog at one mount point. Each collection opened in it is registered as a
/// [`Served`] of its own at its path below the mount point, so that `fsctl commit`, `flush` and `status` reach
/// it by that path.
pub struct NamespaceServed {
    pub at: Point,
    pub ns: Arc<Namespace>,
    /// Set once the mount is gone and its collections' last commits were attempted.
    pub(super) ended: Ending<()>,
}

/// What a mount came to, once it is gone and its last commits were attempted, for whoever waits on it.
pub(super) struct Ending<T>(tokio::sync::watch::Sender<Option<Result<T, String>>>);

impl<T: Clone + Default> Ending<T> {
    pub(super) fn new() -> Self {
        Self(tokio::sync::watch::channel(None).0)
    }

    pub(super) fn set(&self, outcome: Result<T, String>) {
        self.0.send_replace(Some(outcome));
    }

    /// The outcome, if the mount is gone.
    pub(super) fn get(&self) -> Option<Result<T, String>> {
        self.0.borrow().clone()
    }

    pub(super) async fn wait(&self) -> Result<T, String> {
        let mut rx = self.0.subscribe();
        let done = rx.wait_for(Option::is_some).await.map_err(|_| "cafsd is stopping".to_string())?;
        done.clone().unwrap_or(Ok(T::default()))
    }
}

impl Point {
    /// Whether `uid` may `what` this mount: its owner and root may.
    pub fn check_owner(&self, uid: u32, what: &'static str) -> Result<(), ServerError> {
        if uid == 0 || uid == self.uid {
            Ok(())
        } else {
            Err(ServerError::NotOwner { path: self.dir.clone(), owner: self.uid, uid, what })
        }
    }
}

impl NamespaceServed {
    pub fn read_only(&self) -> bool {
        !self.ns.has_writable()
    }

    pub(super) async fn ended(&self) -> Result<(), String> {
        self.ended.wait().await
    }
}

impl Served {
    /// Bytes per second stored by this mount's uploads over the last few seconds.
    pub fn upload_rate(&self) -> f64 {
        self.throughput.lock().unwrap_or_else(|p| p.into_inner()).rate()
    }

    /// Waits until the mount is gone; returns the hash it ended at.
    pub async fn ended(&self) -> Result<Option<Pdh>, String> {
        self.ended.wait().await
    }
}

/// Samples of a mount's uploaded-bytes counter, one a second, for a rate over a short window.
#[derive(Default)]
pub(super) struct Throughput {
    samples: VecDeque<(Instant, u64)>,
}

impl Throughput {
    const WINDOW: Duration = Duration::from_secs(5);

    pub(super) fn sample(&mut self, now: Instant, bytes: u64) {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= Self::WINDOW {
            self.samples.pop_front();
        }
    }

    pub(super) fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}
