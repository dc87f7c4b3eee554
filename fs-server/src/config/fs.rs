//! `[fs]`: how much memory and parallelism every mount's filesystem core gets, checked whole at start so that a
//! value that cannot work (a budget smaller than one block, read-ahead that would evict itself) is an error
//! that names it, not a slow or stuck mount later.
//!
//! ```toml
//! [fs]
//! memory_budget = "512MiB"   # written data held per mount until the store has it; writers wait beyond it
//! max_uploads = 4            # block uploads in flight per mount
//! cache_size = "256MiB"      # stored blocks kept in memory per mount for reads
//! readahead = "128MiB"       # fetched ahead of a sequential reader; at most half the cache
//! upload_attempts = 4        # tries per block upload on errors that may pass (a store down, a timeout)
//! upload_timeout_seconds = 120
//! ```
//!
//! Sizes are bytes, as an integer or a string with a binary unit (`KiB`, `MiB`, `GiB`, `TiB`; `K`, `M`, `G`,
//! `T` mean the same).

use std::time::Duration;

use serde::Deserialize;

use crate::fs::FsOptions;
use crate::locator::MAX_BLOCK_SIZE;

/// A size in bytes, as the file writes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The number of bytes, or why the text is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Size::Bytes(n) => return Ok(*n),
            Size::Text(t) => t.trim(),
        };
        let at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(at);
        let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (e.g. 536870912 or \"512MiB\")"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            other => return Err(format!("{text:?}: unknown unit {other:?} (KiB, MiB, GiB or TiB)")),
        };
        n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub memory_budget: Option<Size>,
    pub max_uploads: Option<usize>,
    pub cache_size: Option<Size>,
    pub readahead: Option<Size>,
    pub upload_attempts: Option<u32>,
    pub upload_timeout_seconds: Option<u64>,
}

impl FsConfig {
    /// The options every mount gets: the defaults, with what the section sets, checked.
    pub fn options(&self) -> Result<FsOptions, String> {
        let mut o = FsOptions::default();
        let size = |key: &str, s: &Option<Size>, default: u64| match s {
            Some(s) => s.bytes().map_err(|e| format!("fs.{key}: {e}")),
            None => Ok(default),
        };
        let block = MAX_BLOCK_SIZE;
        o.memory_budget = size("memory_budget", &self.memory_budget, o.memory_budget)?;
        o.cache_size = size("cache_size", &self.cache_size, o.cache_size)?;
        o.readahead = size("readahead", &self.readahead, o.readahead)?;
        o.max_uploads = self.max_uploads.unwrap_or(o.max_uploads);
        o.upload_attempts = self.upload_attempts.unwrap_or(o.upload_attempts);
        if let Some(s) = self.upload_timeout_seconds {
            o.upload_timeout = Duration::from_secs(s);
        }
        // A full block has to fit, or a writer of one large file would wait for itself.
        if o.memory_budget < block {
            return Err(format!("fs.memory_budget: {} bytes is less than one block ({block} bytes)", o.memory_budget));
        }
        // Below one block, a read of a stored block would fetch it again for every call.
        if o.cache_size < block {
            return Err(format!("fs.cache_size: {} bytes is less than one block ({block} bytes)", o.cache_size));
        }
        if o.readahead > o.cache_size / 2 {
            return Err(format!(
                "fs.readahead: {} bytes is over half of fs.cache_size ({} bytes): blocks fetched ahead would push \
                 each other out before they are read",
                o.readahead, o.cache_size
            ));
        }
        if !(1..=256).contains(&o.max_uploads) {
            return Err(format!("fs.max_uploads: {} is not between 1 and 256", o.max_uploads));
        }
        if !(1..=100).contains(&o.upload_attempts) {
            return Err(format!("fs.upload_attempts: {} is not between 1 and 100", o.upload_attempts));
        }
        if o.upload_timeout < Duration::from_secs(1) {
            return Err("fs.upload_timeout_seconds: at least 1".to_string());
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FsOptions, String> {
        let c: FsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.options()
    }

    #[test]
    fn sizes_take_integers_and_binary_units() {
        assert_eq!(Size::Bytes(5).bytes(), Ok(5));
        assert_eq!(Size::Text("512MiB".into()).bytes(), Ok(512 << 20));
        assert_eq!(Size::Text("2 G".into()).bytes(), Ok(2 << 30));
        assert_eq!(Size::Text("1TiB".into()).bytes(), Ok(1 << 40));
        assert!(Size::Text("12 parsecs".into()).bytes().unwrap_err().contains("unknown unit"));
        assert!(Size::Text("MiB".into()).bytes().unwrap_err().contains("not a size"));
        assert!(Size::Text("99999999999TiB".into()).bytes().unwrap_err().contains("too large"));
    }

    #[test]
    fn an_empty_section_is_the_defaults_and_values_apply() {
        let d = FsOptions::default();
        let o = parse("").unwrap();
        assert_eq!(
            (o.memory_budget, o.cache_size, o.readahead, o.max_uploads),
            (d.memory_budget, d.cache_size, d.readahead, d.max_uploads)
        );
        let o = parse(
            "memory_budget = \"2GiB\"\nmax_uploads = 16\ncache_size = 1073741824\nreadahead = \"256MiB\"\n\
             upload_attempts = 6\nupload_timeout_seconds = 30\n",
        )
        .unwrap();
        assert_eq!((o.memory_budget, o.max_uploads, o.cache_size, o.readahead), (2 << 30, 16, 1 << 30, 256 << 20));
        assert_eq!((o.upload_attempts, o.upload_timeout), (6, Duration::from_secs(30)));
    }

    #[test]
    fn values_that_cannot_work_are_errors_that_name_them() {
        for (text, says) in [
            ("memory_budget = \"1MiB\"", "fs.memory_budget"),
            ("cache_size = \"16MiB\"", "fs.cache_size"),
            ("readahead = \"200MiB\"", "fs.readahead"),
            ("max_uploads = 0", "fs.max_uploads"),
            ("upload_attempts = 0", "fs.upload_attempts"),
            ("upload_timeout_seconds = 0", "fs.upload_timeout_seconds"),
            ("memory_budget = \"lots\"", "fs.memory_budget"),
            ("buffer_size = 1", "buffer_size"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
