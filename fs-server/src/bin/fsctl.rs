//! fsctl: the command-line client of cafsd's gRPC API, and `fsctl run`, the job wrapper.
//!
//! Exit codes: 0 success, 1 the operation failed (the reason on stderr), 2 a usage error (from clap, or a
//! request the server calls invalid). `fsctl run` exits with its command's code, or as `env` does when it
//! cannot run it (125 fsctl failed, 126 not executable, 127 not found). Every verb that prints data prints
//! JSON with `--json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cafs_mount::cli::{self, CommonArgs};
use clap::{CommandFactory, Parser, Subcommand};
use proto::v1::cafs_client::CafsClient;
use proto::v1::{self as pb, mount_request::Source};
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

#[derive(Parser, Debug)]
#[command(name = "fsctl", version, about = "Control a running cafsd", arg_required_else_help = true)]
struct Args {
    /// cafsd's gRPC socket, or https://HOST:PORT for a remote cafsd's TCP listener
    /// [default: $XDG_RUNTIME_DIR/cafs/cafsd.sock if it exists, else /run/cafs/cafsd.sock]
    #[arg(long, global = true, env = "CAFS_SERVER", value_name = "PATH|URL")]
    server: Option<String>,
    /// With an https:// server: the certificate (PEM) of the server or of its CA.
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// With an https:// server: a file holding the bearer token.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
    // Optional only so that the hidden --generate-man needs none; main asks for one otherwise.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount a collection at DIR: a ref name (writable; created, yours, when missing) or a hash (read-only)
    Mount {
        /// A ref name, or a portable data hash; with --namespace, the directory
        source: String,
        /// The directory to mount on (absent with --namespace)
        dir: Option<PathBuf>,
        /// The whole catalog: by_ref/NAME, by_pdh/HASH, history/NAME/N-HASH
        #[arg(long)]
        namespace: bool,
        /// Read-only (a ref then shows its latest version)
        #[arg(long = "read-only", visible_alias = "ro")]
        ro: bool,
        /// Commit after this many seconds without changes (0: never) [default: the server's]
        #[arg(long, value_name = "SECS")]
        autocommit: Option<u32>,
        /// Every user may enter the mount, not only its owner (root only; the helper must allow it)
        #[arg(long)]
        allow_other: bool,
        #[arg(long)]
        json: bool,
    },
    /// Unmount DIR, committing a changed tree first; prints the hash it ended at
    Umount {
        dir: PathBuf,
        /// Drop the changes made since the last commit instead of committing them
        #[arg(long)]
        discard: bool,
        #[arg(long)]
        json: bool,
    },
    /// Commit the tree at DIR and print its hash
    Commit {
        dir: PathBuf,
        /// Commit message
        #[arg(short, long, default_value = "")]
        message: String,
        /// Commit as the next version of this ref instead of the mount's own (which stays where it is)
        #[arg(long, value_name = "REF")]
        into: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start uploading what DIR buffers; with --wait, return once it is stored
    Flush {
        dir: PathBuf,
        /// Wait for the uploads, with a progress bar on a terminal
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Status of the mount at DIR, or of the server and every mount you own
    Status {
        dir: Option<PathBuf>,
        /// Print it again every half second until interrupted (or the mount goes away); with --json, one
        /// object a line
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// cafsd's counters (FUSE requests, store and catalog calls, commits) and levels, as Prometheus scrapes them
    Stats {
        /// Every sample, histogram buckets too, as the metrics endpoint serves them (OpenMetrics text)
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the mounts you own (root: all)
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// History of a ref, oldest first
    Log {
        r#ref: String,
        #[arg(long)]
        json: bool,
    },
    /// The refs you may read (root: all), with owner, group, mode and current version
    Refs {
        /// Only the refs whose names start with this
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a collection (a ref's current version, or a hash) into DIR, which must be missing or empty
    Get { source: String, dir: PathBuf },
    /// Commit DIR's tree (regular files, directories, symlinks) as the next version of REF; prints the hash
    Put {
        dir: PathBuf,
        r#ref: String,
        /// Commit message
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// A ref's owner, group and mode
    Ref {
        #[command(subcommand)]
        action: RefCommand,
    },
    /// The node's disk cache of blocks from a remote store
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Give a ref to OWNER (a user name or uid), and to GROUP if given: root and operators only
    Chown {
        r#ref: String,
        #[arg(value_name = "OWNER[:GROUP]")]
        owner: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a ref's mode (octal read and write bits, as for a file: 644, 640, 600, 664, 666): its owner, root
    /// and operators
    Chmod {
        r#ref: String,
        mode: String,
        #[arg(long)]
        json: bool,
    },
    /// Job wrapper: mount a fresh writable collection at DIR, run CMD there, commit on exit 0 and print the
    /// hash on stdout, unmount; exits with CMD's code. On failure the partial output is committed to the ref
    /// NAME.failed instead, and NAME does not move.
    Run {
        /// The ref for the output; it must not exist yet [default: job-<time>-<pid>]
        #[arg(long = "ref", value_name = "NAME")]
        ref_name: Option<String>,
        /// Where to mount it (created when missing) [default: a new directory under $TMPDIR or /tmp]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the hash of the committed output to FILE (atomically) instead of stdout, which stays the job's
        #[arg(long, value_name = "FILE")]
        pdh_file: Option<PathBuf>,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Print a completion script for SHELL (e.g. `fsctl completions bash > /etc/bash_completion.d/fsctl`)
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum RefCommand {
    /// Owner, group, mode and current version of a ref
    Show {
        r#ref: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Delete every cached block (root and operators): later reads fetch them from the store again
    Drop {
        #[arg(long)]
        json: bool,
    },
}

/// An error with the exit code it should produce.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error.downcast_ref::<tonic::Status>() {
            Some(s) if s.code() == tonic::Code::InvalidArgument => 2,
            _ => 1,
        };
        Failure { code, error }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(code) = args.common.generate_man(Args::command()) {
        return code;
    }
    cli::init_logging(&args.common, "warn");
    let command = match args.command {
        Some(Command::Completions { shell }) => {
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "fsctl", &mut script);
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fsctl: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(ref c) => c,
        None => Args::command().error(clap::error::ErrorKind::MissingSubcommand, "a command is needed").exit(),
    };
    let is_run = matches!(command, Command::Run { .. });
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { mut code, error }) => {
            // For `run`, anything but the command's own code is fsctl failing, as `env` reports it.
            if is_run && code < job::WRAPPER_FAILED {
                code = job::WRAPPER_FAILED;
            }
            let text = match error.downcast_ref::<tonic::Status>() {
                Some(s) => s.message().to_string(),
                None => format!("{error:#}"),
            };
            eprintln!("fsctl: {text}");
            ExitCode::from(code)
        }
    }
}

/// A user's own cafsd when one serves there, else the node's.
fn default_socket() -> PathBuf {
    cafs_mount::wire::user_cafsd_socket()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(cafs_mount::wire::CAFSD_SOCKET))
}

/// The API client; every call carries the bearer token, if there is one.
type Client = CafsClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connects to cafsd: a Unix socket path, or `https://HOST:PORT` (TLS with `ca`, and the token).
async fn connect(server: &str, ca: Option<&Path>, token_file: Option<&Path>) -> anyhow::Result<Client> {
    let bearer = match token_file {
        Some(f) => {
            let token = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
            Some(format!("Bearer {}", token.trim()).parse().context("the token is not valid header text")?)
        }
        None => None,
    };
    let channel = if server.starts_with("https://") {
        let ca = ca.context("an https:// server needs --ca PEM (its certificate or its CA's)")?;
        let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        Endpoint::from_shared(server.to_string())?
            .tls_config(tls)?
            .connect()
            .await
            .with_context(|| format!("cannot reach cafsd at {server}"))?
    } else if server.contains("://") {
        bail!("{server}: remote control needs https:// (cafsd serves TCP only with TLS)");
    } else {
        let socket = PathBuf::from(server);
        // The URI is a placeholder: the connector below ignores it and dials the socket.
        Endpoint::from_static("http://cafsd.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("cannot reach cafsd at {server}"))?
    };
    Ok(CafsClient::with_interceptor(channel, Bearer(bearer)))
}

/// A usage error (exit code 2) that clap cannot see.
fn usage(message: &str) -> Failure {
    Failure { code: 2, error: anyhow!("{message}") }
}

/// DIR as the server should see it: absolute, symlinks resolved (the helper refuses symlinks in a mount point).
fn absolute(dir: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    abs.into_os_string().into_string().map_err(|p| anyhow!("{}: not UTF-8", Path::new(&p).display()))
}

async fn run(args: Args) -> Result<u8, Failure> {
    let server = args.server.clone().unwrap_or_else(|| default_socket().to_string_lossy().into_owned());
    let mut c = connect(&server, args.ca.as_deref(), args.token_file.as_deref()).await?;
    let remote = server.contains("://");
    // A remote server's directories are not here to resolve: they go as given, and must be absolute.
    let absolute = |d: &Path| -> anyhow::Result<String> {
        if !remote {
            return absolute(d);
        }
        anyhow::ensure!(d.is_absolute(), "{}: a remote mount point must be an absolute path", d.display());
        d.to_str().map(str::to_string).ok_or_else(|| anyhow!("{}: not UTF-8", d.display()))
    };
    let Some(command) = args.command else { return Err(usage("a command is needed")) };
    match command {
        Command::Mount { source, dir, namespace, ro, autocommit, allow_other, json } => {
            let (source, dir) = match (namespace, dir) {
                (true, None) => (Source::Namespace(true), PathBuf::from(source)),
                (false, Some(dir)) => match cafs::Pdh::parse(&source) {
                    Ok(_) => (Source::Pdh(source), dir),
                    Err(_) => (Source::RefName(source), dir),
                },
                (true, Some(_)) => return Err(usage("mount --namespace takes one argument: the directory")),
                (false, None) => return Err(usage("mount takes a ref name or hash, and a directory")),
            };
            let req = pb::MountRequest {
                mount_point: absolute(&dir)?,
                source: Some(source),
                read_only: ro,
                autocommit_secs: autocommit,
                allow_other,
            };
            let m = c.mount(req).await?.into_inner().mount.unwrap_or_default();
            if json {
                println!("{}", mount_json(&m));
            } else {
                println!("mounted {} at {}", describe(&m), m.mount_point);
            }
        }
        Command::Umount { dir, discard, json } => {
            let mount_point = absolute(&dir)?;
            // Unmounting a changed tree commits it, waiting for its uploads.
            let bar = (!discard).then(|| c.clone());
            let r = with_progress(
                bar,
                &mount_point,
                c.unmount(pb::UnmountRequest { mount_point: mount_point.clone(), discard }),
            )
            .await?
            .into_inner();
            if json {
                println!("{}", json!({"pdh": r.pdh}));
            } else if !r.pdh.is_empty() {
                println!("{}", r.pdh);
            }
        }
        Command::Commit { dir, message, into, json } => {
            let mount_point = absolute(&dir)?;
            // A commit into the mount's own ref waits for its uploads; one --into another ref is shown no bar.
            let bar = into.is_none().then(|| c.clone());
            let req =
                pb::CommitRequest { mount_point: mount_point.clone(), message, into_ref: into.unwrap_or_default() };
            let r = with_progress(bar, &mount_point, c.commit(req)).await?.into_inner();
            if json {
                println!("{}", json!({"pdh": r.pdh, "version": r.version, "changed": r.changed}));
            } else {
                println!("{}", r.pdh);
            }
        }
        Command::Flush { dir, wait, json } => {
            let mount_point = absolute(&dir)?;
            let bar = wait.then(|| c.clone());
            let r =
                with_progress(bar, &mount_point, c.flush(pb::FlushRequest { mount_point: mount_point.clone(), wait }));
            let s = r.await?.into_inner().status.unwrap_or_default();
            if json {
                println!("{}", status_json(&s));
            } else if wait {
                println!("flushed: {} stored by this mount, {} held", bytes(s.bytes_uploaded), bytes(s.dirty_bytes));
            } else {
                println!(
                    "flushing: {} held, {} blocks uploading",
                    bytes(s.dirty_bytes),
                    s.in_flight_blocks + s.queued_blocks
                );
            }
        }
        Command::Status { dir, watch: false, json } => {
            let mount_point = dir.map(|d| absolute(&d)).transpose()?.unwrap_or_default();
            let r = c.status(pb::StatusRequest { mount_point: mount_point.clone() }).await?.into_inner();
            print_status_reply(&r, mount_point.is_empty(), json, true)?;
        }
        Command::Status { dir, watch: true, json } => {
            let mount_point = dir.map(|d| absolute(&d)).transpose()?.unwrap_or_default();
            let req = pb::StatusRequest { mount_point: mount_point.clone() };
            let mut stream = c.watch_status(req).await?.into_inner();
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            while let Some(r) = stream.message().await? {
                if terminal && !json {
                    // Home and clear: each reply replaces the last on a terminal.
                    print!("\x1b[H\x1b[2J");
                }
                print_status_reply(&r, mount_point.is_empty(), json, false)?;
            }
        }
        Command::Stats { raw, json } => stats::show(c, raw, json).await?,
        Command::Ls { json } => {
            let r = c.list_mounts(pb::ListMountsRequest {}).await?.into_inner();
            if json {
                let all: Vec<_> = r.mounts.iter().map(mount_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for m in &r.mounts {
                    println!("{}\t{}\tuid {}", m.mount_point, describe(m), m.owner_uid);
                }
            }
        }
        Command::Log { r#ref, json } => {
            let r = c.log(pb::LogRequest { ref_name: r#ref }).await?.into_inner();
            if json {
                let all: Vec<_> = r
                    .versions
                    .iter()
                    .map(|v| {
                        json!({"version": v.version, "pdh": v.pdh, "parent": v.parent,
                               "committed_unix_ms": v.committed_unix_ms, "committer": v.committer, "message": v.message})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for v in &r.versions {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        v.version,
                        v.pdh,
                        iso_time(v.committed_unix_ms),
                        v.committer,
                        v.message
                    );
                }
            }
        }
        Command::Refs { prefix, json } => refs::list(c, prefix.unwrap_or_default(), json).await?,
        Command::Get { .. } | Command::Put { .. } if remote => {
            return Err(usage(&format!("fsctl get and put mount here: they need the local cafsd, not {server}")));
        }
        Command::Get { source, dir } => copy::get(c, source, dir).await?,
        Command::Put { dir, r#ref, message, json } => copy::put(c, dir, r#ref, message, json).await?,
        Command::Ref { action: RefCommand::Show { r#ref, json } } => refs::show(c, r#ref, json).await?,
        Command::Cache { action: CacheCommand::Drop { json } } => {
            let r = c.drop_cache(pb::DropCacheRequest {}).await?.into_inner();
            if json {
                println!("{}", json!({"blocks": r.blocks, "bytes": r.bytes}));
            } else {
                println!("dropped {} block{} ({})", r.blocks, if r.blocks == 1 { "" } else { "s" }, bytes(r.bytes));
            }
        }
        Command::Chown { r#ref, owner, json } => refs::chown(c, r#ref, owner, json).await?,
        Command::Chmod { r#ref, mode, json } => refs::chmod(c, r#ref, mode, json).await?,
        // Printed by main without a server.
        Command::Completions { .. } => unreachable!("fsctl completions is handled before connecting"),
        Command::Run { .. } if remote => {
            return Err(Failure {
                code: 2,
                error: anyhow!("fsctl run mounts here: it needs the local cafsd, not {server}"),
            });
        }
        Command::Run { ref_name, dir, pdh_file, cmd } => {
            return job::run(c, job::Job { ref_name, dir, pdh_file, cmd }).await;
        }
    }
    Ok(0)
}

fn describe(m: &pb::MountInfo) -> String {
    if m.namespace {
        return format!("the namespace ({})", if m.read_only { "read-only" } else { "configured refs writable" });
    }
    match (m.ref_name.as_str(), m.read_only) {
        ("", _) => format!("{} (read-only)", m.pdh),
        (r, false) => format!("ref {r} (writable)"),
        (r, true) => format!("ref {r} at {} (read-only)", m.pdh),
    }
}

fn mount_json(m: &pb::MountInfo) -> serde_json::Value {
    json!({"mount_point": m.mount_point, "ref": m.ref_name, "pdh": m.pdh, "read_only": m.read_only,
           "owner_uid": m.owner_uid, "autocommit_secs": m.autocommit_secs, "namespace": m.namespace})
}

fn status_json(s: &pb::MountStatus) -> serde_json::Value {
    json!({
        "mount": s.mount.as_ref().map(mount_json),
        "dirty": s.dirty,
        "dirty_bytes": s.dirty_bytes,
        "queued_blocks": s.queued_blocks,
        "in_flight_blocks": s.in_flight_blocks,
        "failed_blocks": s.failed_blocks,
        "bytes_uploaded": s.bytes_uploaded,
        "upload_bytes_per_sec": s.upload_bytes_per_sec,
        "last_commit_pdh": s.last_commit_pdh,
        "last_commit_unix_ms": s.last_commit_unix_ms,
        "last_error": s.last_error,
    })
}

/// A status reply: the server's line (when all mounts were asked for) and each mount's; JSON pretty or as one
/// line.
fn print_status_reply(r: &pb::StatusReply, all: bool, json: bool, pretty: bool) -> anyhow::Result<()> {
    let server = r.server.clone().unwrap_or_default();
    if json {
        let mounts: Vec<_> = r.mounts.iter().map(status_json).collect();
        let cache = server.disk_cache.as_ref().map(|d| {
            json!({"dir": d.dir, "max_size": d.max_size, "min_free": d.min_free, "write_through": d.write_through,
                "blocks": d.blocks, "bytes": d.bytes, "hits": d.hits, "misses": d.misses, "fills": d.fills,
                "skipped": d.skipped, "evictions": d.evictions, "corrupt": d.corrupt})
        });
        let server = json!({"version": server.version, "uptime_secs": server.uptime_secs, "mounts": server.mounts,
            "disk_cache": cache});
        let all = json!({"server": server, "mounts": mounts});
        println!("{}", if pretty { serde_json::to_string_pretty(&all)? } else { all.to_string() });
        return Ok(());
    }
    if all {
        println!(
            "cafsd {}, up {}, {} mount{}",
            server.version,
            human_duration(server.uptime_secs),
            server.mounts,
            if server.mounts == 1 { "" } else { "s" }
        );
        if let Some(d) = &server.disk_cache {
            println!(
                "disk cache {}: {} of {} in {} blocks; {} hits, {} misses, {} evicted, {} failed their check",
                d.dir,
                bytes(d.bytes),
                bytes(d.max_size),
                d.blocks,
                d.hits,
                d.misses,
                d.evictions,
                d.corrupt
            );
        }
    }
    for s in &r.mounts {
        print_status(s);
    }
    Ok(())
}

fn print_status(s: &pb::MountStatus) {
    let m = s.mount.clone().unwrap_or_default();
    println!("{}: {}", m.mount_point, describe(&m));
    println!(
        "  {}; {} held in memory; blocks: {} queued, {} uploading, {} failed",
        if s.dirty { "changed since the last commit" } else { "unchanged" },
        bytes(s.dirty_bytes),
        s.queued_blocks,
        s.in_flight_blocks,
        s.failed_blocks
    );
    println!("  uploaded {} ({}/s now)", bytes(s.bytes_uploaded), bytes(s.upload_bytes_per_sec as u64));
    if !s.last_commit_pdh.is_empty() {
        println!("  last commit {} at {}", s.last_commit_pdh, iso_time(s.last_commit_unix_ms));
    }
    if !s.last_error.is_empty() {
        println!("  last error: {}", s.last_error);
    }
}

fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

fn human_duration(secs: u64) -> String {
    indicatif::HumanDuration(Duration::from_secs(secs)).to_string()
}

/// RFC 3339 (UTC, seconds) for milliseconds since the epoch.
fn iso_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `call`, with a progress bar of the mount's uploads while it runs when given a client to watch with.
async fn with_progress<T>(watcher: Option<Client>, mount_point: &str, call: impl std::future::Future<Output = T>) -> T {
    let progress = watcher.map(|w| tokio::spawn(show_progress(w, mount_point.to_string())));
    let r = call.await;
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }
    r
}

/// A progress bar of the bytes stored while a flush drains the mount's buffers; drawn only on a terminal.
async fn show_progress(mut c: Client, mount_point: String) {
    let Ok(stream) = c.watch_status(pb::StatusRequest { mount_point }).await else { return };
    let mut stream = stream.into_inner();
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} stored [{bar:30}] {bytes_per_sec}, {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut start = None;
    while let Ok(Some(r)) = stream.message().await {
        let Some(s) = r.mounts.first() else { break };
        let base = *start.get_or_insert(s.bytes_uploaded);
        let done = s.bytes_uploaded.saturating_sub(base);
        bar.set_length(done + s.dirty_bytes);
        bar.set_position(done);
        bar.set_message(format!("{} blocks uploading", s.in_flight_blocks + s.queued_blocks));
    }
    bar.finish_and_clear();
}

#[path = "fsctl/copy.rs"]
mod copy;
#[path = "fsctl/job.rs"]
mod job;
#[path = "fsctl/refs.rs"]
mod refs;
#[path = "fsctl/stats.rs"]
mod stats;
