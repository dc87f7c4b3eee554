//! `[cache]`: the node's disk cache of blocks from a remote store (S3), shared by every mount and kept across
//! restarts. The local store needs none and ignores the section.
//!
//! ```toml
//! [cache]
//! dir = "/var/cache/cafs"      # default: STATE/cache; a local disk (NVMe) is the place for it
//! max_size = "10%"             # bytes ("200GiB") or a share of the cache's filesystem; 0 turns the cache off
//! min_free = "5%"              # no block is kept when it would leave less free on that filesystem
//! write_through = false        # also keep blocks as they are uploaded (a job's next step reads them locally)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::fs::Size;
use crate::store::DiskCacheOptions;

const DEFAULT_MAX_SIZE: &str = "10%";
const DEFAULT_MIN_FREE: &str = "5%";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: Option<PathBuf>,
    pub max_size: Option<Size>,
    pub min_free: Option<Size>,
    #[serde(default)]
    pub write_through: bool,
}

/// A size in bytes, or a share (`"10%"`) of `total`.
fn bytes_or_share(key: &str, s: &Size, total: u64) -> Result<u64, String> {
    if let Size::Text(t) = s
        && let Some(pct) = t.trim().strip_suffix('%')
    {
        let pct: u64 = pct
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| format!("cache.{key}: {t:?} is not a share of the filesystem (0% to 100%)"))?;
        return Ok((u128::from(total) * u128::from(pct) / 100) as u64);
    }
    s.bytes().map_err(|e| format!("cache.{key}: {e}"))
}

impl CacheConfig {
    /// Checks the values that do not depend on the disk (what `Config::parse` can tell).
    pub fn check(&self) -> Result<(), String> {
        for (key, s) in [("max_size", &self.max_size), ("min_free", &self.min_free)] {
            if let Some(s) = s {
                bytes_or_share(key, s, u64::MAX / 100)?;
            }
        }
        if self.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err("cache.dir: an absolute path".to_string());
        }
        Ok(())
    }

    /// The cache's settings, shares resolved against the filesystem of its directory (made here if needed);
    /// `None` when `max_size` is 0.
    pub fn options(&self, state: &Path) -> Result<Option<DiskCacheOptions>, String> {
        let dir = self.dir.clone().unwrap_or_else(|| state.join("cache"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cache.dir {}: {e}", dir.display()))?;
        let s = nix::sys::statvfs::statvfs(&dir).map_err(|e| format!("cache.dir {}: {e}", dir.display()))?;
        let total = s.blocks() * s.fragment_size();
        let default = |v| Size::Text(String::from(v));
        let max_size = bytes_or_share("max_size", self.max_size.as_ref().unwrap_or(&default(DEFAULT_MAX_SIZE)), total)?;
        let min_free = bytes_or_share("min_free", self.min_free.as_ref().unwrap_or(&default(DEFAULT_MIN_FREE)), total)?;
        Ok((max_size > 0).then_some(DiskCacheOptions { dir, max_size, min_free, write_through: self.write_through }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CacheConfig, String> {
        let c: CacheConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check().map(|()| c)
    }

    #[test]
    fn sizes_are_bytes_or_shares_of_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let total = s.blocks() * s.fragment_size();
        let o = parse("").unwrap().options(dir.path()).unwrap().unwrap();
        assert_eq!((o.dir, o.max_size, o.min_free), (dir.path().join("cache"), total / 10, total / 20));
        assert!(!o.write_through);
        let o = parse("max_size = \"2GiB\"\nmin_free = 1000\nwrite_through = true\ndir = \"/tmp/x\"")
            .unwrap()
            .options(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!((o.max_size, o.min_free, o.write_through), (2 << 30, 1000, true));
        assert_eq!(o.dir, Path::new("/tmp/x"));
        assert!(parse("max_size = 0").unwrap().options(dir.path()).unwrap().is_none(), "0 turns it off");
    }

    #[test]
    fn bad_values_are_errors_that_name_them() {
        for (text, says) in [
            ("max_size = \"110%\"", "cache.max_size"),
            ("min_free = \"lots\"", "cache.min_free"),
            ("dir = \"relative\"", "absolute"),
            ("size = 1", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
