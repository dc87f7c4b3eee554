//! The strict manifest parser.
//!
//! Grammar (one stream per line, tokens separated by exactly one space, every line ending in `\n`):
//! `STREAM LOCATOR… POS:LEN:NAME…` where STREAM is `.` or `./path`, at least one locator and one file token,
//! and POS:LEN addresses the concatenation of the stream's blocks. A file name may contain `/` (the file lives in
//! a subdirectory of the stream); a name whose last component is `.` with length 0 marks a directory. The same
//! file may appear in several tokens or streams: its pieces are concatenated in order.

use std::fmt;

use super::escape::{UnescapeError, unescape_into};
use super::tree::{Dir, File, Name, Segment, TreeError, valid_name};
use super::{BlockId, Manifest};
use crate::locator::{Locator, LocatorError, parse_decimal_lenient};

/// Deepest directory nesting accepted (the root's subdirectories are at depth 1). Far beyond real data, and the
/// bound keeps every walk and drop of a tree shallow. Trees that nest deeper are refused when committed
/// (`CollectionRecord::new`), so every stored manifest parses back.
pub const MAX_DEPTH: usize = 1024;

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based token number within the line; 0 when the problem is the line as a whole.
    pub token: usize,
    /// The offending token (or line), lossily decoded and cut to 80 characters.
    pub text: String,
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token == 0 {
            write!(f, "manifest line {}: {} (line {:?})", self.line, self.kind, self.text)
        } else {
            write!(f, "manifest line {}, token {} {:?}: {}", self.line, self.token, self.text, self.kind)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("manifest text must end with a newline")]
    MissingFinalNewline,
    #[error("empty line")]
    EmptyLine,
    #[error("empty token: tokens are separated by exactly one space")]
    EmptyToken,
    #[error("raw control byte 0x{0:02x}: separators are single spaces, and names write control bytes as \\ooo")]
    ControlByte(u8),
    #[error("stream name must be '.' or start with './'")]
    BadStreamName,
    #[error("bad escape: a backslash must be followed by three octal digits (\\000 to \\377)")]
    BadEscape,
    #[error("bad path component: {0}")]
    BadPathComponent(&'static str),
    #[error("path nests deeper than {MAX_DEPTH} directories")]
    PathTooDeep,
    #[error("stream has no block locator")]
    NoLocator,
    #[error("stream has no file token")]
    NoFileToken,
    #[error("bad locator: {0}")]
    BadLocator(LocatorError),
    #[error("bad file token: expected POS:LEN:NAME with decimal POS and LEN (locators come before file tokens)")]
    BadFileToken,
    #[error("range {pos}:{len} lies beyond the stream's {stream_len} bytes of data")]
    OutOfRange { pos: u64, len: u64, stream_len: u64 },
    #[error("a directory marker ('.') must have length 0")]
    DirMarkerWithData,
    #[error("{0}")]
    Conflict(TreeError),
    #[error("file tokens map to more than {limit} pieces of blocks (one per byte of manifest text)")]
    TooManyPieces { limit: u64 },
}

struct StreamBlock {
    start: u64,
    size: u64,
    id: BlockId,
}

/// Per-parse scratch space, reused across lines so that a large manifest does not allocate per token.
struct Parser<'a> {
    line_no: usize,
    token_no: usize,
    token: &'a [u8],
    blocks: Vec<StreamBlock>,
    stream_path: Vec<u8>,
    name: Vec<u8>,
    /// Pieces (file segment × block overlaps) mapped so far, and the most allowed. A token spanning many blocks
    /// is legitimate, but many tokens each spanning many blocks would make memory grow with the square of the
    /// text; one piece per byte of text bounds it linearly while leaving real manifests far inside.
    pieces: u64,
    max_pieces: u64,
    /// Files of the current stream gathered in name order, while the stream's directory started empty and every
    /// name so far is plain and past the one before (always, for normalized text): built into the directory in
    /// one pass at the end of the line instead of a tree search per file. `bulk` is off once that fails.
    pending: Vec<(Name, File)>,
    bulk: bool,
    /// Reading a foreign manifest: odd names are presented (see [`Renamed`]) instead of refused.
    foreign: bool,
    renamed: Vec<Renamed>,
    /// Files moved aside for a directory of the same name, by their path as written: where later tokens for
    /// the same file go.
    moved: std::collections::HashMap<Vec<u8>, Vec<u8>>,
}

