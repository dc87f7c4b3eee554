//! Who may use a ref: its owner uid, its group gid and a mode of read and write bits for the owner, the group
//! and everyone else, as for a file (`0o640`: the owner reads and writes, the group reads, others nothing).
//!
//! The classes are exclusive, as in POSIX: the owner gets the owner's bits only, a member of the group the
//! group's bits only, everyone else the others' bits. A [`Principal`] marked privileged (root, or an operator
//! the configuration names) passes every check. Read is what a read-only mount, the history and the namespace
//! views need; write is what a writable mount and a commit need.
//!
//! The record lives in the catalog with the ref, so every node sharing a catalog decides alike; the decision
//! itself is [`RefAccess::allows`], here, used by every backend and by cafsd.

use std::fmt;

/// The read and write bits a mode may hold; execute bits mean nothing for a ref.
pub const MODE_BITS: u32 = 0o666;

/// What a new ref gets when nothing else says: the owner reads and writes, everyone reads.
pub const DEFAULT_MODE: u32 = 0o644;

/// A use of a ref that needs a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

impl Need {
    fn bit(self) -> u32 {
        match self {
            Need::Read => 0o4,
            Need::Write => 0o2,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Read => "read",
            Need::Write => "write",
        })
    }
}

/// A ref's owner, group and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefAccess {
    pub owner: u32,
    pub gid: u32,
    /// Only [`MODE_BITS`].
    pub mode: u32,
}

impl RefAccess {
    /// What a catalog's refs get when a catalog made before refs had owners is opened (unless the
    /// configuration names another owner): root's, readable by everyone, as every ref was before.
    pub const LEGACY: RefAccess = RefAccess { owner: 0, gid: 0, mode: DEFAULT_MODE };

    /// Whether `who` may use the ref as `need` says.
    pub fn allows(&self, who: &Principal, need: Need) -> bool {
        if who.privileged {
            return true;
        }
        let shift = if who.uid == self.owner {
            6
        } else if who.groups.contains(&self.gid) {
            3
        } else {
            0
        };
        self.mode >> shift & need.bit() != 0
    }

    /// The record after `change`, if `by` may make it: the owner may change the mode; only a privileged
    /// principal may give the ref away or change its group (a user could otherwise hand a ref to a group it
    /// is not in, or pass its rights to someone who did not ask).
    pub fn changed(&self, name: &str, change: &AccessChange, by: &Principal) -> Result<RefAccess, AccessDenied> {
        let denied = |what: &'static str| AccessDenied { name: name.to_string(), uid: by.uid, what, access: *self };
        if let Some(mode) = change.mode {
            check_mode(mode).map_err(|_| denied("set an invalid mode on"))?;
            if !by.privileged && by.uid != self.owner {
                return Err(denied("chmod"));
            }
        }
        if (change.owner.is_some_and(|o| o != self.owner) || change.gid.is_some_and(|g| g != self.gid))
            && !by.privileged
        {
            return Err(denied("chown"));
        }
        Ok(RefAccess {
            owner: change.owner.unwrap_or(self.owner),
            gid: change.gid.unwrap_or(self.gid),
            mode: change.mode.unwrap_or(self.mode),
        })
    }
}

impl fmt::Display for RefAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "owner {}, group {}, mode {:04o}", self.owner, self.gid, self.mode)
    }
}

/// Refuses a mode with bits other than [`MODE_BITS`].
pub fn check_mode(mode: u32) -> Result<(), String> {
    if mode & !MODE_BITS != 0 {
        return Err(format!("mode {mode:04o}: only read and write bits (0666) mean something for a ref"));
    }
    Ok(())
}

/// A chown and/or chmod of a ref: what is `None` stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessChange {
    pub owner: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// Someone asking for a ref: a uid, every group it is in, and whether it passes every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uid: u32,
    /// The primary group and the supplementary groups.
    pub groups: Vec<u32>,
    /// Root, or an operator the configuration names.
    pub privileged: bool,
}

impl Principal {
    /// Root.
    pub fn root() -> Self {
        Self { uid: 0, groups: vec![0], privileged: true }
    }
}

/// A commit's author as the catalog checks it: who must be allowed to write the ref, and what a ref the commit
/// creates records as its owner, group and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub principal: Principal,
    pub new_ref: RefAccess,
}

