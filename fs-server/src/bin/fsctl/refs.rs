//! `fsctl refs`, `fsctl ref show`, `fsctl chown` and `fsctl chmod`: refs, their owner, group and mode.

use super::*;

/// `NAME` or a number, as a uid.
fn uid_of(s: &str) -> Result<u32, Failure> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(usage(&format!("{s:?}: no such user (give a name or a uid)"))),
    }
}

/// `NAME` or a number, as a gid.
fn gid_of(s: &str) -> Result<u32, Failure> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(usage(&format!("{s:?}: no such group (give a name or a gid)"))),
    }
}

/// An octal mode of read and write bits: `644`, `0640`.
fn mode_of(s: &str) -> Result<u32, Failure> {
    let m = u32::from_str_radix(s, 8).map_err(|_| usage(&format!("{s:?}: not an octal mode such as 0640")))?;
    if m & !0o666 != 0 {
        return Err(usage(&format!("{s}: a ref's mode holds read and write bits only (at most 0666)")));
    }
    Ok(m)
}

fn name_of_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn name_of_gid(gid: u32) -> String {
    match nix::unistd::Group::from_gid(gid.into()) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// `rw-r-----`, as `ls -l` shows a file's bits (without the execute bits a ref does not have).
fn mode_text(mode: u32) -> String {
    [6, 3, 0]
        .iter()
        .map(|shift| {
            let bits = mode >> shift;
            format!("{}{}-", if bits & 4 != 0 { 'r' } else { '-' }, if bits & 2 != 0 { 'w' } else { '-' })
        })
        .collect()
}

fn to_json(r: &pb::RefInfoReply) -> serde_json::Value {
    json!({"ref": r.ref_name, "owner_uid": r.owner_uid, "owner": name_of_uid(r.owner_uid), "gid": r.gid,
           "group": name_of_gid(r.gid), "mode": format!("{:04o}", r.mode), "version": r.version, "pdh": r.pdh})
}

pub fn print(r: &pb::RefInfoReply, json: bool) {
    if json {
        println!("{}", to_json(r));
        return;
    }
    let head = if r.version == 0 { "no version yet".to_string() } else { format!("version {} {}", r.version, r.pdh) };
    println!(
        "{}\towner {} ({})\tgroup {} ({})\tmode {:04o} {}\t{}",
        r.ref_name,
        name_of_uid(r.owner_uid),
        r.owner_uid,
        name_of_gid(r.gid),
        r.gid,
        r.mode,
        mode_text(r.mode),
        head
    );
}

pub async fn list(mut c: Client, prefix: String, json: bool) -> Result<(), Failure> {
    let r = c.list_refs(pb::ListRefsRequest { prefix }).await?.into_inner();
    if json {
        let all: Vec<_> = r.refs.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for one in &r.refs {
            print(one, false);
        }
    }
    Ok(())
}

pub async fn show(mut c: Client, name: String, json: bool) -> Result<(), Failure> {
    let r = c.ref_info(pb::RefInfoRequest { ref_name: name }).await?.into_inner();
    print(&r, json);
    Ok(())
}

/// `OWNER[:GROUP]`.
pub async fn chown(mut c: Client, name: String, owner: String, json: bool) -> Result<(), Failure> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner.as_str(), None),
    };
    let req = pb::ChownRequest { ref_name: name, owner_uid: uid_of(user)?, gid: group.map(gid_of).transpose()? };
    let r = c.chown(req).await?.into_inner();
    print(&r, json);
    Ok(())
}

pub async fn chmod(mut c: Client, name: String, mode: String, json: bool) -> Result<(), Failure> {
    let r = c.chmod(pb::ChmodRequest { ref_name: name, mode: mode_of(&mode)? }).await?.into_inner();
    print(&r, json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_ids_parse_as_chmod_and_chown_take_them() {
        assert_eq!(mode_of("640").ok(), Some(0o640));
        assert_eq!(mode_of("0666").ok(), Some(0o666));
        assert!(mode_of("755").is_err() && mode_of("rw").is_err() && mode_of("8").is_err());
        assert_eq!(mode_text(0o640), "rw-r-----");
        assert_eq!(mode_text(0o604), "rw----r--");
        assert_eq!(uid_of("root").ok(), Some(0));
        assert_eq!(uid_of("1234").ok(), Some(1234));
        assert!(uid_of("no-such-user-here").is_err());
        assert_eq!(gid_of("0").ok(), Some(0));
    }
}
