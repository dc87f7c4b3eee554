//! Keep's permission signatures for the blocks this node wrote or was given, kept out of every locator the rest
//! of cafs sees.
//!
//! A keepstore signs the locator it returns from a `PUT` (`+A<40 hex>@<8 hex expiry>`), and that signature is what
//! lets a later `GET` read the block and an Arvados collection name it. A signature is a credential: whoever holds
//! it reads the block. So the rest of cafs deals only in stripped locators (which it logs freely), and the
//! signatures live here, in memory and in one file of the state directory (mode 0600) that is made durable before
//! a put returns — once a put has returned, the writer's journal may let go of the bytes, and the signature is
//! then the only way back to them.
//!
//! The file is a log of lines `md5+size+A<sig>@<expiry> <obtained>`; the newest line of a block wins, expired ones
//! are dropped when the file is read, and the file is rewritten without them at each start.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::locator::Locator;

/// One block's permission signature, as a keepstore gave it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// `+A<40 hex>@<8 hex>`.
    hint: String,
    /// When it stops being accepted (Unix seconds).
    expiry: u64,
    /// When it was given: the signature's lifetime is `expiry - obtained` (the cluster's TTL), and half of it
    /// left is when it is renewed, as the Arvados Go SDK does.
    obtained: u64,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature(<redacted>, expires {})", self.expiry)
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Signature {
    /// The `+A…@…` hint among `hints` (a locator's hints, as Keep returned them), given at `obtained`.
    pub fn from_hints(hints: &str, obtained: u64) -> Option<Self> {
        let a = hints.split('+').find(|h| h.starts_with('A'))?;
        let (sig, expiry) = a[1..].split_once('@')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(sig, 40) || !hex(expiry, 8) {
            return None;
        }
        let expiry = u64::from_str_radix(expiry, 16).ok()?;
        Some(Self { hint: format!("+{a}"), expiry, obtained })
    }

    /// The hint, to append to `md5+size` in a request or a manifest.
    pub fn hint(&self) -> &str {
        &self.hint
    }

    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// Whether Keep still accepts it at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        now < self.expiry
    }

    /// Whether more than half of its lifetime is left at `now`: a block with a signature that is not fresh is
    /// written again (Keep keeps one copy and signs anew) before anything new relies on it.
    pub fn fresh_at(&self, now: u64) -> bool {
        let lifetime = self.expiry.saturating_sub(self.obtained);
        now < self.expiry && self.expiry - now > lifetime / 2
    }
}

/// Whether Keep signs at all: a cluster with blob signing off returns bare locators, and its blocks are read
/// without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Signed(Signature),
    /// Keep returned the locator unsigned (signing is off): nothing to renew.
    Unsigned,
}

/// The signatures held, by block.
#[derive(Debug)]
pub struct Signatures {
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Locator, Permit>,
    log: Option<fs::File>,
}

impl Signatures {
    /// Held in memory only (a store opened without a state directory).
    pub fn in_memory() -> Self {
        Self { file: None, inner: Mutex::new(Inner::default()) }
    }

