//! Fuzz target: whatever a peer writes on the helper's socket, `wire::recv` neither panics nor hangs, answers
//! exactly what the framing says (a request, or the right error), closes every fd of a refused message, and a
//! request it returns goes through `wire::send` and back unchanged; the mount points it names get the same
//! verdict from `target::check` as a model of its rules. The checks are in `helper_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod helper_checks;

fuzz_target!(|data: &[u8]| helper_checks::check(data));
