//! Bad input, end to end on the real stack (the helper as root, cafsd as `nobody`, real mounts): gRPC requests
//! with bad or huge fields, odd bytes in paths, names over 255 bytes, garbage written to control files. Each
//! gets a specific error that names the problem, and changes nothing: the mounts (cafsd's and the kernel's), the
//! refs and their history, the existing mount's tree and dirty state, the directories under the jobs root all
//! stay as they were. Every group ends with the same kind of request done right, which does change things, so
//! that a refusal is known to come from the input and not from a broken setup. Needs root and /dev/fuse.
//!
//! The raw gRPC calls are made as root, an operator who may drive every mount: validation does not depend on who
//! asks, and root gets past every ownership check to reach it. An ordinary user goes through fsctl.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cafs_tests::mount::is_mounted;
use cafs_tests::stack::{Stack, fails, ok, sh_as};
use proto::v1::cafs_client::CafsClient;
use proto::v1::{self as pb, mount_request::Source};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

const JOB: u32 = 1000;
const MAX_MESSAGE: usize = cafs::vfs::control::MAX_MESSAGE;
const MIB: usize = 1 << 20;
/// Well formed, and no collection of this cafsd.
const UNKNOWN_PDH: &str = "0123456789abcdef0123456789abcdef+42";

fn s(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// A request that names its source twice. The API's `oneof` cannot say that, but the wire can: both fields are
/// sent, in tag order.
#[derive(Clone, PartialEq, prost::Message)]
struct TwoSources {
    #[prost(string, tag = "1")]
    mount_point: String,
    #[prost(string, tag = "2")]
    ref_name: String,
    #[prost(string, tag = "3")]
    pdh: String,
}

/// A Mount request whose mount point is raw bytes: a proto `string` must be UTF-8, and this one need not be.
#[derive(Clone, PartialEq, prost::Message)]
struct BytesMountPoint {
    #[prost(bytes = "vec", tag = "1")]
    mount_point: Vec<u8>,
    #[prost(string, tag = "2")]
    ref_name: String,
}

/// What must not change when a request is refused.
#[derive(Debug, PartialEq)]
struct State {
    /// cafsd's mounts (ListMounts, as root: all of them).
    mounts: Vec<pb::MountInfo>,
    /// The kernel's mounts below the stack's directory.
    kernel: Vec<PathBuf>,
    /// The history of the existing mount's ref.
    log: Vec<pb::VersionInfo>,
    /// The existing mount: changed or not, its last commit, its last error.
    base: (bool, String, String),
    /// The existing mount's tree as its owner sees it: every name, and every file's MD5.
    tree: String,
    /// What is in the jobs root (mount points live there).
    jobs: Vec<String>,
}

/// The stack, a raw client, and a writable mount `base` of ref `base` owned by JOB: one version committed, then
/// changed again, so that a commit made by mistake would show (a new version, the tree no longer dirty).
struct Fixture {
    // Dropped in this order: the client, its runtime, the stack (unmounts and stops by PID), the directory.
    client: CafsClient<Channel>,
    channel: Channel,
    rt: tokio::runtime::Runtime,
    stack: Stack,
    base: PathBuf,
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let stack = Stack::start(tmp.path(), &["--autocommit", "0"]);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let socket = stack.socket.clone();
        // As fsctl connects: the URI is a placeholder, the connector dials the socket.
        let channel = rt
            .block_on(Endpoint::from_static("http://cafsd.invalid").connect_with_connector(tower::service_fn(
                move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&socket).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                },
            )))
            .expect("connect to cafsd");
        let base = stack.job_dir("base", JOB);
        ok(&stack.fsctl(JOB, &["mount", "base", &s(&base)]));
        ok(&sh_as(JOB, &base, "echo alpha > a.txt && mkdir d && head -c 300000 /dev/urandom > d/b.bin"));
        ok(&stack.fsctl(JOB, &["commit", &s(&base), "-m", "v1"]));
        ok(&sh_as(JOB, &base, "echo later > later.txt"));
        Self { client: CafsClient::new(channel.clone()), channel, rt, stack, base, tmp }
    }

    /// One call on the raw client, bounded.
    fn call<T, F>(&self, f: impl FnOnce(CafsClient<Channel>) -> F) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let fut = f(self.client.clone());
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), fut).await })
            .expect("cafsd answers within 120 s")
            .map(tonic::Response::into_inner)
    }

    /// A unary call with a message of our own making, on the method at `path`.
    fn raw<M: prost::Message + Send + 'static>(&self, path: &'static str, m: M) -> Result<pb::MountReply, Status> {
        let channel = self.channel.clone();
        self.call(|_| async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
            grpc.unary(tonic::Request::new(m), PathAndQuery::from_static(path), tonic_prost::ProstCodec::default())
                .await
        })
    }

    fn mount(&self, mount_point: String, source: Option<Source>, read_only: bool) -> Result<pb::MountReply, Status> {
        let req = pb::MountRequest { mount_point, source, read_only, autocommit_secs: None, allow_other: false };
        self.call(|mut c| async move { c.mount(req).await })
    }

    fn log(&self, name: &str) -> Result<pb::LogReply, Status> {
        let req = pb::LogRequest { ref_name: name.to_string() };
        self.call(|mut c| async move { c.log(req).await })
    }

    fn commit(&self, mount_point: &str, message: String, into_ref: &str) -> Result<pb::CommitReply, Status> {
        let req = pb::CommitRequest { mount_point: mount_point.to_string(), message, into_ref: into_ref.to_string() };
        self.call(|mut c| async move { c.commit(req).await })
    }

    fn list_mounts(&self) -> Vec<pb::MountInfo> {
        self.call(|mut c| async move { c.list_mounts(pb::ListMountsRequest {}).await }).expect("ListMounts").mounts
    }

    fn state(&self) -> State {
        let st = self
            .call(|mut c| async move { c.status(pb::StatusRequest { mount_point: s(&self.base) }).await })
            .expect("status of the existing mount");
        let m = &st.mounts[0];
        let tree = ok(&sh_as(
            JOB,
            &self.base,
            "find . | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum",
        ));
        let mut jobs: Vec<String> = std::fs::read_dir(self.stack.base.join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        jobs.sort();
        State {
            mounts: self.list_mounts(),
            kernel: self.stack.mounts(),
            log: self.log("base").expect("log of the existing ref").versions,
            base: (m.dirty, m.last_commit_pdh.clone(), m.last_error.clone()),
            tree,
            jobs,
        }
    }

    #[track_caller]
    fn unchanged(&self, before: &State, case: &str) {
        assert_eq!(&self.state(), before, "{case}: something changed");
    }

    #[track_caller]
    fn no_ref(&self, name: &str) {
        refused(&format!("ref {name}"), self.log(name), Code::NotFound, "no versions");
    }

    /// Runs a Python script as JOB in `dir`; its stdout.
    fn py(&self, dir: &Path, name: &str, script: &str) -> String {
        let file = self.tmp.path().join(name);
        std::fs::write(&file, script).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        ok(&sh_as(JOB, dir, &format!("python3 {}", s(&file))))
    }
}

