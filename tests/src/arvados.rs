//! A test Arvados cluster: keepstores, a keepproxy and an API server, written from the Arvados source and
//! checked against the real Arvados client (the Python SDK's `KeepClient`, `arv-put`, `arv-get`) by the tests
//! that use it, so that what cafs does against it is what it would do against a cluster.
//!
//! What it follows, from the Arvados source:
//! - keepstore (`services/keepstore/router.go`, `keepstore.go`): `PUT /<md5>` takes up to 64 MiB (413 above),
//!   checks the body's MD5 against the path and its length against `Content-Length` (400), keeps one copy (an
//!   existing one that differs is a 500 "hash collision"), and answers the locator signed for whatever token came
//!   with it, a newline, `X-Keep-Replicas-Stored`. `GET`/`HEAD /<locator>` need a size hint (405 without, but for
//!   the empty block), and with blob signing on, a token (401) and a valid signature (expired: 401, invalid: 400);
//!   bytes that do not match their MD5 are cut short before the last chunk.
//! - keepproxy (`services/keepproxy/keepproxy.go`): needs `Content-Length` (411) and a token the API accepts
//!   (403), writes the replicas asked for to the keepstores itself, answers the signed locator without a
//!   newline; 503 when not enough replicas were written.
//! - signatures (`sdk/go/arvados/blob_signature.go`): `+A` hex(HMAC-SHA1(key, md5 "@" token "@" expiry "@"
//!   ttl)) `@` expiry, expiry and TTL in hex seconds.
//! - the API (`services/api`): the discovery document, `keep_services/accessible`, `users/current`, `config`,
//!   `groups/<uuid>` (the one project), and collections (see [`collections`]).
//!
//! Faults for tests: a keepstore can be made to answer a status for its next requests, to die (connections cut
//! and refused; also in the middle of receiving a block), or to hold other bytes for a block.

mod api;
pub mod collections;
mod keep;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// How the test cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Keepstores (disk services), each with one volume of replication 1.
    pub keepstores: usize,
    /// Whether Keep checks signatures on reads (`Collections.BlobSigning`).
    pub blob_signing: bool,
    /// `Collections.BlobSigningTTL`.
    pub signature_ttl: Duration,
    /// `Collections.DefaultReplication`.
    pub default_replication: u32,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            keepstores: 2,
            blob_signing: true,
            signature_ttl: Duration::from_secs(14 * 24 * 3600),
            default_replication: 2,
        }
    }
}

/// The cluster ID of every test cluster.
pub const CLUSTER: &str = "zzzzz";

/// One keepstore's state.
#[derive(Debug, Default)]
pub struct Keepstore {
    pub uuid: String,
    volume: Mutex<HashMap<String, Bytes>>,
    /// Statuses to answer the next requests with, instead of serving them.
    fail: Mutex<VecDeque<u16>>,
    dead: AtomicBool,
    /// Dies once the next PUT's body has begun to arrive.
    die_in_put: AtomicBool,
    pub puts: AtomicU64,
    pub gets: AtomicU64,
}

impl Keepstore {
    /// The next status to fail a request with, if any.
    fn next_failure(&self) -> Option<u16> {
        self.fail.lock().unwrap().pop_front()
    }
}

/// What every service shares.
#[derive(Debug)]
pub struct State {
    pub opts: ClusterOptions,
    key: Vec<u8>,
    /// API tokens the API accepts.
    tokens: Mutex<HashSet<String>>,
    pub keepstores: Vec<Keepstore>,
    /// `host:port` of each keepstore, of the proxy, of the API.
    keepstore_addrs: Vec<SocketAddr>,
    proxy_addr: SocketAddr,
    api_addr: SocketAddr,
    /// Every collection record, current and past versions.
    pub collections: Mutex<Vec<collections::Collection>>,
}

impl State {
    fn token_ok(&self, token: &str) -> bool {
        self.tokens.lock().unwrap().contains(token)
    }

    /// The user every accepted token belongs to.
    pub fn user_uuid(&self) -> String {
        format!("{CLUSTER}-tpzed-000000000000001")
    }

