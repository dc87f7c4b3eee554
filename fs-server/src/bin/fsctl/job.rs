//! `fsctl run`: the job wrapper.
//!
//! Exit codes follow `env`, `nice` and `timeout`: the command's own code when it ran, 125 when fsctl itself
//! failed (cafsd unreachable, the mount or the commit refused), 126 when the command was found but could not be
//! run, 127 when it was not found. A job scheduler can so tell a failed job from a failed wrapper.

use std::os::unix::process::ExitStatusExt;

use super::*;

/// fsctl itself failed.
pub const WRAPPER_FAILED: u8 = 125;
/// The command exists but could not be executed.
const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
const NOT_FOUND: u8 = 127;

/// What `fsctl run` was asked.
pub struct Job {
    pub ref_name: Option<String>,
    pub dir: Option<PathBuf>,
    pub pdh_file: Option<PathBuf>,
    pub cmd: Vec<String>,
}

/// Any failure of fsctl's own, as [`WRAPPER_FAILED`].
fn wrapper(error: anyhow::Error) -> Failure {
    Failure { code: WRAPPER_FAILED, error }
}

pub async fn run(mut c: Client, job: Job) -> Result<u8, Failure> {
    let Job { ref_name, dir, pdh_file, cmd } = job;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ref_name = ref_name.unwrap_or_else(|| format!("job-{}-{}", now.as_secs(), std::process::id()));
    match c.log(pb::LogRequest { ref_name: ref_name.clone() }).await {
        Ok(_) => {
            return Err(wrapper(anyhow!(
                "ref {ref_name} exists already; fsctl run makes a fresh collection: pick a new name"
            )));
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(wrapper(s.into())),
    }
    let (dir, made) = match dir {
        Some(d) => {
            let made = !d.exists();
            std::fs::create_dir_all(&d).with_context(|| format!("{}", d.display())).map_err(wrapper)?;
            (d, made)
        }
        None => {
            let d = std::env::temp_dir().join(format!("cafs-run-{}-{}", now.as_nanos(), std::process::id()));
            std::fs::create_dir(&d).with_context(|| format!("{}", d.display())).map_err(wrapper)?;
            (d, true)
        }
    };
    let forget_dir = || {
        if made {
            let _ = std::fs::remove_dir(&dir);
        }
    };
    let mount_point = match absolute(&dir) {
        Ok(m) => m,
        Err(e) => {
            forget_dir();
            return Err(wrapper(e));
        }
    };
    let req = pb::MountRequest {
        mount_point: mount_point.clone(),
        source: Some(Source::RefName(ref_name.clone())),
        read_only: false,
        autocommit_secs: None,
        allow_other: false,
    };
    if let Err(e) = c.mount(req).await {
        forget_dir();
        return Err(wrapper(e.into()));
    }
    let shown = cmd.join(" ");
    let code = match run_child(&dir, &cmd).await {
        Ok(code) => code,
        Err(e) => {
            let _ = c.unmount(pb::UnmountRequest { mount_point: mount_point.clone(), discard: true }).await;
            forget_dir();
            let (code, e) = match e {
                ChildError::Start(e) if e.kind() == std::io::ErrorKind::NotFound => (NOT_FOUND, e),
                ChildError::Start(e) => (NOT_EXECUTABLE, e),
                ChildError::Wait(e) => (WRAPPER_FAILED, e),
            };
            return Err(Failure {
                code,
                error: anyhow::Error::new(e).context(format!("cannot run {shown:?}; nothing is committed")),
            });
        }
    };
    let finished = match code {
        0 => finish(&mut c, &mount_point, None, &format!("fsctl run: {shown}")).await,
        n => {
            let failed = format!("{ref_name}.failed");
            eprintln!("fsctl run: {shown:?} exited with {n}; keeping its partial output as ref {failed}");
            finish(&mut c, &mount_point, Some(&failed), &format!("fsctl run: {shown} (failed: exit {n})")).await
        }
    };
    let pdh = finished.map_err(wrapper)?;
    forget_dir();
    if code != 0 {
        eprintln!("fsctl run: partial output: {pdh}");
        return Ok(code);
    }
    match pdh_file {
        // Written whole or not at all: a reader never sees half a hash.
        Some(f) => write_atomically(&f, format!("{pdh}\n").as_bytes())
            .with_context(|| format!("committed {pdh}, but cannot write it to {}", f.display()))
            .map_err(wrapper)?,
        None => println!("{pdh}"),
    }
    Ok(0)
}

/// `bytes` as the file `path`, through a new file beside it renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `message` cut to what cafsd accepts (a command line may be longer than a commit message may be).
fn fitted(message: &str) -> String {
    const MORE: &str = " ...";
    if message.len() <= cafs::vfs::control::MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = cafs::vfs::control::MAX_MESSAGE - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &message[..end])
}

/// Commits (into `into`, when given) and unmounts; on failure the mount is left in place with its data, and
/// the error says so.
async fn finish(c: &mut Client, mount_point: &str, into: Option<&str>, message: &str) -> anyhow::Result<String> {
    let req = pb::CommitRequest {
        mount_point: mount_point.to_string(),
        message: fitted(message),
        into_ref: into.unwrap_or_default().to_string(),
    };
    let pdh = match c.commit(req).await {
        Ok(r) => r.into_inner().pdh,
        Err(s) => bail!("commit failed: {}; the output stays mounted at {mount_point}", s.message()),
    };
    // A failed job's tree went to its .failed ref: its own ref must not get it on unmount.
    let discard = into.is_some();
    if let Err(s) = c.unmount(pb::UnmountRequest { mount_point: mount_point.to_string(), discard }).await {
        bail!("committed {pdh}, but unmounting {mount_point} failed: {}", s.message());
    }
    Ok(pdh)
}

/// Why the command gave no exit code.
enum ChildError {
    /// It did not start: the exec's error, whose kind tells not found from not executable.
    Start(std::io::Error),
    /// Waiting for it or passing signals on failed.
    Wait(std::io::Error),
}

/// Runs the command in `dir`; its exit code (128 + the signal for a command killed by one). SIGINT and
/// SIGTERM sent to fsctl go to the command, which then decides how the job ends.
async fn run_child(dir: &Path, cmd: &[String]) -> Result<u8, ChildError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (
        signal(SignalKind::interrupt()).map_err(ChildError::Wait)?,
        signal(SignalKind::terminate()).map_err(ChildError::Wait)?,
    );
    let mut child =
        tokio::process::Command::new(&cmd[0]).args(&cmd[1..]).current_dir(dir).spawn().map_err(ChildError::Start)?;
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let status = loop {
        let sig = tokio::select! {
            s = child.wait() => break s.map_err(ChildError::Wait)?,
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
        };
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    };
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128 + s as u8,
        _ => 1,
    })
}