/// Asserts a refusal with `code` whose message says `needle`, and that the message stays short whatever the
/// request carried (a status message travels in a header; it must not repeat a client's megabytes).
#[track_caller]
fn refused<T: std::fmt::Debug>(case: &str, r: Result<T, Status>, code: Code, needle: &str) -> String {
    let status = match r {
        Ok(v) => panic!("{case}: accepted: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{case}: {:?}", status.message());
    assert!(status.message().contains(needle), "{case}: {:?} does not say {needle:?}", status.message());
    assert!(status.message().len() < 512, "{case}: a message of {} bytes", status.message().len());
    status.message().to_string()
}

/// Detaches these mount points when dropped, whatever happened. The stack's own cleanup finds its mounts in
/// `/proc/self/mounts`, which writes a newline or a tab in a path as an octal escape: it would miss them.
struct Detach(Vec<PathBuf>);

impl Drop for Detach {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ =
                std::process::Command::new("umount").arg("-l").arg(dir).stderr(std::process::Stdio::null()).status();
        }
    }
}

/// A Mount request and its refusal: case, mount point, source, read-only, the code, what the message says.
type MountCase = (&'static str, String, Option<Source>, bool, Code, &'static str);

fn by_ref(name: &str) -> Option<Source> {
    Some(Source::RefName(name.to_string()))
}

