//! The test cluster's API server, over HTTPS with a certificate made at start (clients run insecure, as against
//! a test cluster): the discovery document the Arvados SDKs build their client from, the cluster's public
//! configuration, the Keep services, and the current user.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State as With};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{CLUSTER, State};

pub fn router(state: Arc<State>) -> Router {
    let r = Router::new()
        .route("/discovery/v1/apis/arvados/v1/rest", get(discovery))
        .route("/arvados/v1/config", get(config))
        .route("/arvados/v1/keep_services/accessible", get(keep_services))
        .route("/arvados/v1/users/current", get(current_user))
        .route("/arvados/v1/groups/{uuid}", get(group));
    super::collections::routes(r).fallback(not_found).with_state(state)
}

/// The token a request carries.
pub fn request_token(req: &Request) -> String {
    super::keep::token(req.headers(), req.uri().query())
}

pub fn json_answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), [("Content-Type", "application/json")], body.to_string()).into_response()
}

/// An error as the API gives it: `{"errors": [...], "error_token": ...}`.
pub fn error(status: u16, message: &str) -> Response {
    json_answer(status, json!({"errors": [message], "error_token": "1700000000+deadbeef"}))
}

async fn not_found(req: Request) -> Response {
    error(404, &format!("Path not found: {}", req.uri().path()))
}

/// The answer to a request whose token the API does not accept.
fn unauthorized(state: &State, req: &Request) -> Option<Response> {
    let token = super::keep::token(req.headers(), req.uri().query());
    (!state.token_ok(&token)).then(|| error(401, "Not logged in"))
}

/// One method of the discovery document, in the form googleapiclient reads.
fn method(id: &str, path: &str, http: &str, params: &[(&str, &str, &str, bool)], request: Option<&str>) -> Value {
    let mut parameters = serde_json::Map::new();
    for (name, kind, location, required) in params {
        parameters.insert(
            name.to_string(),
            json!({"type": kind, "location": location, "required": required, "description": name}),
        );
    }
    let order: Vec<&str> = params.iter().filter(|p| p.3).map(|p| p.0).collect();
    let mut m = json!({
        "id": format!("arvados.{id}"),
        "path": path,
        "httpMethod": http,
        "parameters": parameters,
        "parameterOrder": order,
        "response": {},
    });
    if let Some(r) = request {
        m["request"] = json!({"required": true, "properties": {r: {"$ref": r}}});
    }
    m
}

