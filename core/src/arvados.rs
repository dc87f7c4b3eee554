//! A client of the Arvados API (the REST API under `https://<host>/arvados/v1/`), shared by the Keep store (which
//! finds the Keep services there) and the Arvados catalog (which keeps refs as collections there).
//!
//! Requests carry the token as `Authorization: Bearer`, exactly as configured. Answers are JSON; an error answer
//! keeps its status and the API's first error message, and says whether the same request may succeed later (no
//! answer, 408, 429, 5xx), as the Arvados SDKs decide it.

use std::time::Duration;

use serde_json::Value;

/// Where the API is and how to speak to it. The token is never printed (see the `Debug` impl).
#[derive(Clone)]
pub struct ApiConfig {
    /// `host[:port]`.
    pub host: String,
    pub token: String,
    /// Accept a certificate that does not verify (`ARVADOS_API_HOST_INSECURE`).
    pub insecure: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("host", &self.host)
            .field("token", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// An API request that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Arvados API {what}: {}", describe(*.status, .message))]
pub struct ApiError {
    /// What was asked (`GET collections`), without the token.
    pub what: String,
    /// The answer's status; 0 when there was none.
    pub status: u16,
    pub message: String,
}

fn describe(status: u16, message: &str) -> String {
    match status {
        0 => format!("no answer: {message}"),
        401 | 403 => format!("refused the token ({status}): {message}"),
        s => format!("{s}: {message}"),
    }
}

impl ApiError {
    /// Whether the same request may succeed later.
    pub fn may_pass(&self) -> bool {
        matches!(self.status, 0 | 408 | 429) || self.status >= 500
    }
}

#[derive(Debug, Clone)]
pub struct Api {
    cfg: ApiConfig,
    http: reqwest::Client,
}

impl Api {
    pub fn new(cfg: ApiConfig) -> Result<Self, String> {
        if cfg.host.is_empty() || cfg.host.contains('/') {
            return Err(format!("Arvados API host {:?} must be a host[:port]", cfg.host));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .tls_danger_accept_invalid_certs(cfg.insecure)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { cfg, http })
    }

    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    /// The token requests carry (Keep signs for it).
    pub fn token(&self) -> &str {
        &self.cfg.token
    }

    /// `GET` of `path` (below the host, e.g. `arvados/v1/config`) with `query` parameters.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.send(reqwest::Method::GET, path, query, None).await
    }

    /// `method` of `path` with a JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let what = format!("{method} {path}");
        let fail = |status: u16, message: String| ApiError { what: what.clone(), status, message };
        let url = reqwest::Url::parse_with_params(&format!("https://{}/{path}", self.cfg.host), query)
            .map_err(|e| fail(0, format!("bad URL: {e}")))?;
        let mut req =
            self.http.request(method.clone(), url).header("Authorization", format!("Bearer {}", self.cfg.token));
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| fail(0, error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| fail(0, error_chain(&e)))?;
        if status != 200 {
            return Err(fail(status, first_error(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(502, format!("the answer is not JSON: {e}")))
    }
}

/// The API's first error message (`{"errors": [...]}`), else the start of the body.
fn first_error(body: &[u8]) -> String {
    let from_json =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("errors")?.get(0)?.as_str().map(str::to_string));
    from_json.unwrap_or_else(|| String::from_utf8_lossy(body).lines().next().unwrap_or("").chars().take(200).collect())
}

/// An HTTP error with its causes (reqwest's top-level message alone says little: "error sending request").
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_and_whether_to_retry() {
        let e = ApiError { what: "GET arvados/v1/users/current".into(), status: 401, message: "Not logged in".into() };
        assert_eq!(e.to_string(), "Arvados API GET arvados/v1/users/current: refused the token (401): Not logged in");
        assert!(!e.may_pass());
        assert!(ApiError { status: 503, ..e.clone() }.may_pass());
        assert!(ApiError { status: 0, ..e }.may_pass());
        assert_eq!(first_error(br#"{"errors":["Path not found"],"error_token":"x"}"#), "Path not found");
        assert_eq!(first_error(b"<html>\nbody"), "<html>");
        let cfg =
            ApiConfig { host: "h".into(), token: "secret".into(), insecure: false, timeout: Duration::from_secs(1) };
        assert!(!format!("{cfg:?}").contains("secret"));
        assert!(Api::new(ApiConfig { host: "https://h/".into(), ..cfg }).is_err());
    }
}
