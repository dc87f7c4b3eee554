//! The Keep block store: blocks in an Arvados cluster's Keep, spoken to over HTTP as the Arvados SDKs speak.
//!
//! Services are found through the Arvados API or given as a fixed list (see [`services`]). A put sends the
//! block to services in its rendezvous order, in parallel, until the replicas they report stored
//! (`X-Keep-Replicas-Stored`) add up to the replication wanted; a keepproxy, or a service from a fixed list,
//! takes every replica in one request. Failures that may pass (no answer, 408, 429, 5xx other than 507) are tried
//! again with backoff; a full service (507), a refused token (401/403) or an oversized block (413) are not. The
//! answer names the block with its permission signature, which is checked to name the block that was sent and
//! kept apart from the locator (see [`signatures`]).
//!
//! A get asks the services in the same order, with the block's signature, and checks the bytes against the
//! locator as they arrive; a service that answers with other bytes, none, or an error is passed over for the
//! next. Keep serves whole blocks only, so a ranged read is a whole read, sliced.
//!
//! What this store does not know is a block it holds no signature for (written before its state was kept, or by
//! another writer): on a cluster that signs, such a block can only be read with a signature from the Arvados API
//! (a collection's manifest), which the catalog hands in through [`KeepStore::signatures`].

mod manifests;
mod services;
mod signatures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, Semaphore};

use super::{Block, BlockStore, StoreError, check_range};
use crate::arvados::{Api, ApiConfig, error_chain};
use crate::locator::{Locator, Md5};
pub use services::Service;
pub use signatures::{Permit, Signature, Signatures};

/// How often the list of services is asked for again.
const REDISCOVER: Duration = Duration::from_secs(300);

/// How to reach Keep. The token is never logged (see the `Debug` impl).
#[derive(Clone)]
pub struct KeepConfig {
    /// The Arvados API's `host[:port]` (HTTPS), where the services and the replication are found. Empty when
    /// `services` is given and the replication is set.
    pub api_host: String,
    /// The token sent with every request, exactly as given: Keep signs for this string.
    pub api_token: String,
    /// Accept a certificate that does not verify (`ARVADOS_API_HOST_INSECURE`: test clusters).
    pub insecure: bool,
    /// Fixed service URLs (`ARVADOS_KEEP_SERVICES`) instead of asking the API.
    pub services: Vec<String>,
    /// Replicas wanted for each block; `None`: the API's `defaultCollectionReplication`, else 2.
    pub replicas: Option<u32>,
    /// Storage classes asked for (`X-Keep-Storage-Classes`); empty: the cluster's default.
    pub storage_classes: Vec<String>,
    /// Requests in flight at once, at most.
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    /// Further rounds over the services that failed in a way that may pass, before an error is returned.
    pub retries: u32,
    /// First wait between rounds; doubles for each further one.
    pub retry_delay: Duration,
}

