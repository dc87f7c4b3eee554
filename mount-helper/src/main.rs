//! cafs-mount: the only privileged part of cafs. It validates a mount request, opens `/dev/fuse`, mounts, and
//! hands the fd to cafsd over a Unix socket (`SCM_RIGHTS`). Small and synchronous by design (no async runtime).
//!
//! One-shot: `cafs-mount MOUNTPOINT (--ref NAME | --pdh PDH | --namespace)`, run as root (by an operator, a unit or sudo); the
//! mount belongs to the directory's owner. Daemon: `cafs-mount serve`, on a socket any local user may connect
//! to (systemd socket activation or `--listen`); each request is made for the uid the kernel reports for the
//! connection, so a user mounts on and unmounts only what is theirs.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cafs_mount::cli::{self, CommonArgs};
use cafs_mount::helper::{self, Config};
use cafs_mount::limits::{Limits, raise_fd_limit};
use cafs_mount::target::Policy;
use cafs_mount::wire::{self, MountRequest, Origin};
use clap::{Args, CommandFactory, Parser, Subcommand};

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
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// cafsd's gRPC socket; mounts go to the fd socket beside it (cafsd.sock → cafsd.fd.sock)
    #[arg(long, default_value = wire::CAFSD_SOCKET)]
    server: PathBuf,
    /// Mount points must lie below one of these (repeatable) [default: /home /mnt /scratch /tmp /var/tmp]
    #[arg(long = "allow-root", value_name = "DIR")]
    allow_roots: Vec<PathBuf>,
    /// Root may ask for mounts every user can enter (allow_other), such as a node's namespace mount
    #[arg(long)]
    allow_other: bool,
}

#[derive(Subcommand, Debug)]
enum Serve {
    /// Run as a daemon on a Unix socket (or the one systemd passes, socket activation)
    Serve {
        /// Socket to listen on when systemd passes none (its directory must be root's alone)
        #[arg(long, default_value = "/run/cafs-mount/mount.sock")]
        listen: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Debug)]
struct Once {
    /// Where to mount (an existing directory, below an allowed root)
    mountpoint: PathBuf,
    /// A named ref (writable)
    #[arg(long = "ref", id = "ref_name", conflicts_with_all = ["pdh", "namespace"])]
    #[arg(required_unless_present_any = ["pdh", "namespace"])]
    ref_name: Option<String>,
    /// A portable data hash (read-only)
    #[arg(long, conflicts_with = "namespace")]
    pdh: Option<String>,
    /// The whole catalog: by_ref/NAME, by_pdh/HASH and history/NAME/N-HASH
    #[arg(long)]
    namespace: bool,
    /// Read-only (always so for --pdh)
    #[arg(long)]
    ro: bool,
    // (Not a flattened `Common`: clap cannot tell an optional flattened group is present through a nested one.)
    /// cafsd's gRPC socket; mounts go to the fd socket beside it (cafsd.sock → cafsd.fd.sock)
    #[arg(long, default_value = wire::CAFSD_SOCKET)]
    server: PathBuf,
    /// Mount points must lie below one of these (repeatable) [default: /home /mnt /scratch /tmp /var/tmp]
    #[arg(long = "allow-root", value_name = "DIR")]
    allow_roots: Vec<PathBuf>,
    /// Every user may enter the mount, not only its owner (root only)
    #[arg(long)]
    allow_other: bool,
}

fn config(c: Common) -> Config {
    let allowed_roots = if c.allow_roots.is_empty() {
        DEFAULT_ALLOWED_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        c.allow_roots
    };
    Config { policy: Policy { allowed_roots }, allow_other: c.allow_other, cafsd: c.server }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = cli.common.generate_man(Cli::command()) {
        return code;
    }
    cli::init_logging(&cli.common, "info");
    let result = if !nix::unistd::geteuid().is_root() {
        Err("must run as root (it calls mount(2)); cafsd itself runs unprivileged".to_string())
    } else {
        match (cli.serve, cli.once) {
            (Some(Serve::Serve { listen, common }), _) => serve(listen, config(common)),
            (None, Some(o)) => once(o),
            (None, None) => Err("nothing to do: see --help".to_string()),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cafs-mount: {message}");
            ExitCode::FAILURE
        }
    }
}

fn once(o: Once) -> Result<(), String> {
    let origin = match (o.ref_name, o.pdh, o.namespace) {
        (Some(r), None, false) => Origin::Ref(r),
        (None, Some(p), false) => Origin::Pdh(p),
        (None, None, true) => Origin::Namespace,
        _ => return Err("give one of --ref NAME, --pdh PDH or --namespace".into()),
    };
    let req = MountRequest { mountpoint: o.mountpoint, origin, read_only: o.ro, allow_other: o.allow_other };
    // One-shot, run by root itself: asking is enough.
    let common = Common { server: o.server, allow_roots: o.allow_roots, allow_other: o.allow_other };
    // One-shot: nothing stays behind to hold the fd, so the mount lives and dies with cafsd's session.
    helper::mount_for(nix::unistd::getuid().as_raw(), &req, &config(common), None).map_err(|e| e.to_string())
}

fn serve(listen: PathBuf, cfg: Config) -> Result<(), String> {
    let listener = match activated_listener() {
        Some(l) => l,
        None => {
            if let Some(dir) = listen.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            match std::fs::remove_file(&listen) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", listen.display())),
                _ => {}
            }
            let l = UnixListener::bind(&listen).map_err(|e| format!("{}: {e}", listen.display()))?;
            // Any local user may ask; what each may do is decided by the uid the kernel reports.
            std::fs::set_permissions(&listen, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("{}: {e}", listen.display()))?;
            tracing::info!(socket = %listen.display(), "listening");
            l
        }
    };
    let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(PathBuf::from));
    if let Some(dir) = path.as_deref().and_then(std::path::Path::parent) {
        root_only(dir)?;
    }
    let limits = Limits::from_fd_limit(raise_fd_limit());
    tracing::info!(connections = limits.total, per_uid = limits.per_uid, "serving");
    helper::serve(listener, Arc::new(cfg), limits);
    Ok(())
}

/// The socket's directory and every one above it must be root's alone (owned by root, writable by nobody
/// else unless sticky, as /tmp is): whoever can write there can put their own socket in the helper's place,
/// and every client would then hand its requests to them.
fn root_only(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for d in dir.ancestors() {
        let m = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if m.uid() != 0 || others_write || !m.is_dir() {
            return Err(format!(
                "{}: the helper's socket must be in directories only root can change ({} is uid {}, mode {:o})",
                dir.display(),
                d.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The listening socket systemd passed (socket activation: one fd, for this process).
fn activated_listener() -> Option<UnixListener> {
    let mut fds = cafs_mount::activation::listened_fds();
    if fds.len() != 1 {
        return None;
    }
    tracing::info!("socket-activated");
    fds.pop().map(|(_, fd)| UnixListener::from(fd))
}
