//! cafsd: the unprivileged, long-running cafs server.
//!
//! It owns the state directory (block store + catalog on the embedded default). It opens and checks both,
//! reports what they hold, serves the gRPC API on its socket, serves every mount that `cafs-mount` hands over
//! on its fd socket (beside the gRPC socket: `cafsd.sock` → `cafsd.fd.sock`), and runs until SIGTERM or
//! SIGINT. Then, by default (`--on-stop keep`), it leaves every mount the helper holds to the next cafsd:
//! requests in progress finish, later ones wait in the kernel, buffers are stored and journals synced; the next
//! cafsd takes the mounts back from the helper at start. With `--on-stop unmount` (and for mounts nobody
//! holds) it commits and unmounts instead. With `--mount` (development mode, as root) it mounts one collection
//! itself.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cafs::api::Api;
use cafs::catalog::Catalog;
use cafs::catalog::RefName;
use cafs::collection::{Collection, OpenWith, Source};
use cafs::config::Config;
use cafs::daemon::mount::{MountOptions, mount_as_root, umount};
use cafs::daemon::systemd::FdStore;
use cafs::daemon::{Server, ServerError, ServerOptions, fd_socket_path};
use cafs::fs::FsOptions;
use cafs::fuse::CafsFuse;
use cafs::manifest::Pdh;
use cafs::socket::bind_unix;
use cafs::store::BlockStore;
use cafs::vfs::control::Control;
use cafs::vfs::control::start_tasks;
use cafs_mount::cli::{self, CommonArgs};
use clap::{CommandFactory, Parser};

#[derive(Parser, Debug)]
#[command(name = "cafsd", version, about = "The cafs filesystem server")]
struct Args {
    /// Configuration file (TOML): the block store and catalog this node uses (see the README). Without one, the
    /// embedded default: a local block directory and a SQLite catalog in the state directory.
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory: blocks/ and catalog.sqlite live here [default: $XDG_DATA_HOME/cafs or /var/lib/cafs]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// gRPC socket [default: $XDG_RUNTIME_DIR/cafs/cafsd.sock or /run/cafs/cafsd.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Open the state directory, the block store and the catalog as configured, check that each works (a probe
    /// block is stored and read back; the catalog is read), print a line for each, and exit: 0 when all work.
    #[arg(long = "check-config", visible_alias = "check")]
    check: bool,
    /// Development mode (root only): mount a collection on DIR and serve it until SIGTERM or unmount.
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// With --mount: the ref to mount, writable (created when missing).
    #[arg(long = "ref", value_name = "NAME", conflicts_with = "pdh", requires = "mount")]
    ref_name: Option<String>,
    /// With --mount: a committed collection to mount read-only.
    #[arg(long, requires = "mount")]
    pdh: Option<String>,
    /// The mount helper's socket (`cafs-mount serve`), through which mounts are made and unmounted.
    #[arg(long, value_name = "PATH", default_value = "/run/cafs-mount/mount.sock")]
    helper: PathBuf,
    /// Also serve the API on this TCP address, for remote control: only with TLS and a token (--tls-cert,
    /// --tls-key and --token-file). Off by default.
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Option<std::net::SocketAddr>,
    /// With --listen-tcp: the server's certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    tls_cert: Option<PathBuf>,
    /// With --listen-tcp: the certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    tls_key: Option<PathBuf>,
    /// With --listen-tcp: a file holding the bearer token remote callers must present (at least 16
    /// characters; the file must not be readable by group or others). A caller with the token is an operator.
    #[arg(long, value_name = "FILE", requires = "listen_tcp")]
    token_file: Option<PathBuf>,
    /// On SIGTERM: `keep` leaves the mounts the helper holds to the next cafsd (a restart or upgrade that
    /// workloads do not notice); `unmount` commits and unmounts every mount.
    #[arg(long, value_enum, default_value_t = OnStop::Keep)]
    on_stop: OnStop,
    /// Keep every mount's fd in systemd's file descriptor store too (needs `FileDescriptorStoreMax=` in the
    /// unit), so mounts outlive cafsd without the helper daemon. On by itself where systemd sets `$FDSTORE`.
    #[arg(long)]
    fd_store: bool,
    /// On SIGTERM, how long to keep trying to commit and unmount (or save) every mount before exiting anyway.
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    stop_timeout: u64,
    /// Commit a changed tree after this many seconds without changes (0: never).
    #[arg(long, default_value_t = 60)]
    autocommit: u64,
    /// With --mount: let users other than the directory's owner in (permission bits still apply).
    #[arg(long, requires = "mount")]
    allow_other: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnStop {
    Keep,
    Unmount,
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("cafs"),
        _ => PathBuf::from("/var/lib/cafs"),
    }
}

