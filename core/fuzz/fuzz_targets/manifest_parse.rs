//! Fuzz target: any bytes either parse or are refused with an error, never a panic; what parses writes a
//! normalized text that parses back to the same text and PDH.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cafs_core::Manifest::parse(data) {
        let text = m.to_text();
        let again = cafs_core::Manifest::parse(text.as_bytes()).expect("normalized text must parse");
        assert_eq!(again.to_text(), text, "normalized text must be a fixed point");
        assert_eq!(again.pdh(), m.pdh());
        let stripped = m.to_stripped_text();
        assert_eq!(cafs_core::Manifest::parse(stripped.as_bytes()).expect("stripped text parses").to_stripped_text(), stripped);
    }
});