impl std::fmt::Debug for KeepConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepConfig")
            .field("api_host", &self.api_host)
            .field("api_token", &"<redacted>")
            .field("insecure", &self.insecure)
            .field("services", &self.services)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl Default for KeepConfig {
    fn default() -> Self {
        Self {
            api_host: String::new(),
            api_token: String::new(),
            insecure: false,
            services: Vec::new(),
            replicas: None,
            storage_classes: Vec::new(),
            max_concurrency: 16,
            request_timeout: Duration::from_secs(300),
            retries: 3,
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// What discovery found: the services and the replication to ask for.
#[derive(Debug)]
struct Found {
    at: Instant,
    services: Arc<Vec<Service>>,
    replicas: u32,
}

pub struct KeepStore {
    cfg: KeepConfig,
    http: reqwest::Client,
    /// The Arvados API, where services and replication are found (none with a fixed list of services).
    api: Option<Api>,
    found: Mutex<Option<Found>>,
    signatures: Arc<Signatures>,
    limit: Semaphore,
}

impl std::fmt::Debug for KeepStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeepStore({})", self.describe())
    }
}

/// One failed request: its status (0 when there was no answer) and what was said.
#[derive(Debug)]
struct Failure {
    status: u16,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// Whether the same request may succeed later, as the Arvados SDKs decide it.
    fn may_pass(&self) -> bool {
        matches!(self.status, 0 | 408 | 429) || (self.status >= 500 && self.status != 507)
    }

    fn describe(&self) -> String {
        match self.status {
            0 => format!("no answer: {}", self.message),
            s => format!("{s} {}", self.message).trim_end().to_string(),
        }
    }
}

impl KeepStore {
    /// A store that finds its services at the first request. `signatures` are the ones kept from before.
    pub fn new(cfg: KeepConfig, signatures: Arc<Signatures>) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Refused(format!("Keep configuration: {why}"));
        if cfg.api_token.is_empty() {
            return Err(bad("no API token".into()));
        }
        if cfg.api_host.is_empty() && cfg.services.is_empty() {
            return Err(bad("neither an API host nor Keep service URLs".into()));
        }
        if cfg.api_token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the API token has a space or a control character".into()));
        }
        if !cfg.services.is_empty() {
            services::fixed(&cfg.services).map_err(bad)?;
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .tls_danger_accept_invalid_certs(cfg.insecure)
            .build()
            .map_err(|e| bad(format!("HTTP client: {e}")))?;
        let api = if cfg.api_host.is_empty() {
            None
        } else {
            Some(
                Api::new(ApiConfig {
                    host: cfg.api_host.clone(),
                    token: cfg.api_token.clone(),
                    insecure: cfg.insecure,
                    timeout: Duration::from_secs(60),
                })
                .map_err(bad)?,
            )
        };
        let limit = Semaphore::new(cfg.max_concurrency.max(1));
        Ok(Self { cfg, http, api, found: Mutex::new(None), signatures, limit })
    }

    /// The permission signatures this store holds (the Arvados catalog adds those of the collections it reads,
    /// and signs the manifests it saves with them).
    pub fn signatures(&self) -> &Arc<Signatures> {
        &self.signatures
    }

    fn describe(&self) -> String {
        if self.cfg.services.is_empty() { format!("api {}", self.cfg.api_host) } else { self.cfg.services.join(" ") }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.cfg.api_token)
    }

    /// The services and the replication, found again when [`REDISCOVER`] has passed (the last list is kept if
    /// the API cannot be asked then).
    /// A GET of the Arvados API's `path`, as JSON.
    async fn api_get(&self, path: &str) -> Result<serde_json::Value, StoreError> {
        let api = self.api.as_ref().ok_or_else(|| StoreError::Refused("no Arvados API host configured".into()))?;
        api.get(path, &[]).await.map_err(|e| {
            if e.may_pass() { StoreError::Unavailable(e.to_string()) } else { StoreError::Refused(e.to_string()) }
        })
    }

    async fn found(&self) -> Result<(Arc<Vec<Service>>, u32), StoreError> {
        let mut found = self.found.lock().await;
        if let Some(f) = &*found
            && f.at.elapsed() < REDISCOVER
        {
            return Ok((f.services.clone(), f.replicas));
        }
        match self.discover().await {
            Ok((services, replicas)) => {
                let services = Arc::new(services);
                tracing::debug!(services = services.len(), replicas, "Keep services found");
                *found = Some(Found { at: Instant::now(), services: services.clone(), replicas });
                Ok((services, replicas))
            }
            Err(e) => match &mut *found {
                Some(f) => {
                    tracing::warn!(error = %e, "could not list the Keep services again; using the last list");
                    f.at = Instant::now();
                    Ok((f.services.clone(), f.replicas))
                }
                None => Err(e),
            },
        }
    }

    async fn discover(&self) -> Result<(Vec<Service>, u32), StoreError> {
        let services = if self.cfg.services.is_empty() {
            let body = self.api_get("arvados/v1/keep_services/accessible").await?;
            services::parse_accessible(body.to_string().as_bytes()).map_err(StoreError::Refused)?
        } else {
            services::fixed(&self.cfg.services).map_err(StoreError::Refused)?
        };
        let replicas = match self.cfg.replicas {
            Some(n) => n,
            None if self.cfg.api_host.is_empty() => 2,
            None => {
                let doc = self.api_get("discovery/v1/apis/arvados/v1/rest").await?;
                doc.get("defaultCollectionReplication").and_then(|v| v.as_u64()).map_or(2, |n| n as u32)
            }
        };
        Ok((services, replicas.max(1)))
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.limit.acquire().await.map_err(|_| StoreError::Unavailable("store closed".into()))
    }

    /// The path of a request for the block: `md5+size`, with its signature while that is accepted.
    fn block_path(&self, locator: &Locator) -> String {
        let mut path = locator.stripped_string();
        if let Some(Permit::Signed(s)) = self.signatures.get(locator)
            && s.valid_at(signatures::now())
        {
            path.push_str(s.hint());
        }
        path
    }

    /// Writes the block to Keep until the wanted replicas are stored; returns what Keep signed.
    async fn write(&self, block: &Block) -> Result<Permit, StoreError> {
        let (services, want) = self.found().await?;
        let locator = block.locator();
        let mut todo: Vec<Service> =
            services::order(&services, locator).into_iter().filter(|s| !s.read_only).cloned().collect();
        if todo.is_empty() {
            return Err(StoreError::Refused("Keep has no writable service".into()));
        }
        // A proxy writes every replica it is asked for, so one request at a time is enough (as the SDKs do).
        let per_request = if todo.iter().any(|s| s.proxy) { want } else { 1 };
        let mut stored = 0u32;
        let mut permit = None;
        let mut failures: Vec<(String, Failure)> = Vec::new();
        let mut delay = self.cfg.retry_delay;
        for round in 0..=self.cfg.retries {
            let mut retry = Vec::new();
            let mut next = 0;
            let mut running = tokio::task::JoinSet::new();
            loop {
                while (running.len() as u32) * per_request < want.saturating_sub(stored) && next < todo.len() {
                    let svc = todo[next].clone();
                    next += 1;
                    let req = self.put_request(&svc, block, want);
                    running.spawn(async move { (svc, put_answer(req.send().await).await) });
                }
                let Some(done) = running.join_next().await else { break };
                let (svc, answer) = done.map_err(|e| StoreError::Unavailable(format!("put task: {e}")))?;
                match answer.and_then(|(replicas, body)| check_put_answer(locator, &body).map(|p| (replicas, p))) {
                    Ok((replicas, p)) => {
                        stored += replicas;
                        permit = Some(p);
                        failures.retain(|(root, _)| *root != svc.root);
                    }
                    Err(f) => {
                        tracing::debug!(service = %svc.root, status = f.status, message = %f.message, "Keep put failed");
                        if f.may_pass() {
                            retry.push(svc.clone());
                        }
                        failures.retain(|(root, _)| *root != svc.root);
                        failures.push((svc.root.clone(), f));
                    }
                }
                if stored >= want {
                    break;
                }
            }
            if stored >= want {
                break;
            }
            if retry.is_empty() || round == self.cfg.retries {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            todo = retry;
        }
        match permit {
            Some(p) if stored >= want => Ok(p),
            _ => Err(put_error(locator, stored, want, &failures)),
        }
    }

    fn put_request(&self, svc: &Service, block: &Block, want: u32) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .put(format!("{}/{}", svc.root, hex_md5(block.locator())))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/octet-stream")
            .header("X-Keep-Desired-Replicas", want.to_string())
            .header("X-Request-Id", request_id())
            .body(block.data().clone());
        if !self.cfg.storage_classes.is_empty() {
            req = req.header("X-Keep-Storage-Classes", self.cfg.storage_classes.join(", "));
        }
        req
    }

    /// Reads the block from the first service, in its rendezvous order, that gives its bytes.
    async fn read(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        let (services, _) = self.found().await?;
        let order = services::order(&services, locator);
        let path = self.block_path(locator);
        let mut delay = self.cfg.retry_delay;
        let mut last = None;
        for round in 0..=self.cfg.retries {
            let mut outcome = ReadOutcome::default();
            for svc in &order {
                let url = format!("{}/{path}", svc.root);
                let sent = self.http.get(&url).header("Authorization", self.bearer()).send().await;
                match get_answer(locator, sent).await {
                    Ok(data) => return Ok(data),
                    Err(f) => {
                        tracing::debug!(service = %svc.root, status = f.status, message = %f.message, "Keep get failed");
                        outcome.add(f);
                    }
                }
            }
            let e = outcome.into_error(locator, self.signatures.get(locator).is_some());
            if !e.is_transient() || round == self.cfg.retries {
                if matches!(e, StoreError::NotFound(_) | StoreError::Corrupt { .. }) {
                    self.signatures.forget(locator);
                }
                return Err(e);
            }
            last = Some(e);
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no Keep service".into())))
    }

    /// Whether a service has the block (a `HEAD`, for a cluster that does not sign).
    async fn head(&self, locator: &Locator) -> Result<bool, StoreError> {
        let (services, _) = self.found().await?;
        let path = locator.stripped_string();
        let mut outcome = ReadOutcome::default();
        for svc in services::order(&services, locator) {
            let sent = self.http.head(format!("{}/{path}", svc.root)).header("Authorization", self.bearer()).send();
            match sent.await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(true),
                Ok(r) => outcome.add(Failure::new(r.status().as_u16(), "")),
                Err(e) => outcome.add(Failure::new(0, error_chain(&e))),
            }
        }
        match outcome.into_error(locator, false) {
            StoreError::NotFound(_) => Ok(false),
            e => Err(e),
        }
    }
}