/// A refused use or change of a ref.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uid {uid} may not {what} ref {name:?} ({access})")]
pub struct AccessDenied {
    pub name: String,
    pub uid: u32,
    pub what: &'static str,
    pub access: RefAccess,
}

/// Checks that `who` may use the ref `name`, whose record is `access`, as `need` says.
pub fn check(name: &str, access: &RefAccess, who: &Principal, need: Need) -> Result<(), AccessDenied> {
    if access.allows(who, need) {
        return Ok(());
    }
    let what = match need {
        Need::Read => "read",
        Need::Write => "write",
    };
    Err(AccessDenied { name: name.to_string(), uid: who.uid, what, access: *access })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, groups: &[u32]) -> Principal {
        Principal { uid, groups: groups.to_vec(), privileged: false }
    }

    #[test]
    fn the_owner_the_group_and_others_get_their_own_bits() {
        let a = RefAccess { owner: 1000, gid: 50, mode: 0o640 };
        let (owner, member, other) = (user(1000, &[1000]), user(1001, &[1001, 50]), user(1002, &[1002]));
        assert!(a.allows(&owner, Need::Read) && a.allows(&owner, Need::Write));
        assert!(a.allows(&member, Need::Read) && !a.allows(&member, Need::Write));
        assert!(!a.allows(&other, Need::Read) && !a.allows(&other, Need::Write));
        // Exclusive classes: an owner whose bits are off is refused even where the group's are on.
        let b = RefAccess { owner: 1000, gid: 1000, mode: 0o066 };
        assert!(!b.allows(&owner, Need::Read) && !b.allows(&owner, Need::Write));
        assert!(b.allows(&other, Need::Write));
        let c = RefAccess { mode: 0o606, ..a };
        assert!(!c.allows(&member, Need::Read), "a member gets the group's bits, not the others'");
    }

    #[test]
    fn root_and_operators_pass_every_check() {
        let a = RefAccess { owner: 1000, gid: 1000, mode: 0 };
        assert!(a.allows(&Principal::root(), Need::Write));
        let operator = Principal { uid: 1005, groups: vec![1005], privileged: true };
        assert!(a.allows(&operator, Need::Read) && a.allows(&operator, Need::Write));
        assert!(!a.allows(&user(1000, &[1000]), Need::Read));
    }

    #[test]
    fn refusals_name_the_ref_the_uid_and_the_record() {
        let a = RefAccess { owner: 1000, gid: 1000, mode: 0o600 };
        let e = check("results", &a, &user(1001, &[1001]), Need::Read).unwrap_err();
        assert_eq!(e.to_string(), "uid 1001 may not read ref \"results\" (owner 1000, group 1000, mode 0600)");
        assert!(check("results", &a, &user(1000, &[]), Need::Write).is_ok());
    }

    #[test]
    fn the_owner_may_chmod_only_the_privileged_may_chown() {
        let a = RefAccess { owner: 1000, gid: 1000, mode: 0o644 };
        let chmod = AccessChange { mode: Some(0o666), ..Default::default() };
        let chown = AccessChange { owner: Some(1001), ..Default::default() };
        let chgrp = AccessChange { gid: Some(50), ..Default::default() };
        let (owner, other) = (user(1000, &[1000]), user(1001, &[1001]));
        assert_eq!(a.changed("r", &chmod, &owner).unwrap().mode, 0o666);
        assert_eq!(a.changed("r", &chmod, &other).unwrap_err().what, "chmod");
        assert_eq!(a.changed("r", &chown, &owner).unwrap_err().what, "chown");
        assert_eq!(a.changed("r", &chgrp, &owner).unwrap_err().what, "chown");
        assert_eq!(a.changed("r", &chown, &Principal::root()).unwrap().owner, 1001);
        // Naming what is there already changes nothing and needs nothing.
        let same = AccessChange { owner: Some(1000), gid: Some(1000), mode: None };
        assert_eq!(a.changed("r", &same, &owner).unwrap(), a);
        let bad = AccessChange { mode: Some(0o755), ..Default::default() };
        assert!(a.changed("r", &bad, &Principal::root()).is_err());
        assert!(check_mode(0o666).is_ok() && check_mode(0o1644).is_err());
    }
}
