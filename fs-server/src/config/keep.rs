//! `[store] kind = "keep"`: blocks in an Arvados cluster's Keep.
//!
//! Every setting falls back to the environment the Arvados tools read (`ARVADOS_API_HOST`, `ARVADOS_API_TOKEN`,
//! `ARVADOS_API_HOST_INSECURE`, `ARVADOS_KEEP_SERVICES`), so that cafsd started the way `arv-put` is started
//! finds the same cluster. The token is read from a file only cafsd's user can read, or from the environment;
//! never from the configuration file, which is world-readable on most nodes.

use std::path::PathBuf;
use std::time::Duration;

use cafs_core::store::KeepConfig;
use serde::Deserialize;

use super::{ConfigError, read_secret};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepSettings {
    /// The Arvados API's `host[:port]` (default: `ARVADOS_API_HOST`).
    #[serde(default)]
    pub api_host: Option<String>,
    /// A file holding the API token, mode 0600 (default: `ARVADOS_API_TOKEN`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Accept the API's and Keep's certificates unchecked (default: `ARVADOS_API_HOST_INSECURE`).
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Keep service URLs to use instead of the API's list (default: `ARVADOS_KEEP_SERVICES`, space-separated).
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Replicas of each block (default: the cluster's `defaultCollectionReplication`).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Storage classes to write to (default: the cluster's).
    #[serde(default)]
    pub storage_classes: Vec<String>,
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    #[serde(default)]
    pub request_timeout_seconds: Option<u64>,
}

/// An environment variable, `None` when unset or empty.
pub(super) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether an `ARVADOS_API_HOST_INSECURE` value means yes, as the Arvados SDKs read it.
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl KeepSettings {
    /// The store's settings, with the environment filling what the file leaves out.
    pub fn resolve(&self) -> Result<KeepConfig, ConfigError> {
        self.resolve_with(env)
    }

    /// As [`KeepSettings::resolve`], with `env` for the environment.
    fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<KeepConfig, ConfigError> {
        let invalid = |m: &str| ConfigError::Invalid(format!("[store] kind = \"keep\": {m}"));
        let api_token = match &self.token_file {
            Some(f) => read_secret(f)?.trim().to_string(),
            None => {
                env("ARVADOS_API_TOKEN").ok_or_else(|| invalid("no token: set token_file, or ARVADOS_API_TOKEN"))?
            }
        };
        if api_token.is_empty() {
            return Err(invalid("the token is empty"));
        }
        let services = match &self.services {
            Some(s) => s.clone(),
            None => env("ARVADOS_KEEP_SERVICES")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        let api_host = self.api_host.clone().or_else(|| env("ARVADOS_API_HOST")).unwrap_or_default();
        if api_host.is_empty() && services.is_empty() {
            return Err(invalid(
                "no cluster: set api_host (or ARVADOS_API_HOST), or services (or ARVADOS_KEEP_SERVICES)",
            ));
        }
        if api_host.contains("://") || api_host.contains('/') {
            return Err(invalid(&format!("api_host {api_host:?} is a host[:port], without a scheme or a path")));
        }
        if self.replicas == Some(0) {
            return Err(invalid("replicas must be at least 1"));
        }
        let insecure = self.insecure.unwrap_or_else(|| env("ARVADOS_API_HOST_INSECURE").is_some_and(|v| truthy(&v)));
        let d = KeepConfig::default();
        Ok(KeepConfig {
            api_host,
            api_token,
            insecure,
            services,
            replicas: self.replicas,
            storage_classes: self.storage_classes.clone(),
            max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency),
            request_timeout: self.request_timeout_seconds.map_or(d.request_timeout, Duration::from_secs),
            ..d
        })
    }

    /// What the configuration says of the cluster, without the token.
    pub fn describe(&self) -> String {
        match (&self.api_host, &self.services) {
            (_, Some(s)) if !s.is_empty() => format!("keep {}", s.join(" ")),
            (Some(h), _) => format!("keep via {h}"),
            _ => "keep (from the environment)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(text: &str) -> KeepSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_file_or_the_arvados_environment() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "v2/zzzzz-gj3su-000000000000001/secret\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = settings(&format!(
            "api_host = \"zzzzz.example.org\"\ntoken_file = \"{}\"\nreplicas = 3\nstorage_classes = [\"fast\"]\n",
            token.display()
        ));
        let c = s.resolve_with(|_| None).unwrap();
        assert_eq!(c.api_token, "v2/zzzzz-gj3su-000000000000001/secret");
        assert_eq!((c.api_host.as_str(), c.replicas, c.insecure), ("zzzzz.example.org", Some(3), false));
        assert_eq!(c.storage_classes, ["fast"]);

        let vars: HashMap<&str, &str> = HashMap::from([
            ("ARVADOS_API_TOKEN", "tok"),
            ("ARVADOS_API_HOST_INSECURE", "true"),
            ("ARVADOS_KEEP_SERVICES", "http://keep0:25107 http://keep1:25107"),
        ]);
        let c = KeepSettings::default().resolve_with(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!((c.api_token.as_str(), c.insecure), ("tok", true));
        assert_eq!(c.services, ["http://keep0:25107", "http://keep1:25107"]);
    }

    #[test]
    fn what_is_missing_or_wrong_is_said() {
        let err = |s: &KeepSettings, vars: &[(&str, &str)]| {
            let vars: HashMap<&str, &str> = vars.iter().copied().collect();
            s.resolve_with(|k| vars.get(k).map(|v| v.to_string())).unwrap_err().to_string()
        };
        assert!(err(&KeepSettings::default(), &[("ARVADOS_API_HOST", "h")]).contains("no token"));
        assert!(err(&KeepSettings::default(), &[("ARVADOS_API_TOKEN", "t")]).contains("no cluster"));
        let s = settings("api_host = \"https://h/\"");
        assert!(err(&s, &[("ARVADOS_API_TOKEN", "t")]).contains("without a scheme"));
        let s = settings("api_host = \"h\"\nreplicas = 0");
        assert!(err(&s, &[("ARVADOS_API_TOKEN", "t")]).contains("at least 1"));
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = settings(&format!("api_host = \"h\"\ntoken_file = \"{}\"", token.display()));
        assert!(err(&s, &[]).contains("chmod 600"));
        assert!(toml::from_str::<KeepSettings>("api_hots = \"h\"").is_err(), "a misspelt key is an error");
    }
}
