//! The gRPC API (`cafs.v1.Cafs`, tonic) over the registry of [`Server`]: who is calling, whether they may, and
//! the translation between the protocol's messages and the server's operations.
//!
//! Callers are identified by the kernel, not by anything they send: on the Unix socket, by the peer
//! credentials of the connection (a caller drives only the mounts it owns; root drives all). The optional TCP
//! listener has no peer credentials: a caller there must present the configured bearer token, and then acts as
//! an operator (all mounts). A ref's owner, group and mode decide who may mount it, commit to it and read its
//! history, for the caller's uid (see [`crate::policy`]); root, operators and token callers pass. Operations
//! that change state run as tasks of their own, so that a client that goes away mid-call (a killed `fsctl`)
//! cancels nothing half-done.
//!
//! Every field a request carries is checked before anything is looked up, relayed or changed, and a refusal
//! repeats at most the first few dozen bytes of what it refuses (a status message travels in an HTTP/2 header).

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cafs_mount::wire::{MountRequest as HelperMount, Origin};
use proto::v1::cafs_server::{Cafs, CafsServer};
use proto::v1::{self as pb, mount_request::Source};
use tokio_stream::Stream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::catalog::{AccessChange, CatalogError, Need, Principal, RefName, Writer};
use crate::collection::CollectionError;
use crate::daemon::{Mount, NamespaceServed, Served, Server, ServerError};
use crate::fs::inode::NAME_MAX;
use crate::manifest::Pdh;
use crate::policy::{CheckError, Policy};
use crate::vfs::control::check_message;

/// The largest request decoded (tonic's default, stated here): a larger one is refused before any handler runs.
/// The largest sensible request is a commit message of [`crate::vfs::control::MAX_MESSAGE`].
const MAX_REQUEST: usize = 4 << 20;

/// How many bytes of a refused input an error message repeats.
const SHOWN: usize = 64;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A local process, as the kernel reported it.
    Local { uid: u32, gid: u32 },
    /// A remote client that presented the token: an operator.
    Token,
}

impl Caller {
    /// The uid whose rights the caller has (an operator has root's).
    pub fn uid(self) -> u32 {
        match self {
            Caller::Local { uid, .. } => uid,
            Caller::Token => 0,
        }
    }

    /// The caller as ref permissions see it.
    fn principal(self, policy: &Policy) -> Principal {
        match self {
            Caller::Local { uid, gid } => policy.principal(uid, gid),
            Caller::Token => Principal::root(),
        }
    }

    /// The caller committing: what a ref it creates records.
    fn writer(self, policy: &Policy) -> Writer {
        match self {
            Caller::Local { uid, gid } => policy.writer(uid, gid),
            Caller::Token => policy.writer(0, 0),
        }
    }

    fn name(self) -> String {
        match self {
            Caller::Local { uid, .. } => match nix::unistd::User::from_uid(uid.into()) {
                Ok(Some(u)) => u.name,
                _ => format!("uid {uid}"),
            },
            Caller::Token => "token".into(),
        }
    }
}

/// The service.
#[derive(Clone)]
pub struct Api {
    server: Arc<Server>,
    /// The bearer token TCP callers must present; `None`: TCP callers are refused.
    token: Option<Arc<str>>,
}

impl Api {
    pub fn new(server: Arc<Server>, token: Option<String>) -> Self {
        Self { server, token: token.map(Arc::from) }
    }