    /// Reads `file` (if it exists), drops what has expired, and writes it back compacted.
    pub fn open(file: &Path) -> io::Result<Self> {
        let now = now();
        let mut map = HashMap::new();
        match fs::File::open(file) {
            Ok(f) => {
                for line in io::BufReader::new(f).lines() {
                    if let Some((locator, permit)) = parse_line(&line?) {
                        map.insert(locator, permit);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        map.retain(|_, p| match p {
            Permit::Signed(s) => s.valid_at(now),
            Permit::Unsigned => true,
        });
        let tmp = file.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut out = private_file(&tmp, true)?;
        let mut text = String::new();
        for (locator, permit) in &map {
            text.push_str(&line(locator, permit));
        }
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        fs::rename(&tmp, file)?;
        let log = private_file(file, false)?;
        Ok(Self { file: Some(file.to_path_buf()), inner: Mutex::new(Inner { map, log: Some(log) }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is held for the block `locator` names.
    pub fn get(&self, locator: &Locator) -> Option<Permit> {
        self.lock().map.get(&locator.stripped()).cloned()
    }

    /// Records `permit` for the block, durably when the signatures have a file. Blocking: call it off the async
    /// threads.
    pub fn record(&self, locator: &Locator, permit: Permit) -> io::Result<()> {
        let key = locator.stripped();
        let mut inner = self.lock();
        if inner.map.get(&key) == Some(&permit) {
            return Ok(());
        }
        if let Some(log) = &mut inner.log {
            log.write_all(line(&key, &permit).as_bytes())?;
            log.sync_data()?;
        }
        inner.map.insert(key, permit);
        Ok(())
    }

    /// Records many permits with one sync of the file (the signatures of a collection read from the API).
    pub fn record_all(&self, permits: impl IntoIterator<Item = (Locator, Permit)>) -> io::Result<()> {
        let mut inner = self.lock();
        let mut text = String::new();
        for (locator, permit) in permits {
            let key = locator.stripped();
            if inner.map.get(&key) != Some(&permit) {
                text.push_str(&line(&key, &permit));
                inner.map.insert(key, permit);
            }
        }
        if let Some(log) = &mut inner.log
            && !text.is_empty()
        {
            log.write_all(text.as_bytes())?;
            log.sync_data()?;
        }
        Ok(())
    }

    /// Forgets the block's signature (the block was found missing or damaged).
    pub fn forget(&self, locator: &Locator) {
        self.lock().map.remove(&locator.stripped());
    }

    /// How many blocks have a permit.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// A file only cafsd's user can read: the signatures in it are credentials.
fn private_file(path: &Path, create_new: bool) -> io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.mode(0o600);
    if create_new {
        o.write(true).create_new(true);
    } else {
        o.append(true).create(true);
    }
    o.open(path)
}

fn line(locator: &Locator, permit: &Permit) -> String {
    match permit {
        Permit::Signed(s) => format!("{}{} {}\n", locator.stripped_string(), s.hint, s.obtained),
        Permit::Unsigned => format!("{} 0\n", locator.stripped_string()),
    }
}

fn parse_line(line: &str) -> Option<(Locator, Permit)> {
    let (signed, obtained) = line.split_once(' ')?;
    let obtained: u64 = obtained.parse().ok()?;
    let locator = Locator::parse(signed).ok()?;
    let permit = match locator.hints() {
        None => Permit::Unsigned,
        Some(h) => Permit::Signed(Signature::from_hints(h, obtained)?),
    };
    Some((locator.stripped(), permit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: &str = "+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff";

    #[test]
    fn hints_parse_and_freshness_follows_the_lifetime() {
        let s = Signature::from_hints(&format!("+K@xyzzy{HINT}+Zfoo"), 0x7fff_ffff - 1000).unwrap();
        assert_eq!(s.hint(), HINT);
        assert_eq!(s.expiry(), 0x7fff_ffff);
        assert!(s.fresh_at(0x7fff_ffff - 600) && !s.fresh_at(0x7fff_ffff - 400), "renewed at half its life");
        assert!(s.valid_at(0x7fff_fffe) && !s.valid_at(0x7fff_ffff));
        assert!(Signature::from_hints("+Ashort@7fffffff", 0).is_none());
        assert!(Signature::from_hints("+K@xyzzy", 0).is_none());
        assert!(!format!("{s:?}").contains("89118b"), "never printed");
    }

    #[test]
    fn the_file_keeps_the_newest_and_drops_the_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep-signatures");
        let (a, b, c) = (Locator::of(b"a"), Locator::of(b"b"), Locator::of(b"c"));
        let past = "+A0000000000000000000000000000000000000000@00000010";
        {
            let s = Signatures::open(&path).unwrap();
            s.record(&a, Permit::Signed(Signature::from_hints(past, 1).unwrap())).unwrap();
            s.record(&a, Permit::Signed(Signature::from_hints(HINT, 5).unwrap())).unwrap();
            s.record(&b, Permit::Signed(Signature::from_hints(past, 1).unwrap())).unwrap();
            s.record(&c, Permit::Unsigned).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let s = Signatures::open(&path).unwrap();
        assert_eq!(s.get(&a), Some(Permit::Signed(Signature::from_hints(HINT, 5).unwrap())));
        assert_eq!(s.get(&b), None, "expired");
        assert_eq!(s.get(&c), Some(Permit::Unsigned));
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2, "compacted");
        s.forget(&a);
        assert_eq!(s.get(&a), None);
    }
}