#[test]
fn mount_requests_with_bad_fields_change_nothing() {
    let started = Instant::now();
    let fx = Fixture::start();
    let jobs = fx.stack.base.join("jobs");
    let free = fx.stack.job_dir("free", JOB);
    let f = s(&free);
    // Directories with odd bytes in their names exist, so that only the API's own check can refuse them. (A
    // name that is not UTF-8 cannot be put in a proto string at all: see the raw request below.)
    let (newline, tab) = (fx.stack.job_dir("new\nline", JOB), fx.stack.job_dir("tab\there", JOB));
    let _detach = Detach(vec![newline.clone(), tab.clone()]);
    let before = fx.state();

    use Code::{FailedPrecondition, InvalidArgument, NotFound};
    let pdh = |p: &str| Some(Source::Pdh(p.to_string()));
    let cases: Vec<MountCase> = vec![
        ("relative mount point", "jobs/free".into(), by_ref("fine"), false, InvalidArgument, "absolute path"),
        ("empty mount point", String::new(), by_ref("fine"), false, InvalidArgument, "absolute path"),
        ("NUL in the mount point", format!("{f}\0/etc"), by_ref("fine"), false, InvalidArgument, "NUL byte"),
        (
            "1 MiB mount point",
            format!("{f}/{}", "a/".repeat(MIB / 2)),
            by_ref("fine"),
            false,
            InvalidArgument,
            "longer than 4095 bytes",
        ),
        (
            "256-byte component",
            format!("{f}/{}", "c".repeat(256)),
            by_ref("fine"),
            false,
            InvalidArgument,
            "longer than 255 bytes",
        ),
        ("'..' in the mount point", format!("{f}/../free"), by_ref("fine"), false, InvalidArgument, "'.' or '..'"),
        ("'.' in the mount point", format!("{f}/."), by_ref("fine"), false, InvalidArgument, "'.' or '..'"),
        ("newline in the mount point", s(&newline), by_ref("fine"), false, InvalidArgument, "control character"),
        ("tab in the mount point", s(&tab), by_ref("fine"), false, InvalidArgument, "control character"),
        ("256-byte ref", f.clone(), by_ref(&"r".repeat(256)), false, InvalidArgument, "longer than 255 bytes"),
        ("1 MiB ref", f.clone(), by_ref(&"r".repeat(MIB)), false, InvalidArgument, "longer than 255 bytes"),
        ("ref with /../", f.clone(), by_ref("a/../b"), false, InvalidArgument, "'..' path component"),
        (
            "ref with a leading /",
            f.clone(),
            by_ref("/abs"),
            false,
            InvalidArgument,
            "empty, '.' or '..' path component",
        ),
        (
            "ref with a trailing /",
            f.clone(),
            by_ref("dir/"),
            false,
            InvalidArgument,
            "empty, '.' or '..' path component",
        ),
        ("ref with a space", f.clone(), by_ref("has space"), false, InvalidArgument, "only letters"),
        ("ref with a newline", f.clone(), by_ref("new\nline"), false, InvalidArgument, "only letters"),
        ("empty ref", f.clone(), by_ref(""), false, InvalidArgument, "empty"),
        ("neither ref nor hash", f.clone(), None, false, InvalidArgument, "needs a ref name, a hash or the namespace"),
        (
            "namespace set to false",
            f.clone(),
            Some(Source::Namespace(false)),
            false,
            InvalidArgument,
            "needs a ref name, a hash or the namespace",
        ),
        ("garbage hash", f.clone(), pdh("not-a-hash"), false, InvalidArgument, "bad portable data hash"),
        (
            "uppercase hash",
            f.clone(),
            pdh("D41D8CD98F00B204E9800998ECF8427E+0"),
            false,
            InvalidArgument,
            "bad portable data hash",
        ),
        (
            "hash without a length",
            f.clone(),
            pdh("d41d8cd98f00b204e9800998ecf8427e+"),
            false,
            InvalidArgument,
            "bad portable data hash",
        ),
        ("1 MiB hash", f.clone(), pdh(&"0".repeat(MIB)), false, InvalidArgument, "bad portable data hash"),
        ("unknown hash", f.clone(), pdh(UNKNOWN_PDH), false, NotFound, "not in the catalog"),
        ("read-only ref never committed", f.clone(), by_ref("never"), true, NotFound, "no committed version"),
        // Well formed, but the directory is missing: the helper refuses (and makes nothing).
        (
            "missing mount point",
            s(&jobs.join("missing")),
            by_ref("fine"),
            false,
            FailedPrecondition,
            "no such directory",
        ),
    ];
    for (case, mount_point, source, read_only, code, needle) in cases {
        refused(case, fx.mount(mount_point, source, read_only), code, needle);
        fx.unchanged(&before, case);
    }
    assert!(!jobs.join("missing").exists() && !is_mounted(&free));

    // Both sources on the wire: protobuf keeps the last field of a oneof (the hash, tag 3), so the ref is never
    // looked at; the hash is judged as if sent alone.
    let both = |pdh: &str| TwoSources { mount_point: f.clone(), ref_name: "fine".into(), pdh: pdh.into() };
    refused("ref and unknown hash", fx.raw("/cafs.v1.Cafs/Mount", both(UNKNOWN_PDH)), NotFound, "not in the catalog");
    fx.unchanged(&before, "ref and unknown hash");
    refused("ref and garbage hash", fx.raw("/cafs.v1.Cafs/Mount", both("zz")), InvalidArgument, "bad portable data");
    fx.unchanged(&before, "ref and garbage hash");

    // A mount point that is not UTF-8 does not decode as a request: gRPC's code for an unparsable request is
    // INTERNAL (tonic's, before any handler runs); the message says what is wrong.
    let bytes = BytesMountPoint { mount_point: b"/tmp/\xff\xfe".to_vec(), ref_name: "fine".into() };
    refused("mount point not UTF-8", fx.raw("/cafs.v1.Cafs/Mount", bytes), Code::Internal, "UTF-8");
    fx.unchanged(&before, "mount point not UTF-8");

    // 5 MiB in one request: over the 4 MiB cafsd decodes, refused before any handler (tonic says OUT_OF_RANGE
    // where gRPC's table says RESOURCE_EXHAUSTED); cafsd stays up and serves the next call.
    refused(
        "5 MiB request",
        fx.mount(f.clone(), by_ref(&"r".repeat(5 * MIB)), false),
        Code::OutOfRange,
        "message length too large",
    );
    fx.unchanged(&before, "5 MiB request");
    for name in ["fine", "never", "a", "abs", "dir"] {
        fx.no_ref(name);
    }

    // The same request done right mounts.
    let m = fx.mount(f.clone(), by_ref("fine"), false).expect("a good mount request");
    assert_eq!(m.mount.unwrap().owner_uid, JOB);
    assert!(is_mounted(&free));
    ok(&fx.stack.fsctl(JOB, &["umount", "--discard", &f]));
    fx.unchanged(&before, "after the good mount");
    eprintln!("mount requests: {:.1?}", started.elapsed());
}

