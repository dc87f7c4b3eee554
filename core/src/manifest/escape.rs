//! Name escaping in manifest tokens: `\ooo` (three octal digits) for the bytes the Arvados SDK escapes —
//! `\000`–`\040`, `:` and `\` — and also for bytes that are not valid UTF-8, so that the text stays valid UTF-8
//! (manifests travel in JSON) whatever bytes a POSIX writer used in a name.

/// Whether byte `b` must be escaped even inside valid UTF-8.
#[inline]
fn must_escape(b: u8) -> bool {
    b <= b' ' || b == b':' || b == b'\\'
}

fn push_octal(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'\\', b'0' + (b >> 6), b'0' + ((b >> 3) & 7), b'0' + (b & 7)]);
}

/// Appends the escaped form of `name` to `out`.
pub fn escape_into(out: &mut Vec<u8>, name: &[u8]) {
    // Fast path: plain ASCII names are copied as they are.
    if name.iter().all(|&b| b.is_ascii() && !must_escape(b)) {
        out.extend_from_slice(name);
        return;
    }
    for chunk in name.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            if must_escape(b) {
                push_octal(out, b);
            } else {
                out.push(b);
            }
        }
        for &b in chunk.invalid() {
            push_octal(out, b);
        }
    }
}

/// The escaped form of `name`.
pub fn escape_name(name: &[u8]) -> String {
    let mut out = Vec::with_capacity(name.len());
    escape_into(&mut out, name);
    String::from_utf8(out).expect("escaping leaves only valid UTF-8")
}

/// Why a token could not be unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnescapeError {
    /// A `\` not followed by three octal digits forming a byte (`\000`–`\377`).
    BadEscape,
    /// A raw control byte (below `\040`), which must be written escaped.
    ControlByte(u8),
}

/// Decodes `\ooo` escapes, and `\\` for a backslash (the Go and Ruby readers accept it, though writers use
/// `\134`). Strict otherwise: a backslash must start one of those, and raw control bytes are refused.
pub fn unescape(token: &[u8]) -> Result<Vec<u8>, UnescapeError> {
    let mut out = Vec::with_capacity(token.len());
    unescape_into(&mut out, token)?;
    Ok(out)
}

pub(crate) fn unescape_into(out: &mut Vec<u8>, token: &[u8]) -> Result<(), UnescapeError> {
    let mut i = 0;
    while i < token.len() {
        let b = token[i];
        if b == b'\\' && token.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if b == b'\\' {
            let d = token.get(i + 1..i + 4).ok_or(UnescapeError::BadEscape)?;
            if !(b'0'..=b'3').contains(&d[0]) || !d[1..].iter().all(|c| (b'0'..=b'7').contains(c)) {
                return Err(UnescapeError::BadEscape);
            }
            out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
            i += 4;
        } else if b < b' ' {
            return Err(UnescapeError::ControlByte(b));
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_sdk() {
        assert_eq!(escape_name(b"a b"), "a\\040b");
        assert_eq!(escape_name(b"x:y"), "x\\072y");
        assert_eq!(escape_name(b"back\\slash"), "back\\134slash");
        assert_eq!(escape_name(b"tab\tname"), "tab\\011name");
        assert_eq!(escape_name(b"nl\nx"), "nl\\012x");
        assert_eq!(escape_name("é ü".as_bytes()), "é\\040ü");
        assert_eq!(escape_name(b"\x7f"), "\x7f");
        assert_eq!(escape_name(b"plain.txt"), "plain.txt");
        assert_eq!(escape_name(b"\0"), "\\000");
    }

    #[test]
    fn invalid_utf8_is_escaped() {
        assert_eq!(escape_name(b"a\xffb"), "a\\377b");
        assert_eq!(escape_name(b"\xc3"), "\\303");
        assert_eq!(unescape(escape_name(b"a\xff\xc3b").as_bytes()).unwrap(), b"a\xff\xc3b");
    }

    #[test]
    fn unescape_is_strict() {
        assert_eq!(unescape(b"a\\040b").unwrap(), b"a b");
        assert_eq!(unescape(b"\\303\\251").unwrap(), "é".as_bytes());
        assert_eq!(unescape(b"\\377").unwrap(), b"\xff");
        assert_eq!(unescape(b"a\\\\b").unwrap(), b"a\\b");
        for bad in [&b"\\"[..], b"\\04", b"\\400", b"\\08x", b"a\\x41", b"\\\\\\"] {
            assert_eq!(unescape(bad), Err(UnescapeError::BadEscape), "{bad:?}");
        }
        assert_eq!(unescape(b"a\tb"), Err(UnescapeError::ControlByte(b'\t')));
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let escaped = escape_name(&all);
        assert!(!escaped.bytes().any(|b| b <= b' '));
        assert_eq!(unescape(escaped.as_bytes()).unwrap(), all);
    }
}
