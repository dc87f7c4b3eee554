//! Block locators: the Keep-compatible names of immutable blocks, `md5hex+size` optionally followed by
//! `+Hint` tokens (a permission signature `+A<40 hex>@<8 hex>`, a remote cluster `+R…`, …).
//!
//! Hints are carried along (a signed manifest must be written back signed) but never take part in identity:
//! two locators naming the same bytes compare equal through [`Locator::stripped_eq`], and the portable data hash
//! is computed over stripped locators. MD5 comes from OpenSSL, whose assembly implementation measured faster
//! here than the pure-Rust and `md5-asm` ones (docs/benchmarks.md).

use std::fmt;

use openssl::hash::{Hasher, MessageDigest};

/// Largest block cafs writes or accepts: 64 MiB, as Keep.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

/// MD5 of the empty string: the locator of the empty block.
pub const EMPTY_MD5: [u8; 16] =
    [0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    #[error("locator must start with 32 lowercase hex digits")]
    BadHash,
    #[error("locator must have a decimal size after the hash")]
    BadSize,
    #[error("block size {0} exceeds the 64 MiB limit")]
    TooLarge(u64),
    #[error("bad locator hint {0:?}: a hint is '+' then an uppercase letter then [A-Za-z0-9@_-]")]
    BadHint(String),
    #[error("bad permission signature {0:?}: expected +A<40 hex>@<8 hex>")]
    BadSignature(String),
}

/// A block locator. Equality and hashing include hints; use [`Locator::stripped_eq`] for identity of content.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator {
    md5: [u8; 16],
    size: u64,
    /// Everything after `md5+size`, including the leading `+`; `None` when there are no hints.
    hints: Option<Box<str>>,
}

impl Locator {
    /// The locator of `data`, without hints.
    pub fn of(data: &[u8]) -> Self {
        Self { md5: md5(data), size: data.len() as u64, hints: None }
    }

    /// A locator from its parts, without hints.
    pub fn from_parts(md5: [u8; 16], size: u64) -> Self {
        Self { md5, size, hints: None }
    }

    /// The empty block's locator, `d41d8cd98f00b204e9800998ecf8427e+0`.
    pub fn empty() -> Self {
        Self::from_parts(EMPTY_MD5, 0)
    }

    pub fn md5(&self) -> &[u8; 16] {
        &self.md5
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hints(&self) -> Option<&str> {
        self.hints.as_deref()
    }

    /// The same locator without hints: what names the bytes.
    pub fn stripped(&self) -> Self {
        Self::from_parts(self.md5, self.size)
    }

    /// Whether two locators name the same bytes, whatever their hints.
    pub fn stripped_eq(&self, other: &Self) -> bool {
        self.md5 == other.md5 && self.size == other.size
    }

    /// Whether `data` is exactly the block this locator names.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size && md5(data) == self.md5
    }

    /// Parses `md5hex+size[+Hint…]`, strictly: lowercase hex, decimal size without sign or leading `+`,
    /// size at most 64 MiB, hints of the Keep grammar.
    pub fn parse(text: &str) -> Result<Self, LocatorError> {
        Self::parse_bytes(text.as_bytes())
    }

    pub fn parse_bytes(text: &[u8]) -> Result<Self, LocatorError> {
        if text.len() < 33 || text[32] != b'+' {
            return Err(LocatorError::BadHash);
        }
        let md5 = parse_md5_hex(&text[..32]).ok_or(LocatorError::BadHash)?;
        let rest = &text[33..];
        let size_end = rest.iter().position(|&b| b == b'+').unwrap_or(rest.len());
        let size = parse_decimal_lenient(&rest[..size_end]).ok_or(LocatorError::BadSize)?;
        if size > MAX_BLOCK_SIZE {
            return Err(LocatorError::TooLarge(size));
        }
        let hints = &rest[size_end..];
        if hints.is_empty() {
            return Ok(Self { md5, size, hints: None });
        }
        for hint in hints[1..].split(|&b| b == b'+') {
            validate_hint(hint)?;
        }
        let hints = std::str::from_utf8(hints).map_err(|_| LocatorError::BadHint(lossy(hints)))?;
        Ok(Self { md5, size, hints: Some(hints.into()) })
    }

    /// Appends the text form to `out`, with or without hints.
    pub fn write_to(&self, out: &mut Vec<u8>, with_hints: bool) {
        write_hex(out, &self.md5);
        out.push(b'+');
        out.extend_from_slice(itoa::Buffer::new().format(self.size).as_bytes());
        if with_hints && let Some(h) = &self.hints {
            out.extend_from_slice(h.as_bytes());
        }
    }

    /// `md5hex+size`, the name a block is stored under.
    pub fn stripped_string(&self) -> String {
        let mut out = Vec::with_capacity(48);
        self.write_to(&mut out, false);
        // The text is hex digits, '+' and decimal digits only.
        String::from_utf8(out).expect("locator text is ASCII")
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(48);
        self.write_to(&mut out, true);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({self})")
    }
}