#[test]
fn calls_with_bad_paths_refs_and_messages_change_nothing() {
    let started = Instant::now();
    let fx = Fixture::start();
    let b = s(&fx.base);
    let plain = fx.stack.job_dir("plain", JOB);
    let before = fx.state();

    use Code::{InvalidArgument, NotFound};
    let paths: Vec<(&str, String, Code, &str)> = vec![
        ("not a mount", s(&plain), NotFound, "not a mount of this cafsd"),
        ("missing directory", s(&plain.join("missing")), NotFound, "not a mount of this cafsd"),
        ("relative", "jobs/base".into(), InvalidArgument, "absolute path"),
        ("NUL", format!("{b}\0"), InvalidArgument, "NUL byte"),
        ("1 MiB", format!("{b}/{}", "a/".repeat(MIB / 2)), InvalidArgument, "longer than 4095 bytes"),
        ("'..'", format!("{b}/../base"), InvalidArgument, "'.' or '..'"),
        ("256-byte component", format!("{b}/{}", "c".repeat(256)), InvalidArgument, "longer than 255 bytes"),
    ];
    for (case, dir, code, needle) in &paths {
        let d = || dir.clone();
        let calls: Vec<(&str, Result<(), Status>)> = vec![
            ("commit", fx.commit(dir, "m".into(), "").map(drop)),
            (
                "flush",
                fx.call(|mut c| async move { c.flush(pb::FlushRequest { mount_point: d(), wait: true }).await })
                    .map(drop),
            ),
            (
                "status",
                fx.call(|mut c| async move { c.status(pb::StatusRequest { mount_point: d() }).await }).map(drop),
            ),
            (
                "watch",
                fx.call(|mut c| async move { c.watch_status(pb::StatusRequest { mount_point: d() }).await }).map(drop),
            ),
            (
                "unmount",
                fx.call(
                    |mut c| async move { c.unmount(pb::UnmountRequest { mount_point: d(), discard: false }).await },
                )
                .map(drop),
            ),
            (
                "unmount --discard",
                fx.call(|mut c| async move { c.unmount(pb::UnmountRequest { mount_point: d(), discard: true }).await })
                    .map(drop),
            ),
        ];
        for (verb, r) in calls {
            let case = format!("{verb} on a path: {case}");
            refused(&case, r, *code, needle);
            fx.unchanged(&before, &case);
        }
    }

    // Commit's other fields, on the existing mount (which is dirty: any commit would make a version).
    let long = |n: usize| "m".repeat(n);
    let commits: Vec<(&str, String, &str, Code, &str)> = vec![
        ("into a ref with a space", "m".into(), "bad ref", InvalidArgument, "only letters"),
        ("into a ref with ..", "m".into(), "../x", InvalidArgument, "'..' path component"),
        (
            "into a 1 MiB ref",
            "m".into(),
            &*Box::leak("x".repeat(MIB).into_boxed_str()),
            InvalidArgument,
            "longer than 255 bytes",
        ),
        ("message one byte over", long(MAX_MESSAGE + 1), "", InvalidArgument, "the limit is 65536"),
        ("2 MiB message", long(2 * MIB), "", InvalidArgument, "the limit is 65536"),
        ("message with NUL", "done\0rm -rf".into(), "", InvalidArgument, "NUL byte"),
        ("5 MiB request", long(5 * MIB), "", Code::OutOfRange, "message length too large"),
    ];
    for (case, message, into, code, needle) in commits {
        refused(case, fx.commit(&b, message, into), code, needle);
        fx.unchanged(&before, case);
    }
    for (case, name, code, needle) in [
        ("log of a ref with a space", "bad ref".to_string(), InvalidArgument, "only letters"),
        ("log of the empty ref", String::new(), InvalidArgument, "empty"),
        ("log of /abs", "/abs".into(), InvalidArgument, "path component"),
        ("log of a 1 MiB ref", "x".repeat(MIB), InvalidArgument, "longer than 255 bytes"),
        ("log of an unknown ref", "nosuch".into(), NotFound, "no versions"),
    ] {
        refused(case, fx.log(&name), code, needle);
    }
    for name in ["x", "stolen"] {
        fx.no_ref(name);
    }

    // An ordinary user, through fsctl: a request the server calls invalid exits 2, with its reason.
    let too_long = long(MAX_MESSAGE + 1);
    let err = fails(&fx.stack.fsctl(JOB, &["commit", &b, "-m", &too_long]), 2);
    assert!(err.contains("the limit is 65536") && err.len() < 512, "{err}");
    assert!(fails(&fx.stack.fsctl(JOB, &["commit", &b, "--into", "../stolen"]), 2).contains("invalid ref name"));
    assert!(fails(&fx.stack.fsctl(JOB, &["log", "bad ref"]), 2).contains("only letters"));
    assert!(fails(&fx.stack.fsctl(JOB, &["status", &s(&plain)]), 1).contains("not a mount of this cafsd"));
    fx.unchanged(&before, "fsctl as an ordinary user");

    // Done right: a message of exactly the limit commits.
    let c = fx.commit(&b, long(MAX_MESSAGE), "").expect("a message of exactly the limit");
    assert!(c.changed && c.version == 2, "{c:?}");
    assert_eq!(fx.log("base").unwrap().versions[1].message.len(), MAX_MESSAGE);

    // A job wrapper whose command line is longer than a commit message may be still commits its output (fsctl
    // cuts the message).
    let run = fx.stack.base.join("jobs").join("run");
    let arg = "y".repeat(70_000);
    let out = ok(&fx
        .stack
        .fsctl(JOB, &["run", "--ref", "long-cmd", "--dir", &s(&run), "--", "sh", "-c", "echo ran > out", "sh", &arg]));
    let pdh = out.lines().last().unwrap().to_string();
    let log = fx.log("long-cmd").unwrap().versions;
    assert_eq!(log[0].pdh, pdh);
    let msg = &log[0].message;
    assert!(
        msg.len() <= MAX_MESSAGE && msg.starts_with("fsctl run: sh -c echo ran > out sh yyy") && msg.ends_with(" ..."),
        "{}",
        msg.len()
    );
    eprintln!("calls: {:.1?}", started.elapsed());
}