/// A name of a foreign manifest that cafs presents differently, and why. See [`present_component`] and
/// [`file_aside`] for the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    /// The path as the manifest writes it (unescaped).
    pub original: Vec<u8>,
    /// The path cafs shows.
    pub presented: Vec<u8>,
    pub why: &'static str,
}

/// How a path component of a foreign manifest that cannot be a POSIX name is shown: `.` as `%2E`, `..` as
/// `%2E%2E`, each NUL byte as `%00`. `None` for a component that is fine as it is. (An empty component, from a
/// doubled, leading or trailing `/`, is dropped instead: it names no directory.)
pub fn present_component(c: &[u8]) -> Option<Vec<u8>> {
    match c {
        b"." => Some(b"%2E".to_vec()),
        b".." => Some(b"%2E%2E".to_vec()),
        _ if c.contains(&0) => Some(c.iter().flat_map(|&b| if b == 0 { b"%00".to_vec() } else { vec![b] }).collect()),
        _ => None,
    }
}

/// The name a file takes when a directory of the foreign manifest has its name: `NAME.cafs-file`, or
/// `NAME.cafs-file.2`, `.3`, ... if that is taken too. The directory keeps the name.
fn file_aside(dir: &Dir, name: &[u8]) -> Vec<u8> {
    let base = [name, b".cafs-file"].concat();
    let mut candidate = base.clone();
    let mut n = 1;
    while dir.get(&candidate).is_some() {
        n += 1;
        candidate = [&base[..], b".", n.to_string().as_bytes()].concat();
    }
    candidate
}

/// Whether every component of `path` is a name as it stands (none empty, none to present differently).
fn plain_path(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').all(|c| !c.is_empty() && present_component(c).is_none())
}

/// Records that the file written as `original` is shown as `presented`, beside a directory of its name.
fn record_aside(p: &mut Parser<'_>, original: Vec<u8>, presented: Vec<u8>) {
    p.moved.insert(original.clone(), presented.clone());
    let why = "a file and a directory have this name: the directory keeps it";
    p.renamed.push(Renamed { original, presented, why });
}

/// Rewrites the components of `path` (components joined by `/`, `first` of them kept as they are) as
/// [`present_component`] says. Returns whether anything changed.
fn present_path(path: &mut Vec<u8>, first: usize) -> bool {
    if path.is_empty() {
        return false;
    }
    if !path.split(|&b| b == b'/').skip(first).any(|c| c.is_empty() || present_component(c).is_some()) {
        return false;
    }
    let kept: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .enumerate()
        .filter(|(i, c)| *i < first || !c.is_empty())
        .map(|(i, c)| if i < first { None } else { present_component(c) }.unwrap_or_else(|| c.to_vec()))
        .collect();
    *path = kept.join(&b'/');
    true
}

impl<'a> Parser<'a> {
    fn err(&self, kind: ParseErrorKind) -> ParseError {
        ParseError { line: self.line_no, token: self.token_no, text: show(self.token), kind }
    }

