//! The sidecar: what a manifest cannot say, stored beside it with each committed version — permission bits,
//! owner, modification time and extended attributes of every entry; symlinks, FIFOs and sockets (which a
//! manifest cannot hold at all); and which names are one file (hard links: the manifest lists each name as a
//! file of its own, with the same pieces). Entries are keyed by the escaped path (manifest escaping, so any byte
//! in a name survives), `""` for the root.
//!
//! Three encodings, all read: format 1 is JSON; format 2 is the line `cafs-sidecar 2` and then the entries in
//! key order as postcard; format 3 is format 2 with each entry's node kind and link. A tree written now is format
//! 3 if it has FIFOs, sockets or hard links and format 2 otherwise, so that a node still running a cafs from
//! before them reads every tree that has none. A million-file tree's sidecar read as JSON took longer than its
//! manifest, and mounting it waited for that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fs::inode::Special;
use crate::manifest::{escape_name, unescape};

/// The JSON encoding's version field.
pub const VERSION: u32 = 1;

/// What a format-2 sidecar starts with (never the start of JSON).
const FORMAT_2: &[u8] = b"cafs-sidecar 2\n";
/// What a format-3 sidecar starts with.
const FORMAT_3: &[u8] = b"cafs-sidecar 3\n";

/// An entry as format 3 holds it: format 2's fields, the node kind, the link.
type Packed3 = (Packed, Option<Special>, Option<String>);

/// An entry as format 2 holds it: every field present, since postcard does not describe its fields.
#[derive(Serialize, Deserialize)]
struct Packed {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    symlink: Option<String>,
    xattrs: Vec<(String, String)>,
}

impl From<&EntryMeta> for Packed {
    fn from(e: &EntryMeta) -> Self {
        let xattrs = e.xattrs.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        Self { perm: e.perm, uid: e.uid, gid: e.gid, mtime_ns: e.mtime_ns, symlink: e.symlink.clone(), xattrs }
    }
}

impl From<Packed> for EntryMeta {
    fn from(p: Packed) -> Self {
        let xattrs = p.xattrs.into_iter().collect();
        let (special, link) = (None, None);
        Self { perm: p.perm, uid: p.uid, gid: p.gid, mtime_ns: p.mtime_ns, symlink: p.symlink, xattrs, special, link }
    }
}

/// A sidecar's entries, from either format (nothing, for no bytes), into whichever map the reader wants.
fn decode<M>(bytes: &[u8]) -> Result<M, SidecarError>
where
    M: FromIterator<(String, EntryMeta)> + Default,
{
    if bytes.is_empty() {
        return Ok(M::default());
    }
    if let Some(rest) = bytes.strip_prefix(FORMAT_3) {
        let v: Vec<(String, Packed3)> =
            postcard::from_bytes(rest).map_err(|e| SidecarError(format!("format 3: {e}")))?;
        return Ok(v
            .into_iter()
            .map(|(k, (p, special, link))| (k, EntryMeta { special, link, ..EntryMeta::from(p) }))
            .collect());
    }
    if let Some(rest) = bytes.strip_prefix(FORMAT_2) {
        let v: Vec<(String, Packed)> =
            postcard::from_bytes(rest).map_err(|e| SidecarError(format!("format 2: {e}")))?;
        return Ok(v.into_iter().map(|(k, p)| (k, EntryMeta::from(p))).collect());
    }
    #[derive(Deserialize)]
    struct Json {
        version: u32,
        entries: BTreeMap<String, EntryMeta>,
    }
    let json: Json = serde_json::from_slice(bytes).map_err(|e| SidecarError(e.to_string()))?;
    if json.version != VERSION {
        return Err(SidecarError(format!("version {} (this cafs reads {VERSION})", json.version)));
    }
    Ok(json.entries.into_iter().collect())
}

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
    /// Extended attributes (`user.*`), names and values escaped as symlink targets are. Absent from sidecars
    /// written before cafs kept them, which read as none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// A FIFO or a socket (which the manifest does not list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Special>,
    /// Another name of the file whose first name is this key (a hard link): in the manifest it is a file with
    /// the same pieces; a symlink or special's further name is only here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
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

/// A sidecar read for loading a tree: its entries in key order. Loading asks for them mostly in that order (a
/// directory's entries one after another), so a lookup first tries the entry after the one found last, and
/// searches only when that is not it: a million lookups then read memory in order. (A sorted map's searches
/// were most of loading a million-file tree; a hash table's cache misses, a sixth.)
#[derive(Debug, Default)]
pub struct Index {
    entries: Vec<(String, EntryMeta)>,
    /// Where the next lookup looks first.
    next: std::sync::atomic::AtomicUsize,
}