/// Tries each operation as JOB in the mount's root and prints `NAME RESULT` (`ok` or the errno's name).
const CONTROL_FILES: &str = r#"
import errno, os

def attempt(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])

def write(path, data, flags=os.O_WRONLY | os.O_TRUNC):
    fd = os.open(path, flags)
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise SystemExit(f"short write to {path}: {n} of {len(data)} bytes")
    finally:
        os.close(fd)

def pieces(path, data, size):
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(0, len(data), size):
            os.write(fd, data[i:i + size])
    finally:
        os.close(fd)

garbage = os.urandom(10 << 20)
attempt("commit:10MiB-random-in-one-write", lambda: write(".cafs/commit", garbage))
attempt("commit:random-in-8KiB-writes", lambda: pieces(".cafs/commit", b"\xff" + garbage[:1 << 20], 8192))
attempt("commit:64KiB+1-of-text", lambda: write(".cafs/commit", b"m" * (65536 + 1)))
attempt("commit:NUL", lambda: write(".cafs/commit", b"done\0more"))
attempt("commit:latin-1", lambda: write(".cafs/commit", "caf\u00e9".encode("latin-1")))
for f in ["dirty", "hash", "status", "manifest"]:
    attempt(f"{f}:write", lambda f=f: write(f".cafs/{f}", b"0\n"))
    attempt(f"{f}:append", lambda f=f: write(f".cafs/{f}", b"0\n", os.O_WRONLY | os.O_APPEND))
    attempt(f"{f}:read-write", lambda f=f: write(f".cafs/{f}", b"0\n", os.O_RDWR))
    attempt(f"{f}:truncate", lambda f=f: os.truncate(f".cafs/{f}", 0))
    attempt(f"{f}:unlink", lambda f=f: os.unlink(f".cafs/{f}"))
