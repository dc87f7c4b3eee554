//! Real servers for the shared backends, started by the tests themselves on loopback ports: Garage (S3, one node
//! or a cluster) and PostgreSQL. Each is stopped by its PID when dropped, also when a test fails; a server that
//! does not come up fails the test.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{run_bounded, terminate};

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("{what} exited ({s}) before listening on port {port}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not listen on port {port} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `garage` binary: `$CAFS_GARAGE`, where `scripts/test.sh` installs it, or on `PATH`.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAFS_GARAGE") {
        return PathBuf::from(p);
    }
    let installed = PathBuf::from("/opt/cafs-tools/bin/garage");
    if installed.is_file() {
        return installed;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("garage is not installed: scripts/test.sh installs it into /opt/cafs-tools"))
}

pub struct GarageNode {
    pub dir: PathBuf,
    config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    pub id: String,
    child: Option<Child>,
}

/// A Garage cluster of one or more nodes on loopback, with one bucket and one key that may use it.
pub struct Garage {
    pub nodes: Vec<GarageNode>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl GarageNode {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node runs");
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let mut child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            // Each S3 request is logged (at info, by the API server), for tests that count them.
            .env("RUST_LOG", "garage=warn,garage_api_common=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage");
        wait_port(self.rpc_port, &mut child, "garage");
        wait_port(self.s3_port, &mut child, "garage");
        self.child = Some(child);
    }
}

impl Garage {
    /// Starts `n` nodes (replication factor `n`), joins them, gives each 1 GB in its own zone, and makes the
    /// bucket `cafs` and a key for it.
    pub fn start(base: &Path, n: usize) -> Self {
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = base.join(format!("garage{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (s3_port, rpc_port) = (free_port(), free_port());
            let config = dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {n}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    d = dir.display()
                ),
            )
            .unwrap();
            let mut node = GarageNode { dir, config, s3_port, rpc_port, id: String::new(), child: None };
            node.spawn();
            nodes.push(node);
        }
        let mut g = Self { nodes, bucket: "cafs".into(), key_id: String::new(), secret: String::new() };
        for i in 0..n {
            let id = g.setup(i, &["node", "id", "-q"]);
            g.nodes[i].id = id.trim().split('@').next().unwrap().to_string();
        }
        for i in 1..n {
            let addr = format!("{}@127.0.0.1:{}", g.nodes[i].id, g.nodes[i].rpc_port);
            g.setup(0, &["node", "connect", &addr]);
        }
        for i in 0..n {
            let id = g.nodes[i].id.clone();
            g.setup(0, &["layout", "assign", "-z", &format!("dc{i}"), "-c", "1G", &id]);
        }
        g.setup(0, &["layout", "apply", "--version", "1"]);
        g.setup(0, &["bucket", "create", "cafs"]);
        let key = g.setup(0, &["key", "create", "cafs-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in: {key}"))
        };
        (g.key_id, g.secret) = (field("Key ID:"), field("Secret key:"));
        g.setup(0, &["bucket", "allow", "--read", "--write", "--owner", "cafs", "--key", "cafs-key"]);
        g
    }

    /// A setup step, tried again for up to a minute: a node that just started listening may not serve its RPC
    /// handlers yet ("No handler"), and a layout takes a moment to reach every node. Its output.
    fn setup(&self, i: usize, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = self.cli(i, args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "garage {args:?} failed for a minute: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs the `garage` CLI against node `i` (at most a minute).
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(garage_bin());
        cmd.arg("-c").arg(&self.nodes[i].config).args(args).stdin(Stdio::null());
        run_bounded(&mut cmd, Duration::from_secs(60))
    }

    /// The S3 GETs of an object in the bucket the cluster's nodes have received so far (from their logs).
    pub fn get_object_requests(&self) -> u64 {
        let wanted = format!(" GET /{}/", self.bucket);
        let count = |n: &GarageNode| {
            let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
            log.lines().filter(|l| l.contains(&wanted)).count() as u64
        };
        self.nodes.iter().map(count).sum()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Settings for cafs's S3 store on node `i`, keys under `prefix`.
    pub fn s3_config(&self, i: usize, prefix: &str) -> cafs::store::S3Config {
        cafs::store::S3Config {
            endpoint: self.endpoint(i),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
            request_timeout: Duration::from_secs(30),
            ..cafs::store::S3Config::default()
        }
    }

    /// Stops node `i` by SIGKILL (a node lost).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].spawn();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = terminate(&mut c, Duration::from_secs(10));
            }
        }
    }
}

/// The unprivileged user PostgreSQL runs as (it refuses root).
const PG_USER: u32 = 65534;

/// A PostgreSQL server on a loopback port, with password (SCRAM) authentication for the user `cafs`.
pub struct Postgres {
    pub port: u16,
    pub password: String,
    child: Option<Child>,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("PostgreSQL's {name} is not installed: scripts/test.sh installs postgresql"))
}

impl Postgres {
    pub fn start(base: &Path) -> Self {
        let dir = base.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        // PostgreSQL runs unprivileged: it must reach its directory.
        let mut p = dir.clone();
        while let Some(parent) = p.parent() {
            if parent == Path::new("/") {
                break;
            }
            let mode = std::fs::metadata(parent).unwrap().permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
            }
            p = parent.to_path_buf();
        }
        chown(&dir, Some(PG_USER), Some(PG_USER)).unwrap();
        let password = "cafs-test-password".to_string();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        chown(&pwfile, Some(PG_USER), Some(PG_USER)).unwrap();
        let data = dir.join("data");
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "cafs", "-A", "scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .uid(PG_USER)
            .gid(PG_USER)
            .current_dir(&dir);
        ok(run_bounded(&mut initdb, Duration::from_secs(120)), "initdb");
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        chown(dir.join("server.log"), Some(PG_USER), Some(PG_USER)).unwrap();
        let mut child = Command::new(pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .uid(PG_USER)
            .gid(PG_USER)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        wait_port(port, &mut child, "postgres");
        let pg = Self { port, password, child: Some(child) };
        // Accepting connections is a moment after listening.
        let start = Instant::now();
        while !pg.psql("postgres", "SELECT 1").status.success() {
            assert!(start.elapsed() < Duration::from_secs(60), "postgres does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// A connection string for database `db` (the password not in it: see [`Postgres::password`]).
    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=cafs dbname={db}", self.port)
    }

    /// With the password in it.
    pub fn url_with_password(&self, db: &str) -> String {
        format!("{} password={}", self.url(db), self.password)
    }

    pub fn psql(&self, db: &str, sql: &str) -> Output {
        let mut cmd = Command::new("psql");
        cmd.arg(self.url(db)).args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql]).env("PGPASSWORD", &self.password);
        run_bounded(&mut cmd, Duration::from_secs(60))
    }

    /// Makes an empty database.
    pub fn create_db(&self, name: &str) {
        ok(self.psql("postgres", &format!("CREATE DATABASE {name}")), "CREATE DATABASE");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM is PostgreSQL's "smart" shutdown; SIGINT ("fast") does not wait for clients.
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
