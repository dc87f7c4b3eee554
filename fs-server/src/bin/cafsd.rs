//! cafsd: the unprivileged, long-running cafs server.
//!
//! It owns the state directory (block store + catalog on the embedded default). It opens and checks both,
//! reports what they hold, and runs until SIGTERM or SIGINT. FUSE mounts (issue 3) and the gRPC API (issue 4)
//! are served from here as they land.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cafs::catalog::{Catalog, SqliteCatalog};
use cafs::store::LocalDirStore;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "cafsd", version, about = "The cafs filesystem server")]
struct Args {
    /// Configuration file (TOML). Not supported yet: the embedded default is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory: blocks/ and catalog.sqlite live here [default: $XDG_DATA_HOME/cafs or /var/lib/cafs]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// gRPC socket [default: $XDG_RUNTIME_DIR/cafs/cafsd.sock or /run/cafs/cafsd.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Open and check the state directory, print a summary, and exit.
    #[arg(long)]
    check: bool,
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("cafs"),
        _ => PathBuf::from("/var/lib/cafs"),
    }
}

fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("cafs/cafsd.sock"),
        _ => PathBuf::from("/run/cafs/cafsd.sock"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cafsd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(config) = &args.config {
        bail!("--config {}: configuration files are not supported yet; run without it", config.display());
    }
    let state = args.state_dir.unwrap_or_else(default_state_dir);
    let socket = args.socket.unwrap_or_else(default_socket);
    // Opening creates directories, fsyncs and may wait on SQLite's lock: keep it off the async workers.
    let (store, catalog) = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let store = LocalDirStore::open(state.join("blocks"))
                .with_context(|| format!("block store in {}", state.display()))?;
            let catalog = SqliteCatalog::open(state.join("catalog.sqlite")).context("catalog")?;
            Ok((store, catalog))
        })
        .await??
    };
    let refs = catalog.list_refs().await.context("reading the catalog")?;
    tracing::info!(
        state_dir = %state.display(),
        blocks = %store.root().display(),
        catalog = %catalog.path().display(),
        refs = refs.len(),
        "state directory ready"
    );
    for r in &refs {
        tracing::info!(r#ref = %r.name, version = r.version, pdh = %r.pdh, "ref");
    }
    if args.check {
        println!("state directory {} ok: {} refs", state.display(), refs.len());
        return Ok(());
    }
    tracing::info!(socket = %socket.display(), "the gRPC API is not served yet (issue 4); waiting for SIGTERM");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting"),
    }
    Ok(())
}