impl std::str::FromStr for Locator {
    type Err = LocatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_hint(hint: &[u8]) -> Result<(), LocatorError> {
    let ok = matches!(hint.first(), Some(b'A'..=b'Z'))
        && hint[1..].iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'_' | b'-'));
    if !ok {
        return Err(LocatorError::BadHint(format!("+{}", lossy(hint))));
    }
    if hint[0] == b'A' {
        // A permission signature: A<40 hex>@<8 hex expiry>.
        let sig_ok = hint.len() == 1 + 40 + 1 + 8
            && hint[1..41].iter().all(|&b| hex_value(b).is_some())
            && hint[41] == b'@'
            && hint[42..].iter().all(|&b| hex_value(b).is_some());
        if !sig_ok {
            return Err(LocatorError::BadSignature(format!("+{}", lossy(hint))));
        }
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 32 lowercase hex digits as an MD5 digest.
pub(crate) fn parse_md5_hex(hex: &[u8]) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut md5 = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        md5[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(md5)
}

/// Lowercase hex digit value; uppercase is not part of the locator grammar.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Parses a non-empty run of ASCII digits as u64, refusing overflow, as the Arvados SDKs read manifest numbers:
/// leading zeros are accepted (cafs writes numbers without them).
pub(crate) fn parse_decimal_lenient(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a number in its one canonical spelling (no leading zero unless it is 0), for names cafs makes itself,
/// such as a PDH, where two spellings of one value must not both be accepted.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.len() > 1 && s[0] == b'0' {
        return None;
    }
    parse_decimal_lenient(s)
}

pub(crate) fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Lowercase hex text of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    write_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// MD5 of `data` (OpenSSL's assembly implementation).
pub fn md5(data: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(data);
    h.finish()
}

/// Incremental MD5, for data that arrives in pieces.
pub struct Md5(Hasher);

impl Md5 {
    pub fn new() -> Self {
        // Creating an MD5 context fails only if OpenSSL cannot allocate or has MD5 disabled (FIPS-only builds);
        // cafs cannot name blocks without it, so that is a broken installation, not a runtime condition.
        Self(Hasher::new(MessageDigest::md5()).expect("OpenSSL provides MD5"))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data).expect("MD5 update cannot fail on an initialized context");
    }

    pub fn finish(mut self) -> [u8; 16] {
        let digest = self.0.finish().expect("MD5 finish cannot fail on an initialized context");
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest);
        out
    }
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hashes() {
        assert_eq!(Locator::of(b"").to_string(), "d41d8cd98f00b204e9800998ecf8427e+0");
        assert_eq!(Locator::of(b"foo").to_string(), "acbd18db4cc2f85cedef654fccc4a4d8+3");
        assert_eq!(Locator::of(b""), Locator::empty());
        let mut h = Md5::new();
        h.update(b"fo");
        h.update(b"o");
        assert_eq!(hex(&h.finish()), "acbd18db4cc2f85cedef654fccc4a4d8");
    }

    #[test]
    fn parse_and_print_round_trip() {
        for s in [
            "acbd18db4cc2f85cedef654fccc4a4d8+3",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+Afe3bcd1c5a4c1d2a3b4c5d6e7f80910111213141@5f5e1000",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+Rzzzzz-abc+K@xyz_1-2",
            "d41d8cd98f00b204e9800998ecf8427e+0",
        ] {
            let l = Locator::parse(s).unwrap();
            assert_eq!(l.to_string(), s);
            assert_eq!(l.stripped().to_string(), &s[..s[33..].find('+').map_or(s.len(), |i| i + 33)]);
        }
    }

    #[test]
    fn rejects_bad_locators() {
        let bad = [
            ("", LocatorError::BadHash),
            ("acbd18db4cc2f85cedef654fccc4a4d+3", LocatorError::BadHash),
            ("ACBD18DB4CC2F85CEDEF654FCCC4A4D8+3", LocatorError::BadHash),
            ("acbd18db4cc2f85cedef654fccc4a4d8-3", LocatorError::BadHash),
            ("acbd18db4cc2f85cedef654fccc4a4d8+", LocatorError::BadSize),
            ("acbd18db4cc2f85cedef654fccc4a4d8+3x", LocatorError::BadSize),
            ("acbd18db4cc2f85cedef654fccc4a4d8+99999999999999999999999", LocatorError::BadSize),
            ("acbd18db4cc2f85cedef654fccc4a4d8+67108865", LocatorError::TooLarge(67108865)),
            ("acbd18db4cc2f85cedef654fccc4a4d8+3+", LocatorError::BadHint("+".into())),
            ("acbd18db4cc2f85cedef654fccc4a4d8+3+a", LocatorError::BadHint("+a".into())),
            ("acbd18db4cc2f85cedef654fccc4a4d8+3+Ax@y", LocatorError::BadSignature("+Ax@y".into())),
        ];
        for (s, want) in bad {
            assert_eq!(Locator::parse(s), Err(want), "{s:?}");
        }
        assert_eq!(Locator::parse("acbd18db4cc2f85cedef654fccc4a4d8+67108864").unwrap().size(), MAX_BLOCK_SIZE);
        // Leading zeros are read (as the SDKs do) and written canonically.
        let padded = Locator::parse("acbd18db4cc2f85cedef654fccc4a4d8+03").unwrap();
        assert_eq!(padded.to_string(), "acbd18db4cc2f85cedef654fccc4a4d8+3");
    }

    #[test]
    fn stripped_identity_ignores_hints() {
        let a = Locator::parse("acbd18db4cc2f85cedef654fccc4a4d8+3+Kfoo").unwrap();
        let b = Locator::parse("acbd18db4cc2f85cedef654fccc4a4d8+3").unwrap();
        assert_ne!(a, b);
        assert!(a.stripped_eq(&b));
        assert!(a.matches(b"foo"));
        assert!(!a.matches(b"fop"));
        assert!(!a.matches(b"fooo"));
    }
}
