//! The sidecar: what a manifest cannot say, stored beside it with each committed version — permission bits,
//! owner, modification time of every file and directory, and symlinks (which a manifest cannot hold at all).
//! JSON, keyed by the escaped path (manifest escaping, so any byte in a name survives), `""` for the root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{escape_name, unescape};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub version: u32,
    pub entries: BTreeMap<String, EntryMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The target, escaped, when the entry is a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid sidecar: {0}")]
pub struct SidecarError(String);

impl Sidecar {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a sidecar serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SidecarError> {
        if bytes.is_empty() {
            return Ok(Self { version: VERSION, entries: BTreeMap::new() });
        }
        let s: Sidecar = serde_json::from_slice(bytes).map_err(|e| SidecarError(e.to_string()))?;
        if s.version != VERSION {
            return Err(SidecarError(format!("version {} (this cafs reads {VERSION})", s.version)));
        }
        Ok(s)
    }
}

/// The sidecar key of a path given as raw name components.
pub fn key<'a>(components: impl IntoIterator<Item = &'a [u8]>) -> String {
    components.into_iter().map(escape_name).collect::<Vec<_>>().join("/")
}

/// The raw name components of a sidecar key.
pub fn components(key: &str) -> Result<Vec<Vec<u8>>, SidecarError> {
    if key.is_empty() {
        return Ok(Vec::new());
    }
    key.split('/').map(|c| unescape(c.as_bytes()).map_err(|_| SidecarError(format!("bad path {key:?}")))).collect()
}

pub fn escape_target(target: &[u8]) -> String {
    escape_name(target)
}

pub fn unescape_target(target: &str) -> Result<Vec<u8>, SidecarError> {
    unescape(target.as_bytes()).map_err(|_| SidecarError(format!("bad symlink target {target:?}")))
}
