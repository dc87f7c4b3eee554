//! cafs-mount: the only privileged part of cafs. It validates a mount request, opens `/dev/fuse`, mounts, and
//! hands the fd to cafsd over a Unix socket (`SCM_RIGHTS`). Small and synchronous by design.
//!
//! One-shot mode (this file) mounts for the user who runs it: run as root (by an operator, a unit or sudo), the
//! mount belongs to the directory's owner. The daemon mode (`serve`) arrives with the rest of issue 4.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cafs_mount::mount::{FuseOptions, mount_fuse, unmount};
use cafs_mount::target::{Policy, check};
use cafs_mount::wire::{self, Handoff, MountRequest, Origin, Reply};
use clap::{Args, Parser, Subcommand};

/// Where mounts may be made when no configuration says otherwise.
const DEFAULT_ALLOWED_ROOTS: &[&str] = &["/home", "/mnt", "/scratch", "/tmp", "/var/tmp"];

#[derive(Parser, Debug)]
#[command(name = "cafs-mount", version, about = "Mount a cafs collection (privileged helper)")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    #[command(flatten)]
    once: Option<Once>,
}

#[derive(Subcommand, Debug)]
enum Serve {
    /// Run as a daemon on a root-owned Unix socket (or socket-activated by systemd)
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct Once {
    /// Where to mount (an existing directory, below an allowed root)
    mountpoint: PathBuf,
    /// A named ref (writable)
    #[arg(long = "ref", id = "ref_name", conflicts_with = "pdh", required_unless_present = "pdh")]
    ref_name: Option<String>,
    /// A portable data hash (read-only)
    #[arg(long)]
    pdh: Option<String>,
    /// Read-only (always so for --pdh)
    #[arg(long)]
    ro: bool,
    /// cafsd's gRPC socket; the fd goes to the socket beside it (cafsd.sock → cafsd.fd.sock)
    #[arg(long, default_value = "/run/cafs/cafsd.sock")]
    server: PathBuf,
    /// Mount points must lie below one of these (repeatable) [default: /home /mnt /scratch /tmp /var/tmp]
    #[arg(long = "allow-root", value_name = "DIR")]
    allow_roots: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.serve, cli.once) {
        (Some(Serve::Serve { .. }), _) => Err("cafs-mount serve: not available yet (issue 4)".to_string()),
        (None, Some(once)) => once_mount(once),
        (None, None) => Err("nothing to do: see --help".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cafs-mount: {message}");
            ExitCode::FAILURE
        }
    }
}

fn once_mount(o: Once) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root (it calls mount(2)); cafsd itself runs unprivileged".into());
    }
    let roots = if o.allow_roots.is_empty() {
        DEFAULT_ALLOWED_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        o.allow_roots
    };
    let uid = nix::unistd::getuid().as_raw();
    let target = check(&o.mountpoint, uid, &Policy { allowed_roots: roots }).map_err(|e| e.to_string())?;
    let origin = match (o.ref_name, o.pdh) {
        (Some(r), None) => Origin::Ref(r),
        (None, Some(p)) => Origin::Pdh(p),
        _ => return Err("give --ref NAME or --pdh PDH".into()),
    };
    let read_only = o.ro || matches!(origin, Origin::Pdh(_));
    let request = MountRequest { mountpoint: target.path.clone(), origin, read_only };
    // The mount belongs to the directory's owner: the job user, when an operator or a unit runs this as root.
    let fuse = FuseOptions { uid: target.uid, gid: target.gid, root_mode: target.mode, read_only, allow_other: false };
    let sock_path = wire::fd_socket_path(&o.server);
    let stream = std::os::unix::net::UnixStream::connect(&sock_path)
        .map_err(|e| format!("cannot reach cafsd at {}: {e}", sock_path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let dev = mount_fuse(&target.proc_path(), &fuse).map_err(|e| e.to_string())?;
    let handoff = Handoff { request, uid: target.uid, gid: target.gid };
    let answer = wire::send(&stream, &handoff, Some(std::os::fd::AsFd::as_fd(&dev)))
        .and_then(|()| wire::recv::<Reply>(&stream).map(|(r, _)| r));
    drop(dev);
    let fail = |message: String| {
        let _ = unmount(&target.path, true);
        Err(message)
    };
    match answer {
        Ok(Reply { ok: true, .. }) => {}
        Ok(Reply { message, .. }) => return fail(format!("cafsd refused the mount: {message}")),
        Err(e) => return fail(format!("handing the mount to cafsd: {e}")),
    }
    // Done once the mount answers.
    let start = Instant::now();
    loop {
        match nix::sys::statfs::statfs(&target.path) {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC => return Ok(()),
            _ if start.elapsed() > Duration::from_secs(30) => {
                return fail(format!("{} did not answer within 30 s", target.path.display()));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