    /// `locator` (md5+size) signed for `token`, as keepstore signs it.
    pub fn sign(&self, locator: &str, token: &str) -> String {
        if token.is_empty() {
            return locator.to_string();
        }
        let expiry = now() + self.opts.signature_ttl.as_secs();
        sign_at(&self.key, locator, token, expiry, self.opts.signature_ttl.as_secs())
    }

    /// Checks a signed locator for `token`, as keepstore does before a read: `Err(status, why)`.
    fn check_signature(&self, locator: &str, token: &str) -> Result<(), (u16, &'static str)> {
        if !self.opts.blob_signing {
            return Ok(());
        }
        if token.is_empty() {
            return Err((401, "no token provided in Authorization header"));
        }
        let hint = locator.split('+').find(|h| h.starts_with('A')).ok_or((400, "invalid signature"))?;
        let (sig, expiry_hex) = hint[1..].split_once('@').ok_or((400, "invalid signature"))?;
        let expiry = u64::from_str_radix(expiry_hex, 16).map_err(|_| (400, "invalid signature"))?;
        if expiry_hex.len() != 8 || sig.len() != 40 {
            return Err((400, "invalid signature"));
        }
        if expiry <= now() {
            return Err((401, "expired signature"));
        }
        let md5 = &locator[..32];
        if signature(&self.key, md5, token, expiry_hex, &format!("{:x}", self.opts.signature_ttl.as_secs())) != sig {
            return Err((400, "invalid signature"));
        }
        Ok(())
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// hex(HMAC-SHA1(key, md5 "@" token "@" expiry "@" ttl)), as `makePermSignature`.
pub fn signature(key: &[u8], md5: &str, token: &str, expiry_hex: &str, ttl_hex: &str) -> String {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let pkey = PKey::hmac(key).unwrap();
    let mut signer = Signer::new(MessageDigest::sha1(), &pkey).unwrap();
    signer.update(format!("{md5}@{token}@{expiry_hex}@{ttl_hex}").as_bytes()).unwrap();
    signer.sign_to_vec().unwrap().iter().map(|b| format!("{b:02x}")).collect()
}

/// `locator` with the signature that expires at `expiry` appended, as `SignLocator`.
pub fn sign_at(key: &[u8], locator: &str, token: &str, expiry: u64, ttl: u64) -> String {
    let md5 = &locator[..32];
    let expiry_hex = format!("{expiry:08x}");
    format!("{locator}+A{}@{expiry_hex}", signature(key, md5, token, &expiry_hex, &format!("{ttl:x}")))
}

/// A running test cluster. Dropped, it stops every service.
pub struct Cluster {
    pub state: Arc<State>,
    /// A token the API accepts (the `v2/<uuid>/<secret>` form).
    pub token: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let bind = || rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let store_listeners: Vec<_> = (0..opts.keepstores).map(|_| bind()).collect();
        let (proxy, api) = (bind(), bind());
        let token = format!("v2/{CLUSTER}-gj3su-{:015}/{}", 1, random_alnum(40));
        let key = random_alnum(64).into_bytes();
        let state = Arc::new(State {
            keepstores: (0..opts.keepstores)
                .map(|i| Keepstore { uuid: format!("{CLUSTER}-bi6l4-{i:015}"), ..Keepstore::default() })
                .collect(),
            keepstore_addrs: store_listeners.iter().map(|l| l.local_addr().unwrap()).collect(),
            proxy_addr: proxy.local_addr().unwrap(),
            api_addr: api.local_addr().unwrap(),
            tokens: Mutex::new(HashSet::from([token.clone()])),
            collections: Mutex::new(Vec::new()),
            key,
            opts,
        });
        for (i, l) in store_listeners.into_iter().enumerate() {
            let dead = Arc::new(DeadCheck { state: state.clone(), store: i });
            rt.spawn(axum::serve(Cutting { inner: l, dead }, keep::keepstore(state.clone(), i)).into_future());
        }
        rt.spawn(axum::serve(proxy, keep::keepproxy(state.clone())).into_future());
        let tls = api::TlsListener::new(api);
        rt.spawn(axum::serve(tls, api::router(state.clone())).into_future());
        Self { state, token, rt: Some(rt) }
    }

    /// A project (group UUID) for tests to keep collections in.
    pub fn project(&self) -> String {
        format!("{CLUSTER}-j7d0g-000000000000001")
    }

    /// The current record of every collection named `name`.
    pub fn collections_named(&self, name: &str) -> Vec<collections::Collection> {
        let list = self.state.collections.lock().unwrap();
        list.iter().filter(|c| c.name == name && c.uuid == c.current_version_uuid && !c.trashed).cloned().collect()
    }

    /// Every record (past versions too) of the collection `uuid`, oldest first.
    pub fn versions(&self, uuid: &str) -> Vec<collections::Collection> {
        let list = self.state.collections.lock().unwrap();
        let mut v: Vec<_> = list.iter().filter(|c| c.current_version_uuid == uuid).cloned().collect();
        v.sort_by_key(|c| c.version);
        v
    }

    /// `127.0.0.1:port` of the API (HTTPS, self-signed: clients need `ARVADOS_API_HOST_INSECURE`).
    pub fn api_host(&self) -> String {
        self.state.api_addr.to_string()
    }

    /// `http://127.0.0.1:port` of keepstore `i`.
    pub fn keepstore_url(&self, i: usize) -> String {
        format!("http://{}", self.state.keepstore_addrs[i])
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.state.proxy_addr)
    }

