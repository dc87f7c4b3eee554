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
    #[serde(deserialize_with = "sorted_map")]
    pub entries: BTreeMap<String, EntryMeta>,
}

/// Reads a JSON object into a sorted map in one pass: serde's own inserts key by key, a tree search each, which
/// for a million entries was a second. (Written sorted, a sidecar reads back presorted; any order works.)
fn sorted_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, EntryMeta>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = BTreeMap<String, EntryMeta>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of paths to entries")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(kv) = map.next_entry::<String, EntryMeta>()? {
                v.push(kv);
            }
            Ok(v.into_iter().collect())
        }
    }
    d.deserialize_map(Entries)
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
    /// Extended attributes (`user.*`), names and values escaped as symlink targets are. Absent from sidecars
    /// written before cafs kept them, which read as none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

impl EntryMeta {
    /// The stored attributes, unescaped; `None` when there are none.
    pub fn xattrs(&self) -> Result<Option<Box<crate::fs::xattr::Xattrs>>, SidecarError> {
        if self.xattrs.is_empty() {
            return Ok(None);
        }
        let mut out = crate::fs::xattr::Xattrs::new();
        for (n, v) in &self.xattrs {
            out.insert(unescape_target(n)?.into(), unescape_target(v)?.into());
        }
        Ok(Some(Box::new(out)))
    }

    /// `attrs`, escaped for the sidecar.
    pub fn escape_xattrs(attrs: Option<&crate::fs::xattr::Xattrs>) -> BTreeMap<String, String> {
        attrs.map_or_else(BTreeMap::new, |a| a.iter().map(|(n, v)| (escape_target(n), escape_target(v))).collect())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid sidecar: {0}")]
pub struct SidecarError(String);

/// A sidecar read for loading a tree: entries hashed by key, for one lookup per entry of the tree (a sorted
/// map's searches were most of loading a million-file tree).
#[derive(Debug, Default)]
pub struct Index {
    entries: std::collections::HashMap<String, EntryMeta, foldhash::fast::RandomState>,
}

impl Index {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SidecarError> {
        #[derive(Deserialize)]
        struct Raw {
            version: u32,
            entries: std::collections::HashMap<String, EntryMeta, foldhash::fast::RandomState>,
        }
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| SidecarError(e.to_string()))?;
        if raw.version != VERSION {
            return Err(SidecarError(format!("version {} (this cafs reads {VERSION})", raw.version)));
        }
        Ok(Self { entries: raw.entries })
    }

    pub fn get(&self, key: &str) -> Option<&EntryMeta> {
        self.entries.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The symlinks' keys and escaped targets, in key order (so that loading numbers them the same each time).
    pub fn symlinks(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> =
            self.entries.iter().filter_map(|(k, e)| Some((k.as_str(), e.symlink.as_deref()?))).collect();
        v.sort_unstable();
        v
    }
}

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
