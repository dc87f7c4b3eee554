//! The daemon's modules depend downwards only: this reads every source file of the crate, collects the
//! `crate::MODULE` paths each top-level module names in code (comments aside), and fails on a module that
//! names one above it in the order the design document gives, which also rules out any circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// From the bottom up; the core's modules (re-exported by the crate) are below all of them.
const LAYERS: &[&str] = &["socket", "metrics", "config", "vfs", "fuse", "daemon", "api"];
const CORE: &[&str] = &[
    "arvados",
    "bigbuf",
    "catalog",
    "collection",
    "fs",
    "journal",
    "locator",
    "manifest",
    "policy",
    "store",
    "transfer",
    "Locator",
    "Manifest",
    "Pdh",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules `text` names as `crate::NAME`, outside comments.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `cafs_core::x` and `crate::x` both match "crate::"; only the latter is this crate.
            if !line[..i].ends_with("_core::") && !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_depend_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut uses: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for m in LAYERS {
        let mut files = vec![src.join(format!("{m}.rs"))];
        if src.join(m).is_dir() {
            sources(&src.join(m), &mut files);
        }
        for f in files {
            uses.entry(m).or_default().extend(named(&std::fs::read_to_string(&f).unwrap()));
        }
    }
    let mut wrong = Vec::new();
    for (level, m) in LAYERS.iter().enumerate() {
        for n in &uses[m] {
            let ok = n == m || CORE.contains(&n.as_str()) || LAYERS[..level].contains(&n.as_str());
            if !ok {
                wrong.push(format!("{m} uses crate::{n}"));
            }
        }
    }
    assert!(wrong.is_empty(), "modules naming one above them (or unknown): {wrong:?}");
    // Every top-level module of the crate is placed.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let m = line.trim_end_matches(';');
        assert!(LAYERS.contains(&m), "{m} has no place in LAYERS");
    }
}
