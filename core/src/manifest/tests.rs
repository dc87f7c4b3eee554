//! Codec tests: the Arvados worked examples, normalization, signed locators, every refusal, and round trips of
//! random trees.

use proptest::prelude::*;

use super::*;
use crate::locator::Locator;

fn parse(text: &str) -> Manifest {
    Manifest::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ParseError {
    Manifest::parse(text.as_bytes()).expect_err("must be refused")
}

/// Builds a manifest from (path, content) pairs, one block per file, as a writer would.
fn build(files: &[(&str, &[u8])], empty_dirs: &[&str]) -> Manifest {
    let mut m = Manifest::new();
    for (path, data) in files {
        let id = m.add_block(Locator::of(data));
        let (dirs, name) = path.rsplit_once('/').map_or(("", *path), |(d, n)| (d, n));
        let mut dir = m.root_mut();
        for c in dirs.split('/').filter(|c| !c.is_empty()) {
            dir = dir.subdir(c.as_bytes()).unwrap();
        }
        dir.file(name.as_bytes()).unwrap().push(Segment { block: id, offset: 0, len: data.len() as u64 });
    }
    for d in empty_dirs {
        let mut dir = m.root_mut();
        for c in d.split('/') {
            dir = dir.subdir(c.as_bytes()).unwrap();
        }
    }
    m
}

const WORKED: &str = ". b1946ac92492d2347c6235b4d2611184+6 0:6:hello.txt\n\
./a\\040b acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:c.txt\n\
./e d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n";

#[test]
fn worked_example_matches_arvados() {
    let m = build(&[("hello.txt", b"hello\n"), ("a b/c.txt", b"foo")], &["e"]);
    let text = m.to_text();
    assert_eq!(text, WORKED);
    assert_eq!(text.len(), 153);
    assert_eq!(m.pdh().to_string(), "3e799a37d292ec16cf8a1395a8e31a1a+153");
    let back = parse(&text);
    assert_eq!(back.to_text(), WORKED);
    assert!(matches!(back.find(b"e"), Some(EntryRef::Dir(d)) if d.is_empty()));
    assert!(matches!(back.find(b"a b/c.txt"), Some(EntryRef::File(f)) if f.size() == 3));
}

#[test]
fn empty_collection() {
    let m = parse("");
    assert_eq!(m.to_text(), "");
    assert_eq!(m.pdh().to_string(), "d41d8cd98f00b204e9800998ecf8427e+0");
    assert_eq!(m.pdh(), Pdh::empty());
}

/// What the Arvados SDK 3.2.1 wrote for a tree of awkward names (captured from `manifest_text(normalize=True)`).
const SDK_ODD_NAMES: &str = ". 0cc9cd4dd26c5137b675a0d819cb9ab0+3 e32b629f658481c8aa169aa08acc0625+3 \
7ac22aa81ddb0dd4f82a9f0b547b92f4+10 5c7d0ff146c337a64d93976f67eee992+4 a2826c0e914f4466a99856b6006758b2+8 \
dad3d5041507451a94b32e0574382419+3 83acb6e67e50e31db6ed341dd2de1595+1 3512a5bb07a977d3e16c4cbeafaa0e8b+5 \
0:3:a\\040b 3:3:a.b 6:10:back\\134slash 16:4:nl\\012x 20:8:tab\\011name 28:3:x\\072y 31:1:\x7f 32:5:é\\040ü\n\
./a 0cc175b9c0f1b6a831c399e269772661+1 e2d645f7ae8e44add7bcb2494c6e0ef8+3 0:1:f 1:3:x\n\
./only/sub d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n";

#[test]
fn sdk_text_with_odd_names_is_a_fixed_point() {
    let m = parse(SDK_ODD_NAMES);
    assert_eq!(m.to_text(), SDK_ODD_NAMES);
    assert!(matches!(m.find(b"x:y"), Some(EntryRef::File(f)) if f.size() == 3));
    assert!(matches!(m.find(b"back\\slash"), Some(EntryRef::File(_))));
    assert!(matches!(m.find(b"tab\tname"), Some(EntryRef::File(_))));
    assert!(matches!(m.find("é ü".as_bytes()), Some(EntryRef::File(_))));
    assert!(matches!(m.find(b"only"), Some(EntryRef::Dir(d)) if d.len() == 1));
}

#[test]
fn multi_block_file_and_packed_files() {
    let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let text = format!(". {a}+10 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+10 0:15:big 15:2:s1 17:3:s2\n");
    let m = parse(&text);
    let Some(EntryRef::File(big)) = m.find(b"big") else { panic!() };
    assert_eq!(big.segments().len(), 2);
    assert_eq!(big.size(), 15);
    assert_eq!(big.segments()[1], Segment { block: BlockId::new(1), offset: 0, len: 5 });
    let Some(EntryRef::File(s2)) = m.find(b"s2") else { panic!() };
    assert_eq!(s2.segments(), &[Segment { block: BlockId::new(1), offset: 7, len: 3 }]);
    assert_eq!(m.to_text(), text);
}

#[test]
fn pieces_across_tokens_and_streams_are_concatenated_and_normalized() {
    // `x` is made of three pieces: two in the first line (adjacent, so they merge), one in a later line of the
    // same stream. Streams are out of order; a file is placed in a subdirectory by its name.
    let text = ". aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+4 0:2:x 2:2:x\n\
                ./d cccccccccccccccccccccccccccccccc+1 0:1:z\n\
                . bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+3 0:3:x 1:1:d/y\n";
    let m = parse(text);
    let Some(EntryRef::File(x)) = m.find(b"x") else { panic!() };
    assert_eq!(x.size(), 7);
    assert_eq!(x.segments().len(), 2);
    assert_eq!(
        m.to_text(),
        ". aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+4 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+3 0:7:x\n\
         ./d bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+3 cccccccccccccccccccccccccccccccc+1 1:1:y 3:1:z\n"
    );
}

#[test]
fn normalization_is_depth_first_not_sorted_by_stream_name() {
    // "a" < "a b" as names, but "./a b" < "./a/x" as strings: the SDK writes depth-first.
    let m = build(&[("a/x/f", b"1"), ("a b/g", b"2"), ("a/h", b"3")], &[]);
    let text = m.to_text();
    let heads: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(heads, ["./a", "./a/x", "./a\\040b"]);
}

#[test]
fn empty_files_and_dir_markers() {
    let text = ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty 0:0:sub/\\056 0:0:sub2/deeper/.\n";
    let m = parse(text);
    assert!(matches!(m.find(b"empty"), Some(EntryRef::File(f)) if f.size() == 0));
    assert!(matches!(m.find(b"sub"), Some(EntryRef::Dir(d)) if d.is_empty()));
    assert!(matches!(m.find(b"sub2/deeper"), Some(EntryRef::Dir(d)) if d.is_empty()));
    assert_eq!(
        m.to_text(),
        ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty\n\
         ./sub d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n\
         ./sub2/deeper d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n"
    );
    // A file with an empty piece and a real one: the empty piece vanishes.
    let m = parse(". acbd18db4cc2f85cedef654fccc4a4d8+3 1:0:f 0:3:f\n");
    assert_eq!(m.to_text(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f\n");
}

#[test]
fn signed_locators_are_kept_but_not_hashed() {
    let sig = "+A0123456789abcdef0123456789abcdef01234567@5f5e1000";
    let signed = format!(". acbd18db4cc2f85cedef654fccc4a4d8+3{sig}+Kzzzzz 0:3:foo\n");
    let m = parse(&signed);
    assert_eq!(m.to_text(), signed);
    let stripped = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n";
    assert_eq!(m.to_stripped_text(), stripped);
    assert_eq!(m.pdh(), Pdh::of_text(stripped.as_bytes()));
    assert_eq!(m.pdh(), parse(stripped).pdh());
    // The same block under two signatures is listed twice in signed text but once in stripped text.
    let two =
        format!(". acbd18db4cc2f85cedef654fccc4a4d8+3{sig} acbd18db4cc2f85cedef654fccc4a4d8+3+Kother 0:3:a 3:3:b\n");
    let m = parse(&two);
    assert_eq!(m.to_text(), two);
    assert_eq!(m.to_stripped_text(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:a 0:3:b\n");
}

#[test]
fn pdh_parse_and_display() {
    let p = Pdh::parse("3e799a37d292ec16cf8a1395a8e31a1a+153").unwrap();
    assert_eq!(p.to_string(), "3e799a37d292ec16cf8a1395a8e31a1a+153");
    assert_eq!(p.text_len(), 153);
    for bad in [
        "",
        "3e799a37d292ec16cf8a1395a8e31a1a",
        "3e799a37d292ec16cf8a1395a8e31a1a+",
        "3E799A37D292EC16CF8A1395A8E31A1A+1",
        "3e799a37d292ec16cf8a1395a8e31a1a+1+A",
    ] {
        assert!(Pdh::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_refusal_names_line_and_token() {
    use ParseErrorKind as K;
    let l = "acbd18db4cc2f85cedef654fccc4a4d8+3";
    let cases: Vec<(String, usize, usize, K)> = vec![
        (format!(". {l} 0:3:a"), 1, 0, K::MissingFinalNewline),
        (format!(". {l} 0:3:a\n\n"), 2, 0, K::EmptyLine),
        (format!(".  {l} 0:3:a\n"), 1, 2, K::EmptyToken),
        (format!(". {l} 0:3:a \n"), 1, 4, K::EmptyToken),
        (format!(". {l}\t0:3:a\n"), 1, 2, K::ControlByte(b'\t')),
        (format!(". {l} 0:3:a\tb\n"), 1, 3, K::ControlByte(b'\t')),
        (format!("x {l} 0:3:a\n"), 1, 1, K::BadStreamName),
        (format!("/ {l} 0:3:a\n"), 1, 1, K::BadStreamName),
        (format!("./ {l} 0:3:a\n"), 1, 1, K::BadPathComponent("empty component (leading, trailing or doubled '/')")),
        (
            format!("./a//b {l} 0:3:a\n"),
            1,
            1,
            K::BadPathComponent("empty component (leading, trailing or doubled '/')"),
        ),
        (format!("./a/.. {l} 0:3:a\n"), 1, 1, K::BadPathComponent("'..' component")),
        (format!("./. {l} 0:3:a\n"), 1, 1, K::BadPathComponent("'.' component")),
        (format!(". {l} 0:3:a/../b\n"), 1, 3, K::BadPathComponent("'..' component")),
        (format!(". {l} 0:3:..\n"), 1, 3, K::BadPathComponent("'..' component")),
        (format!(". {l} 0:3:a/\n"), 1, 3, K::BadPathComponent("empty component (leading, trailing or doubled '/')")),
        (format!(". {l} 0:3:\n"), 1, 3, K::BadPathComponent("empty file name")),
        (format!(". {l} 0:3:a\\000b\n"), 1, 3, K::BadPathComponent("NUL byte in a name")),
        (format!(". {l} 0:3:a\\9\n"), 1, 3, K::BadEscape),
        (format!(". {l} 0:3:a\\\n"), 1, 3, K::BadEscape),
        (format!(".\\x {l} 0:3:a\n"), 1, 1, K::BadStreamName),
        (format!("./a\\4 {l} 0:3:a\n"), 1, 1, K::BadEscape),
        (". 0:3:a\n".to_string(), 1, 2, K::NoLocator),
        (".\n".to_string(), 1, 0, K::NoLocator),
        (format!(". {l}\n"), 1, 0, K::NoFileToken),
        (format!(". {l} 0:4:a\n"), 1, 3, K::OutOfRange { pos: 0, len: 4, stream_len: 3 }),
        (format!(". {l} 3:1:a\n"), 1, 3, K::OutOfRange { pos: 3, len: 1, stream_len: 3 }),
        (format!(". {l} 18446744073709551615:1:a\n"), 1, 3, K::OutOfRange { pos: u64::MAX, len: 1, stream_len: 3 }),
        (format!(". {l} 0:3:a {l}\n"), 1, 4, K::BadFileToken),
        (format!(". {l} 0:x:a\n"), 1, 3, K::BadFileToken),
        (format!(". {l} -1:3:a\n"), 1, 3, K::BadFileToken),
        (format!(". {l} 0:3\n"), 1, 3, K::BadFileToken),
        (format!(". {l} 0:3:d/.\n"), 1, 3, K::DirMarkerWithData),
        (
            ". acbd18db4cc2f85cedef654fccc4a4d+3 0:3:a\n".to_string(),
            1,
            2,
            K::BadLocator(crate::locator::LocatorError::BadHash),
        ),
        (
            format!(". {l}+Abad 0:3:a\n"),
            1,
            2,
            K::BadLocator(crate::locator::LocatorError::BadSignature("+Abad".into())),
        ),
        (format!(". {l} 0:3:a\n. {l} 0:3:a/b\n"), 2, 3, K::Conflict(TreeError::NotADirectory("a".into()))),
        (format!(". {l} 0:3:a/b\n. {l} 0:3:a\n"), 2, 3, K::Conflict(TreeError::IsADirectory("a".into()))),
        (format!(". {l} 0:3:a\n./a {l} 0:3:b\n"), 2, 1, K::Conflict(TreeError::NotADirectory("a".into()))),
        (format!("./ok {l} 0:3:a\r\n"), 1, 3, K::ControlByte(b'\r')),
    ];
    for (text, line, token, kind) in cases {
        let e = err(&text);
        assert_eq!((e.line, e.token, &e.kind), (line, token, &kind), "{text:?} gave {e}");
        let shown = e.to_string();
        assert!(shown.contains(&format!("line {line}")), "{shown}");
        if token > 0 {
            assert!(shown.contains(&format!("token {token}")), "{shown}");
        }
    }
}

#[test]
fn depth_is_bounded() {
    let at = |dirs: usize| format!(". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:{}f\n", "d/".repeat(dirs));
    assert_eq!(err(&at(MAX_DEPTH + 1)).kind, ParseErrorKind::PathTooDeep);
    let deep_stream = format!(".{} acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f\n", "/d".repeat(MAX_DEPTH + 1));
    assert_eq!(err(&deep_stream).kind, ParseErrorKind::PathTooDeep);
    let m = parse(&at(MAX_DEPTH));
    assert_eq!(m.depth(), MAX_DEPTH);
    let path = format!("{}f", "d/".repeat(MAX_DEPTH));
    assert!(matches!(m.find(path.as_bytes()), Some(EntryRef::File(f)) if f.size() == 3));
    // The writer walks the deep tree without recursion and the result parses back.
    assert_eq!(parse(&m.to_text()).to_text(), m.to_text());
}

#[test]
fn what_other_arvados_readers_accept_is_read_and_written_canonically() {
    let m = parse(". acbd18db4cc2f85cedef654fccc4a4d8+03 00:003:back\\\\slash\n");
    assert_eq!(m.to_text(), ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:back\\134slash\n");
    assert!(matches!(m.find(b"back\\slash"), Some(EntryRef::File(f)) if f.size() == 3));
}

#[test]
fn long_error_tokens_are_cut() {
    let e = err(&format!(". {} 0:1:a\n", "z".repeat(500)));
    assert!(e.text.len() <= 80, "{}", e.text);
}

fn add(dir: &mut Dir, path: &[Vec<u8>], pieces: &[(usize, u64, u64)], as_dir: bool, ids: &[BlockId]) {
    if let [name, rest @ ..] = path
        && !rest.is_empty()
    {
        if let Ok(d) = dir.subdir(name) {
            add(d, rest, pieces, as_dir, ids);
        }
        return;
    }
    let last = &path[0];
    if as_dir {
        let _ = dir.subdir(last);
    } else if let Ok(f) = dir.file(last) {
        for &(b, off, len) in pieces {
            f.push(Segment { block: ids[b], offset: off, len: len.min(8 - off) });
        }
    }
}

/// A random tree: names from a small alphabet with awkward bytes, files of a few random pieces of a few blocks.
fn arb_manifest() -> impl Strategy<Value = Manifest> {
    let name = proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b'b'),
            Just(b' '),
            Just(b':'),
            Just(b'\\'),
            Just(b'\n'),
            Just(0xc3),
            Just(0xa9),
            Just(b'.')
        ],
        1..4,
    );
    let path = proptest::collection::vec(name, 1..4);
    let piece = (0usize..4, 0u64..8, 0u64..8);
    let file = (path, proptest::collection::vec(piece, 0..4), any::<bool>());
    proptest::collection::vec(file, 0..12).prop_map(|files| {
        let mut m = Manifest::new();
        let ids: Vec<BlockId> = (0..4u8).map(|i| m.add_block(Locator::of(&[i; 8]))).collect();
        for (path, pieces, as_dir) in files {
            add(m.root_mut(), &path, &pieces, as_dir, &ids);
        }
        m
    })
}

/// A file's bytes as (locator, offset, length) ranges, adjacent ranges merged.
type Ranges = Vec<(String, u64, u64)>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn normalized_text_round_trips(m in arb_manifest()) {
        let text = m.to_text();
        let back = Manifest::parse(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back.to_text(), text.clone());
        prop_assert_eq!(back.pdh(), m.pdh());
        // Same files, same bytes (as block ranges), same sizes.
        let describe = |m: &Manifest| -> Vec<(Vec<u8>, Ranges)> {
            m.files().into_iter().map(|(p, f)| {
                let mut ranges = Vec::new();
                for s in f.segments() {
                    let r = (m.block(s.block).to_string(), s.offset, s.len);
                    match ranges.last_mut() {
                        Some((b, o, l)) if *b == r.0 && *o + *l == r.1 => *l += r.2,
                        _ => ranges.push(r),
                    }
                }
                (p, ranges)
            }).collect()
        };
        prop_assert_eq!(describe(&back), describe(&m));
    }

    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Manifest::parse(&bytes);
    }

    #[test]
    fn parser_never_panics_on_near_manifests(
        mutations in proptest::collection::vec((0usize..200, any::<u8>()), 1..4),
    ) {
        let mut bytes = SDK_ODD_NAMES.as_bytes().to_vec();
        for (at, b) in mutations {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        if let Ok(m) = Manifest::parse(&bytes) {
            let text = m.to_text();
            prop_assert_eq!(Manifest::parse(text.as_bytes()).unwrap().to_text(), text);
        }
    }
}

#[test]
fn empty_blocks_inside_a_range_carry_nothing() {
    // `f` crosses an empty block strictly inside its range, under two signatures of one block. A file is its
    // byte ranges: the empty block is not listed, and signed and stripped texts are both fixed points.
    let sig = "+A0123456789abcdef0123456789abcdef01234567@5f5e1000";
    let text = format!(
        ". acbd18db4cc2f85cedef654fccc4a4d8+3{sig} d41d8cd98f00b204e9800998ecf8427e+0 \
         acbd18db4cc2f85cedef654fccc4a4d8+3+Kx 0:6:f\n./d d41d8cd98f00b204e9800998ecf8427e+0 0:0:g\n"
    );
    let m = parse(&text);
    assert_eq!(
        m.to_text(),
        format!(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3{sig} acbd18db4cc2f85cedef654fccc4a4d8+3+Kx 0:6:f\n./d d41d8cd98f00b204e9800998ecf8427e+0 0:0:g\n"
        )
    );
    assert_eq!(
        m.to_stripped_text(),
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f 0:3:f\n./d d41d8cd98f00b204e9800998ecf8427e+0 0:0:g\n"
    );
    let again = parse(&m.to_text());
    assert_eq!(again.to_text(), m.to_text());
    assert_eq!(parse(&m.to_stripped_text()).to_stripped_text(), m.to_stripped_text());
    assert_eq!(again.pdh(), m.pdh());
}

#[test]
fn quadratic_inputs_are_refused_not_allocated() {
    // k one-byte blocks and k tokens that each span all of them: k² pieces from O(k) bytes of text.
    let k = 2000;
    let mut text = String::from(".");
    for i in 0..k {
        text.push(' ');
        text.push_str(&Locator::of(&[(i % 251) as u8, (i / 251) as u8][..1 + usize::from(i >= 251)]).to_string());
    }
    let total: u64 = (0..k).map(|i| 1 + u64::from(i >= 251)).sum();
    for i in 0..k {
        text.push_str(&format!(" 0:{total}:f{i}"));
    }
    text.push('\n');
    let e = err(&text);
    assert!(matches!(e.kind, ParseErrorKind::TooManyPieces { .. }), "{e}");
    // A legitimately large manifest of the same size is accepted.
    let m = build(
        &(0..k)
            .map(|i| (format!("f{i}"), vec![i as u8; 3]))
            .collect::<Vec<_>>()
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(parse(&m.to_text()).files().len(), k);
}

/// A foreign manifest read with [`Manifest::parse_foreign`]: its files as (path, size), and the renames.
fn foreign(text: &str) -> (Vec<(String, u64)>, Vec<Renamed>) {
    let (m, renamed) = Manifest::parse_foreign(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let files = m.files().into_iter().map(|(p, f)| (String::from_utf8_lossy(&p).into_owned(), f.size())).collect();
    (files, renamed)
}

const L5: &str = "0123456789abcdef0123456789abcdef+5";

#[test]
fn foreign_names_are_presented_not_refused() {
    let cases: &[(&str, &[(&str, u64)])] = &[
        // Components POSIX cannot hold.
        (&format!(". {L5} 0:3:\\056\\056 3:2:.\n"), &[("%2E", 2), ("%2E%2E", 3)]),
        (&format!(". {L5} 0:5:a\\000b\n"), &[("a%00b", 5)]),
        (&format!(". {L5} 0:5:\n"), &[("%", 5)]),
        (&format!("./a//b/ {L5} 0:5:c\n"), &[("a/b/c", 5)]),
        (&format!("./a/../b {L5} 0:5:c\n"), &[("a/%2E%2E/b/c", 5)]),
        (&format!(". {L5} 0:5:x/./y\n"), &[("x/%2E/y", 5)]),
        // A file and a directory of one name, in either order: the directory keeps it.
        (&format!(". {L5} 0:2:x\n./x {L5} 0:5:y\n"), &[("x.cafs-file", 2), ("x/y", 5)]),
        (&format!("./x {L5} 0:5:y\n. {L5} 0:2:x\n"), &[("x.cafs-file", 2), ("x/y", 5)]),
        (&format!(". {L5} 0:1:a 0:5:a/b 1:2:a\n"), &[("a.cafs-file", 3), ("a/b", 5)]),
        (&format!(". {L5} 0:1:a 1:1:a.cafs-file 0:5:a/b\n"), &[("a.cafs-file", 1), ("a.cafs-file.2", 1), ("a/b", 5)]),
    ];
    for (text, want) in cases {
        let (files, renamed) = foreign(text);
        let want: Vec<(String, u64)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        assert_eq!(files, want, "{text}");
        assert!(!renamed.is_empty(), "each rename is reported: {text}");
        assert!(Manifest::parse(text.as_bytes()).is_err(), "the strict parser refuses it: {text}");
        // What is presented is a valid tree: its normalized text parses strictly.
        let (m, _) = Manifest::parse_foreign(text.as_bytes()).unwrap();
        assert_eq!(parse(&m.to_text()).to_text(), m.to_text());
    }
    // A manifest with nothing odd reads the same both ways, with nothing renamed.
    let plain = format!(". {L5} 0:5:f\n./d {L5} 0:0:. 0:5:g\n");
    let (m, renamed) = Manifest::parse_foreign(plain.as_bytes()).unwrap();
    assert!(renamed.is_empty());
    assert_eq!(m, parse(&plain));
    // Other faults are still refused.
    assert!(Manifest::parse_foreign(format!(". {L5} 0:9:f\n").as_bytes()).is_err());
    assert!(Manifest::parse_foreign(b". nolocator 0:1:f\n").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever names a foreign manifest uses, every byte of every file token stays in the presented tree
    /// (markers carry none), the presentation is the same each time, and it is a valid tree.
    #[test]
    fn foreign_presentation_keeps_every_byte(
        lines in proptest::collection::vec(
            (
                prop::sample::select(vec![".", "./a", "./a/b", "./x", "./..", "./a//b", "./\\000"]),
                proptest::collection::vec(
                    (0u64..5, prop::sample::select(vec![
                        "a", "b", "x", ".", "..", "", "a/b", "x/y", "a/.", "b/..", "\\000", "a.cafs-file",
                    ])),
                    1..5,
                ),
            ),
            1..6,
        )
    ) {
        let mut text = String::new();
        let mut bytes = 0;
        for (stream, tokens) in &lines {
            text.push_str(stream);
            text.push(' ');
            text.push_str(L5);
            for (len, name) in tokens {
                let marker = name.ends_with('.') && !name.ends_with("..") && *len == 0;
                if !marker {
                    bytes += len;
                }
                text.push_str(&format!(" 0:{len}:{name}"));
            }
            text.push('\n');
        }
        let (a, _) = Manifest::parse_foreign(text.as_bytes()).unwrap();
        let (b, _) = Manifest::parse_foreign(text.as_bytes()).unwrap();
        prop_assert_eq!(&a, &b);
        let total: u64 = a.files().iter().map(|(_, f)| f.size()).sum();
        prop_assert_eq!(total, bytes, "{}", text);
        prop_assert_eq!(parse(&a.to_text()).to_text(), a.to_text());
    }
}
