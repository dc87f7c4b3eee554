//! The Arvados catalog: cafs's refs as collections of an Arvados cluster, so that what a job commits is an
//! Arvados collection, versioned by Arvados, read by every Arvados tool.
//!
//! A ref is the collection in the configured project whose property `cafs:ref` names it (made, named after the
//! ref, by its first commit or `create_ref`); a ref name that is a collection UUID is that collection. A commit
//! saves the manifest, signed with the Keep store's signatures (renewed first where needed: Arvados checks
//! every one), and `preserve_version: true`, so that Arvados keeps each committed state as a version of the
//! collection when the next one lands; the history is Arvados's versions. The PDH Arvados computes must be
//! cafs's own, or the commit fails loudly.
//!
//! The root's `user.prop.<key>` attributes are the collection's properties `<key>` (those cafs set are listed
//! under `cafs:root_props`, so that one removed from the root is removed from the collection; properties set
//! by others are left alone).
//!
//! What a manifest cannot hold travels in the collection's properties, which Arvados snapshots with each
//! version: the cafs version number, parent, committer, message and time, the ref's owner, group and mode, and
//! the sidecar (modes, times, symlinks, extended attributes), base64-encoded under `cafs:sidecar` with its hash
//! under `cafs:sidecar_id`. A property rather than a companion collection: it belongs to exactly the version it
//! describes, is kept and trashed with it, and costs one request instead of two; its size counts against the
//! API's request limit (128 MiB by default), which a sidecar reaches only with millions of entries.
//!
//! Arvados has no compare-and-swap on collections, but it refuses a second collection of the same name in a
//! project, and that is the lock cafs's writers share. The first commit of a ref creates its collection under the
//! ref's name: of two nodes, one gets it. Moving a ref from version N to N+1 first creates a **claim**, an empty
//! collection named `<ref collection UUID> v<N+1> cafs commit claim`; the writer that gets it reads the ref
//! again, commits only if it is still at N, then trashes the claim. A claim left by a writer that died is taken
//! over once it is older than [`CLAIM_STALE`]. Writers other than cafs (Workbench, `arv-put --update-collection`)
//! take no claim: a change they make between cafs's read and its update is kept by Arvados as a past version,
//! and the ref's history then skips it.

use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine;
use serde_json::{Map, Value, json};

use super::{
    AccessChange, Catalog, CatalogError, CollectionRecord, Commit, Principal, RefAccess, RefName, Version,
    commit_access, from_micros, micros, parse_pdh,
};
use crate::arvados::{Api, ApiError};
use crate::manifest::Pdh;
use crate::store::{KeepStore, StoreError};

const REF: &str = "cafs:ref";
const VERSION: &str = "cafs:version";
const PARENT: &str = "cafs:parent";
const COMMITTER: &str = "cafs:committer";
const MESSAGE: &str = "cafs:message";
const COMMITTED_AT: &str = "cafs:committed_at";
const SIDECAR: &str = "cafs:sidecar";
const SIDECAR_ID: &str = "cafs:sidecar_id";
const OWNER: &str = "cafs:owner";
/// The properties cafs set from the root's `user.prop.*`, so that one removed from the root goes too.
const ROOT_PROPS: &str = "cafs:root_props";
const GID: &str = "cafs:gid";
const MODE: &str = "cafs:mode";

/// A claim this old is a writer that died between taking it and trashing it.
pub const CLAIM_STALE: std::time::Duration = std::time::Duration::from_secs(120);
const CLAIM: &str = "cafs:claim";
const CLAIMED_AT: &str = "cafs:claimed_at";

/// Collections listed per request.
const PAGE: usize = 1000;

pub struct ArvadosCatalog {
    api: Api,
    /// The project (group UUID) that holds the refs' collections.
    project: String,
    keep: std::sync::Arc<KeepStore>,
}

impl std::fmt::Debug for ArvadosCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArvadosCatalog({} project {})", self.api.host(), self.project)
    }
}

/// What a failed API request means for a caller: worth another try, or the API's answer.
fn api_error(e: ApiError) -> CatalogError {
    if e.may_pass() { CatalogError::Backend(Box::new(e)) } else { CatalogError::Refused(e.to_string()) }
}

