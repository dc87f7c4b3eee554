//! Inputs the fuzzer found (`fuzz/regressions/`) and its seeds (`fuzz/seeds/`), replayed on every test run with
//! the fuzz target's own checks: no panic, and what parses normalizes to a fixed point.

use std::fs;
use std::path::Path;

use cafs::Manifest;

#[test]
fn fuzz_inputs_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            count += 1;
            if let Ok(m) = Manifest::parse(&data) {
                let text = m.to_text();
                let again = Manifest::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: normalized text does not parse: {e}", path.display()));
                assert_eq!(again.to_text(), text, "{}", path.display());
                assert_eq!(again.pdh(), m.pdh(), "{}", path.display());
                // The stripped text (what the PDH names and the catalog stores) is a fixed point too.
                let stripped = m.to_stripped_text();
                let reparsed = Manifest::parse(stripped.as_bytes()).unwrap();
                assert_eq!(reparsed.to_stripped_text(), stripped, "{}", path.display());
                assert_eq!(reparsed.pdh(), m.pdh(), "{}", path.display());
            }
        }
    }
    assert!(count >= 3, "the seed inputs are present");
}