    fn unescape_err(&self, e: UnescapeError) -> ParseError {
        self.err(match e {
            UnescapeError::BadEscape => ParseErrorKind::BadEscape,
            UnescapeError::ControlByte(b) => ParseErrorKind::ControlByte(b),
        })
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 80 { s.chars().take(77).chain("...".chars()).collect() } else { s.into_owned() }
}

fn component_error(c: &[u8]) -> Option<ParseErrorKind> {
    if valid_name(c) {
        return None;
    }
    Some(ParseErrorKind::BadPathComponent(match c {
        b"" => "empty component (leading, trailing or doubled '/')",
        b"." => "'.' component",
        b".." => "'..' component",
        _ => "NUL byte in a name",
    }))
}

/// Walks (creating as needed) the directories named by `components` below `dir`.
fn walk<'d, 'c>(
    mut dir: &'d mut Dir,
    components: impl Iterator<Item = &'c [u8]>,
) -> Result<&'d mut Dir, ParseErrorKind> {
    for c in components {
        dir = dir.subdir(c).map_err(ParseErrorKind::Conflict)?;
    }
    Ok(dir)
}

/// [`walk`] for a foreign manifest: a file where a directory must be is moved aside (see [`file_aside`]).
/// `base` is the path of `dir` (`.` for the root), for the record of what moved.
fn walk_foreign<'d, 'c>(
    p: &mut Parser<'_>,
    mut dir: &'d mut Dir,
    base: &[u8],
    components: impl Iterator<Item = &'c [u8]>,
) -> Result<&'d mut Dir, ParseErrorKind> {
    let mut path = base.to_vec();
    for c in components {
        path.push(b'/');
        path.extend_from_slice(c);
        if let Some(crate::manifest::Entry::File(_)) = dir.get(c) {
            let aside = file_aside(dir, c);
            let file = dir.remove(c).expect("just seen");
            dir.insert(&aside, file).map_err(ParseErrorKind::Conflict)?;
            let presented = [&path[..path.len() - c.len()], &aside[..]].concat();
            record_aside(p, path.clone(), presented);
        }
        dir = dir.subdir(c).map_err(ParseErrorKind::Conflict)?;
    }
    Ok(dir)
}

pub(super) fn parse(text: &[u8]) -> Result<Manifest, ParseError> {
    parse_as(text, false).map(|(m, _)| m)
}

/// [`parse`], presenting rather than refusing the odd names a manifest written elsewhere may hold.
pub(super) fn parse_foreign(text: &[u8]) -> Result<(Manifest, Vec<Renamed>), ParseError> {
    parse_as(text, true)
}

fn parse_as(text: &[u8], foreign: bool) -> Result<(Manifest, Vec<Renamed>), ParseError> {
    let mut m = Manifest::new();
    if text.is_empty() {
        return Ok((m, Vec::new()));
    }
    let mut p = Parser {
        line_no: 0,
        token_no: 0,
        token: b"",
        blocks: Vec::new(),
        stream_path: Vec::new(),
        name: Vec::new(),
        pieces: 0,
        max_pieces: text.len() as u64,
        pending: Vec::new(),
        bulk: false,
        foreign,
        renamed: Vec::new(),
        moved: Default::default(),
    };
    if text.last() != Some(&b'\n') {
        let last_line = text.rsplit(|&b| b == b'\n').next().unwrap_or(text);
        p.line_no = memchr::memchr_iter(b'\n', text).count() + 1;
        p.token = last_line;
        return Err(p.err(ParseErrorKind::MissingFinalNewline));
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text) {
        p.line_no += 1;
        let line = &text[start..end];
        start = end + 1;
        parse_line(&mut m, &mut p, line)?;
    }
    Ok((m, p.renamed))
}