attempt("cafs:create", lambda: os.close(os.open(".cafs/new", os.O_WRONLY | os.O_CREAT, 0o644)))
attempt("cafs:mkdir-inside", lambda: os.mkdir(".cafs/d"))
attempt("cafs:symlink-inside", lambda: os.symlink("a.txt", ".cafs/l"))
attempt("cafs:unlink-commit", lambda: os.unlink(".cafs/commit"))
attempt("cafs:rmdir", lambda: os.rmdir(".cafs"))
attempt("cafs:mkdir", lambda: os.mkdir(".cafs"))
attempt("cafs:write-the-directory", lambda: write(".cafs", b"x"))
attempt("cafs:rename-commit-out", lambda: os.rename(".cafs/commit", "stolen"))
attempt("cafs:rename-file-in", lambda: os.rename("a.txt", ".cafs/a.txt"))
attempt("cafs:rename-file-over-commit", lambda: os.rename("a.txt", ".cafs/commit"))
attempt("cafs:rename-away", lambda: os.rename(".cafs", "cafs2"))
attempt("cafs:rename-dir-onto", lambda: os.rename("d", ".cafs"))
attempt("cafs:read-missing", lambda: open(".cafs/nope").read())
"#;

#[test]
fn garbage_written_to_control_files_changes_nothing() {
    let started = Instant::now();
    let fx = Fixture::start();
    let read = |f: &str| ok(&sh_as(JOB, &fx.base, &format!("cat .cafs/{f}")));
    let hash = read("hash");
    assert_eq!(read("dirty"), "1\n");
    let before = fx.state();

    let out = fx.py(&fx.base, "control.py", CONTROL_FILES);
    let got: Vec<&str> = out.lines().collect();
    let mut want: Vec<String> = [
        // Over the message limit: EFBIG; not text: EINVAL. Nothing is committed either way.
        "commit:10MiB-random-in-one-write EFBIG",
        "commit:random-in-8KiB-writes EINVAL",
        "commit:64KiB+1-of-text EFBIG",
        "commit:NUL EINVAL",
        "commit:latin-1 EINVAL",
    ]
    .map(String::from)
    .to_vec();
    for f in ["dirty", "hash", "status", "manifest"] {
        // Mode 0444: the kernel refuses to open them for writing (default_permissions).
        for op in ["write", "append", "read-write", "truncate"] {
            want.push(format!("{f}:{op} EACCES"));
        }
        want.push(format!("{f}:unlink EPERM"));
    }
    want.extend(
        [
            "cafs:create EEXIST",
            "cafs:mkdir-inside EEXIST",
            "cafs:symlink-inside EEXIST",
            "cafs:unlink-commit EPERM",
            "cafs:rmdir EPERM",
            "cafs:mkdir EEXIST",
            "cafs:write-the-directory EISDIR",
            "cafs:rename-commit-out ENOENT",
            "cafs:rename-file-in ENOENT",
            "cafs:rename-file-over-commit ENOENT",
            "cafs:rename-away EPERM",
            "cafs:rename-dir-onto EPERM",
            "cafs:read-missing ENOENT",
        ]
        .map(String::from),
    );
    assert_eq!(got, want);
    assert_eq!((read("dirty"), read("hash")), ("1\n".to_string(), hash.clone()));
    let status: serde_json::Value = serde_json::from_str(&read("status")).unwrap();
    assert_eq!((&status["dirty"], &status["last_error"]), (&serde_json::json!(true), &serde_json::Value::Null));
    fx.unchanged(&before, "garbage in the control files");

    // Done right: a line of text commits, with it as the message.
    ok(&sh_as(JOB, &fx.base, "echo 'via the control file' > .cafs/commit"));
    assert_eq!(read("dirty"), "0\n");
    let log = fx.log("base").unwrap().versions;
    assert_eq!(log.len(), 2);
    assert_eq!((log[1].message.as_str(), log[1].committer.as_str()), ("via the control file", "uid 1000"));
    assert_eq!(read("hash"), format!("{}\n", log[1].pdh));
    eprintln!("control files: {:.1?}", started.elapsed());
}