/// What one round of reads met, to say why no service gave the block.
#[derive(Debug, Default)]
struct ReadOutcome {
    not_found: usize,
    refused: Option<Failure>,
    corrupt: Option<Failure>,
    other: Option<Failure>,
}

/// Status given to an answer whose bytes are not the block's.
const CORRUPT: u16 = 1;

impl ReadOutcome {
    fn add(&mut self, f: Failure) {
        match f.status {
            404 => self.not_found += 1,
            // keepstore: 401 for no token or an expired signature, 400 for an invalid one; keepproxy: 403.
            400 | 401 | 403 => self.refused = Some(f),
            CORRUPT => self.corrupt = Some(f),
            _ => self.other = Some(f),
        }
    }

    fn into_error(self, locator: &Locator, signed: bool) -> StoreError {
        let l = locator.stripped();
        if let Some(f) = self.other {
            return StoreError::Unavailable(format!("get {l} from Keep: {}", f.describe()));
        }
        if let Some(f) = self.corrupt {
            return StoreError::Corrupt { locator: l, reason: f.message };
        }
        if let Some(f) = self.refused {
            let why = if signed { "" } else { " (no permission signature is held for it)" };
            return StoreError::Refused(format!("get {l} from Keep: refused{why}: {}", f.describe()));
        }
        StoreError::NotFound(l)
    }
}