fn default_socket() -> PathBuf {
    cafs_mount::wire::user_cafsd_socket().unwrap_or_else(|| PathBuf::from(cafs_mount::wire::CAFSD_SOCKET))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(code) = args.common.generate_man(Args::command()) {
        return code;
    }
    cli::init_logging(&args.common, "info,fuser=error");
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cafsd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path).with_context(|| format!("--config {}", path.display()))?,
        None => Config::default(),
    };
    let remote = remote_config(&args)?;
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    std::fs::create_dir_all(&state).with_context(|| format!("block store: state directory {}", state.display()))?;
    // Opening creates directories and fsyncs: keep it off the async workers.
    let opened = {
        let (state, c) = (state.clone(), config.clone());
        tokio::task::spawn_blocking(move || c.open_store(&state))
            .await?
            .with_context(|| format!("block store ({})", config.describe()))?
    };
    if let Some(cache) = &opened.disk_cache {
        tracing::info!(dir = %cache.dir().display(), blocks = cache.stats().blocks, bytes = cache.stats().bytes, "disk cache");
        cafs::metrics::watch_disk_cache(cache.clone());
    }
    let catalog = config.open_catalog(&state, &opened).await.context("catalog")?;
    let (store, disk_cache) = (opened.store, opened.disk_cache);
    // Counted for the metrics, whether or not they are served (the store's calls by `open_store`).
    let catalog: Arc<dyn Catalog> = Arc::new(cafs::metrics::MeteredCatalog(catalog));
    if args.check {
        return check_config(&config, &state, store, catalog).await;
    }
    let refs = catalog.list_refs().await.context("reading the catalog")?;
    tracing::info!(
        state_dir = %state.display(),
        backends = %config.describe(),
        refs = refs.len(),
        "state directory ready"
    );
    for r in &refs {
        tracing::debug!(r#ref = %r.name, version = r.version, pdh = %r.pdh, "ref");
    }
    let fs = config.fs_options().context("[fs]")?;
    tracing::info!(
        memory_budget = fs.memory_budget,
        max_uploads = fs.max_uploads,
        cache_size = fs.cache_size,
        readahead = fs.readahead,
        "filesystem options"
    );
    if let Some(dir) = &args.mount {
        return serve_mount(&args, dir, &state, store, catalog, fs).await;
    }
    let server = Server::new(
        catalog,
        store,
        tokio::runtime::Handle::current(),
        ServerOptions {
            helper: args.helper.clone(),
            journals: state.join("journal"),
            autocommit: Duration::from_secs(args.autocommit),
            ref_refresh: Duration::from_secs(config.ref_refresh_seconds),
            fdstore: FdStore::from_env(&state.join("fdstore"), args.fd_store)
                .context("systemd's file descriptor store")?,
            namespace_writable: config.namespace.writable.clone(),
            policy: {
                let refs = config.refs().context("[refs]")?;
                tracing::info!(operators = ?refs.operators, default_mode = %format!("{:04o}", refs.default_mode), "ref permissions");
                Arc::new(cafs::policy::Policy::new(refs.operators, refs.default_mode))
            },
            fs,
            disk_cache,
        },
    );
    // Mounts an earlier cafsd left in systemd's fd store: taken first, while their fds still have the numbers
    // systemd gave them.
    let taking = server.clone();
    let restored = tokio::task::spawn_blocking(move || taking.restore_stored()).await?;
    if restored > 0 {
        tracing::info!(mounts = restored, "took over the mounts systemd's fd store held");
    }
    server.listen(&fd_socket_path(&socket))?;
    if let Some(listen) = config.metrics.listen().context("[metrics]")? {
        cafs::metrics::serve(&listen, {
            let server = server.clone();
            Arc::new(move || server.levels())
        })
        .await
        .with_context(|| format!("[metrics] listen {listen:?}"))?;
    }
    // Mounts an earlier cafsd left (the helper kept them): served again before we say we are ready.
    let taking = server.clone();
    match tokio::task::spawn_blocking(move || taking.reclaim()).await? {
        Ok(account) => tracing::info!(%account, "took over the mounts the helper held"),
        Err(ServerError::HelperUnreachable { .. }) => tracing::info!("no mount helper yet: no mounts to take over"),
        Err(e) => tracing::warn!(error = %e, "could not take over the mounts the helper holds"),
    }
    let listener = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let l = bind_unix(&socket).with_context(|| format!("gRPC socket {}", socket.display()))?;
            // Any local user may connect; what each may do is decided by the peer credentials of the connection.
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
            l.set_nonblocking(true)?;
            Ok(tokio::net::UnixListener::from_std(l)?)
        })
        .await??
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    let api = Api::new(server.clone(), remote.as_ref().map(|r| r.token.clone()));
    let mut grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api.clone().into_service())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), until_stopped()),
    );
    tracing::info!(socket = %socket.display(), helper = %args.helper.display(), "serving the gRPC API");
    if let Err(e) = cafs::daemon::systemd::notify_ready() {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let mut tcp = match remote {
        Some(r) => {
            let listener =
                tokio::net::TcpListener::bind(r.addr).await.with_context(|| format!("--listen-tcp {}", r.addr))?;
            tracing::info!(address = %listener.local_addr()?, "serving the gRPC API over TCP (TLS, bearer token)");
            let tls = tonic::transport::ServerTlsConfig::new().identity(r.identity);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .tls_config(tls)
                    .context("TLS configuration")?
                    .add_service(api.into_service())
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        until_stopped(),
                    ),
            )
        }
        // Without a TCP listener, a task that just ends with the others.
        None => {
            let stopped = until_stopped();
            tokio::spawn(async move {
                stopped.await;
                Ok(())
            })
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(on_stop = ?args.on_stop, "SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!(on_stop = ?args.on_stop, "SIGINT: stopping"),
        r = &mut grpc => bail!("the gRPC server stopped: {:?}", r),
        r = &mut tcp => bail!("the TCP gRPC server stopped: {:?}", r),
    }
    let kept = shut_down(&server, Duration::from_secs(args.stop_timeout), args.on_stop).await;
    let _ = stop.send(true);
    let _ = grpc.await;
    let _ = tcp.await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(fd_socket_path(&socket));
    if kept > 0 {
        // The kept mounts' request threads wait at their gates for good: end the process without waiting
        // for them (the kernel keeps their requests for the next cafsd).
        tracing::info!(mounts = kept, "exiting; the mounts wait for the next cafsd");
        std::process::exit(0);
    }
    Ok(())
}