    /// Keepstore `i` answers its next `n` requests with `status`.
    pub fn fail_next(&self, i: usize, status: u16, n: usize) {
        self.state.keepstores[i].fail.lock().unwrap().extend(std::iter::repeat_n(status, n));
    }

    /// Keepstore `i` dies: connections are cut, requests in flight get no answer, new ones are refused.
    pub fn kill(&self, i: usize) {
        self.state.keepstores[i].dead.store(true, Ordering::SeqCst);
    }

    /// Keepstore `i` dies in the middle of its next PUT, with part of the block received.
    pub fn kill_during_next_put(&self, i: usize) {
        self.state.keepstores[i].die_in_put.store(true, Ordering::SeqCst);
    }

    pub fn revive(&self, i: usize) {
        self.state.keepstores[i].dead.store(false, Ordering::SeqCst);
    }

    /// The copy keepstore `i` holds of the block with MD5 `md5hex`.
    pub fn block(&self, i: usize, md5hex: &str) -> Option<Bytes> {
        self.state.keepstores[i].volume.lock().unwrap().get(md5hex).cloned()
    }

    /// Keepstore `i` holds `data` for the block with MD5 `md5hex` (as a damaged disk would).
    pub fn tamper(&self, i: usize, md5hex: &str, data: Bytes) {
        self.state.keepstores[i].volume.lock().unwrap().insert(md5hex.to_string(), data);
    }

    /// The keepstores in the rendezvous order of the block with MD5 `md5hex`, as Keep clients order them.
    pub fn order(&self, md5hex: &str) -> Vec<usize> {
        keep::order(&self.state, md5hex)
    }

    /// How many blocks keepstore `i` holds.
    pub fn blocks(&self, i: usize) -> usize {
        self.state.keepstores[i].volume.lock().unwrap().len()
    }

    /// PUTs keepstore `i` has answered.
    pub fn puts(&self, i: usize) -> u64 {
        self.state.keepstores[i].puts.load(Ordering::SeqCst)
    }

    /// GETs keepstore `i` has answered.
    pub fn gets(&self, i: usize) -> u64 {
        self.state.keepstores[i].gets.load(Ordering::SeqCst)
    }