    pub fn into_service(self) -> CafsServer<Self> {
        CafsServer::new(self).max_decoding_message_size(MAX_REQUEST)
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            let cred = info.peer_cred.ok_or_else(|| Status::unauthenticated("no peer credentials"))?;
            return Ok(Caller::Local { uid: cred.uid(), gid: cred.gid() });
        }
        let presented =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token, presented) {
            (Some(token), Some(p)) if same(token.as_bytes(), p.as_bytes()) => Ok(Caller::Token),
            (Some(_), Some(_)) => Err(Status::unauthenticated("wrong token")),
            _ => Err(Status::unauthenticated("a bearer token is required")),
        }
    }

    /// The mount at `dir`, if `caller` may `what` it.
    fn mount_of(&self, caller: Caller, dir: &str, what: &'static str) -> Result<Arc<Served>, Status> {
        let s = self.server.get(mount_point(dir)?).map_err(status)?;
        s.at.check_owner(caller.uid(), what).map_err(status)?;
        Ok(s)
    }

    /// A chown or chmod of a ref by `caller`, checked and applied by the catalog in one transaction.
    async fn change(
        &self,
        caller: Caller,
        name: String,
        change: AccessChange,
    ) -> Result<Response<pb::RefInfoReply>, Status> {
        let name = ref_name(name)?;
        let who = caller.principal(self.server.policy());
        let catalog = self.server.catalog().clone();
        let (n, c) = (name.clone(), change);
        let a = detached(async move { catalog.change_access(&n, &c, &who).await.map_err(catalog_status) }).await?;
        tracing::info!(r#ref = %name, access = %a, by = caller.uid(), "ref permissions changed");
        let head = self.server.catalog().head(&name).await.map_err(catalog_status)?;
        Ok(Response::new(ref_info(&name, &a, head.as_ref())))
    }

    fn visible(&self, caller: Caller) -> Vec<Arc<Served>> {
        self.server.list().into_iter().filter(|s| s.at.check_owner(caller.uid(), "see").is_ok()).collect()
    }

    fn status_of(&self, caller: Caller, dir: &str) -> Result<pb::StatusReply, Status> {
        let mounts = if dir.is_empty() {
            self.visible(caller)
        } else if let Some(n) = self.server.namespace(mount_point(dir)?) {
            // A namespace mount's status is that of the collections open in it.
            n.at.check_owner(caller.uid(), "see").map_err(status)?;
            self.server.parts(&n.at.dir)
        } else {
            vec![self.mount_of(caller, dir, "see")?]
        };
        Ok(pb::StatusReply {
            server: Some(pb::ServerStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: self.server.uptime().as_secs(),
                // How many mounts the caller may see: the node's whole count would tell every user about
                // everyone else's jobs.
                mounts: self.visible(caller).len() as u32,
                disk_cache: self.server.disk_cache().map(|c| disk_cache_status(c)),
            }),
            mounts: mounts.iter().map(|s| mount_status(s)).collect(),
        })
    }
}

fn disk_cache_status(c: &crate::store::DiskCache) -> pb::DiskCacheStatus {
    let (o, s) = (c.options(), c.stats());
    pb::DiskCacheStatus {
        dir: o.dir.display().to_string(),
        max_size: o.max_size,
        min_free: o.min_free,
        write_through: o.write_through,
        blocks: s.blocks,
        bytes: s.bytes,
        hits: s.hits,
        misses: s.misses,
        fills: s.fills,
        skipped: s.skipped,
        evictions: s.evictions,
        corrupt: s.corrupt,
    }
}

/// `s` as an error message repeats it: quoted, and cut after [`SHOWN`] bytes.
fn shown(s: &str) -> String {
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// A ref name from a request.
fn ref_name(name: String) -> Result<RefName, Status> {
    RefName::new(name).map_err(|e| match e {
        CatalogError::InvalidRef { name, why } => {
            Status::invalid_argument(format!("invalid ref name {}: {why}", shown(&name)))
        }
        e => Status::invalid_argument(e.to_string()),
    })
}

/// A mount point from a request, checked as a path before it is looked up: absolute, no NUL, no `.` or `..`
/// component (the helper refuses those too; a lookup would only say "not a mount"), and within the kernel's
/// limits on a path and on a name.
fn mount_point(dir: &str) -> Result<&Path, Status> {
    let bad = |why: String| Err(Status::invalid_argument(format!("mount point {}: {why}", shown(dir))));
    if dir.len() >= libc::PATH_MAX as usize {
        return bad(format!("longer than {} bytes", libc::PATH_MAX - 1));
    }
    if dir.contains('\0') {
        return bad("contains a NUL byte".into());
    }
    if !dir.starts_with('/') {
        return bad("must be an absolute path".into());
    }
    if dir.split('/').any(|c| c == "." || c == "..") {
        return bad("must not contain '.' or '..' components".into());
    }
    if dir.split('/').any(|c| c.len() > NAME_MAX) {
        return bad(format!("has a component longer than {NAME_MAX} bytes"));
    }
    Ok(Path::new(dir))
}

/// Compares without an early exit, so that the time taken says nothing about how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn mount_info(s: &Served) -> pb::MountInfo {
    let (ref_name, pdh) = match s.coll.origin() {
        crate::collection::Origin::Ref(r) | crate::collection::Origin::Follow(r) => (r.to_string(), s.coll.last_pdh()),
        crate::collection::Origin::Pdh(p) => (String::new(), Some(*p)),
    };
    pb::MountInfo {
        mount_point: s.at.dir.to_string_lossy().into_owned(),
        ref_name,
        pdh: pdh.map(|p| p.to_string()).unwrap_or_default(),
        read_only: s.coll.is_read_only(),
        owner_uid: s.at.uid,
        autocommit_secs: s.autocommit.as_secs() as u32,
        namespace: false,
    }
}