/// `--check-config`: each backend does what cafsd needs of it — the store takes a probe block and gives it back
/// verified, the catalog answers — each reported on a line; the first failure is the error.
async fn check_config(
    config: &Config,
    state: &std::path::Path,
    store: Arc<dyn BlockStore>,
    catalog: Arc<dyn Catalog>,
) -> anyhow::Result<()> {
    println!("configuration: {}", config.describe());
    println!("state directory {}: ok", state.display());
    let probe = cafs::store::Block::new(&b"cafs check-config probe\n"[..])?;
    store.put(&probe).await.context("block store: storing a probe block")?;
    let back = store.get(probe.locator()).await.context("block store: reading the probe block back")?;
    anyhow::ensure!(back == *probe.data(), "block store: the probe block came back different");
    println!("block store: ok (stored and read back {})", probe.locator());
    let refs = catalog.list_refs().await.context("catalog: listing refs")?;
    println!("catalog: ok: {} refs", refs.len());
    Ok(())
}

/// The remote listener's settings.
struct Remote {
    addr: std::net::SocketAddr,
    identity: tonic::transport::Identity,
    token: String,
}

/// Checks the remote listener's flags: all or nothing, and a token worth the name.
fn remote_config(args: &Args) -> anyhow::Result<Option<Remote>> {
    use std::os::unix::fs::MetadataExt;
    let Some(addr) = args.listen_tcp else { return Ok(None) };
    let (Some(cert), Some(key), Some(token_file)) = (&args.tls_cert, &args.tls_key, &args.token_file) else {
        bail!(
            "--listen-tcp needs --tls-cert, --tls-key and --token-file: the API is never served remotely without TLS and a token"
        );
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| p.display().to_string());
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mode = std::fs::metadata(token_file).with_context(|| token_file.display().to_string())?.mode();
    if mode & 0o077 != 0 {
        bail!("{}: a token file must not be readable by group or others (chmod 600)", token_file.display());
    }
    let token = String::from_utf8(read(token_file)?).context("the token file is not UTF-8")?.trim().to_string();
    if token.len() < 16 {
        bail!("{}: the token must be at least 16 characters", token_file.display());
    }
    Ok(Some(Remote { addr, identity, token }))
}