impl Index {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SidecarError> {
        let mut entries: Vec<(String, EntryMeta)> = decode(bytes)?;
        // Both formats come sorted from cafs; anything else is put in order, the last of a key winning.
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|a, b| a.0 == b.0);
        }
        Ok(Self { entries, next: Default::default() })
    }

    pub fn get(&self, key: &str) -> Option<&EntryMeta> {
        use std::sync::atomic::Ordering::Relaxed;
        let hint = self.next.load(Relaxed);
        let at = match self.entries.get(hint) {
            Some((k, _)) if k == key => hint,
            _ => self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?,
        };
        self.next.store(at + 1, Relaxed);
        Some(&self.entries[at].1)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries the manifest does not list (symlinks, FIFOs, sockets; first names only), in key order (so
    /// that loading numbers them the same each time).
    pub fn unlisted(&self) -> impl Iterator<Item = (&str, &EntryMeta)> {
        let unlisted = |e: &EntryMeta| e.link.is_none() && (e.symlink.is_some() || e.special.is_some());
        self.entries.iter().filter(move |(_, e)| unlisted(e)).map(|(k, e)| (k.as_str(), e))
    }

    /// The further names of files (key, key of the first name), in key order.
    pub fn links(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().filter_map(|(k, e)| Some((k.as_str(), e.link.as_deref()?)))
    }
}

impl Sidecar {
    /// Format 3 when an entry is a FIFO, a socket or a further name of a file; else format 2, which cafs
    /// versions from before those read too (a node not upgraded yet reads every tree that has none).
    pub fn to_bytes(&self) -> Vec<u8> {
        let needs_3 = self.entries.values().any(|e| e.special.is_some() || e.link.is_some());
        let (mut out, packed) = if needs_3 {
            let entries: Vec<(&String, Packed3)> =
                self.entries.iter().map(|(k, e)| (k, (Packed::from(e), e.special, e.link.clone()))).collect();
            (FORMAT_3.to_vec(), postcard::to_stdvec(&entries))
        } else {
            let entries: Vec<(&String, Packed)> = self.entries.iter().map(|(k, e)| (k, Packed::from(e))).collect();
            (FORMAT_2.to_vec(), postcard::to_stdvec(&entries))
        };
        out.extend(packed.expect("a sidecar serializes"));
        out
    }

    /// Format 1 (JSON), which cafs wrote before format 2 and still reads.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a sidecar serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SidecarError> {
        Ok(Self { version: VERSION, entries: decode(bytes)? })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_read_back_the_same_entries() {
        let mut sc = Sidecar { version: VERSION, entries: BTreeMap::new() };
        let meta = |perm, symlink: Option<&str>, xattrs: &[(&str, &str)]| EntryMeta {
            perm,
            uid: 1000,
            gid: 100,
            mtime_ns: -5,
            symlink: symlink.map(str::to_string),
            xattrs: xattrs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            special: None,
            link: None,
        };
        sc.entries.insert(String::new(), meta(0o755, None, &[("user.prop.p", "v")]));
        sc.entries.insert("a\\040b".into(), meta(0o644, None, &[]));
        sc.entries.insert("l".into(), meta(0o777, Some("t\\000"), &[]));
        // Without nodes and links: format 2, which cafs versions from before them read too.
        assert!(sc.to_bytes().starts_with(FORMAT_2));
        let unlisted = |idx: &Index| idx.unlisted().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
        for bytes in [sc.to_bytes(), sc.to_json()] {
            assert_eq!(Sidecar::from_bytes(&bytes).unwrap(), sc);
            let idx = Index::from_bytes(&bytes).unwrap();
            for (k, e) in &sc.entries {
                assert_eq!(idx.get(k), Some(e));
            }
            assert_eq!(unlisted(&idx), ["l"]);
        }
        // With nodes and links: format 3 (and 1).
        sc.entries.insert("p".into(), EntryMeta { special: Some(Special::Fifo), ..meta(0o600, None, &[]) });
        sc.entries.insert("q".into(), EntryMeta { link: Some("p".into()), ..meta(0o600, None, &[]) });
        sc.entries.insert("s".into(), EntryMeta { special: Some(Special::Socket), ..meta(0o755, None, &[]) });
        sc.entries.insert("z".into(), EntryMeta { link: Some("a\\040b".into()), ..meta(0o644, None, &[]) });
        for bytes in [sc.to_bytes(), sc.to_json()] {
            assert_eq!(Sidecar::from_bytes(&bytes).unwrap(), sc);
            let idx = Index::from_bytes(&bytes).unwrap();
            assert_eq!(unlisted(&idx), ["l", "p", "s"]);
            assert_eq!(idx.links().collect::<Vec<_>>(), [("q", "p"), ("z", "a\\040b")]);
        }
        assert!(sc.to_bytes().starts_with(FORMAT_3) && sc.to_json().starts_with(b"{"));
        // Damaged bytes are an error, not an empty sidecar.
        let mut cut = sc.to_bytes();
        cut.truncate(cut.len() - 3);
        assert!(Sidecar::from_bytes(&cut).is_err() && Index::from_bytes(&cut).is_err());
    }

    #[test]
    fn lookups_in_any_order_find_every_entry_and_the_last_of_a_key_wins() {
        let meta = |perm| EntryMeta {
            perm,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            symlink: None,
            xattrs: BTreeMap::new(),
            special: None,
            link: None,
        };
        // Written out of order, with a key twice (no cafs writes that; another writer might).
        let packed: Vec<(String, Packed)> = [("b", 1), ("a", 2), ("c/x", 3), ("b", 4), ("c", 5)]
            .into_iter()
            .map(|(k, p)| (k.to_string(), Packed::from(&meta(p))))
            .collect();
        let mut bytes = FORMAT_2.to_vec();
        bytes.extend(postcard::to_stdvec(&packed).unwrap());
        let idx = Index::from_bytes(&bytes).unwrap();
        let perm = |k: &str| idx.get(k).map(|e| e.perm);
        // In order, backwards, repeated, and missing keys between found ones.
        for (k, p) in [("a", 2), ("b", 4), ("c", 5), ("c/x", 3), ("a", 2), ("c/x", 3), ("c/x", 3), ("b", 4)] {
            assert_eq!(perm(k), Some(p), "{k}");
            assert_eq!(perm("bb"), None);
        }
        assert_eq!((perm(""), perm("d")), (None, None));
    }
}
