//! cafsd's side of ref permissions (the model is [`crate::catalog::access`]): who passes every check (root
//! and the operators the configuration names), which groups a uid is in, what a new ref records, and the
//! checks the API, the mounts and the namespace make against a ref's record in the catalog.
//!
//! The record is always the catalog's, so nodes sharing a catalog decide alike. Explicit requests (a mount, a
//! commit, `log`, a chmod) read it fresh; the namespace, which asks on every path walk through `by_ref/NAME`,
//! may use a record up to [`RECENT`] old, so that a listing of thousands of refs costs one query, not one each.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::access::{self, AccessDenied};
use crate::catalog::{Catalog, CatalogError, Need, Principal, RefAccess, RefName, Writer};

/// How long the namespace may use a ref's record, and a uid's groups, before reading them again.
pub const RECENT: Duration = Duration::from_secs(1);

/// How long a uid's group list is kept (groups change rarely; a login's groups are fixed at login anyway).
const GROUPS_KEPT: Duration = Duration::from_secs(30);

/// A uid's groups by (uid, reported gid), with when they were listed.
type GroupCache = HashMap<(u32, u32), (Instant, Arc<[u32]>)>;

/// The permission settings of one cafsd.
#[derive(Debug)]
pub struct Policy {
    operators: Vec<u32>,
    default_mode: u32,
    groups: Mutex<GroupCache>,
    recent: Mutex<HashMap<RefName, (Instant, Option<RefAccess>)>>,
}

impl Default for Policy {
    /// No operators, new refs `0644`.
    fn default() -> Self {
        Self::new(Vec::new(), access::DEFAULT_MODE)
    }
}

/// Why a ref may not be used: not allowed, or the catalog could not say.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl Policy {
    /// `operators` (uids) pass every check, as root does; new refs get `default_mode`.
    pub fn new(operators: Vec<u32>, default_mode: u32) -> Self {
        Self { operators, default_mode, groups: Mutex::default(), recent: Mutex::default() }
    }

    pub fn default_mode(&self) -> u32 {
        self.default_mode
    }

    pub fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || self.operators.contains(&uid)
    }

    /// The uid the kernel reported with its primary group `gid`, the groups the system lists for it, and
    /// whether it passes every check.
    pub fn principal(&self, uid: u32, gid: u32) -> Principal {
        Principal { uid, groups: self.groups_of(uid, gid).to_vec(), privileged: self.is_privileged(uid) }
    }

    /// What a ref `uid` creates records: owned by it and its primary group, with the configured mode.
    pub fn new_ref(&self, uid: u32, gid: u32) -> RefAccess {
        RefAccess { owner: uid, gid, mode: self.default_mode }
    }

    /// `uid` committing, as the catalog checks it.
    pub fn writer(&self, uid: u32, gid: u32) -> Writer {
        Writer { principal: self.principal(uid, gid), new_ref: self.new_ref(uid, gid) }
    }

    fn groups_of(&self, uid: u32, gid: u32) -> Arc<[u32]> {
        let mut cache = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, g)) = cache.get(&(uid, gid))
            && at.elapsed() < GROUPS_KEPT
        {
            return g.clone();
        }
        let g: Arc<[u32]> = system_groups(uid, gid).into();
        cache.insert((uid, gid), (Instant::now(), g.clone()));
        g
    }

    /// Checks that `who` may use `name` as `need` says, against the catalog's record as it is now. A ref
    /// that does not exist passes: writing creates it (recording the writer), and reading finds nothing.
    pub async fn check(
        &self,
        catalog: &dyn Catalog,
        name: &RefName,
        who: &Principal,
        need: Need,
    ) -> Result<Option<RefAccess>, CheckError> {
        let a = catalog.access(name).await?;
        self.remember(name, a);
        if let Some(a) = &a {
            access::check(name.as_str(), a, who, need)?;
        }
        Ok(a)
    }

    /// [`Policy::check`] on a record at most [`RECENT`] old.
    pub async fn check_recent(
        &self,
        catalog: &dyn Catalog,
        name: &RefName,
        who: &Principal,
        need: Need,
    ) -> Result<(), CheckError> {
        let known = {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.get(name).filter(|(at, _)| at.elapsed() < RECENT).map(|(_, a)| *a)
        };
        let a = match known {
            Some(a) => a,
            None => {
                let a = catalog.access(name).await?;
                self.remember(name, a);
                a
            }
        };
        if let Some(a) = &a {
            access::check(name.as_str(), a, who, need)?;
        }
        Ok(())
    }

    /// Keeps the records of a whole listing (one query for every ref) for [`Policy::check_recent`].
    pub fn remember_all(&self, all: &[(RefName, RefAccess)]) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, (at, _)| at.elapsed() < RECENT);
        for (name, a) in all {
            recent.insert(name.clone(), (now, Some(*a)));
        }
    }

    fn remember(&self, name: &RefName, a: Option<RefAccess>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, (at, _)| at.elapsed() < RECENT);
        recent.insert(name.clone(), (Instant::now(), a));
    }
}

/// `uid`'s groups as the system lists them (the primary group first), or just `gid` for a uid with no name.
fn system_groups(uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    let user = match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u,
        _ => return groups,
    };
    let Ok(name) = CString::new(user.name) else { return groups };
    match nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)) {
        Ok(list) => groups.extend(list.into_iter().map(|g| g.as_raw()).filter(|&g| g != gid)),
        Err(e) => tracing::warn!(uid, error = %e, "cannot list the groups of a uid; using its primary group only"),
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SqliteCatalog;

    #[test]
    fn root_and_operators_are_privileged_and_new_refs_get_the_default_mode() {
        let p = Policy::new(vec![1005], 0o640);
        assert!(p.principal(0, 0).privileged && p.principal(1005, 1005).privileged);
        assert!(!p.principal(1000, 1000).privileged);
        assert_eq!(p.principal(1000, 1234).groups[0], 1234, "the reported group comes first");
        assert_eq!(p.new_ref(1000, 100), RefAccess { owner: 1000, gid: 100, mode: 0o640 });
        assert_eq!(p.writer(1000, 100).principal.uid, 1000);
        // A uid without a name is in its reported group only.
        assert_eq!(system_groups(4_000_000, 77), [77]);
    }

    #[tokio::test]
    async fn checks_read_the_catalog_and_absent_refs_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cat = SqliteCatalog::open(dir.path().join("c.sqlite")).unwrap();
        let p = Policy::new(vec![], 0o600);
        let name = RefName::new("mine").unwrap();
        let (owner, other) = (p.principal(1000, 1000), p.principal(1001, 1001));
        assert_eq!(p.check(&cat, &name, &other, Need::Write).await.unwrap(), None, "absent: writing creates");
        cat.create_ref(&name, &p.new_ref(1000, 1000)).await.unwrap();
        assert!(p.check(&cat, &name, &owner, Need::Write).await.is_ok());
        let e = p.check(&cat, &name, &other, Need::Read).await.unwrap_err();
        assert!(matches!(e, CheckError::Denied(_)), "{e}");
        assert!(p.check_recent(&cat, &name, &other, Need::Read).await.is_err());
        let chmod = crate::catalog::AccessChange { mode: Some(0o644), ..Default::default() };
        cat.change_access(&name, &chmod, &owner).await.unwrap();
        // The namespace's view may lag by RECENT; an explicit check never does.
        assert!(p.check(&cat, &name, &other, Need::Read).await.is_ok());
        assert!(p.check_recent(&cat, &name, &other, Need::Read).await.is_ok(), "the fresh read is remembered");
    }
}