    /// The Python SDK's KeepClient and API client (`tests/py/keep_client.py`) against this cluster: its JSON.
    pub fn sdk(&self, args: &[&str]) -> serde_json::Value {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/keep_client.py");
        let mut cmd = std::process::Command::new(crate::sdk::python());
        cmd.arg(script).args(args).envs(self.env());
        let out = crate::run_bounded(&mut cmd, Duration::from_secs(300));
        assert!(out.status.success(), "keep_client.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// An Arvados command-line tool of the SDK's virtualenv (`arv-put`, `arv-get`) against this cluster: its
    /// output.
    pub fn arv(&self, tool: &str, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(crate::sdk::python().with_file_name(tool));
        cmd.args(args).envs(self.env());
        let out = crate::run_bounded(&mut cmd, Duration::from_secs(300));
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// cafsd's configuration for a node on this cluster (Keep for blocks, found through the API; with `catalog`,
    /// the project's collections for refs), with `token` written to `dir/arvados.token`, readable only by the
    /// user cafsd runs as in the tests.
    pub fn cafsd_config(&self, dir: &std::path::Path, token: &str, catalog: bool) -> String {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("arvados.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(crate::stack::NOBODY), Some(crate::stack::NOBODY)).unwrap();
        let mut config = format!(
            "[store]\nkind = \"keep\"\napi_host = \"{}\"\ntoken_file = \"{}\"\ninsecure = true\n",
            self.api_host(),
            file.display()
        );
        if catalog {
            config.push_str(&format!("[catalog]\nkind = \"arvados\"\nproject = \"{}\"\n", self.project()));
        }
        config
    }

    /// The environment the Arvados tools read (`ARVADOS_API_HOST`, `ARVADOS_API_TOKEN`, insecure TLS).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ARVADOS_API_HOST", self.api_host()),
            ("ARVADOS_API_TOKEN", self.token.clone()),
            ("ARVADOS_API_HOST_INSECURE", "1".into()),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a keepstore is dead, for its listener.
#[derive(Debug)]
struct DeadCheck {
    state: Arc<State>,
    store: usize,
}

/// A listener that drops every connection while its keepstore is dead (a refused connection, to the client).
struct Cutting {
    inner: tokio::net::TcpListener,
    dead: Arc<DeadCheck>,
}

impl DeadCheck {
    fn dead(&self) -> bool {
        self.state.keepstores[self.store].dead.load(Ordering::SeqCst)
    }
}

impl axum::serve::Listener for Cutting {
    type Io = CutStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((io, addr)) = self.inner.accept().await else { continue };
            if !self.dead.dead() {
                return (CutStream { io, dead: self.dead.clone() }, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails every read and write once its keepstore is dead, so that a request in flight (a
/// PUT's body half sent) ends with the connection cut, as when the process dies.
struct CutStream {
    io: tokio::net::TcpStream,
    dead: Arc<DeadCheck>,
}

fn cut() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::ConnectionReset)
}

impl tokio::io::AsyncRead for CutStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.dead.dead() {
            return std::task::Poll::Ready(Err(cut()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CutStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.dead.dead() {
            return std::task::Poll::Ready(Err(cut()));
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn random_alnum(n: usize) -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut raw = vec![0u8; n];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut raw).unwrap();
    raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_arvados_test_vector() {
        // blob_signature_test.go: knownKey, knownToken, knownTimestamp, TTL 1209600 s, knownSignature.
        let key = "13u9fkuccnboeewr0ne3mvapk28epf68a3bhj9q8sb4l6e4e5mkkp6nhj2mmpscgu1zze5h5enydxfe3j215024u16ij4hjaiqs5u4pzsl3nczmaoxncljkm4875xqn4xv058koz3vkptmzhyheiy6wzevzjmdvxhvcqsvr5abhl15c2d4o4jhl0s91lojy1mtrzqqvprqcverls0xvy9vai9t1l1lvvazpuadafm71jl4mrwq2ygokee3eamvjy8qq1fvy238838enjmy5wzy2md7yvsitp5vztft6j4q866efym7e6vu5wm9fpnwjyxfldw3vbo01mgjs75rgo7qioh8z8ij7jpyp8508okhgbbex3ceei786u5rw2a9gx743dj3fgq2irk";
        let token = "hocfupkn2pjhrpgp2vxv8rsku7tvtx49arbc9s4bvu7p7wxqvk";
        assert_eq!(
            sign_at(key.as_bytes(), "acbd18db4cc2f85cedef654fccc4a4d8+3", token, 0x7fff_ffff, 1_209_600),
            "acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff"
        );
    }
}