fn store_error(e: StoreError) -> CatalogError {
    if e.is_transient() { CatalogError::Backend(Box::new(e)) } else { CatalogError::Refused(e.to_string()) }
}

fn is_collection_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && &s[5..12] == "-4zz18-"
        && b[..5].iter().chain(&b[12..]).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn props(record: &Value) -> Map<String, Value> {
    record.get("properties").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn uuid_of(record: &Value) -> Result<&str, CatalogError> {
    record
        .get("uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| CatalogError::Corrupt("a collection without a UUID".into()))
}

fn prop_u64(p: &Map<String, Value>, key: &str) -> Option<u64> {
    p.get(key).and_then(Value::as_u64)
}

fn prop_str<'a>(p: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str)
}

/// The cafs version a collection record holds, if it holds one (version 0: a ref created, never committed).
fn version_of(name: &RefName, record: &Value) -> Result<Option<Version>, CatalogError> {
    let p = props(record);
    let Some(version) = prop_u64(&p, VERSION).filter(|v| *v > 0) else { return Ok(None) };
    let bad = |what: &str| CatalogError::Corrupt(format!("ref {name}: collection {}: {what}", record["uuid"]));
    let pdh = parse_pdh(record.get("portable_data_hash").and_then(Value::as_str).ok_or_else(|| bad("no PDH"))?)?;
    Ok(Some(Version {
        name: name.clone(),
        version,
        pdh,
        sidecar: parse_pdh(prop_str(&p, SIDECAR_ID).ok_or_else(|| bad("no sidecar id"))?)?,
        parent: prop_str(&p, PARENT).map(parse_pdh).transpose()?,
        committed_at: from_micros(p.get(COMMITTED_AT).and_then(Value::as_i64).unwrap_or(0)),
        committer: prop_str(&p, COMMITTER).unwrap_or("").to_string(),
        message: prop_str(&p, MESSAGE).unwrap_or("").to_string(),
    }))
}

/// A ref's owner, group and mode from its collection; a collection cafs never recorded them on is a legacy ref.
fn access_of(record: &Value) -> Result<RefAccess, CatalogError> {
    let p = props(record);
    match (prop_u64(&p, OWNER), prop_u64(&p, GID), prop_u64(&p, MODE)) {
        (Some(o), Some(g), Some(m)) => super::stored_access(uuid_of(record)?, o as i64, g as i64, m as i64),
        _ => Ok(RefAccess::LEGACY),
    }
}

/// The root's `user.prop.<key>` attributes in `sidecar`, as the collection's properties `key` (text only; a key of
/// cafs's own is left to cafs). The sidecar is opaque to catalogs: bytes that are not a cafs sidecar give none.
fn root_properties(sidecar: &[u8]) -> Map<String, Value> {
    let mut out = Map::new();
    let attrs = match crate::fs::sidecar::Index::from_bytes(sidecar).map(|i| i.get("").map(|r| r.xattrs())) {
        Ok(Some(Ok(Some(attrs)))) => attrs,
        Err(e) | Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "a sidecar that is not cafs's: no root properties");
            return out;
        }
        Ok(_) => return out,
    };
    for (name, value) in attrs.iter() {
        let Some(key) = name.strip_prefix(b"user.prop.") else { continue };
        match (std::str::from_utf8(key), std::str::from_utf8(value)) {
            (Ok(k), Ok(v)) if !k.starts_with("cafs:") => {
                out.insert(k.to_string(), json!(v));
            }
            _ => tracing::warn!(
                property = %String::from_utf8_lossy(key),
                "a root property that is not text, or named like cafs's own, is not a collection property"
            ),
        }
    }
    out
}

fn set_access(p: &mut Map<String, Value>, a: &RefAccess) {
    p.insert(OWNER.into(), json!(a.owner));
    p.insert(GID.into(), json!(a.gid));
    p.insert(MODE.into(), json!(a.mode));
}

