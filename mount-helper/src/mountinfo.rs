//! The kernel's mount table (`/proc/self/mountinfo`), read in one place for the helper, cafsd and the tests.
//!
//! The helper acts on mounts by their identity, not their path: a mount point can be renamed away from under
//! a path and the path made to lead somewhere else between two system calls. So it learns which mount an fd is
//! on ([`mount_id_of`], from the fd's `fdinfo`, which the kernel answers without asking the filesystem — a FUSE
//! mount answers nobody but its owner, not even root), and looks that id up here ([`find`]) for the mount's
//! type, device, options and where it is mounted.
//!
//! Mount points are written with space, tab, newline and backslash as octal escapes (`\040`); [`MountEntry`]
//! holds them unescaped, so a mount point with any of those bytes compares equal to its path.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id (unique among the mounts that exist now; reused after an unmount).
    pub id: u64,
    /// The superblock's device (`major:minor`): for FUSE, an anonymous device that lives as long as the
    /// connection's superblock.
    pub dev: (u32, u32),
    /// Where it is mounted, unescaped.
    pub mount_point: PathBuf,
    /// The filesystem type (`fuse.cafs`).
    pub fstype: String,
    /// The superblock's options (`user_id=1000,group_id=1000,...`).
    pub super_options: String,
}

impl MountEntry {
    /// The value of `key=` in the superblock options.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options.split(',').find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// The uid a FUSE mount belongs to (`user_id=`).
    pub fn fuse_owner(&self) -> Option<u32> {
        self.super_option("user_id")?.parse().ok()
    }
}

/// Parses one line; `None` for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let _parent = l.next()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let _root = l.next()?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(l.next()?)));
    let mut r = right.split(' ');
    let fstype = r.next()?.to_string();
    let _source = r.next()?;
    let super_options = r.next()?.to_string();
    Some(MountEntry { id, dev, mount_point, fstype, super_options })
}

/// Every mount this process sees.
pub fn all() -> std::io::Result<Vec<MountEntry>> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?.lines().filter_map(parse_line).collect())
}

/// The mount whose id is `id`, if it exists.
pub fn find(id: u64) -> std::io::Result<Option<MountEntry>> {
    Ok(all()?.into_iter().find(|m| m.id == id))
}

/// Whether some mount's mount point is `dir` (compared as given: pass a canonical path).
pub fn is_mount_point(dir: &Path) -> bool {
    all().is_ok_and(|ms| ms.iter().any(|m| m.mount_point == dir))
}

/// The id of the mount that `fd` is on (`mnt_id:` in its fdinfo). For an fd on a mount's root, that mount.
pub fn mount_id_of(fd: impl AsFd) -> std::io::Result<u64> {
    let raw = fd.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:")?.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no mnt_id in the fdinfo of fd {raw}")))
}

/// Undoes the kernel's octal escapes (`\040` for a space); anything else is kept as it is.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                // Three octal digits may exceed a byte (\777); the kernel never writes those, so keep them as text.
                match u8::try_from(u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0')) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&b[i..i + 4]),
                }
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_escaped_bytes_in_its_mount_point() {
        let line = r"123 45 0:67 / /tmp/a\040b\011c\134d\012e rw,nosuid,nodev,relatime shared:1 - fuse.cafs cafs rw,user_id=1000,group_id=1000,default_permissions";
        let m = parse_line(line).unwrap();
        assert_eq!(m.id, 123);
        assert_eq!(m.dev, (0, 67));
        assert_eq!(m.mount_point, Path::new("/tmp/a b\tc\\d\ne"));
        assert_eq!(m.fstype, "fuse.cafs");
        assert_eq!(m.fuse_owner(), Some(1000));
        assert_eq!(m.super_option("group_id"), Some("1000"));
        assert_eq!(m.super_option("default_permissions"), None);
    }

    #[test]
    fn odd_lines_are_skipped_not_misread() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("1 2 0:3 / /x rw"), None);
        assert_eq!(parse_line("x 2 0:3 / /x rw - tmpfs tmpfs rw"), None);
        // An escape that does not fit a byte, and a lone backslash at the end, stay as they are.
        assert_eq!(unescape(r"a\777b\"), b"a\\777b\\".to_vec());
        assert_eq!(unescape(r"\04"), b"\\04".to_vec());
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let root = std::fs::File::open("/").unwrap();
        let id = mount_id_of(&root).unwrap();
        let m = find(id).unwrap().expect("the root's mount is listed");
        assert_eq!(m.mount_point, Path::new("/"));
        assert!(is_mount_point(Path::new("/")));
    }
}
