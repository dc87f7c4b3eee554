//! Extended attributes: which names a tree stores, which cafs computes, and the limits.
//!
//! Names in the `user.` namespace are stored with the entry (journaled, and saved in the sidecar with each
//! commit): `user.prop.<key>` are properties, `user.tag.<tag>` tags (their value is usually empty), any other
//! `user.*` a plain attribute. `user.cafs.*` are cafs's own, computed on reading (the collection's hash, a
//! file's blocks, the state) and cannot be set. Other namespaces (`trusted.`, `security.`, `system.`) are not
//! supported: a read finds nothing (`ENODATA`), a write is refused (`EOPNOTSUPP`), since cafs could not
//! enforce what they mean.

use std::collections::BTreeMap;

use super::FsError;

/// An entry's stored attributes, by name.
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// The computed attributes' prefix.
pub const CAFS_PREFIX: &[u8] = b"user.cafs.";
/// Longest name (Linux's `XATTR_NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Largest value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 64 << 10;
/// Most bytes of names and values one entry may hold: attributes are metadata, kept in memory and in every
/// commit's sidecar, not a second data stream.
pub const MAX_PER_ENTRY: usize = 256 << 10;

/// What a set does when the name exists or not (`XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Any,
    Create,
    Replace,
}

impl SetMode {
    /// From `setxattr(2)`'s flags; anything else is invalid.
    pub fn from_flags(flags: i32) -> Result<Self, FsError> {
        match flags {
            0 => Ok(Self::Any),
            libc::XATTR_CREATE => Ok(Self::Create),
            libc::XATTR_REPLACE => Ok(Self::Replace),
            _ => Err(FsError::Invalid("unknown setxattr flags")),
        }
    }
}

/// The kinds of attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `user.cafs.*`: computed, read-only.
    Cafs,
    /// Any other `user.*`: stored.
    User,
    /// Another namespace: not supported.
    Other,
}

pub fn classify(name: &[u8]) -> Class {
    if name.starts_with(CAFS_PREFIX) {
        Class::Cafs
    } else if name.starts_with(b"user.") && name.len() > b"user.".len() {
        Class::User
    } else {
        Class::Other
    }
}

/// Checks a set of `name` = `value` into `attrs` as `mode` asks, and makes it.
pub fn set(attrs: &mut Xattrs, name: &[u8], value: &[u8], mode: SetMode) -> Result<(), FsError> {
    writable_name(name)?;
    if value.len() > MAX_VALUE {
        return Err(FsError::TooBig);
    }
    let exists = attrs.contains_key(name);
    match mode {
        SetMode::Create if exists => return Err(FsError::Exists),
        SetMode::Replace if !exists => return Err(FsError::NoAttr),
        _ => {}
    }
    let held: usize = attrs.iter().filter(|(n, _)| &n[..] != name).map(|(n, v)| n.len() + v.len()).sum();
    if held + name.len() + value.len() > MAX_PER_ENTRY {
        return Err(FsError::NoSpace(format!("an entry's attributes may hold at most {MAX_PER_ENTRY} bytes")));
    }
    attrs.insert(name.into(), value.into());
    Ok(())
}

/// Sets (`Some`) or removes (`None`) `name` in an entry's attributes, kept as `None` when there are none.
pub fn change(slot: &mut Option<Box<Xattrs>>, name: &[u8], value: Option<&[u8]>, mode: SetMode) -> Result<(), FsError> {
    let attrs = slot.get_or_insert_default();
    let r = match value {
        Some(v) => set(attrs, name, v, mode),
        None => writable_name(name).and_then(|()| attrs.remove(name).map(drop).ok_or(FsError::NoAttr)),
    };
    if attrs.is_empty() {
        *slot = None;
    }
    r
}

/// Checks that `name` may be set or removed.
pub fn writable_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > MAX_NAME {
        return Err(FsError::AttrNameTooLong);
    }
    match classify(name) {
        Class::User => Ok(()),
        Class::Cafs => Err(FsError::NotPermitted("user.cafs.* attributes are computed by cafs")),
        Class::Other => Err(FsError::NotSupported("only user.* attributes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_and_limits_hold() {
        assert_eq!(classify(b"user.cafs.hash"), Class::Cafs);
        assert_eq!(classify(b"user.prop.sample"), Class::User);
        assert_eq!(classify(b"user.x"), Class::User);
        for other in [&b"user."[..], b"trusted.x", b"security.capability", b"system.posix_acl_access", b"x"] {
            assert_eq!(classify(other), Class::Other, "{}", String::from_utf8_lossy(other));
        }
        let mut a = Xattrs::new();
        set(&mut a, b"user.prop.k", b"v", SetMode::Any).unwrap();
        assert!(matches!(set(&mut a, b"user.prop.k", b"w", SetMode::Create), Err(FsError::Exists)));
        assert!(matches!(set(&mut a, b"user.none", b"w", SetMode::Replace), Err(FsError::NoAttr)));
        set(&mut a, b"user.prop.k", b"w", SetMode::Replace).unwrap();
        assert_eq!(&a[&b"user.prop.k"[..]][..], b"w");
        assert!(matches!(set(&mut a, b"user.big", &vec![0; MAX_VALUE + 1], SetMode::Any), Err(FsError::TooBig)));
        let long = [b'u'; MAX_NAME + 1];
        assert!(matches!(set(&mut a, &long, b"", SetMode::Any), Err(FsError::AttrNameTooLong)));
        assert!(matches!(set(&mut a, b"user.cafs.hash", b"", SetMode::Any), Err(FsError::NotPermitted(_))));
        assert!(matches!(set(&mut a, b"trusted.x", b"", SetMode::Any), Err(FsError::NotSupported(_))));
        for i in 0..(MAX_PER_ENTRY / MAX_VALUE) - 1 {
            set(&mut a, format!("user.fill{i}").as_bytes(), &vec![1; MAX_VALUE], SetMode::Any).unwrap();
        }
        let before = a.clone();
        assert!(matches!(set(&mut a, b"user.more", &vec![1; MAX_VALUE], SetMode::Any), Err(FsError::NoSpace(_))));
        assert_eq!(a, before, "a refused set changes nothing");
    }
}