/// The replicas a PUT's answer reports and its body, or why it failed.
async fn put_answer(sent: reqwest::Result<reqwest::Response>) -> Result<(u32, String), Failure> {
    let resp = sent.map_err(|e| Failure::new(0, error_chain(&e)))?;
    let status = resp.status().as_u16();
    // The Go SDK counts one replica when a service does not say.
    let replicas = resp
        .headers()
        .get("X-Keep-Replicas-Stored")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let body = resp.bytes().await.map_err(|e| Failure::new(0, error_chain(&e)))?;
    if status != 200 {
        return Err(Failure::new(status, snippet(&body)));
    }
    Ok((replicas, String::from_utf8_lossy(&body).trim().to_string()))
}

/// Checks that Keep's answer to a PUT names the block sent, and takes its signature.
fn check_put_answer(locator: &Locator, body: &str) -> Result<Permit, Failure> {
    let answered = Locator::parse(body).map_err(|e| Failure::new(502, format!("a PUT answered no locator ({e})")))?;
    if !answered.stripped_eq(locator) {
        return Err(Failure::new(502, format!("a PUT of {} answered another block", locator.stripped())));
    }
    match answered.hints() {
        Some(h) if h.split('+').any(|t| t.starts_with('A')) => Signature::from_hints(h, signatures::now())
            .map(Permit::Signed)
            .ok_or_else(|| Failure::new(502, "a PUT answered a malformed permission signature")),
        _ => Ok(Permit::Unsigned),
    }
}

