//! The test cluster's keepstores and keepproxy (see the parent module for the rules they follow).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State as With};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::State;

/// The largest block: 64 MiB.
const BLOCK_SIZE: usize = 64 << 20;
/// MD5 of nothing.
const EMPTY: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// keepstore writes a block to its client in pieces of this size, and holds the last back until the MD5 is
/// checked.
const STREAM_CHUNK: usize = 65536;

pub fn keepstore(state: Arc<State>, i: usize) -> Router {
    Router::new().route("/{locator}", axum::routing::any(store_block)).with_state((state, i))
}

pub fn keepproxy(state: Arc<State>) -> Router {
    Router::new().route("/{locator}", axum::routing::any(proxy_block)).with_state(state)
}

fn answer(status: u16, body: impl Into<String>) -> Response {
    (StatusCode::from_u16(status).unwrap(), format!("{}\n", body.into())).into_response()
}

/// The token of a request: `Authorization: Bearer|OAuth2 <token>`, or an `api_token` query parameter.
pub fn token(headers: &HeaderMap, query: Option<&str>) -> String {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        for scheme in ["Bearer ", "OAuth2 "] {
            if let Some(t) = v.strip_prefix(scheme) {
                return t.trim().to_string();
            }
        }
    }
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("api_token="))
        .map(str::to_string)
        .unwrap_or_default()
}

/// The hash and size of a locator, by keepstore's `getLocatorInfo` rules (`None`: invalid).
fn locator_info(loc: &str) -> Option<(String, Option<usize>)> {
    let mut parts = loc.split('+');
    let hash = parts.next()?;
    if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut size = None;
    for (n, part) in parts.enumerate() {
        if part.is_empty() {
            return None;
        }
        if n == 0 {
            size = part.parse().ok();
        } else if part.as_bytes()[0].is_ascii_digit() {
            return None;
        }
    }
    Some((hash.to_string(), size))
}

fn md5_hex(data: &[u8]) -> String {
    let d = openssl::hash::hash(openssl::hash::MessageDigest::md5(), data).unwrap();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a keepstore did with a PUT.
pub(super) enum Put {
    /// Stored (or already there): the signed locator.
    Stored(String),
    Failed(u16, String),
}

/// Keepstore `i` stores `data` under the hash that `path` starts with (`BlockWrite`).
pub(super) fn put(
    state: &State,
    i: usize,
    path: &str,
    data: &Bytes,
    content_length: Option<usize>,
    token: &str,
) -> Put {
    let ks = &state.keepstores[i];
    ks.puts.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = ks.next_failure() {
        return Put::Failed(status, "injected failure".into());
    }
    if data.len() > BLOCK_SIZE {
        return Put::Failed(413, "request entity too large".into());
    }
    if let Some(n) = content_length
        && n != 0
        && n != data.len()
    {
        return Put::Failed(400, format!("content length {} did not match specified data size {n}", data.len()));
    }
    let hash = md5_hex(data);
    if !path.starts_with(&hash) {
        return Put::Failed(400, format!("content hash {hash} did not match specified locator {path}"));
    }
    let mut volume = ks.volume.lock().unwrap();
    match volume.get(&hash) {
        Some(held) if held != data => return Put::Failed(500, "hash collision".into()),
        Some(_) => {}
        None => {
            volume.insert(hash.clone(), data.clone());
        }
    }
    Put::Stored(state.sign(&format!("{hash}+{}", data.len()), token))
}

/// What a keepstore's read of a locator found (`BlockRead`).
pub(super) enum Got {
    Block(Bytes),
    /// The stored bytes do not match: keepstore sends all but the last piece, then stops.
    Damaged(Bytes),
    Failed(u16, String),
}

pub(super) fn get(state: &State, i: usize, locator: &str, token: &str) -> Got {
    let ks = &state.keepstores[i];
    ks.gets.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = ks.next_failure() {
        return Got::Failed(status, "injected failure".into());
    }
    let Some((hash, size)) = locator_info(locator) else { return Got::Failed(400, "invalid locator".into()) };
    if let Err((status, why)) = state.check_signature(locator, token) {
        return Got::Failed(status, why.into());
    }
    let Some(data) = ks.volume.lock().unwrap().get(&hash).cloned() else {
        return Got::Failed(404, "block not found".into());
    };
    if md5_hex(&data) != hash || size.is_some_and(|s| s != data.len()) {
        return Got::Damaged(data);
    }
    Got::Block(data)
}

/// The answer to a GET or HEAD of a block that a keepstore or the proxy read.
fn block_answer(got: Got, head: bool, size: Option<usize>) -> Response {
    match got {
        Got::Failed(status, why) => answer(status, why),
        Got::Block(data) if head => {
            Response::builder().header("Content-Length", data.len()).body(Body::empty()).unwrap()
        }
        Got::Block(data) => Response::builder().header("Content-Length", data.len()).body(Body::from(data)).unwrap(),
        Got::Damaged(data) => {
            let size = size.unwrap_or(data.len());
            if head || data.len() <= STREAM_CHUNK {
                return answer(502, "checksum mismatch in stored data");
            }
            // All but the last piece, then the connection is cut: the client gets fewer bytes than promised.
            let sent = data.slice(..(data.len() - 1) / STREAM_CHUNK * STREAM_CHUNK);
            let pieces: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(sent), Err(std::io::Error::other("checksum mismatch in stored data"))];
            Response::builder()
                .header("Content-Length", size)
                .body(Body::from_stream(tokio_stream::iter(pieces)))
                .unwrap()
        }
    }
}