impl ArvadosCatalog {
    /// The catalog of the refs in `project`, on the cluster whose API `api` speaks to and whose Keep `keep` is.
    pub fn new(api: Api, project: String, keep: std::sync::Arc<KeepStore>) -> Result<Self, CatalogError> {
        let b = project.as_bytes();
        if !(b.len() == 27 && (&project[5..12] == "-j7d0g-" || &project[5..12] == "-tpzed-")) {
            return Err(CatalogError::Refused(format!(
                "Arvados catalog: project {project:?} is not a project (…-j7d0g-…) or user (…-tpzed-…) UUID"
            )));
        }
        Ok(Self { api, project, keep })
    }

    async fn list(&self, filters: Value, old_versions: bool) -> Result<Vec<Value>, CatalogError> {
        let mut out = Vec::new();
        loop {
            let query = [
                ("filters", filters.to_string()),
                ("limit", PAGE.to_string()),
                ("offset", out.len().to_string()),
                ("include_old_versions", old_versions.to_string()),
                ("order", json!(["uuid"]).to_string()),
            ];
            let page = self.api.get("arvados/v1/collections", &query).await.map_err(api_error)?;
            let items = page.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            let available = page.get("items_available").and_then(Value::as_u64).unwrap_or(0) as usize;
            let n = items.len();
            out.extend(items);
            if n == 0 || out.len() >= available {
                return Ok(out);
            }
        }
    }

    /// The collection of ref `name`, if there is one.
    async fn find(&self, name: &RefName) -> Result<Option<Value>, CatalogError> {
        if is_collection_uuid(name.as_str()) {
            return match self.api.get(&format!("arvados/v1/collections/{name}"), &[]).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.status == 404 => Ok(None),
                Err(e) => Err(api_error(e)),
            };
        }
        let filters = json!([["owner_uuid", "=", self.project], [format!("properties.{REF}"), "=", name.as_str()]]);
        let mut found = self.list(filters, false).await?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(CatalogError::Corrupt(format!("{n} collections of project {} are ref {name}", self.project))),
        }
    }

    async fn save(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value, ApiError> {
        self.api.send(method, path, &[], Some(&json!({ "collection": body }))).await
    }

    /// Takes the claim to move the collection `uuid` to `version`; `false` when another writer holds it.
    async fn claim(&self, uuid: &str, version: u64) -> Result<Option<String>, CatalogError> {
        let name = format!("{uuid} v{version} cafs commit claim");
        for attempt in 0..2 {
            let body = json!({
                "owner_uuid": self.project,
                "name": name,
                "manifest_text": "",
                "properties": { CLAIM: uuid, CLAIMED_AT: micros(SystemTime::now()) },
            });
            match self.save(reqwest::Method::POST, "arvados/v1/collections", body).await {
                Ok(r) => return Ok(Some(uuid_of(&r)?.to_string())),
                Err(e) if e.status == 422 && attempt == 0 => {
                    // Held: by a live writer, or by one that died holding it.
                    let filters = json!([["owner_uuid", "=", self.project], ["name", "=", name]]);
                    let Some(held) = self.list(filters, false).await?.pop() else { continue };
                    let at = props(&held).get(CLAIMED_AT).and_then(Value::as_i64).unwrap_or(0);
                    let age = SystemTime::now().duration_since(from_micros(at)).unwrap_or_default();
                    if age < CLAIM_STALE {
                        return Ok(None);
                    }
                    tracing::warn!(claim = %name, age_s = age.as_secs(), "taking over a stale commit claim");
                    self.unclaim(uuid_of(&held)?).await;
                }
                Err(e) if e.status == 422 => return Ok(None),
                Err(e) => return Err(api_error(e)),
            }
        }
        Ok(None)
    }

    /// With the claim held: updates the collection `id` of ref `name` if the ref is still at `expected`.
    async fn update_claimed(
        &self,
        name: &RefName,
        id: &str,
        expected: Option<u64>,
        body: Map<String, Value>,
    ) -> Result<Value, CatalogError> {
        let current = self.head(name).await?.map(|v| v.version);
        if current != expected {
            return Err(CatalogError::Conflict { name: name.to_string(), expected, current });
        }
        let path = format!("arvados/v1/collections/{id}");
        self.save(reqwest::Method::PUT, &path, Value::Object(body)).await.map_err(api_error)
    }

    /// Trashes a claim (a failure leaves it to be taken over when stale).
    async fn unclaim(&self, claim: &str) {
        let path = format!("arvados/v1/collections/{claim}");
        if let Err(e) = self.api.send(reqwest::Method::DELETE, &path, &[], None).await {
            tracing::warn!(claim, error = %e, "could not trash a commit claim");
        }
    }

    /// Makes the collection of a new ref: empty, or the first commit's. `Ok(None)` when the name is taken.
    async fn create(&self, name: &RefName, mut body: Map<String, Value>) -> Result<Option<Value>, CatalogError> {
        body.insert("owner_uuid".into(), json!(self.project));
        body.insert("name".into(), json!(name.as_str()));
        match self.save(reqwest::Method::POST, "arvados/v1/collections", Value::Object(body)).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.status == 422 => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }
}

