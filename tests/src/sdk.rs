//! The Arvados Python SDK oracle: a virtualenv with a pinned `arvados-python-client`, the `py/oracle.py` driver,
//! and the adapter between cafs's block directory (`blocks/abc/<md5>+<size>`) and the SDK's offline
//! `local_store` layout (flat files named by MD5).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cafs::Manifest;
use cafs::locator::Locator;
use cafs::store::{Block, BlockStore, LocalDirStore};

/// The SDK version the oracle is pinned to.
pub const SDK_VERSION: &str = "3.2.1";

/// Python interpreter of the oracle's virtualenv, created on first use (once per machine, under `target/`).
/// `CAFS_TEST_PYTHON` names an interpreter that already has the SDK instead.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("CAFS_TEST_PYTHON") {
                return PathBuf::from(p);
            }
            let venv = super::target_dir().join(format!("arvados-sdk-{SDK_VERSION}"));
            fs::create_dir_all(super::target_dir()).expect("create target dir");
            // Test binaries run in parallel: one of them installs, the others wait on the lock.
            let lock = File::create(super::target_dir().join("arvados-sdk.lock")).expect("create lock file");
            lock.lock().expect("lock the SDK install");
            let py = venv.join("bin/python");
            let ready = venv.join(".installed");
            if !ready.exists() {
                let _ = fs::remove_dir_all(&venv);
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "create the SDK virtualenv");
                run(
                    Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", "--disable-pip-version-check"])
                        .arg(format!("arvados-python-client=={SDK_VERSION}")),
                    "install arvados-python-client from PyPI",
                );
                fs::write(&ready, SDK_VERSION).expect("mark the SDK installed");
            }
            py
        })
        .clone()
}

fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot {what}: {e}"));
    assert!(out.status.success(), "failed to {what} ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// What the SDK says of a collection: its normalized manifest text and its PDH.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SdkCollection {
    pub manifest: String,
    pub pdh: String,
}

fn oracle(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/oracle.py");
    run(Command::new(python()).arg(script).args(args), "run the Arvados SDK oracle")
}

/// The SDK stores every file under `src` as a collection whose blocks go to `keep_dir`.
pub fn write_tree(keep_dir: &Path, src: &Path) -> SdkCollection {
    fs::create_dir_all(keep_dir).unwrap();
    serde_json::from_slice(&oracle(&["write".as_ref(), keep_dir.as_os_str(), src.as_os_str()])).unwrap()
}

/// The SDK reads the collection `manifest` (blocks from `keep_dir`) and writes its tree under `out`.
pub fn read_tree(keep_dir: &Path, manifest: &str, out: &Path) -> SdkCollection {
    let mf = out.with_extension("manifest");
    fs::write(&mf, manifest).unwrap();
    serde_json::from_slice(&oracle(&["read".as_ref(), keep_dir.as_os_str(), mf.as_os_str(), out.as_os_str()])).unwrap()
}

/// The SDK's normalized text and PDH of each manifest (no blocks needed).
pub fn normalize(work: &Path, manifests: &[String]) -> Vec<SdkCollection> {
    let input = work.join("normalize-input.json");
    fs::write(&input, serde_json::to_vec(manifests).unwrap()).unwrap();
    serde_json::from_slice(&oracle(&["normalize".as_ref(), input.as_os_str()])).unwrap()
}

/// Copies every block of the SDK's `local_store` into a cafs store, each checked against its name.
pub async fn import_sdk_blocks(keep_dir: &Path, store: &LocalDirStore) {
    for entry in fs::read_dir(keep_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.ends_with(".tmp") {
            continue;
        }
        let data = fs::read(entry.path()).unwrap();
        let md5: [u8; 16] = (0..16)
            .map(|i| u8::from_str_radix(&name[2 * i..2 * i + 2], 16).expect("SDK block files are named by MD5"))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let block = Block::verified(Locator::from_parts(md5, data.len() as u64), data).expect("SDK block verifies");
        store.put(&block).await.unwrap();
    }
}

/// Makes every block of `manifest` available to the SDK in `keep_dir` (hard links to cafs's block files).
pub fn export_blocks_for_sdk(store: &LocalDirStore, manifest: &Manifest, keep_dir: &Path) {
    fs::create_dir_all(keep_dir).unwrap();
    for loc in manifest.blocks() {
        if loc.size() == 0 {
            // The empty block (of empty files): the SDK knows it without asking Keep, and no store keeps it.
            continue;
        }
        let target = keep_dir.join(cafs::locator::hex(loc.md5()));
        if !target.exists() {
            fs::hard_link(store.block_path(loc), &target).unwrap();
        }
    }
}
