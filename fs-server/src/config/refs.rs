//! The `[refs]` section: who passes every permission check besides root, the mode new refs get, and who owns
//! the refs of a catalog made before refs had owners.
//!
//! ```toml
//! [refs]
//! operators = ["alice", 1005]     # user names or uids
//! default_mode = "0640"           # new refs; default "0644" (the owner reads and writes, everyone reads)
//! migration_owner = "results"     # refs already in the catalog when it first gets owners; default root
//! migration_group = 100           # default: the migration owner's primary group (root's: 0)
//! migration_mode = "0644"         # default "0644"
//! ```
//!
//! Names are resolved when the file is read, so a name the system does not know is an error at start, not a
//! check that silently never matches.

use serde::Deserialize;

use crate::catalog::RefAccess;
use crate::catalog::access::{DEFAULT_MODE, check_mode};

/// A user or group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(u32),
    Name(String),
}

/// A mode: an octal string (`"0640"`, `"640"`) or a TOML integer (`0o640`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Mode {
    Number(u32),
    Octal(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefsConfig {
    #[serde(default)]
    pub operators: Vec<Id>,
    #[serde(default)]
    pub default_mode: Option<Mode>,
    #[serde(default)]
    pub migration_owner: Option<Id>,
    #[serde(default)]
    pub migration_group: Option<Id>,
    #[serde(default)]
    pub migration_mode: Option<Mode>,
}

/// The `[refs]` section resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefsSettings {
    pub operators: Vec<u32>,
    pub default_mode: u32,
    /// What refs of a catalog made before refs had owners get.
    pub migration: RefAccess,
}

impl Default for RefsSettings {
    fn default() -> Self {
        Self { operators: Vec::new(), default_mode: DEFAULT_MODE, migration: RefAccess::LEGACY }
    }
}

fn mode(key: &str, m: &Option<Mode>) -> Result<u32, String> {
    let value = match m {
        None => return Ok(DEFAULT_MODE),
        Some(Mode::Number(n)) => *n,
        Some(Mode::Octal(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .map_err(|_| format!("refs.{key}: {s:?} is not an octal mode such as \"0644\""))?,
    };
    check_mode(value).map_err(|e| format!("refs.{key}: {e}"))?;
    Ok(value)
}

/// A user's uid and primary gid.
fn user(key: &str, id: &Id) -> Result<(u32, Option<u32>), String> {
    match id {
        Id::Number(uid) => {
            let gid = nix::unistd::User::from_uid((*uid).into()).ok().flatten().map(|u| u.gid.as_raw());
            Ok((*uid, gid))
        }
        Id::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok((u.uid.as_raw(), Some(u.gid.as_raw()))),
            Ok(None) => Err(format!("refs.{key}: no user named {name:?} on this system")),
            Err(e) => Err(format!("refs.{key}: looking up user {name:?}: {e}")),
        },
    }
}

fn group(key: &str, id: &Id) -> Result<u32, String> {
    match id {
        Id::Number(gid) => Ok(*gid),
        Id::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("refs.{key}: no group named {name:?} on this system")),
            Err(e) => Err(format!("refs.{key}: looking up group {name:?}: {e}")),
        },
    }
}

impl RefsConfig {
    /// Checks the section and resolves names to numbers.
    pub fn resolve(&self) -> Result<RefsSettings, String> {
        let mut operators = Vec::with_capacity(self.operators.len());
        for o in &self.operators {
            operators.push(user("operators", o)?.0);
        }
        let (owner, owner_gid) = match &self.migration_owner {
            Some(id) => user("migration_owner", id)?,
            None => (0, Some(0)),
        };
        let gid = match &self.migration_group {
            Some(id) => group("migration_group", id)?,
            None => owner_gid.ok_or_else(|| {
                format!("refs.migration_owner: uid {owner} has no account here; name a migration_group")
            })?,
        };
        Ok(RefsSettings {
            operators,
            default_mode: mode("default_mode", &self.default_mode)?,
            migration: RefAccess { owner, gid, mode: mode("migration_mode", &self.migration_mode)? },
        })
    }
}