/// The block's bytes from a GET's answer, checked against the locator as they arrive.
async fn get_answer(locator: &Locator, sent: reqwest::Result<reqwest::Response>) -> Result<Bytes, Failure> {
    let mut resp = sent.map_err(|e| Failure::new(0, error_chain(&e)))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(Failure::new(status, snippet(&body)));
    }
    let size = locator.size() as usize;
    let mut data = crate::bigbuf::reused(size);
    let mut md5 = Md5::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure::new(0, error_chain(&e)))? {
        if data.len() + chunk.len() > size {
            return Err(Failure::new(CORRUPT, format!("more than the {size} bytes the locator says")));
        }
        md5.update(&chunk);
        data.extend_from_slice(&chunk);
    }
    if data.len() != size {
        return Err(Failure::new(CORRUPT, format!("{} bytes where the locator says {size}", data.len())));
    }
    if md5.finish() != *locator.md5() {
        return Err(Failure::new(CORRUPT, "MD5 does not match"));
    }
    Ok(crate::bigbuf::into_bytes(data))
}

fn put_error(locator: &Locator, stored: u32, want: u32, failures: &[(String, Failure)]) -> StoreError {
    let said: Vec<String> = failures.iter().map(|(root, f)| format!("{root}: {}", f.describe())).collect();
    let msg = format!("put {} to Keep: {stored} of {want} replicas stored; {}", locator.stripped(), said.join("; "));
    if failures.iter().any(|(_, f)| f.status == 413) {
        StoreError::TooLarge(locator.size())
    } else if failures.iter().any(|(_, f)| f.may_pass()) || stored > 0 {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Refused(msg)
    }
}

fn hex_md5(locator: &Locator) -> String {
    crate::locator::hex(locator.md5())
}

/// `req-` and 20 random lowercase letters and digits, the form of Arvados request IDs.
fn request_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..20).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    format!("req-{tail}")
}

/// The first line of an error body, short.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

#[async_trait]
impl BlockStore for KeepStore {
    async fn put(&self, block: &Block) -> Result<(), StoreError> {
        let _permit = self.permit().await?;
        let permit = self.write(block).await?;
        let (signatures, locator) = (self.signatures.clone(), block.locator().clone());
        tokio::task::spawn_blocking(move || signatures.record(&locator, permit))
            .await
            .map_err(|e| StoreError::Unavailable(format!("recording a signature: {e}")))?
            .map_err(|e| StoreError::io("record the signature of", block.locator().stripped(), e))
    }

    async fn get(&self, locator: &Locator) -> Result<Bytes, StoreError> {
        let _permit = self.permit().await?;
        self.read(locator).await
    }

    async fn sign_manifest(&self, text: &str) -> Result<String, StoreError> {
        self.signed_manifest(text).await
    }

    async fn get_range(&self, locator: &Locator, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_range(locator, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        Ok(self.get(locator).await?.slice(offset as usize..(offset + len) as usize))
    }

    /// A block counts as stored while a signature for it has more than half its life left (a put renews it:
    /// Keep keeps one copy and signs again); on a cluster that does not sign, when a service has it.
    async fn exists(&self, locator: &Locator) -> Result<bool, StoreError> {
        match self.signatures.get(locator) {
            Some(Permit::Signed(s)) => Ok(s.fresh_at(signatures::now())),
            Some(Permit::Unsigned) => {
                let _permit = self.permit().await?;
                self.head(locator).await
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_answers_are_checked_against_the_block() {
        let l = Locator::of(b"foo");
        let signed = format!("{}+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff", l);
        assert!(matches!(check_put_answer(&l, &signed), Ok(Permit::Signed(_))));
        assert_eq!(check_put_answer(&l, &l.to_string()).unwrap(), Permit::Unsigned);
        assert!(check_put_answer(&l, &Locator::of(b"bar").to_string()).is_err(), "another block");
        assert!(check_put_answer(&l, &format!("{l}+Abad@7fffffff")).is_err(), "malformed signature");
        assert!(check_put_answer(&l, "<html>").is_err());
    }

    #[test]
    fn which_failures_are_tried_again() {
        for s in [0, 408, 429, 500, 502, 503] {
            assert!(Failure::new(s, "").may_pass(), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 507] {
            assert!(!Failure::new(s, "").may_pass(), "{s}");
        }
    }

    #[test]
    fn request_ids_have_the_arvados_form() {
        let id = request_id();
        assert_eq!(id.len(), 24);
        assert!(id.starts_with("req-") && id[4..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn the_token_is_never_printed() {
        let cfg = KeepConfig { api_token: "v2/zzzzz-gj3su-0123456789abcde/secret".into(), ..KeepConfig::default() };
        assert!(!format!("{cfg:?}").contains("secret"));
    }
}