/// Parameters: name, type, where, required.
type Param = (&'static str, &'static str, &'static str, bool);
const UUID: [Param; 1] = [("uuid", "string", "path", true)];
const CREATE: [Param; 1] = [("ensure_unique_name", "boolean", "query", false)];
const LIST: [Param; 8] = [
    ("filters", "array", "query", false),
    ("where", "object", "query", false),
    ("order", "array", "query", false),
    ("select", "array", "query", false),
    ("limit", "integer", "query", false),
    ("offset", "integer", "query", false),
    ("count", "string", "query", false),
    ("include_old_versions", "boolean", "query", false),
];

/// The discovery document: the API's description as `services/api`'s schema controller gives it, reduced to the
/// resources the test cluster serves, with the cluster facts the SDKs read from it.
async fn discovery(With(state): With<Arc<State>>) -> Response {
    let root = format!("https://{}/", state.api_addr);
    json_answer(
        200,
        json!({
            "kind": "discovery#restDescription",
            "discoveryVersion": "v1",
            "id": "arvados:v1",
            "name": "arvados",
            "version": "v1",
            "revision": "20250402",
            "protocol": "rest",
            "rootUrl": root,
            "servicePath": "arvados/v1/",
            "basePath": "/arvados/v1/",
            "batchPath": "batch",
            "uuidPrefix": CLUSTER,
            "defaultCollectionReplication": state.opts.default_replication,
            "blobSignatureTtl": state.opts.signature_ttl.as_secs(),
            "maxRequestSize": 128 << 20,
            "parameters": {
                "alt": {"type": "string", "location": "query", "default": "json"},
            },
            "schemas": {},
            "resources": {
                "configs": {"methods": {"get": method("configs.get", "config", "GET", &[], None)}},
                "keep_services": {"methods": {
                    "accessible": method("keep_services.accessible", "keep_services/accessible", "GET", &[], None),
                }},
                "users": {"methods": {"current": method("users.current", "users/current", "GET", &[], None)}},
                "groups": {"methods": {"get": method("groups.get", "groups/{uuid}", "GET", &UUID, None)}},
                "collections": {"methods": {
                    "list": method("collections.list", "collections", "GET", &LIST, None),
                    "get": method("collections.get", "collections/{uuid}", "GET", &UUID, None),
                    "create": method("collections.create", "collections", "POST", &CREATE, Some("collection")),
                    "update": method("collections.update", "collections/{uuid}", "PUT", &UUID, Some("collection")),
                    "delete": method("collections.delete", "collections/{uuid}", "DELETE", &UUID, None),
                }},
            },
        }),
    )
}

async fn config(With(state): With<Arc<State>>) -> Response {
    json_answer(
        200,
        json!({
            "ClusterID": CLUSTER,
            "Collections": {
                "BlobSigning": state.opts.blob_signing,
                "BlobSigningTTL": format!("{}s", state.opts.signature_ttl.as_secs()),
                "DefaultReplication": state.opts.default_replication,
            },
            "StorageClasses": {"default": {"Default": true, "Priority": 0}},
        }),
    )
}

async fn keep_services(With(state): With<Arc<State>>, req: Request) -> Response {
    if let Some(r) = unauthorized(&state, &req) {
        return r;
    }
    let items: Vec<Value> = state
        .keepstores
        .iter()
        .zip(&state.keepstore_addrs)
        .map(|(ks, addr)| {
            json!({
                "kind": "arvados#keepService",
                "uuid": ks.uuid,
                "service_host": addr.ip().to_string(),
                "service_port": addr.port(),
                "service_ssl_flag": false,
                "service_type": "disk",
                "read_only": false,
            })
        })
        .collect();
    json_answer(200, json!({"kind": "arvados#keepServiceList", "items_available": items.len(), "items": items}))
}

async fn current_user(With(state): With<Arc<State>>, req: Request) -> Response {
    if let Some(r) = unauthorized(&state, &req) {
        return r;
    }
    json_answer(
        200,
        json!({
            "kind": "arvados#user",
            "uuid": format!("{CLUSTER}-tpzed-000000000000001"),
            "owner_uuid": format!("{CLUSTER}-tpzed-000000000000000"),
            "full_name": "Test User",
            "username": "test",
            "is_active": true,
            "is_admin": false,
        }),
    )
}

/// The one project of the test cluster.
async fn group(
    With(state): With<Arc<State>>,
    axum::extract::Path(uuid): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Some(r) = unauthorized(&state, &req) {
        return r;
    }
    if uuid != format!("{CLUSTER}-j7d0g-000000000000001") {
        return error(404, "Path not found");
    }
    json_answer(
        200,
        json!({
            "kind": "arvados#group",
            "uuid": uuid,
            "owner_uuid": state.user_uuid(),
            "name": "cafs tests",
            "group_class": "project",
            "can_write": true,
            "can_manage": true,
        }),
    )
}

/// Accepts TLS connections with a self-signed certificate for 127.0.0.1 made at start.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_native_tls::TlsAcceptor,
}

impl TlsListener {
    pub fn new(tcp: tokio::net::TcpListener) -> Self {
        let (cert, key) = self_signed();
        let identity = native_tls::Identity::from_pkcs8(&cert, &key).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        Self { tcp, acceptor: acceptor.into() }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_native_tls::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that stalls its handshake is dropped rather than holding up the others for long.
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A certificate for 127.0.0.1 and localhost and its key, PEM.
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    let san =
        SubjectAlternativeName::new().ip("127.0.0.1").dns("localhost").build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build().to_pem().unwrap(), key.private_key_to_pem_pkcs8().unwrap())
}