fn parse_line<'a>(m: &mut Manifest, p: &mut Parser<'a>, line: &'a [u8]) -> Result<(), ParseError> {
    p.token_no = 0;
    p.token = line;
    if line.is_empty() {
        return Err(p.err(ParseErrorKind::EmptyLine));
    }
    // A raw control byte (a tab, a CR) is never valid: name it before it is misread as part of a token.
    if let Some(i) = line.iter().position(|&b| b < b' ') {
        let token_start = memchr::memrchr(b' ', &line[..i]).map_or(0, |s| s + 1);
        let token_end = memchr::memchr(b' ', &line[i..]).map_or(line.len(), |e| i + e);
        p.token_no = 1 + memchr::memchr_iter(b' ', &line[..i]).count();
        p.token = &line[token_start..token_end];
        return Err(p.err(ParseErrorKind::ControlByte(line[i])));
    }
    let mut tokens = line.split(|&b| b == b' ');

    // Stream name.
    let tok = tokens.next().expect("split yields at least one token");
    let stream_tok = tok;
    p.token_no = 1;
    p.token = tok;
    if tok.is_empty() {
        return Err(p.err(ParseErrorKind::EmptyToken));
    }
    if tok != b"." && !tok.starts_with(b"./") {
        return Err(p.err(ParseErrorKind::BadStreamName));
    }
    p.stream_path.clear();
    unescape_into(&mut p.stream_path, tok).map_err(|e| p.unescape_err(e))?;
    if p.foreign {
        let original = p.stream_path.clone();
        if present_path(&mut p.stream_path, 1) {
            let why = "a stream's path holds an empty, '.' or '..' component or a NUL byte";
            p.renamed.push(Renamed { original, presented: p.stream_path.clone(), why });
        }
    }
    let stream_depth = p.stream_path.split(|&b| b == b'/').count() - 1;
    if stream_depth > MAX_DEPTH {
        return Err(p.err(ParseErrorKind::PathTooDeep));
    }
    if let Some(kind) = p.stream_path.split(|&b| b == b'/').skip(1).find_map(component_error) {
        return Err(p.err(kind));
    }

    // Locators, then file tokens.
    p.blocks.clear();
    let mut stream_len = 0u64;
    let mut first_file = None;
    for tok in tokens.by_ref() {
        p.token_no += 1;
        p.token = tok;
        if tok.is_empty() {
            return Err(p.err(ParseErrorKind::EmptyToken));
        }
        if memchr::memchr(b':', tok).is_some() {
            first_file = Some(tok);
            break;
        }
        let loc = Locator::parse_bytes(tok).map_err(|e| p.err(ParseErrorKind::BadLocator(e)))?;
        let size = loc.size();
        let id = m.add_block(loc);
        p.blocks.push(StreamBlock { start: stream_len, size, id });
        // Each block is at most 64 MiB, so overflow needs ~2^38 locators on one line: not reachable, but cheap.
        stream_len = stream_len.checked_add(size).ok_or_else(|| p.err(ParseErrorKind::BadFileToken))?;
    }
    if p.blocks.is_empty() {
        if first_file.is_none() {
            p.token_no = 0;
            p.token = line;
        }
        return Err(p.err(ParseErrorKind::NoLocator));
    }
    let Some(first_file) = first_file else {
        p.token_no = 0;
        p.token = line;
        return Err(p.err(ParseErrorKind::NoFileToken));
    };

    let stream_path = std::mem::take(&mut p.stream_path);
    let walked = if p.foreign {
        walk_foreign(p, &mut m.root, &stream_path[..], stream_path.split(|&b| b == b'/').skip(1))
    } else {
        walk(&mut m.root, stream_path.split(|&b| b == b'/').skip(1))
    };
    p.stream_path = stream_path;
    let stream_dir = walked.map_err(|k| ParseError { line: p.line_no, token: 1, text: show(stream_tok), kind: k })?;
    let mut cursor = 0usize;
    p.bulk = stream_dir.is_empty();
    p.token = first_file;
    parse_file_token(p, stream_dir, stream_depth, stream_len, &mut cursor, first_file)?;
    for tok in tokens {
        p.token_no += 1;
        p.token = tok;
        parse_file_token(p, stream_dir, stream_depth, stream_len, &mut cursor, tok)?;
    }
    flush_pending(p, stream_dir)
}

/// Puts the gathered files into their (still empty) directory and ends gathering for this line.
fn flush_pending(p: &mut Parser<'_>, dir: &mut Dir) -> Result<(), ParseError> {
    if p.bulk {
        p.bulk = false;
        dir.fill_sorted(std::mem::take(&mut p.pending)).map_err(|e| p.err(ParseErrorKind::Conflict(e)))?;
    }
    Ok(())
}

