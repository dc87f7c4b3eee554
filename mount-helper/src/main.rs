//! cafs-mount: the only privileged part of cafs. It validates a mount request, opens `/dev/fuse`, mounts, and
//! hands the fd to cafsd over a Unix socket (`SCM_RIGHTS`). Small and synchronous by design.
//!
//! The command line is the one DESIGN.md fixes; the mounting itself arrives with issue 4, and until then every
//! request is refused with exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// Where to mount
    mountpoint: PathBuf,
    /// A named ref (writable)
    #[arg(long = "ref", id = "ref_name", conflicts_with = "pdh", required_unless_present = "pdh")]
    ref_name: Option<String>,
    /// A portable data hash (read-only)
    #[arg(long)]
    pdh: Option<String>,
    #[arg(long)]
    ro: bool,
    /// cafsd's gRPC socket
    #[arg(long)]
    server: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let what = if cli.serve.is_some() { "serve" } else { "mount" };
    eprintln!("cafs-mount {what}: not available yet (the privilege split arrives with issue 4)");
    ExitCode::FAILURE
}
