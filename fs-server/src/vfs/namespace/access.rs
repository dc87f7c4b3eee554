//! Who may see and change what in a namespace mount. The vfs asks here with the uid and gid of each
//! request, so a node-wide mount (`allow_other`) answers each user by that user's rights:
//! - `by_ref/NAME`, `history/NAME` and everything below them need read permission on the ref NAME: a ref the
//!   requester may not read is left out of listings, and looking it up fails with `EACCES`;
//! - changing a writable `by_ref/NAME` view (and committing it through `.cafs/commit`) needs write permission;
//! - `by_pdh/HASH` is not a ref: a hash names bytes, and whoever knows it may read them, as in Keep.
//!
//! The kernel caches names, so the vfs gives these entries no cache time: every path walk through
//! `by_ref/NAME` asks again, and a ref's record read within [`crate::policy::RECENT`] answers it.

use super::*;
use crate::catalog::{Need, Principal, Writer};
use crate::policy::CheckError;

impl Namespace {
    /// The ref an entry of the namespace directory `dir` names (`by_ref/NAME`, `history/NAME`, or a version
    /// in `history/NAME/`), if it names one.
    pub fn ref_of(&self, dir: u64, name: &[u8]) -> Option<RefName> {
        match dir {
            BY_REF_INO | HISTORY_INO => ref_of_entry(name),
            ROOT | BY_PDH_INO => None,
            _ => self.history_ref(dir),
        }
    }

    /// The ref a namespace directory belongs to (`history/NAME`).
    pub fn ref_of_dir(&self, dir: u64) -> Option<RefName> {
        self.history_ref(dir)
    }

    /// The ref a view shows, by name (`by_ref/NAME` and `history/NAME/N-HASH`; none for a hash).
    pub fn ref_of_view(view: &View) -> Option<RefName> {
        match view.coll.origin() {
            Origin::Ref(r) | Origin::Follow(r) => Some(r.clone()),
            Origin::Pdh(_) => None,
        }
    }

    /// The requester as the policy knows it.
    pub fn principal(&self, uid: u32, gid: u32) -> Principal {
        self.opts.policy.principal(uid, gid)
    }

    /// The requester as a writer of a commit.
    pub fn writer(&self, uid: u32, gid: u32) -> Writer {
        self.opts.policy.writer(uid, gid)
    }

    /// Whether `who` may use the ref `name` as `need` says (`EACCES` if not; `EIO` if the catalog cannot say).
    pub fn check(&self, who: &Principal, name: &RefName, need: Need) -> Result<(), FsError> {
        match self.rt.block_on(self.opts.policy.check_recent(self.catalog.as_ref(), name, who, need)) {
            Ok(()) => Ok(()),
            Err(CheckError::Denied(d)) => Err(FsError::Denied(d.to_string())),
            Err(CheckError::Catalog(e)) => Err(e.into()),
        }
    }

    /// A namespace directory's entries as `who` may see them: refs it may not read are left out.
    pub fn list_for(&self, who: &Principal, dir: u64) -> Result<Vec<(Vec<u8>, Attr)>, FsError> {
        if let Some(r) = self.ref_of_dir(dir) {
            self.check(who, &r, Need::Read)?;
        }
        let all = self.list(dir)?;
        if who.privileged || !matches!(dir, BY_REF_INO | HISTORY_INO) {
            return Ok(all);
        }
        // One query for every ref's record, instead of one per entry.
        let records = self.rt.block_on(self.catalog.list_access()).map_err(FsError::from)?;
        self.opts.policy.remember_all(&records);
        let records: HashMap<RefName, crate::catalog::RefAccess> = records.into_iter().collect();
        Ok(all
            .into_iter()
            .filter(|(entry, _)| match ref_of_entry(entry) {
                // A ref with no record yet (made here, not committed) is the mount's to show.
                Some(r) => records.get(&r).is_none_or(|a| a.allows(who, Need::Read)),
                None => true,
            })
            .collect())
    }
}
