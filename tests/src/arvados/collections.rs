//! The test cluster's collections, as `services/api` keeps them (`app/models/collection.rb`):
//! - a manifest whose text changes has each locator's signature checked against the request's token (a
//!   signature that does not verify, or none while blob signing is on, is 403; the empty block needs none), and
//!   is stored stripped of signatures; the PDH is the MD5 of the text with every hint but the size removed, `+`
//!   its length, and a client-given `portable_data_hash` must match (422);
//! - `(owner_uuid, name)` is unique among collections that are not trashed (422), unless `ensure_unique_name`;
//! - versioning (`Collections.CollectionVersioning`): an update of the text, name, description or properties of
//!   a collection whose `preserve_version` was set (or that sat idle longer than `PreserveVersionIfIdle`, 10 s)
//!   first saves the old state as a past version (its own UUID, `current_version_uuid` the collection's) and
//!   then bumps `version`; past versions are listed with `include_old_versions`;
//! - reads give the manifest signed for the reader's token.
//!
//! Lists take the filters the clients here use (`=` on a field or `properties.<key>`, `exists` on
//! `properties`); any other filter is refused (422) rather than ignored.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State as With};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::api::{error, json_answer, request_token};
use super::{CLUSTER, State, now};

/// One collection record, current or past.
#[derive(Debug, Clone)]
pub struct Collection {
    pub uuid: String,
    pub current_version_uuid: String,
    pub owner_uuid: String,
    pub name: String,
    pub version: u64,
    /// Stripped of signatures.
    pub manifest: String,
    pub properties: Map<String, Value>,
    pub preserve_version: bool,
    pub modified_at: u64,
    pub trashed: bool,
}

pub fn routes(router: Router<Arc<State>>) -> Router<Arc<State>> {
    router
        .route("/arvados/v1/collections", get(list).post(create))
        .route("/arvados/v1/collections/{uuid}", get(show).patch(update).put(update).delete(trash))
}

/// The manifest's tokens that are locators (after the stream name, before the file tokens).
fn locators(manifest: &str) -> impl Iterator<Item = &str> {
    manifest.lines().flat_map(|l| l.split(' ').skip(1).filter(|t| is_locator(t)))
}