fn parse_file_token(
    p: &mut Parser<'_>,
    stream_dir: &mut Dir,
    stream_depth: usize,
    stream_len: u64,
    cursor: &mut usize,
    tok: &[u8],
) -> Result<(), ParseError> {
    if tok.is_empty() {
        return Err(p.err(ParseErrorKind::EmptyToken));
    }
    let c1 = memchr::memchr(b':', tok).ok_or_else(|| p.err(ParseErrorKind::BadFileToken))?;
    let c2 = memchr::memchr(b':', &tok[c1 + 1..]).ok_or_else(|| p.err(ParseErrorKind::BadFileToken))? + c1 + 1;
    let pos = parse_decimal_lenient(&tok[..c1]).ok_or_else(|| p.err(ParseErrorKind::BadFileToken))?;
    let len = parse_decimal_lenient(&tok[c1 + 1..c2]).ok_or_else(|| p.err(ParseErrorKind::BadFileToken))?;
    let raw_name = &tok[c2 + 1..];
    if raw_name.is_empty() && !p.foreign {
        return Err(p.err(ParseErrorKind::BadPathComponent("empty file name")));
    }
    match pos.checked_add(len) {
        Some(end) if end <= stream_len => {}
        _ => {
            return Err(p.err(ParseErrorKind::OutOfRange { pos, len, stream_len }));
        }
    }
    p.name.clear();
    unescape_into(&mut p.name, raw_name).map_err(|e| p.unescape_err(e))?;
    if p.foreign {
        present_file_name(p, len);
    }

    let name = std::mem::take(&mut p.name);
    let result = place(p, stream_dir, stream_depth, pos, len, cursor, &name);
    p.name = name;
    result
}

/// For a foreign manifest: rewrites the file token's name in `p.name` as the presentation scheme says (a last
/// component `.` with data is a file named `%2E`, not a directory marker; an empty last component is `%`).
fn present_file_name(p: &mut Parser<'_>, len: u64) {
    // The common case, a plain name, costs a scan and nothing more.
    if plain_path(&p.name) || (len == 0 && p.name.ends_with(b"/.") && plain_path(&p.name[..p.name.len() - 2])) {
        return;
    }
    let original = [&p.stream_path[..], b"/", &p.name[..]].concat();
    let mut name = std::mem::take(&mut p.name);
    let marker = len == 0 && (name == b"." || name.ends_with(b"/."));
    let changed = if marker {
        // A directory marker: only the path before it is presented.
        let mut dirs = name[..name.len().saturating_sub(2)].to_vec();
        let changed = present_path(&mut dirs, 0);
        name = if dirs.is_empty() { b".".to_vec() } else { [&dirs[..], b"/."].concat() };
        changed
    } else {
        let empty_last = name.is_empty() || name.ends_with(b"/");
        let mut changed = present_path(&mut name, 0);
        if empty_last {
            if !name.is_empty() {
                name.push(b'/');
            }
            name.push(b'%');
            changed = true;
        }
        changed
    };
    if changed {
        let presented = [&p.stream_path[..], b"/", &name[..]].concat();
        let why = "a file's name holds an empty, '.' or '..' component or a NUL byte";
        p.renamed.push(Renamed { original, presented, why });
    }
    p.name = name;
}