/// Makes files and a directory and a symlink with odd names, then tries names over 255 bytes every way a name is
/// made; prints each attempt's result.
const ODD_NAMES: &str = r#"
import errno, os
names = [b"new\nline", b"tab\there", b"back\\slash", b"\xff\xfe not utf-8", b"sp ace", b"colon:", b"\x01ctl\x7f",
         "caf\u00e9".encode(), b"n" * 255, b"-dash", b".hidden", b"..dots", b"\\040"]
for n in names:
    with open(n, "wb") as f:
        f.write(b"content of " + n)
os.mkdir(b"dir\nwith\\odd\xff")
with open(b"dir\nwith\\odd\xff/inner\ttab", "wb") as f:
    f.write(b"inner")
os.symlink(b"new\nline", b"link\xfe")

def attempt(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])

for n in [255, 256, 1000, 1100]:
    long = b"y" * n
    attempt(f"create-{n}", lambda: os.close(os.open(long, os.O_WRONLY | os.O_CREAT, 0o644)))
    if n > 255:
        attempt(f"mkdir-{n}", lambda: os.mkdir(long))
        attempt(f"symlink-{n}", lambda: os.symlink(b"x", long))
        attempt(f"rename-{n}", lambda: os.rename(b"sp ace", long))
        attempt(f"stat-{n}", lambda: os.stat(long))