/// The request's body, `None` past 64 MiB.
async fn read_body(req: Request) -> Option<Bytes> {
    axum::body::to_bytes(req.into_body(), BLOCK_SIZE + 1).await.ok()
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

async fn store_block(
    With((state, i)): With<(Arc<State>, usize)>,
    Path(locator): Path<String>,
    req: Request,
) -> Response {
    let token = token(req.headers(), req.uri().query());
    let signed = |r: Response| {
        let mut r = r;
        r.headers_mut().insert("X-Keep-Replicas-Stored", "1".parse().unwrap());
        r.headers_mut().insert("X-Keep-Storage-Classes-Confirmed", "default=1".parse().unwrap());
        r
    };
    match req.method().clone() {
        Method::PUT => {
            let length = content_length(req.headers());
            let ks = &state.keepstores[i];
            if ks.die_in_put.swap(false, Ordering::SeqCst) {
                // Part of the block arrives, then the process is gone: every connection is cut.
                use tokio_stream::StreamExt;
                let _ = req.into_body().into_data_stream().next().await;
                ks.dead.store(true, Ordering::SeqCst);
                ks.puts.fetch_add(1, Ordering::SeqCst);
                return answer(500, "died");
            }
            let Some(data) = read_body(req).await else { return answer(413, "request entity too large") };
            match put(&state, i, &locator, &data, length, &token) {
                Put::Stored(signed_locator) => signed(answer(200, signed_locator)),
                Put::Failed(status, why) => answer(status, why),
            }
        }
        m @ (Method::GET | Method::HEAD) => {
            let head = m == Method::HEAD;
            let info = locator_info(&locator);
            if !head {
                match &info {
                    None => return answer(400, "invalid locator"),
                    Some((hash, size)) if size.unwrap_or(0) == 0 && hash != EMPTY => {
                        return answer(405, "method not allowed");
                    }
                    _ => {}
                }
            }
            block_answer(get(&state, i, &locator, &token), head, info.and_then(|(_, s)| s))
        }
        _ => answer(400, "Bad Request"),
    }
}

/// The rendezvous order of the keepstores for a block (heaviest first by md5(hash + uuid's last 15)).
pub(super) fn order(state: &State, hash: &str) -> Vec<usize> {
    let mut w: Vec<(String, usize)> = state
        .keepstores
        .iter()
        .enumerate()
        .map(|(i, ks)| (md5_hex(format!("{hash}{}", &ks.uuid[12..]).as_bytes()), i))
        .collect();
    w.sort_by(|a, b| b.0.cmp(&a.0));
    w.into_iter().map(|(_, i)| i).collect()
}

async fn proxy_block(With(state): With<Arc<State>>, Path(locator): Path<String>, req: Request) -> Response {
    let token = token(req.headers(), req.uri().query());
    let ok_token = state.token_ok(&token);
    match req.method().clone() {
        Method::PUT => {
            let Some(length) = content_length(req.headers()) else {
                return answer(411, "content length required");
            };
            let Some((hash, size)) = locator_info(&locator) else { return answer(400, "invalid locator") };
            if size.is_some_and(|s| s > 0 && s != length) {
                return answer(400, "content length does not match locator size");
            }
            if !ok_token {
                return answer(403, "Missing or invalid Authorization header, or method not allowed");
            }
            let want: u32 = req
                .headers()
                .get("X-Keep-Desired-Replicas")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(state.opts.default_replication);
            let Some(data) = read_body(req).await else { return answer(413, "request entity too large") };
            if data.len() > BLOCK_SIZE {
                return answer(413, "request entity too large");
            }
            let mut wrote = 0u32;
            let mut signed = None;
            for i in order(&state, &hash) {
                if wrote >= want {
                    break;
                }
                if state.keepstores[i].dead.load(Ordering::SeqCst) {
                    continue;
                }
                if let Put::Stored(s) = put(&state, i, &hash, &data, Some(length), &token) {
                    wrote += 1;
                    signed = Some(s);
                }
            }
            let mut r = match signed {
                Some(s) if wrote >= want => (StatusCode::OK, s).into_response(),
                _ => answer(503, format!("Could not write sufficient replicas: wrote {wrote} of {want}")),
            };
            r.headers_mut().insert("X-Keep-Replicas-Stored", wrote.to_string().parse().unwrap());
            r
        }
        m @ (Method::GET | Method::HEAD) => {
            if !ok_token {
                return answer(403, "Missing or invalid Authorization header, or method not allowed");
            }
            let Some((hash, size)) = locator_info(&locator) else { return answer(400, "invalid locator") };
            let mut last = Got::Failed(404, "block not found".into());
            for i in order(&state, &hash) {
                if state.keepstores[i].dead.load(Ordering::SeqCst) {
                    continue;
                }
                // The proxy's own Keep client checks what it reads: a damaged copy is passed over.
                match get(&state, i, &locator, &token) {
                    g @ Got::Block(_) => return block_answer(g, m == Method::HEAD, size),
                    Got::Damaged(_) => last = Got::Failed(502, "checksum mismatch".into()),
                    f @ Got::Failed(..) => last = f,
                }
            }
            block_answer(last, m == Method::HEAD, size)
        }
        _ => answer(501, "method not supported"),
    }
}
