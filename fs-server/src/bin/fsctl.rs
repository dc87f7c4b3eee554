//! fsctl: the command-line client of cafsd's gRPC API.
//!
//! The verbs and their arguments are the ones DESIGN.md fixes. The API they call is served by cafsd from
//! issue 4 on; until then every verb says so and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "fsctl", version, about = "Control a running cafsd")]
struct Args {
    /// cafsd's gRPC socket (or a remote address)
    #[arg(long, global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount a collection (a ref name: writable; a PDH: read-only) at DIR
    Mount {
        source: String,
        dir: PathBuf,
        #[arg(long)]
        ro: bool,
        #[arg(long)]
        autocommit: Option<u32>,
    },
    /// Unmount DIR (committing a changed tree first)
    Umount { dir: PathBuf },
    /// Commit the tree at DIR and print its PDH
    Commit {
        dir: PathBuf,
        #[arg(short, long)]
        m: Option<String>,
    },
    /// Push buffered data at DIR to the block store
    Flush {
        dir: PathBuf,
        #[arg(long)]
        wait: bool,
    },
    /// Status of a mount, or of the server and all mounts
    Status {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List mounts
    Ls,
    /// History of a ref
    Log { r#ref: String },
    /// Mount a fresh writable collection, run CMD in it, commit on success, print the PDH
    Run {
        #[arg(long)]
        r#ref: Option<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let verb = format!("{:?}", args.command);
    let verb = verb.split([' ', '{']).next().unwrap_or("").to_lowercase();
    eprintln!("fsctl {verb}: cafsd's gRPC API is not available yet (it arrives with issue 4)");
    ExitCode::FAILURE
}