#[async_trait]
impl Catalog for ArvadosCatalog {
    async fn put_collection(&self, record: &CollectionRecord) -> Result<(), CatalogError> {
        if self.get_collection(&record.pdh()).await?.is_some() {
            return Ok(());
        }
        let signed = self.keep.signed_manifest(record.manifest_text()).await.map_err(store_error)?;
        let body = json!({
            "owner_uuid": self.project,
            "name": format!("cafs collection {}", record.pdh()),
            "manifest_text": signed,
        });
        let query = [("ensure_unique_name", "true".to_string())];
        let body = json!({ "collection": body });
        self.api.send(reqwest::Method::POST, "arvados/v1/collections", &query, Some(&body)).await.map_err(api_error)?;
        Ok(())
    }

    async fn get_collection(&self, pdh: &Pdh) -> Result<Option<CollectionRecord>, CatalogError> {
        // Past versions too: a ref's earlier states are kept only as those.
        let query = [
            ("filters", json!([["portable_data_hash", "=", pdh.to_string()]]).to_string()),
            ("limit", "1".to_string()),
            ("include_old_versions", "true".to_string()),
        ];
        let page = self.api.get("arvados/v1/collections", &query).await.map_err(api_error)?;
        let Some(item) = page.get("items").and_then(|i| i.get(0)) else { return Ok(None) };
        let signed = item.get("manifest_text").and_then(Value::as_str).unwrap_or("");
        self.keep.learn(signed).await.map_err(store_error)?;
        let record = CollectionRecord::from_text(signed)?;
        if record.pdh() != *pdh {
            tracing::warn!(asked = %pdh, normalized = %record.pdh(), "an Arvados collection's manifest is not normalized");
        }
        Ok(Some(record))
    }