fn place(
    p: &mut Parser<'_>,
    stream_dir: &mut Dir,
    stream_depth: usize,
    pos: u64,
    len: u64,
    cursor: &mut usize,
    name: &[u8],
) -> Result<(), ParseError> {
    // `a/b/name`: the file lives in subdirectories of the stream. A last component of `.` marks a directory.
    let (dirs, last) = match memchr::memrchr(b'/', name) {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    };
    let components = || dirs.into_iter().flat_map(|d| d.split(|&b| b == b'/'));
    let is_marker = last == b".";
    if is_marker && len != 0 {
        return Err(p.err(ParseErrorKind::DirMarkerWithData));
    }
    if stream_depth + components().count() > MAX_DEPTH {
        return Err(p.err(ParseErrorKind::PathTooDeep));
    }
    if let Some(kind) = components().find_map(component_error) {
        return Err(p.err(kind));
    }
    if !is_marker && let Some(kind) = component_error(last) {
        return Err(p.err(kind));
    }
    let plain = dirs.is_none() && !is_marker;
    let gather = p.bulk && plain && p.pending.last().is_none_or(|(prev, _)| &prev[..] <= last);
    if p.bulk && !gather {
        flush_pending(p, stream_dir)?;
    }
    if gather {
        let mut pending = std::mem::take(&mut p.pending);
        if pending.last().is_none_or(|(prev, _)| &prev[..] < last) {
            pending.push((last.into(), File::new()));
        }
        let r = map_segments(p, &mut pending.last_mut().expect("just made sure").1, pos, len, cursor);
        p.pending = pending;
        return r;
    }
    if !p.foreign {
        let dir = walk(stream_dir, components()).map_err(|k| p.err(k))?;
        if is_marker {
            return Ok(());
        }
        let file = dir.file(last).map_err(|e| p.err(ParseErrorKind::Conflict(e)))?;
        return map_segments(p, file, pos, len, cursor);
    }
    let stream_path = p.stream_path.clone();
    let dir = walk_foreign(p, stream_dir, &stream_path, components()).map_err(|k| p.err(k))?;
    if is_marker {
        return Ok(());
    }
    let mut path = stream_path;
    for c in components() {
        path.push(b'/');
        path.extend_from_slice(c);
    }
    let dir_path_len = path.len();
    path.push(b'/');
    path.extend_from_slice(last);
    // A directory has this name: the file goes aside, where this file's earlier tokens went.
    let target = if let Some(presented) = p.moved.get(&path) {
        presented[dir_path_len + 1..].to_vec()
    } else if let Some(crate::manifest::Entry::Dir(_)) = dir.get(last) {
        let aside = file_aside(dir, last);
        let presented = [&path[..=dir_path_len], &aside[..]].concat();
        record_aside(p, path, presented);
        aside
    } else {
        last.to_vec()
    };
    let file = dir.file(&target).map_err(|e| p.err(ParseErrorKind::Conflict(e)))?;
    map_segments(p, file, pos, len, cursor)
}

/// Maps [pos, pos+len) of the stream onto its blocks, appending the pieces to `file`.
fn map_segments(p: &mut Parser<'_>, file: &mut File, pos: u64, len: u64, cursor: &mut usize) -> Result<(), ParseError> {
    // Map [pos, pos+len) of the stream onto its blocks. File tokens usually advance through the stream in order,
    // so try the block where the previous token ended before searching.
    let blocks = &p.blocks;
    let mut i =
        if *cursor < blocks.len() && blocks[*cursor].start <= pos && pos < blocks[*cursor].start + blocks[*cursor].size
        {
            *cursor
        } else {
            blocks.partition_point(|b| b.start + b.size <= pos)
        };
    let (mut at, mut left) = (pos, len);
    while left > 0 {
        let b = &blocks[i];
        if b.size == 0 {
            // An empty block carries no bytes. (The SDK keeps an empty piece for one strictly inside a range,
            // which lists it in the normalized stream; cafs does not, so that a file is exactly its byte ranges
            // and write → parse → write is a fixed point in signed and stripped form. See README.)
            i += 1;
            continue;
        }
        p.pieces += 1;
        if p.pieces > p.max_pieces {
            return Err(p.err(ParseErrorKind::TooManyPieces { limit: p.max_pieces }));
        }
        let off = at - b.start;
        let take = (b.size - off).min(left);
        file.push(Segment { block: b.id, offset: off, len: take });
        at += take;
        left -= take;
        if left > 0 {
            i += 1;
        }
    }
    *cursor = i;
    Ok(())
}