fn namespace_info(n: &NamespaceServed) -> pb::MountInfo {
    pb::MountInfo {
        mount_point: n.at.dir.to_string_lossy().into_owned(),
        read_only: n.read_only(),
        owner_uid: n.at.uid,
        autocommit_secs: n.ns.options().autocommit.as_secs() as u32,
        namespace: true,
        ..Default::default()
    }
}

fn mount_status(s: &Served) -> pb::MountStatus {
    let up = s.coll.fs().upload_stats();
    let last = s.coll.last_version();
    let last_error = s.control.status(&s.coll).last_error.or(up.last_error).unwrap_or_default();
    pb::MountStatus {
        mount: Some(mount_info(s)),
        dirty: s.coll.is_dirty(),
        dirty_bytes: up.held_bytes,
        queued_blocks: up.queued as u32,
        in_flight_blocks: up.in_flight as u32,
        bytes_uploaded: up.uploaded_bytes,
        upload_bytes_per_sec: s.upload_rate(),
        last_commit_pdh: last.as_ref().map(|v| v.pdh.to_string()).unwrap_or_default(),
        last_commit_unix_ms: last.as_ref().map_or(0, |v| unix_ms(v.committed_at)),
        last_error,
        failed_blocks: up.failed as u32,
    }
}

/// The gRPC status for a refused or failed permission check.
fn check_status(e: CheckError) -> Status {
    match e {
        CheckError::Denied(d) => Status::permission_denied(d.to_string()),
        CheckError::Catalog(e) => catalog_status(e),
    }
}