    async fn get_sidecar(&self, id: &Pdh) -> Result<Option<Vec<u8>>, CatalogError> {
        let filters =
            json!([["owner_uuid", "=", self.project], [format!("properties.{SIDECAR_ID}"), "=", id.to_string()]]);
        let found = self.list(filters, true).await?;
        let Some(item) = found.first() else { return Ok(None) };
        let text = prop_str(&props(item), SIDECAR).unwrap_or("").to_string();
        let data = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| CatalogError::Corrupt(format!("sidecar {id}: {e}")))?;
        if Pdh::of_text(&data) != *id {
            return Err(CatalogError::Corrupt(format!("sidecar {id}: its bytes hash to {}", Pdh::of_text(&data))));
        }
        Ok(Some(data))
    }

    async fn commit(&self, c: &Commit) -> Result<Version, CatalogError> {
        let found = self.find(&c.name).await?;
        let current = match &found {
            Some(r) => version_of(&c.name, r)?,
            None => None,
        };
        // Permission first: a stale commit of someone who may not write is refused as such.
        let access = found.as_ref().map(access_of).transpose()?;
        let new_access = commit_access(c, access)?;
        let at = current.as_ref().map(|v| v.version);
        if at != c.expected {
            return Err(CatalogError::Conflict { name: c.name.to_string(), expected: c.expected, current: at });
        }
        let signed = self.keep.signed_manifest(c.record.manifest_text()).await.map_err(store_error)?;
        let version = at.unwrap_or(0) + 1;
        let sidecar = Pdh::of_text(&c.sidecar);
        let committed_at = SystemTime::now();
        let mut p = found.as_ref().map(props).unwrap_or_default();
        // The root's properties replace those cafs set before; properties others set stay.
        if let Some(Value::Array(before)) = p.remove(ROOT_PROPS) {
            for k in before.iter().filter_map(Value::as_str) {
                p.remove(k);
            }
        }
        let root = root_properties(&c.sidecar);
        p.insert(ROOT_PROPS.into(), json!(root.keys().collect::<Vec<_>>()));
        p.extend(root);
        p.insert(REF.into(), json!(c.name.as_str()));
        p.insert(VERSION.into(), json!(version));
        match &current {
            Some(v) => p.insert(PARENT.into(), json!(v.pdh.to_string())),
            None => p.remove(PARENT),
        };
        p.insert(COMMITTER.into(), json!(c.committer));
        p.insert(MESSAGE.into(), json!(c.message));
        p.insert(COMMITTED_AT.into(), json!(micros(committed_at)));
        p.insert(SIDECAR.into(), json!(base64::engine::general_purpose::STANDARD.encode(&c.sidecar)));
        p.insert(SIDECAR_ID.into(), json!(sidecar.to_string()));
        if let Some(a) = new_access.or(access) {
            set_access(&mut p, &a);
        }
        let mut body = Map::new();
        body.insert("manifest_text".into(), json!(signed));
        body.insert("properties".into(), Value::Object(p));
        body.insert("preserve_version".into(), json!(true));
        let saved = match &found {
            Some(r) => {
                let id = uuid_of(r)?;
                let Some(claim) = self.claim(id, version).await? else {
                    let current = self.head(&c.name).await?.map(|v| v.version);
                    return Err(CatalogError::Conflict { name: c.name.to_string(), expected: c.expected, current });
                };
                let saved = self.update_claimed(&c.name, id, c.expected, body).await;
                self.unclaim(&claim).await;
                saved?
            }
            None => match self.create(&c.name, body).await? {
                Some(r) => r,
                None => {
                    let current = self.head(&c.name).await?.map(|v| v.version);
                    if self.find(&c.name).await?.is_none() {
                        return Err(CatalogError::Refused(format!(
                            "a collection named {:?} in project {} is not a cafs ref",
                            c.name.as_str(),
                            self.project
                        )));
                    }
                    return Err(CatalogError::Conflict { name: c.name.to_string(), expected: None, current });
                }
            },
        };
        let pdh = saved.get("portable_data_hash").and_then(Value::as_str).unwrap_or("");
        if pdh != c.record.pdh().to_string() {
            return Err(CatalogError::Corrupt(format!(
                "Arvados saved ref {} (collection {}) with PDH {pdh}, where cafs computed {}: the collection now \
                 holds what Arvados made of the manifest",
                c.name,
                saved["uuid"],
                c.record.pdh()
            )));
        }
        Ok(Version {
            name: c.name.clone(),
            version,
            pdh: c.record.pdh(),
            sidecar,
            parent: current.map(|v| v.pdh),
            committed_at: from_micros(micros(committed_at)),
            committer: c.committer.clone(),
            message: c.message.clone(),
        })
    }

    async fn head(&self, name: &RefName) -> Result<Option<Version>, CatalogError> {
        match self.find(name).await? {
            Some(r) => version_of(name, &r),
            None => Ok(None),
        }
    }

    async fn list_refs(&self) -> Result<Vec<Version>, CatalogError> {
        let filters = json!([["owner_uuid", "=", self.project], ["properties", "exists", REF]]);
        let mut out = Vec::new();
        for r in self.list(filters, false).await? {
            let Some(name) = prop_str(&props(&r), REF).and_then(|n| RefName::new(n).ok()) else { continue };
            if let Some(v) = version_of(&name, &r)? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn history(&self, name: &RefName) -> Result<Vec<Version>, CatalogError> {
        let Some(r) = self.find(name).await? else { return Ok(Vec::new()) };
        let filters = json!([["current_version_uuid", "=", uuid_of(&r)?]]);
        let mut out: Vec<Version> = Vec::new();
        for item in self.list(filters, true).await? {
            if let Some(v) = version_of(name, &item)?
                && !out.iter().any(|o| o.version == v.version)
            {
                // A change of the ref's owner or mode after a commit makes Arvados keep that commit's state once
                // more: the same cafs version, listed once.
                out.push(v);
            }
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    async fn access(&self, name: &RefName) -> Result<Option<RefAccess>, CatalogError> {
        self.find(name).await?.as_ref().map(access_of).transpose()
    }

    async fn list_access(&self) -> Result<Vec<(RefName, RefAccess)>, CatalogError> {
        let filters = json!([["owner_uuid", "=", self.project], ["properties", "exists", REF]]);
        let mut out = Vec::new();
        for r in self.list(filters, false).await? {
            let Some(name) = prop_str(&props(&r), REF).and_then(|n| RefName::new(n).ok()) else { continue };
            out.push((name, access_of(&r)?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn create_ref(&self, name: &RefName, access: &RefAccess) -> Result<RefAccess, CatalogError> {
        if let Some(r) = self.find(name).await? {
            return access_of(&r);
        }
        let mut p = Map::new();
        p.insert(REF.into(), json!(name.as_str()));
        p.insert(VERSION.into(), json!(0));
        set_access(&mut p, access);
        let mut body = Map::new();
        body.insert("manifest_text".into(), json!(""));
        body.insert("properties".into(), Value::Object(p));
        match self.create(name, body).await? {
            Some(_) => Ok(*access),
            None => match self.find(name).await? {
                Some(r) => access_of(&r),
                None => Err(CatalogError::Refused(format!(
                    "a collection named {:?} in project {} is not a cafs ref",
                    name.as_str(),
                    self.project
                ))),
            },
        }
    }

    async fn change_access(
        &self,
        name: &RefName,
        change: &AccessChange,
        by: &Principal,
    ) -> Result<RefAccess, CatalogError> {
        let r = self.find(name).await?.ok_or_else(|| CatalogError::NoSuchRef(name.to_string()))?;
        let new = access_of(&r)?.changed(name.as_str(), change, by)?;
        let mut p = props(&r);
        set_access(&mut p, &new);
        p.insert(REF.into(), json!(name.as_str()));
        self.save(
            reqwest::Method::PUT,
            &format!("arvados/v1/collections/{}", uuid_of(&r)?),
            json!({ "properties": p }),
        )
        .await
        .map_err(api_error)?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_uuids_are_told_from_ref_names() {
        assert!(is_collection_uuid("zzzzz-4zz18-0123456789abcde"));
        assert!(!is_collection_uuid("zzzzz-j7d0g-0123456789abcde"));
        assert!(!is_collection_uuid("results"));
        assert!(!is_collection_uuid("zzzzz-4zz18-0123456789ABCDE"));
    }

    #[test]
    fn versions_and_access_come_from_the_properties() {
        let name = RefName::new("r").unwrap();
        let r = json!({
            "uuid": "zzzzz-4zz18-0123456789abcde",
            "portable_data_hash": "1f4b0bc7583c2a7f9102c395f4ffc5e3+45",
            "properties": {
                "cafs:ref": "r", "cafs:version": 3, "cafs:parent": "d41d8cd98f00b204e9800998ecf8427e+0",
                "cafs:sidecar_id": "d41d8cd98f00b204e9800998ecf8427e+0", "cafs:committer": "u", "cafs:message": "m",
                "cafs:committed_at": 5, "cafs:owner": 1000, "cafs:gid": 1000, "cafs:mode": 0o640,
            },
        });
        let v = version_of(&name, &r).unwrap().unwrap();
        assert_eq!((v.version, v.committer.as_str(), v.message.as_str()), (3, "u", "m"));
        assert_eq!(v.parent.unwrap().to_string(), "d41d8cd98f00b204e9800998ecf8427e+0");
        assert_eq!(access_of(&r).unwrap(), RefAccess { owner: 1000, gid: 1000, mode: 0o640 });
        let created = json!({"uuid": "zzzzz-4zz18-0123456789abcde", "properties": {"cafs:version": 0}});
        assert!(version_of(&name, &created).unwrap().is_none(), "created, never committed");
        assert_eq!(access_of(&created).unwrap(), RefAccess::LEGACY);
    }
}