fn is_locator(tok: &str) -> bool {
    tok.len() > 33 && tok.as_bytes()[32] == b'+' && tok[..32].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every locator with only its size hint left: the text a PDH names.
pub fn portable(manifest: &str) -> String {
    map_locators(manifest, |tok| {
        let mut parts = tok.split('+');
        let hash = parts.next().unwrap();
        match parts.next() {
            Some(size) if size.bytes().all(|b| b.is_ascii_digit()) => format!("{hash}+{size}"),
            _ => hash.to_string(),
        }
    })
}

fn map_locators(manifest: &str, f: impl Fn(&str) -> String) -> String {
    if manifest.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for line in manifest.lines() {
        let words: Vec<String> = line
            .split(' ')
            .enumerate()
            .map(|(i, w)| if i > 0 && is_locator(w) { f(w) } else { w.to_string() })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

pub fn pdh(manifest: &str) -> String {
    let p = portable(manifest);
    let d = openssl::hash::hash(openssl::hash::MessageDigest::md5(), p.as_bytes()).unwrap();
    format!("{}+{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>(), p.len())
}

/// Keeps only the size hint and hints other than signatures, as the API stores manifests.
fn strip_signatures(manifest: &str) -> String {
    map_locators(manifest, |tok| tok.split('+').filter(|h| !h.starts_with('A')).collect::<Vec<_>>().join("+"))
}

/// The manifest rules the API enforces (`Keep::Manifest.validate!`): each line a stream name, at least one
/// locator, at least one file token `pos:len:name`, and a final newline.
fn valid_manifest(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Ok(());
    }
    if !m.ends_with('\n') {
        return Err("manifest does not end with a newline".into());
    }
    for line in m.lines() {
        let mut words = line.split(' ');
        let stream = words.next().unwrap_or("");
        if !(stream == "." || stream.starts_with("./")) {
            return Err(format!("invalid stream name {stream:?}"));
        }
        let rest: Vec<&str> = words.collect();
        let n_loc = rest.iter().take_while(|w| is_locator(w)).count();
        let files = &rest[n_loc..];
        if n_loc == 0 || files.is_empty() {
            return Err(format!("stream {stream:?} needs a locator and a file token"));
        }
        for f in files {
            let mut p = f.splitn(3, ':');
            let ok = p.next().is_some_and(|x| x.parse::<u64>().is_ok())
                && p.next().is_some_and(|x| x.parse::<u64>().is_ok())
                && p.next().is_some_and(|x| !x.is_empty());
            if !ok {
                return Err(format!("invalid file token {f:?}"));
            }
        }
    }
    Ok(())
}

/// An API error: its status and message, made into the API's answer by [`Refusal::answer`].
struct Refusal(u16, String);

impl Refusal {
    fn answer(self) -> Response {
        error(self.0, &self.1)
    }
}

/// `check_signatures`: 403 unless every locator's signature verifies for `token` (none needed with blob signing
/// off, or for the empty block).
fn check_signatures(state: &State, manifest: &str, token: &str) -> Result<(), Refusal> {
    for loc in locators(manifest) {
        let signed = loc.split('+').any(|h| h.starts_with('A'));
        if signed {
            if state.check_signature(loc, token).is_err() {
                return Err(Refusal(403, format!("Permission denied: invalid signature on locator {}", &loc[..32])));
            }
        } else if state.opts.blob_signing && !loc.starts_with("d41d8cd98f00b204e9800998ecf8427e+0") {
            return Err(Refusal(403, format!("Permission denied: missing signature on locator {loc}")));
        }
    }
    Ok(())
}

fn sign_manifest(state: &State, manifest: &str, token: &str) -> String {
    map_locators(manifest, |tok| {
        let size_end = tok[33..].find('+').map_or(tok.len(), |i| 33 + i);
        state.sign(&tok[..size_end], token) + &tok[size_end..]
    })
}

/// A record as the API gives it, its manifest signed for `token`.
fn render(state: &State, c: &Collection, token: &str) -> Value {
    json!({
        "kind": "arvados#collection",
        "uuid": c.uuid,
        "current_version_uuid": c.current_version_uuid,
        "owner_uuid": c.owner_uuid,
        "name": c.name,
        "version": c.version,
        "manifest_text": sign_manifest(state, &c.manifest, token),
        "portable_data_hash": pdh(&c.manifest),
        "properties": c.properties,
        "preserve_version": c.preserve_version,
        "created_at": iso8601(c.modified_at),
        "modified_at": iso8601(c.modified_at),
        "modified_by_user_uuid": state.user_uuid(),
        "description": null,
        "is_trashed": c.trashed,
        "trash_at": null,
        "delete_at": null,
        "replication_desired": null,
        "replication_confirmed": null,
        "storage_classes_desired": ["default"],
        "storage_classes_confirmed": [],
    })
}

/// `YYYY-MM-DDTHH:MM:SS.000000000Z`, as the API writes times (days to a date by Howard Hinnant's algorithm).
fn iso8601(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000000Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The request's JSON body: its `collection` (an object, or a string holding one) and its top level. A body
/// without `collection` is the attributes themselves, as Rails's parameter wrapping takes a JSON body (the
/// Python SDK sends them so).
async fn body(req: Request) -> Result<(Map<String, Value>, Map<String, Value>), Refusal> {
    let bytes =
        axum::body::to_bytes(req.into_body(), 128 << 20).await.map_err(|_| Refusal(413, "request too large".into()))?;
    let top: Map<String, Value> = if bytes.is_empty() {
        Map::new()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Refusal(422, format!("request body is not JSON: {e}")))?
    };
    let attrs = match top.get("collection") {
        Some(Value::Object(o)) => o.clone(),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| Refusal(422, format!("collection: {e}")))?,
        None => top.iter().filter(|(k, _)| *k != "ensure_unique_name").map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => return Err(Refusal(422, "collection must be an object".into())),
    };
    Ok((attrs, top))
}

/// A query parameter.
fn param(req: &Request, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

fn unique_name_taken(list: &[Collection], owner: &str, name: &str, except: &str) -> bool {
    !name.is_empty()
        && list.iter().any(|c| {
            c.uuid == c.current_version_uuid
                && !c.trashed
                && c.owner_uuid == owner
                && c.name == name
                && c.uuid != except
        })
}

fn new_uuid() -> String {
    format!("{CLUSTER}-4zz18-{}", super::random_alnum(15))
}

async fn create(With(state): With<Arc<State>>, req: Request) -> Response {
    let token = request_token(&req);
    if !state.token_ok(&token) {
        return error(401, "Not logged in");
    }
    let ensure_unique = param(&req, "ensure_unique_name").is_some_and(|v| v == "true");
    let (attrs, top) = match body(req).await {
        Ok(b) => b,
        Err(r) => return r.answer(),
    };
    let ensure_unique = ensure_unique || truthy(top.get("ensure_unique_name"));
    let manifest = attrs.get("manifest_text").and_then(Value::as_str).unwrap_or("").to_string();
    if let Err(why) = valid_manifest(&manifest) {
        return error(422, &format!("manifest_text: {why}"));
    }
    if let Err(r) = check_signatures(&state, &manifest, &token) {
        return r.answer();
    }
    let stripped = strip_signatures(&manifest);
    if let Some(given) = attrs.get("portable_data_hash").and_then(Value::as_str)
        && given != pdh(&stripped)
    {
        return error(422, "portable_data_hash does not match manifest_text");
    }
    let owner = attrs.get("owner_uuid").and_then(Value::as_str).unwrap_or(&state.user_uuid()).to_string();
    let mut name = attrs.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let mut list = state.collections.lock().unwrap();
    if unique_name_taken(&list, &owner, &name, "") {
        if !ensure_unique {
            return error(422, "Duplicate key value violates unique constraint: name already exists in this project");
        }
        name = format!("{name} ({})", now());
    }
    let uuid = new_uuid();
    let c = Collection {
        current_version_uuid: uuid.clone(),
        uuid,
        owner_uuid: owner,
        name,
        version: 1,
        manifest: stripped,
        properties: attrs.get("properties").and_then(Value::as_object).cloned().unwrap_or_default(),
        preserve_version: truthy(attrs.get("preserve_version")),
        modified_at: now(),
        trashed: false,
    };
    list.push(c.clone());
    drop(list);
    json_answer(200, render(&state, &c, &token))
}

async fn show(With(state): With<Arc<State>>, Path(id): Path<String>, req: Request) -> Response {
    let token = request_token(&req);
    if !state.token_ok(&token) {
        return error(401, "Not logged in");
    }
    let list = state.collections.lock().unwrap();
    match list.iter().find(|c| c.uuid == id) {
        Some(c) => json_answer(200, render(&state, c, &token)),
        None => error(404, "Path not found"),
    }
}

async fn update(With(state): With<Arc<State>>, Path(id): Path<String>, req: Request) -> Response {
    let token = request_token(&req);
    if !state.token_ok(&token) {
        return error(401, "Not logged in");
    }
    let (attrs, _) = match body(req).await {
        Ok(b) => b,
        Err(r) => return r.answer(),
    };
    let mut list = state.collections.lock().unwrap();
    let Some(i) = list.iter().position(|c| c.uuid == id && c.uuid == c.current_version_uuid) else {
        return error(404, "Path not found");
    };
    let old = list[i].clone();
    let mut new = old.clone();
    if let Some(m) = attrs.get("manifest_text").and_then(Value::as_str) {
        if let Err(why) = valid_manifest(m) {
            return error(422, &format!("manifest_text: {why}"));
        }
        let stripped = strip_signatures(m);
        if stripped != old.manifest
            && let Err(r) = check_signatures(&state, m, &token)
        {
            return r.answer();
        }
        if let Some(given) = attrs.get("portable_data_hash").and_then(Value::as_str)
            && given != pdh(&stripped)
        {
            return error(422, "portable_data_hash does not match manifest_text");
        }
        new.manifest = stripped;
    }
    if let Some(n) = attrs.get("name").and_then(Value::as_str) {
        new.name = n.to_string();
        if unique_name_taken(&list, &new.owner_uuid, n, &id) {
            return error(422, "Duplicate key value violates unique constraint: name already exists in this project");
        }
    }
    if let Some(p) = attrs.get("properties").and_then(Value::as_object) {
        new.properties = p.clone();
    }
    let asked_preserve = truthy(attrs.get("preserve_version"));
    let versionable = new.manifest != old.manifest || new.name != old.name || new.properties != old.properties;
    // PreserveVersionIfIdle: 10 s.
    let preserve = versionable && (old.preserve_version || asked_preserve || now() >= old.modified_at + 10);
    if preserve {
        let mut past = old.clone();
        past.uuid = new_uuid();
        past.preserve_version = false;
        list.push(past);
        new.version += 1;
        new.preserve_version = asked_preserve;
    } else if asked_preserve {
        new.preserve_version = true;
    }
    if versionable {
        new.modified_at = now();
    }
    list[i] = new.clone();
    drop(list);
    json_answer(200, render(&state, &new, &token))
}

async fn trash(With(state): With<Arc<State>>, Path(id): Path<String>, req: Request) -> Response {
    let token = request_token(&req);
    if !state.token_ok(&token) {
        return error(401, "Not logged in");
    }
    let mut list = state.collections.lock().unwrap();
    let Some(c) = list.iter().find(|c| c.uuid == id).cloned() else { return error(404, "Path not found") };
    // Past versions follow their collection into the trash (`sync_past_versions`).
    for v in list.iter_mut().filter(|v| v.current_version_uuid == c.current_version_uuid) {
        v.trashed = true;
    }
    drop(list);
    json_answer(200, render(&state, &c, &token))
}

/// Whether `c` passes one filter; `Err` for a filter the test cluster does not implement.
fn passes(c: &Collection, f: &Value) -> Result<bool, String> {
    let f = f.as_array().filter(|f| f.len() == 3).ok_or_else(|| format!("bad filter {f}"))?;
    let (attr, op, operand) = (f[0].as_str().unwrap_or(""), f[1].as_str().unwrap_or(""), &f[2]);
    let field = |name: &str| -> Option<Value> {
        Some(match name {
            "uuid" => json!(c.uuid),
            "current_version_uuid" => json!(c.current_version_uuid),
            "owner_uuid" => json!(c.owner_uuid),
            "name" => json!(c.name),
            "portable_data_hash" => json!(pdh(&c.manifest)),
            "version" => json!(c.version),
            _ => return None,
        })
    };
    match op {
        "=" => {
            let value = match attr.strip_prefix("properties.") {
                Some(key) => c.properties.get(key).cloned(),
                None => Some(field(attr).ok_or_else(|| format!("no filter on {attr}"))?),
            };
            Ok(value.as_ref() == Some(operand))
        }
        "exists" if attr == "properties" => Ok(operand.as_str().is_some_and(|k| c.properties.contains_key(k))),
        _ => Err(format!("filter operator {op:?} on {attr:?} is not supported by the test cluster")),
    }
}

async fn list(With(state): With<Arc<State>>, req: Request) -> Response {
    let token = request_token(&req);
    if !state.token_ok(&token) {
        return error(401, "Not logged in");
    }
    let filters: Vec<Value> = match param(&req, "filters") {
        Some(f) => match serde_json::from_str(&f) {
            Ok(Value::Array(a)) => a,
            _ => return error(422, "filters must be a JSON list"),
        },
        None => Vec::new(),
    };
    let old = param(&req, "include_old_versions").is_some_and(|v| v == "true");
    let limit: usize = param(&req, "limit").and_then(|v| v.parse().ok()).unwrap_or(100);
    let offset: usize = param(&req, "offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let list = state.collections.lock().unwrap();
    let mut found = Vec::new();
    for c in list.iter().filter(|c| !c.trashed && (old || c.uuid == c.current_version_uuid)) {
        let mut all = true;
        for f in &filters {
            match passes(c, f) {
                Ok(p) => all &= p,
                Err(why) => return error(422, &why),
            }
        }
        if all {
            found.push(c.clone());
        }
    }
    drop(list);
    found.sort_by_key(|c| (c.current_version_uuid.clone(), c.version));
    let available = found.len();
    let items: Vec<Value> = found.iter().skip(offset).take(limit).map(|c| render(&state, c, &token)).collect();
    json_answer(
        200,
        json!({"kind": "arvados#collectionList", "items": items, "items_available": available, "offset": offset, "limit": limit}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdh_is_that_of_the_portable_text() {
        // From the Arvados documentation and tests: a one-file collection and its PDH.
        assert_eq!(pdh(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n"), "1f4b0bc7583c2a7f9102c395f4ffc5e3+45");
        let signed =
            ". acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff+Kzzzzz 0:3:foo\n";
        assert_eq!(pdh(signed), "1f4b0bc7583c2a7f9102c395f4ffc5e3+45");
        assert_eq!(
            strip_signatures(signed),
            ". acbd18db4cc2f85cedef654fccc4a4d8+3+Kzzzzz 0:3:foo\n",
            "other hints are kept"
        );
        assert_eq!(pdh(""), "d41d8cd98f00b204e9800998ecf8427e+0");
        assert!(valid_manifest(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n").is_ok());
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(iso8601(1_796_342_400 + 3661), "2026-12-04T01:01:01.000000000Z");
        assert!(valid_manifest(". 0:3:foo\n").is_err());
        assert!(valid_manifest(". acbd18db4cc2f85cedef654fccc4a4d8+3\n").is_err());
        assert!(valid_manifest("x acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n").is_err());
    }
}