os.unlink(b"y" * 255)
"#;

/// Every entry below the current directory: path, kind, and content (a file's bytes, a symlink's target).
const DUMP: &str = r#"
import os
for root, dirs, files in os.walk(b".", followlinks=False):
    for n in sorted(dirs + files):
        p = os.path.join(root, n)
        if os.path.islink(p):
            print(repr(p), "link", repr(os.readlink(p)))
        elif os.path.isdir(p):
            print(repr(p), "dir")
        else:
            with open(p, "rb") as f:
                print(repr(p), "file", repr(f.read()))
"#;

#[test]
fn odd_names_round_trip_and_long_names_are_refused() {
    let started = Instant::now();
    let fx = Fixture::start();
    let dir = fx.stack.job_dir("names", JOB);
    ok(&fx.stack.fsctl(JOB, &["mount", "names", &s(&dir)]));
    let before = fx.state();

    let out = fx.py(&dir, "names.py", ODD_NAMES);
    let mut want = vec!["create-255 ok".to_string()];
    for n in [256, 1000, 1100] {
        want.extend(["create", "mkdir", "symlink", "rename", "stat"].map(|op| format!("{op}-{n} ENAMETOOLONG")));
    }
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    let written = fx.py(&dir, "dump.py", DUMP);
    assert_eq!(written.lines().count(), 16, "13 files, a directory, a file in it, a symlink:\n{written}");
    assert!(!written.contains("yyy"), "no long name was made:\n{written}");
    for name in
        [r"b'./new\nline'", r"b'./tab\there'", r"b'./back\\slash'", r"b'./\xff\xfe not utf-8'", r"b'./\x01ctl\x7f'"]
    {
        assert!(written.contains(name), "{name} in\n{written}");
    }

    // The manifest escapes what it must; the commit reads back byte for byte from its hash.
    let manifest = ok(&sh_as(JOB, &dir, "cat .cafs/manifest"));
    for escaped in
        [r"new\012line", r"tab\011here", r"back\134slash", r"\377\376\040not\040utf-8", r"colon\072", r"\001ctl"]
    {
        assert!(manifest.contains(escaped), "{escaped} in\n{manifest}");
    }
    let pdh = ok(&fx.stack.fsctl(JOB, &["commit", &s(&dir), "-m", "odd names"])).trim().to_string();
    // A hash mount shows what the manifest holds; the symlink lives in the sidecar, which it does not read.
    let ro = fx.stack.job_dir("names-ro", JOB);
    ok(&fx.stack.fsctl(JOB, &["mount", &pdh, &s(&ro)]));
    let no_link: String = written.lines().filter(|l| !l.contains(" link ")).map(|l| format!("{l}\n")).collect();
    assert_eq!(fx.py(&ro, "dump.py", DUMP), no_link);
    ok(&fx.stack.fsctl(JOB, &["umount", &s(&ro)]));
    // The ref mounted again: everything, the symlink too.
    ok(&fx.stack.fsctl(JOB, &["umount", &s(&dir)]));
    ok(&fx.stack.fsctl(JOB, &["mount", "names", &s(&dir)]));
    assert_eq!(fx.py(&dir, "dump.py", DUMP), written);
    ok(&fx.stack.fsctl(JOB, &["umount", &s(&dir)]));
    // The existing mount was not touched by any of it.
    let after = fx.state();
    assert_eq!((after.tree, after.base, &after.log), (before.tree, before.base, &before.log));
    eprintln!("names: {:.1?}", started.elapsed());
}