/// Graceful shutdown: takes no new mounts, then commits and unmounts every mount (through the helper; directly
/// when cafsd is root and the helper is not there), retrying a failing commit until `timeout`. A mount still
/// there at the deadline gets its buffers uploaded and its journal synced, if the store allows, so that what
/// was written is recovered when the ref is mounted there again; then cafsd exits regardless.
///
/// With `OnStop::Keep`, mounts the helper holds are kept for the next cafsd instead ([`Server::keep`]).
/// Returns how many were.
async fn shut_down(server: &Arc<Server>, timeout: Duration, on_stop: OnStop) -> usize {
    server.begin_stop();
    let deadline = Instant::now() + timeout;
    let (kept, others): (Vec<_>, Vec<_>) =
        server.list().into_iter().partition(|s| on_stop == OnStop::Keep && s.at.held);
    // The collections of a namespace mount go with it: kept with it, or committed when it is unmounted.
    let others: Vec<_> = others.into_iter().filter(|s| s.part_of.is_none()).collect();
    let mut keeping = Vec::new();
    for n in server.namespace_list() {
        let server = server.clone();
        if on_stop == OnStop::Keep && n.at.held {
            keeping.push(tokio::spawn(async move {
                let _ = server.keep_namespace(&n, timeout).await;
                tracing::info!(mount = %n.at.dir.display(), "namespace kept for the next cafsd");
            }));
            continue;
        }
        keeping.push(tokio::spawn(async move {
            match server.unmount_namespace(&n).await {
                Ok(()) => tracing::info!(mount = %n.at.dir.display(), "namespace unmounted"),
                Err(e) => tracing::error!(mount = %n.at.dir.display(), error = %e, "cannot unmount the namespace"),
            }
        }));
    }
    for s in &kept {
        let (server, s) = (server.clone(), s.clone());
        keeping.push(tokio::spawn(async move {
            match server.keep(&s, timeout).await {
                Ok(()) => tracing::info!(mount = %s.at.dir.display(), "kept for the next cafsd; journal synced"),
                Err(e) => tracing::error!(
                    mount = %s.at.dir.display(),
                    error = %e,
                    "kept for the next cafsd, but saving failed: only what was fsynced is sure to be in the journal"
                ),
            }
        }));
    }
    let mut pending = Vec::new();
    for s in others {
        let server = server.clone();
        pending.push(tokio::spawn(async move {
            loop {
                match server.unmount(&s, false).await {
                    Ok(pdh) => {
                        tracing::info!(mount = %s.at.dir.display(), pdh = ?pdh.map(|p| p.to_string()), "unmounted");
                    }
                    Err(ServerError::HelperUnreachable { .. }) if umount(&s.at.dir, false).is_ok() => {
                        let _ = s.ended().await;
                    }
                    // The store may come back: keep trying to commit until the deadline.
                    Err(ServerError::Collection(e)) if Instant::now() + Duration::from_secs(2) < deadline => {
                        tracing::warn!(mount = %s.at.dir.display(), error = %e, "commit before unmount failed; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                    Err(e) => tracing::error!(mount = %s.at.dir.display(), error = %e, "cannot unmount"),
                }
                return;
            }
        }));
    }
    for p in pending.into_iter().chain(keeping) {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, p).await;
    }
    for s in server.list().into_iter().filter(|s| !kept.iter().any(|k| Arc::ptr_eq(k, s))) {
        let fs = s.coll.fs().clone();
        let saved = tokio::task::spawn_blocking(move || fs.flush_all().and_then(|()| fs.sync_journal()));
        let outcome = tokio::time::timeout(Duration::from_secs(10), saved).await;
        match outcome {
            Ok(Ok(Ok(()))) => tracing::error!(
                mount = %s.at.dir.display(),
                "left uncommitted at shutdown; everything written is in the journal and comes back when the ref is \
                 mounted there again"
            ),
            _ => tracing::error!(
                mount = %s.at.dir.display(),
                "left uncommitted at shutdown; only what was fsynced is in the journal"
            ),
        }
    }
    kept.len()
}

/// Development mode: mount one collection, serve it, and on SIGTERM or an external unmount commit a changed
/// tree and exit.
async fn serve_mount(
    args: &Args,
    dir: &std::path::Path,
    state: &std::path::Path,
    store: Arc<dyn BlockStore>,
    catalog: Arc<dyn Catalog>,
    opts: FsOptions,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        bail!("--mount needs root (development mode); unprivileged mounts go through cafs-mount");
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("mount point {}", dir.display()))?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let source = match (&args.ref_name, &args.pdh) {
        (Some(name), None) => {
            let at = dir.canonicalize().with_context(|| dir.display().to_string())?;
            let journal = cafs::journal::path_for(&state.join("journal"), name, &at);
            Source::Writable { name: RefName::new(name.clone())?, journal, at }
        }
        (None, Some(pdh)) => Source::Pdh(Pdh::parse(pdh)?),
        _ => bail!("--mount needs --ref NAME or --pdh PDH"),
    };
    let coll = Collection::open(OpenWith { catalog, store, opts, uid, gid }, source).await?;
    let coll = Arc::new(coll);
    let control = Arc::new(Control::default());
    let fuse = CafsFuse::new(coll.clone(), control.clone(), tokio::runtime::Handle::current(), uid, gid);
    let mount_opts = MountOptions { read_only: coll.is_read_only(), allow_other: args.allow_other, threads: 4 };
    let target = dir.to_path_buf();
    let mounted = tokio::task::spawn_blocking(move || mount_as_root(&target, fuse, &mount_opts)).await??;
    tracing::info!(mount = %dir.display(), origin = ?coll.origin(), "mounted");

    // The session ends when the mount goes away, whoever unmounts it.
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = ended_tx.send(mounted.wait());
    });
    // Until the session ends: the final commit below is the last.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let alive = {
        let serving = serving.clone();
        move || serving.load(std::sync::atomic::Ordering::SeqCst)
    };
    let rt = tokio::runtime::Handle::current();
    start_tasks(&rt, &coll, &control, Duration::from_secs(args.autocommit), Duration::ZERO, alive);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ended_early = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        r = &mut ended => Some(r),
    };
    serving.store(false, std::sync::atomic::Ordering::SeqCst);
    let session = match ended_early {
        Some(r) => r,
        None => {
            tracing::info!(mount = %dir.display(), "unmounting");
            if let Err(e) = umount(dir, false) {
                tracing::warn!(error = %e, "unmount failed (busy?); detaching");
                umount(dir, true).with_context(|| format!("unmounting {}", dir.display()))?;
            }
            ended.await
        }
    };
    if let Ok(Err(e)) = session {
        tracing::warn!(error = %e, "FUSE session ended with an error");
    }
    if coll.is_dirty() {
        let c = control
            .commit(&coll, "cafsd", "unmount")
            .await
            .context("commit on unmount failed (what was fsynced stays in the journal)")?;
        println!("{}", c.pdh);
    }
    coll.remove_journal();
    Ok(())
}
