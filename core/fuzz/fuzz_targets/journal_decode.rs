//! Fuzz target: any bytes decode as a journal without a panic, to a valid prefix that decodes alone to the same
//! records, loses exactly the torn records when cut, re-encodes to frames that decode back, and is not changed by
//! what follows it; `Journal::open` on such a file agrees with `decode`. The checks are in `journal_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod journal_checks;

fuzz_target!(|data: &[u8]| journal_checks::check(data));