/// The gRPC status for the catalog's answer or failure: a backend that is down is worth another try.
fn catalog_status(e: CatalogError) -> Status {
    let msg = e.to_string();
    match e {
        CatalogError::Conflict { .. } => Status::aborted(msg),
        CatalogError::InvalidRef { .. } => Status::invalid_argument(msg),
        CatalogError::Denied(_) => Status::permission_denied(msg),
        CatalogError::NoSuchRef(_) => Status::not_found(msg),
        CatalogError::Refused(_) => Status::failed_precondition(msg),
        e if e.is_transient() => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn ref_info(name: &RefName, a: &crate::catalog::RefAccess, head: Option<&crate::catalog::Version>) -> pb::RefInfoReply {
    pb::RefInfoReply {
        ref_name: name.to_string(),
        owner_uid: a.owner,
        gid: a.gid,
        mode: a.mode,
        version: head.map_or(0, |v| v.version),
        pdh: head.map(|v| v.pdh.to_string()).unwrap_or_default(),
    }
}

/// The gRPC status for a server error: what the caller did wrong, or what failed.
fn status(e: ServerError) -> Status {
    let msg = e.to_string();
    match e {
        ServerError::NotAbsolute(_) => Status::invalid_argument(msg),
        ServerError::NotServed(_) => Status::not_found(msg),
        ServerError::NotOwner { .. } => Status::permission_denied(msg),
        ServerError::Helper(_) => Status::failed_precondition(msg),
        ServerError::HelperUnreachable { .. } | ServerError::Stopping => Status::unavailable(msg),
        ServerError::Collection(c) => match c {
            CollectionError::Catalog(e) => catalog_status(e),
            CollectionError::ReadOnly => Status::failed_precondition(msg),
            CollectionError::UnknownPdh(_) => Status::not_found(msg),
            // A backend that is down (after retries): the data is held, a later flush or commit may succeed.
            CollectionError::Fs(e) if e.is_transient() => Status::unavailable(msg),
            _ => Status::internal(msg),
        },
        ServerError::Denied(_) => Status::permission_denied(msg),
        ServerError::BadHash(_) => Status::invalid_argument(msg),
        ServerError::Refused(_) => Status::failed_precondition(msg),
        ServerError::Socket { .. }
        | ServerError::Wire(_)
        | ServerError::Mount(_)
        | ServerError::Namespace(_)
        | ServerError::Internal(_) => Status::internal(msg),
    }
}

/// Runs `f` as a task of its own: a caller that disconnects drops the wait, not the work.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(f).await.map_err(|e| Status::internal(format!("task failed: {e}")))?
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::StatusReply, Status>> + Send>>;

#[tonic::async_trait]
impl Cafs for Api {
    async fn mount(&self, req: Request<pb::MountRequest>) -> Result<Response<pb::MountReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let dir = mount_point(&r.mount_point)?;
        // A new mount point shows up in the mount table, `fsctl ls` and logs, all line- and tab-separated.
        if r.mount_point.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "mount point {}: contains a control character",
                shown(&r.mount_point)
            )));
        }
        let catalog = self.server.catalog();
        // What cannot be mounted is refused here, before the helper mounts and then has to unmount again.
        let origin = match r.source {
            Some(Source::RefName(name)) => {
                let name = ref_name(name)?;
                // The mount is the caller's (the helper mounts only on the caller's own directories), except
                // root's for another user, which cafsd checks for that user when the mount is handed over.
                let need = if r.read_only { Need::Read } else { Need::Write };
                let who = caller.principal(self.server.policy());
                self.server.policy().check(catalog.as_ref(), &name, &who, need).await.map_err(check_status)?;
                if r.read_only && catalog.head(&name).await.map_err(catalog_status)?.is_none() {
                    return Err(Status::not_found(format!("ref {name} has no committed version to mount read-only")));
                }
                Origin::Ref(name.as_str().to_string())
            }
            Some(Source::Pdh(text)) => {
                let pdh = Pdh::parse(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
                // Reads the manifest a second time (the mount reads it again): the price of a clean refusal.
                if catalog.get_collection(&pdh).await.map_err(catalog_status)?.is_none() {
                    return Err(Status::not_found(format!("collection {pdh} is not in the catalog")));
                }
                Origin::Pdh(text)
            }
            Some(Source::Namespace(true)) => Origin::Namespace,
            Some(Source::Namespace(false)) | None => {
                return Err(Status::invalid_argument("a mount needs a ref name, a hash or the namespace"));
            }
        };
        let request =
            HelperMount { mountpoint: dir.to_path_buf(), origin, read_only: r.read_only, allow_other: r.allow_other };
        let autocommit = r.autocommit_secs.map(|s| Duration::from_secs(s.into()));
        let server = self.server.clone();
        let s = detached(async move {
            tokio::task::spawn_blocking(move || server.mount(caller.uid(), request, autocommit))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(status)
        })
        .await?;
        let info = match s {
            Mount::Collection(s) => mount_info(&s),
            Mount::Namespace(n) => namespace_info(&n),
        };
        Ok(Response::new(pb::MountReply { mount: Some(info) }))
    }

    async fn unmount(&self, req: Request<pb::UnmountRequest>) -> Result<Response<pb::UnmountReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let server = self.server.clone();
        if let Some(n) = self.server.namespace(mount_point(&r.mount_point)?) {
            n.at.check_owner(caller.uid(), "unmount").map_err(status)?;
            if r.discard {
                return Err(Status::invalid_argument("a namespace mount is unmounted with its changes committed"));
            }
            detached(async move { server.unmount_namespace(&n).await.map_err(status) }).await?;
            return Ok(Response::new(pb::UnmountReply { pdh: String::new() }));
        }
        let s = self.mount_of(caller, &r.mount_point, "unmount")?;
        if let Some(whole) = &s.part_of {
            return Err(Status::failed_precondition(format!(
                "{} is part of the namespace mount at {}: unmount that",
                s.at.dir.display(),
                whole.display()
            )));
        }
        let pdh = detached(async move { server.unmount(&s, r.discard).await.map_err(status) }).await?;
        Ok(Response::new(pb::UnmountReply { pdh: pdh.map(|p| p.to_string()).unwrap_or_default() }))
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        mount_point(&r.mount_point)?;
        let into = if r.into_ref.is_empty() { None } else { Some(ref_name(r.into_ref.clone())?) };
        check_message(&r.message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let s = self.mount_of(caller, &r.mount_point, "commit")?;
        let server = self.server.clone();
        // The caller commits: the catalog checks that it may write the ref (the mount's own, or `into`).
        let by = caller.writer(self.server.policy());
        let c =
            detached(
                async move { server.commit(&s, into.as_ref(), &by, &caller.name(), &r.message).await.map_err(status) },
            )
            .await?;
        Ok(Response::new(pb::CommitReply { pdh: c.pdh.to_string(), version: c.version, changed: c.changed }))
    }

    async fn flush(&self, req: Request<pb::FlushRequest>) -> Result<Response<pb::FlushReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let s = self.mount_of(caller, &r.mount_point, "flush")?;
        let server = self.server.clone();
        let s = detached(async move {
            server.flush(&s, r.wait).await.map_err(status)?;
            Ok(s)
        })
        .await?;
        Ok(Response::new(pb::FlushReply { status: Some(mount_status(&s)) }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(self.status_of(caller, &req.get_ref().mount_point)?))
    }

    async fn list_mounts(&self, req: Request<pb::ListMountsRequest>) -> Result<Response<pb::ListMountsReply>, Status> {
        let caller = self.caller(&req)?;
        let mut mounts: Vec<_> = self
            .server
            .namespace_list()
            .into_iter()
            .filter(|n| n.at.check_owner(caller.uid(), "see").is_ok())
            .map(|n| namespace_info(&n))
            .collect();
        mounts.extend(self.visible(caller).iter().map(|s| mount_info(s)));
        mounts.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        Ok(Response::new(pb::ListMountsReply { mounts }))
    }

    async fn log(&self, req: Request<pb::LogRequest>) -> Result<Response<pb::LogReply>, Status> {
        let caller = self.caller(&req)?;
        let name = ref_name(req.into_inner().ref_name)?;
        let who = caller.principal(self.server.policy());
        let catalog = self.server.catalog();
        self.server.policy().check(catalog.as_ref(), &name, &who, Need::Read).await.map_err(check_status)?;
        let history = self.server.catalog().history(&name).await.map_err(catalog_status)?;
        if history.is_empty() {
            return Err(Status::not_found(format!("ref {name} has no versions")));
        }
        let versions = history
            .into_iter()
            .map(|v| pb::VersionInfo {
                version: v.version,
                pdh: v.pdh.to_string(),
                parent: v.parent.map(|p| p.to_string()).unwrap_or_default(),
                committed_unix_ms: unix_ms(v.committed_at),
                committer: v.committer,
                message: v.message,
            })
            .collect();
        Ok(Response::new(pb::LogReply { versions }))
    }

    async fn ref_info(&self, req: Request<pb::RefInfoRequest>) -> Result<Response<pb::RefInfoReply>, Status> {
        let caller = self.caller(&req)?;
        let name = ref_name(req.into_inner().ref_name)?;
        let catalog = self.server.catalog();
        let a = catalog.access(&name).await.map_err(catalog_status)?;
        let a = a.ok_or_else(|| Status::not_found(format!("ref {name} does not exist")))?;
        // Its owner may always see whom a ref belongs to, even with its own read bit off (to chmod it back).
        let who = caller.principal(self.server.policy());
        if who.uid != a.owner {
            crate::catalog::access::check(name.as_str(), &a, &who, Need::Read)
                .map_err(|d| Status::permission_denied(d.to_string()))?;
        }
        let head = catalog.head(&name).await.map_err(catalog_status)?;
        Ok(Response::new(ref_info(&name, &a, head.as_ref())))
    }

    async fn chown(&self, req: Request<pb::ChownRequest>) -> Result<Response<pb::RefInfoReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let change = AccessChange { owner: Some(r.owner_uid), gid: r.gid, mode: None };
        self.change(caller, r.ref_name, change).await
    }

    async fn chmod(&self, req: Request<pb::ChmodRequest>) -> Result<Response<pb::RefInfoReply>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        crate::catalog::access::check_mode(r.mode).map_err(Status::invalid_argument)?;
        let change = AccessChange { mode: Some(r.mode), ..Default::default() };
        self.change(caller, r.ref_name, change).await
    }

    async fn list_refs(&self, req: Request<pb::ListRefsRequest>) -> Result<Response<pb::ListRefsReply>, Status> {
        let caller = self.caller(&req)?;
        let prefix = req.into_inner().prefix;
        if prefix.len() > 255 || !prefix.bytes().all(RefName::is_name_byte) {
            return Err(Status::invalid_argument(format!(
                "invalid ref prefix {}: at most 255 bytes of letters, digits, '.', '_', '-' and '/'",
                shown(&prefix)
            )));
        }
        let who = caller.principal(self.server.policy());
        let catalog = self.server.catalog();
        let records = catalog.list_access().await.map_err(catalog_status)?;
        let heads: HashMap<RefName, crate::catalog::Version> =
            catalog.list_refs().await.map_err(catalog_status)?.into_iter().map(|v| (v.name.clone(), v)).collect();
        let mut refs: Vec<pb::RefInfoReply> = records
            .iter()
            .filter(|(name, a)| {
                name.as_str().starts_with(&prefix) && (a.owner == who.uid || a.allows(&who, Need::Read))
            })
            .map(|(name, a)| ref_info(name, a, heads.get(name)))
            .collect();
        refs.sort_by(|a, b| a.ref_name.cmp(&b.ref_name));
        Ok(Response::new(pb::ListRefsReply { refs }))
    }

    async fn drop_cache(&self, req: Request<pb::DropCacheRequest>) -> Result<Response<pb::DropCacheReply>, Status> {
        let caller = self.caller(&req)?;
        if !self.server.policy().is_privileged(caller.uid()) {
            return Err(Status::permission_denied("only root and operators may drop the node's disk cache"));
        }
        let cache = self.server.disk_cache().cloned().ok_or_else(|| {
            Status::failed_precondition(
                "this node has no disk cache (the local store needs none, or [cache] max_size is 0)",
            )
        })?;
        let (blocks, bytes) =
            tokio::task::spawn_blocking(move || cache.drop_all()).await.map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(uid = caller.uid(), blocks, bytes, "disk cache dropped");
        Ok(Response::new(pb::DropCacheReply { bytes, blocks }))
    }

    async fn metrics(&self, req: Request<pb::MetricsRequest>) -> Result<Response<pb::MetricsReply>, Status> {
        self.caller(&req)?;
        let server = self.server.clone();
        let text = tokio::task::spawn_blocking(move || crate::metrics::metrics().render(Some(&server.levels())))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::MetricsReply { text }))
    }

    type WatchStatusStream = WatchStream;

    /// A status every half second until the caller goes away (or the mount it watches does).
    async fn watch_status(&self, req: Request<pb::StatusRequest>) -> Result<Response<WatchStream>, Status> {
        let caller = self.caller(&req)?;
        let dir = req.into_inner().mount_point;
        let first = self.status_of(caller, &dir)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut next = Ok(first);
            loop {
                let end = next.is_err();
                if tx.send(next).await.is_err() || end {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                next = api.status_of(caller, &dir);
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_errors_keep_their_kind_in_the_status() {
        use tonic::Code;
        let backend = CatalogError::Backend("connection refused".into());
        assert_eq!(catalog_status(backend).code(), Code::Unavailable);
        let conflict = CatalogError::Conflict { name: "r".into(), expected: Some(1), current: Some(2) };
        assert_eq!(catalog_status(conflict).code(), Code::Aborted);
        assert_eq!(catalog_status(CatalogError::NoSuchRef("r".into())).code(), Code::NotFound);
        assert_eq!(catalog_status(CatalogError::Corrupt("bad hash".into())).code(), Code::Internal);
        let down = ServerError::Collection(CollectionError::Catalog(CatalogError::Backend("timed out".into())));
        assert_eq!(status(down).code(), Code::Unavailable);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
