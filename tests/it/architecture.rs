//! The architecture, read from the source: the layers of `src/` depend only downwards, the
//! domain does no IO, and functions stay short.
//!
//! The layers, bottom to top: domain < memory < log < views < engine < service < rehearsal <
//! cli. A module may use any layer below its own, never one above it. The scanner is small
//! and pure (a lexer that blanks comments and literals, a path finder, a function-length
//! finder); it is tested on snippets first, then run over the repository.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The top-level modules of the library, bottom to top.
const LAYERS: [&str; 8] = ["domain", "memory", "log", "views", "engine", "service", "rehearsal", "cli"];

/// The folders whose functions are measured, relative to the repository root.
const MEASURED: [&str; 3] = ["src", "projections/src", "snapshots/src"];

/// The most lines a function may take, from the line of `fn` to that of its closing brace.
const MAX_FN_LINES: usize = 70;

/// The functions longer than [`MAX_FN_LINES`]: (file, function, lines). The list may only
/// shrink: a function leaves it once it is gone or short enough, and may not grow past its
/// count. `long_functions_are_listed` prints the list as the tree is now (run it with
/// `--nocapture`, or read its failure message).
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[
    ("src/log/transfer.rs", "event", 89),
    ("src/rehearsal/loadgen/mod.rs", "run", 122),
    ("src/rehearsal/loadgen/mod.rs", "check_http", 82),
    ("src/rehearsal/sim.rs", "generate_day", 122),
    ("src/views/ledger.rs", "apply_event", 117),
];

// ---------------------------------------------------------------------------------------------
// The lexer: comments and literals blanked, every line where it was.

/// A source with its comments blanked out and its string and char literals emptied (their
/// quotes stay); every other byte, newlines included, is where it was.
struct Blanked {
    code: String,
    /// The string literals: the offset of their opening quote, and their text.
    strings: Vec<(usize, String)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Piece {
    Code,
    Comment,
    Str,
    Char,
}

fn blank(src: &str) -> Blanked {
    let bytes = src.as_bytes();
    let mut code = bytes.to_vec();
    let mut strings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (piece, wiped, next) = piece(bytes, i);
        if piece == Piece::Str {
            strings.push((wiped.start - 1, String::from_utf8_lossy(&bytes[wiped.clone()]).into_owned()));
        }
        if piece != Piece::Code {
            code[wiped].iter_mut().filter(|b| **b != b'\n').for_each(|b| *b = b' ');
        }
        i = next.max(i + 1);
    }
    Blanked { code: String::from_utf8_lossy(&code).into_owned(), strings }
}

/// The byte at `i`, or 0 past the end.
fn at(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn utf8_width(first: u8) -> usize {
    match first {
        0..0x80 => 1,
        0x80..0xe0 => 2,
        0xe0..0xf0 => 3,
        _ => 4,
    }
}

/// What starts at `i`: its kind, the bytes to blank, and where the next piece starts.
fn piece(b: &[u8], i: usize) -> (Piece, Range<usize>, usize) {
    match at(b, i) {
        b'/' if at(b, i + 1) == b'/' => {
            let end = (i..b.len()).find(|&k| b[k] == b'\n').unwrap_or(b.len());
            (Piece::Comment, i..end, end)
        }
        b'/' if at(b, i + 1) == b'*' => {
            let end = block_comment_end(b, i);
            (Piece::Comment, i..end, end)
        }
        b'"' => cooked(b, i + 1),
        b'\'' => char_or_lifetime(b, i),
        c if is_word_byte(c) => word(b, i),
        _ => (Piece::Code, i..i, i + 1),
    }
}

/// The end of the block comment at `i`; block comments nest.
fn block_comment_end(b: &[u8], i: usize) -> usize {
    let (mut depth, mut k) = (0, i);
    while k < b.len() {
        if b[k..].starts_with(b"/*") {
            (depth, k) = (depth + 1, k + 2);
        } else if b[k..].starts_with(b"*/") {
            (depth, k) = (depth - 1, k + 2);
            if depth == 0 {
                return k;
            }
        } else {
            k += 1;
        }
    }
    b.len()
}

/// The string whose text starts at `start`, up to its closing quote; `\"` does not close it.
fn cooked(b: &[u8], start: usize) -> (Piece, Range<usize>, usize) {
    let mut k = start;
    while k < b.len() && b[k] != b'"' {
        k += if b[k] == b'\\' { 2 } else { 1 };
    }
    let close = k.min(b.len());
    (Piece::Str, start..close, close + 1)
}

/// The raw string whose text starts at `start`, up to a quote and `hashes` `#`.
fn raw(b: &[u8], start: usize, hashes: usize) -> (Piece, Range<usize>, usize) {
    let closes = |k: &usize| b[*k] == b'"' && b[k + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes;
    let close = (start..b.len()).find(closes).unwrap_or(b.len());
    (Piece::Str, start..close, close + 1 + hashes)
}

/// A char literal (`'a'`, `'\''`, `'é'`) or, when the quote is not closed after one char, a
/// lifetime or a label (`'a`, `'static`), which is code.
fn char_or_lifetime(b: &[u8], q: usize) -> (Piece, Range<usize>, usize) {
    if at(b, q + 1) == b'\\' {
        let close = (q + 3..b.len()).find(|&k| b[k] == b'\'').unwrap_or(b.len());
        return (Piece::Char, q + 1..close, close + 1);
    }
    let width = utf8_width(at(b, q + 1));
    if at(b, q + 1) != 0 && at(b, q + 1 + width) == b'\'' {
        (Piece::Char, q + 1..q + 1 + width, q + 2 + width)
    } else {
        (Piece::Code, q..q, q + 1)
    }
}

/// A word, unless it is the prefix of a literal: `r"..."`, `r#"..."#`, `b"..."`, `b'x'`,
/// `br#"..."#`, `c"..."`, `cr"..."`.
fn word(b: &[u8], i: usize) -> (Piece, Range<usize>, usize) {
    let j = (i..b.len()).find(|&k| !is_word_byte(b[k])).unwrap_or(b.len());
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    match (&b[i..j], at(b, j)) {
        (b"r" | b"br" | b"cr", b'"' | b'#') if at(b, j + hashes) == b'"' => raw(b, j + hashes + 1, hashes),
        (b"b" | b"c", b'"') => cooked(b, j + 1),
        (b"b", b'\'') => char_or_lifetime(b, j),
        _ => (Piece::Code, i..i, j),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, attributes, `#[cfg(test)]` items and inline modules.

/// A word (identifier, keyword, number), `::`, or one other char of blanked code.
#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
    offset: usize,
}

fn tokenize(code: &str) -> Vec<Token> {
    let b = code.as_bytes();
    let (mut tokens, mut line, mut i) = (Vec::new(), 1, 0);
    while i < b.len() {
        let len = if b[i].is_ascii_whitespace() {
            line += usize::from(b[i] == b'\n');
            0
        } else if is_word_byte(b[i]) {
            b[i..].iter().take_while(|&&c| is_word_byte(c)).count()
        } else if b[i..].starts_with(b"::") {
            2
        } else {
            utf8_width(b[i])
        };
        if len > 0 {
            tokens.push(Token { text: code[i..i + len].to_string(), line, offset: i });
        }
        i += len.max(1);
    }
    tokens
}

/// The text of token `k`, or "" past the end.
fn text(toks: &[Token], k: usize) -> &str {
    toks.get(k).map_or("", |t| t.text.as_str())
}

/// A name: a word that is not a number.
fn is_name(word: &str) -> bool {
    word.bytes().next().is_some_and(|b| is_word_byte(b) && !b.is_ascii_digit())
}

/// The token closing the bracket opened at `open` (any of `(`, `[`, `{` counts).
fn matching(toks: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => continue,
        }
        if depth == 0 {
            return k;
        }
    }
    toks.len().saturating_sub(1)
}

/// The attributes, `#[...]` and `#![...]`: the token of their `#` and of their `]`.
fn attributes(toks: &[Token]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let open = if text(toks, i + 1) == "!" { i + 2 } else { i + 1 };
        if t.text == "#" && text(toks, open) == "[" {
            found.push((i, matching(toks, open)));
        }
    }
    found
}

/// The token after a visibility (`pub`, `pub(crate)`) starting at `k`.
fn skip_visibility(toks: &[Token], k: usize) -> usize {
    match (text(toks, k), text(toks, k + 1)) {
        ("pub", "(") => matching(toks, k + 1) + 1,
        ("pub", _) => k + 1,
        _ => k,
    }
}

/// The last token of the item (or statement) starting at `start`.
fn item_end(toks: &[Token], start: usize) -> usize {
    let is_use = text(toks, skip_visibility(toks, start)) == "use";
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(start) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth -= 1,
            "}" if depth == 0 => return k - 1,
            "}" if depth == 1 && !is_use => return k,
            "}" => depth -= 1,
            ";" if depth == 0 => return k,
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// The tokens under `#[cfg(test)]`: the items it is on (attributes included), and the
/// rest of the module after an inner `#![cfg(test)]`.
fn test_only(toks: &[Token]) -> Vec<Range<usize>> {
    let attrs = attributes(toks);
    let mut found = Vec::new();
    for &(start, end) in &attrs {
        let inner = text(toks, start + 1) == "!";
        let words = toks[start..=end].iter().map(|t| t.text.as_str()).filter(|w| *w != "!");
        if !words.eq(["#", "[", "cfg", "(", "test", ")", "]"]) {
            continue;
        }
        let mut item = end + 1;
        while let Some(&(_, next)) = attrs.iter().find(|(s, _)| *s == item) {
            item = next + 1;
        }
        found.push(start..if inner { module_end(toks, item) } else { item_end(toks, item) + 1 });
    }
    found
}

/// The end of the module (the token of its closing brace, or the end of the file) that
/// token `from` is in.
fn module_end(toks: &[Token], from: usize) -> usize {
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(from) {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" if depth == 0 => return k,
            "}" => depth -= 1,
            _ => {}
        }
    }
    toks.len()
}

/// The modules declared in files of their own (`mod name;`): the token of `mod`, and the name.
fn declared_modules(toks: &[Token]) -> Vec<(usize, String)> {
    let declares = |k: &usize| text(toks, *k) == "mod" && is_name(text(toks, k + 1)) && text(toks, k + 2) == ";";
    (0..toks.len()).filter(declares).map(|k| (k, text(toks, k + 1).to_string())).collect()
}

/// For every token, the inline modules (`mod name { ... }`) it is in, outermost first.
fn inline_modules(toks: &[Token]) -> Vec<Vec<String>> {
    let (mut braces, mut current, mut per_token) = (Vec::new(), Vec::new(), Vec::with_capacity(toks.len()));
    for (k, t) in toks.iter().enumerate() {
        if t.text == "{" {
            let name = (k >= 2 && toks[k - 2].text == "mod").then(|| toks[k - 1].text.clone());
            current.extend(name.clone());
            braces.push(name.is_some());
        } else if t.text == "}" && braces.pop() == Some(true) {
            current.pop();
        }
        per_token.push(current.clone());
    }
    per_token
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// A path in code: the token it is reported at, its segments (a leading `::` is an empty
/// segment), and the name a `use` brings it in as.
#[derive(Debug)]
struct Named {
    token: usize,
    segments: Vec<String>,
    imported: Option<String>,
}

/// The paths of blanked code: every leaf of a `use` tree, every `extern crate`, and every
/// other path of two segments or more (`crate::log::Record`, `std::io::Result`).
fn paths(toks: &[Token]) -> Vec<Named> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let prev = if i == 0 { "" } else { text(toks, i - 1) };
        i = match text(toks, i) {
            "use" if text(toks, i + 1) != "<" => use_tree(toks, i + 1, &[], &mut found),
            "extern" if text(toks, i + 1) == "crate" => {
                found.push(Named { token: i + 2, segments: vec![text(toks, i + 2).into()], imported: None });
                i + 3
            }
            "::" if is_name(prev) || matches!(prev, ">" | ")" | "]" | "?") => i + 1,
            _ => {
                let (segments, next) = inline_path(toks, i);
                if segments.len() >= 2 {
                    found.push(Named { token: i, segments, imported: None });
                }
                next
            }
        };
    }
    found
}

/// The segment at `k` (a name, or `$crate`), and the token after it.
fn segment(toks: &[Token], k: usize) -> Option<(String, usize)> {
    match text(toks, k) {
        "$" if is_name(text(toks, k + 1)) => Some((format!("${}", text(toks, k + 1)), k + 2)),
        word if is_name(word) => Some((word.to_string(), k + 1)),
        _ => None,
    }
}

/// The path starting at `i` (maybe a single segment, maybe none), and the token after it.
fn inline_path(toks: &[Token], i: usize) -> (Vec<String>, usize) {
    let (mut segments, mut k) = (Vec::new(), i);
    if text(toks, k) == "::" {
        segments.push(String::new());
        k += 1;
    }
    while let Some((word, next)) = segment(toks, k) {
        segments.push(word);
        k = next;
        if text(toks, k) != "::" || segment(toks, k + 1).is_none() {
            break;
        }
        k += 1;
    }
    (segments, k.max(i + 1))
}

/// Adds the leaves of the `use` tree at `i` under `prefix`; returns the token after the tree.
fn use_tree(toks: &[Token], mut i: usize, prefix: &[String], found: &mut Vec<Named>) -> usize {
    let (mut segments, mut first) = (prefix.to_vec(), None);
    if text(toks, i) == "::" {
        (segments, first, i) = (vec![String::new()], Some(i), i + 1);
    }
    loop {
        match text(toks, i) {
            "{" => {
                i += 1;
                while !matches!(text(toks, i), "}" | "") {
                    i = use_tree(toks, i, &segments, found);
                    i += usize::from(text(toks, i) == ",");
                }
                return i + 1;
            }
            "*" => {
                segments.push("*".into());
                found.push(Named { token: first.unwrap_or(i), segments, imported: None });
                return i + 1;
            }
            _ => {}
        }
        let Some((word, next)) = segment(toks, i) else { return i + 1 };
        first.get_or_insert(i);
        segments.push(word);
        i = next;
        if text(toks, i) == "::" {
            i += 1;
            continue;
        }
        let alias = (text(toks, i) == "as").then(|| text(toks, i + 1).to_string());
        i += if alias.is_some() { 2 } else { 0 };
        if segments.last().is_some_and(|s| s == "self") {
            segments.pop();
        }
        let imported = alias.or_else(|| segments.last().cloned());
        found.push(Named { token: first.unwrap_or(i), segments, imported });
        return i;
    }
}

/// The paths in the string literals of attributes (`#[serde(with = "crate::x::f")]`) that
/// start at `crate`, `self` or `super`; doc attributes aside. They are reported at the
/// literal's quote.
fn attribute_paths(toks: &[Token], strings: &[(usize, String)]) -> Vec<Named> {
    let mut found = Vec::new();
    for (start, end) in attributes(toks) {
        let name = (start + 1..end).map(|k| text(toks, k)).find(|w| is_name(w));
        if name == Some("doc") {
            continue;
        }
        let (from, to) = (toks[start].offset, toks[end].offset);
        for (offset, literal) in strings.iter().filter(|(offset, _)| (from..to).contains(offset)) {
            let token = toks.partition_point(|t| t.offset < *offset);
            let relative = paths(&tokenize(literal))
                .into_iter()
                .filter(|n| matches!(n.segments[0].as_str(), "crate" | "$crate" | "self" | "super"));
            found.extend(relative.map(|n| Named { token, ..n }));
        }
    }
    found
}

/// The module of a file of the library (`src/log/store/mod.rs` is `log::store`, `src/lib.rs`
/// the root); `None` for other files (the binary's `src/main.rs`, other crates).
fn module_path(file: &str) -> Option<Vec<String>> {
    let inner = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut module: Vec<String> = inner.split('/').map(String::from).collect();
    match module.last().map(String::as_str) {
        Some("main") if module.len() == 1 => None,
        Some("lib") if module.len() == 1 => Some(Vec::new()),
        Some("mod") => {
            module.pop();
            Some(module)
        }
        _ => Some(module),
    }
}

/// Where a path leads from the crate root, when it starts at `crate`, `self` or `super`
/// (`module` is the module it is written in); `None` for others (external crates, names in
/// scope), which cannot leave the module.
fn resolve(module: &[String], segments: &[String]) -> Option<Vec<String>> {
    let mut base = match segments.first()?.as_str() {
        "crate" | "$crate" => return Some(segments[1..].to_vec()),
        "self" | "super" => module.to_vec(),
        _ => return None,
    };
    let mut rest = segments;
    while let Some((first, tail)) = rest.split_first() {
        match first.as_str() {
            "self" => {}
            "super" => {
                base.pop()?;
            }
            _ => break,
        }
        rest = tail;
    }
    base.extend_from_slice(rest);
    Some(base)
}

/// What the crate root re-exports (`pub use engine::Engine;`): name, and where it leads.
type Exports = BTreeMap<String, Vec<String>>;

fn root_exports(lib_rs: &str) -> Exports {
    let toks = tokenize(&blank(lib_rs).code);
    let lead = |segments: &[String]| {
        if LAYERS.contains(&segments[0].as_str()) { Some(segments.to_vec()) } else { resolve(&[], segments) }
    };
    paths(&toks).into_iter().filter_map(|n| Some((n.imported?, lead(&n.segments)?))).collect()
}

/// The layer a path from the crate root leads into, through the root's re-exports.
fn layer_of(absolute: &[String], root: &Exports) -> Option<&'static str> {
    let first = absolute.first()?;
    let target = match root.get(first) {
        Some(target) if !LAYERS.contains(&first.as_str()) => target,
        _ => absolute,
    };
    LAYERS.iter().copied().find(|layer| target.first().is_some_and(|t| t == layer))
}

/// The place of a top-level module in [`LAYERS`], from 0 at the bottom.
fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| *layer == module)
}

/// The IO a path names, for the domain: `std::io`, `std::fs`, `tokio` or `sled`.
fn io_named(segments: &[String]) -> Option<String> {
    let words: Vec<&str> = segments.iter().map(String::as_str).skip_while(|s| s.is_empty()).collect();
    match words.as_slice() {
        ["std", module @ ("io" | "fs"), ..] => Some(format!("std::{module}")),
        [krate @ ("tokio" | "sled"), ..] => Some(krate.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Rules 1 and 2: the domain is pure, and layers depend only downwards.

/// A path used by the library (outside `#[cfg(test)]` items), and the layer it leads into.
struct Used {
    line: usize,
    segments: Vec<String>,
    layer: Option<&'static str>,
}

/// An offence: the line, the path as written, and why it offends.
struct Violation {
    line: usize,
    path: String,
    why: String,
}

/// The layering of one file: its layer, the paths it uses, and the modules it declares
/// under `#[cfg(test)]` in files of their own (those files are exempt).
#[derive(Default)]
struct Layering {
    layer: Option<String>,
    used: Vec<Used>,
    test_modules: Vec<Vec<String>>,
}

fn layering(file: &str, src: &str, root: &Exports) -> Layering {
    let Some(module) = module_path(file) else { return Layering::default() };
    let blanked = blank(src);
    let toks = tokenize(&blanked.code);
    let inline = inline_modules(&toks);
    let exempt = test_only(&toks);
    let mut named = paths(&toks);
    named.extend(attribute_paths(&toks, &blanked.strings));
    let here = |token: usize| [module.clone(), inline[token].clone()].concat();
    let used = named
        .into_iter()
        .filter(|n| !exempt.iter().any(|tokens| tokens.contains(&n.token)))
        .map(|n| Used {
            line: toks[n.token].line,
            layer: resolve(&here(n.token), &n.segments).and_then(|absolute| layer_of(&absolute, root)),
            segments: n.segments,
        })
        .collect();
    let test_modules = declared_modules(&toks)
        .into_iter()
        .filter(|(k, _)| exempt.iter().any(|tokens| tokens.contains(k)))
        .map(|(k, name)| [here(k), vec![name]].concat())
        .collect();
    Layering { layer: module.first().cloned(), used, test_modules }
}

/// Rule 1: the paths of a domain file into another layer or naming IO.
fn domain_violations(layering: &Layering) -> Vec<Violation> {
    if layering.layer.as_deref() != Some("domain") {
        return Vec::new();
    }
    let offence = |used: &Used| match (io_named(&used.segments), used.layer) {
        (Some(io), _) => Some(format!("the domain names {io}")),
        (None, Some(layer)) if layer != "domain" => Some(format!("the domain uses {layer}")),
        _ => None,
    };
    let violation = |used: &Used| offence(used).map(|why| violation(used, why));
    layering.used.iter().filter_map(violation).collect()
}

/// Rule 2: the paths of a file into a layer above its own.
fn upward_violations(layering: &Layering) -> Vec<Violation> {
    let Some(own) = layering.layer.as_deref() else { return Vec::new() };
    if rank(own).is_none() {
        let why = "a top-level module in no layer: give it a place in LAYERS".to_string();
        return vec![Violation { line: 1, path: format!("crate::{own}"), why }];
    }
    let above = |used: &&Used| used.layer.is_some_and(|layer| rank(layer) > rank(own));
    let why = |used: &Used| format!("{own} uses {}, a layer above it", used.layer.unwrap_or_default());
    layering.used.iter().filter(above).map(|used| violation(used, why(used))).collect()
}

fn violation(used: &Used, why: String) -> Violation {
    Violation { line: used.line, path: used.segments.join("::"), why }
}

/// A rule over every file of the library: one `file:line: path (why)` for each offence.
fn library_violations(rule: fn(&Layering) -> Vec<Violation>) -> Vec<String> {
    let files = sources("src");
    let lib_rs = files.iter().find(|(file, _)| file == "src/lib.rs").expect("src/lib.rs");
    let root = root_exports(&lib_rs.1);
    let scanned: Vec<(&str, Layering)> = files.iter().map(|(f, src)| (f.as_str(), layering(f, src, &root))).collect();
    let test_modules: Vec<&Vec<String>> = scanned.iter().flat_map(|(_, l)| &l.test_modules).collect();
    let exempt = |file: &str| {
        let module = module_path(file).unwrap_or_default();
        test_modules.iter().any(|test| module.starts_with(test))
    };
    let mut found = Vec::new();
    for (file, layering) in scanned.iter().filter(|(file, _)| !exempt(file)) {
        found.extend(rule(layering).into_iter().map(|v| format!("{file}:{}: {} ({})", v.line, v.path, v.why)));
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Rule 3: functions stay short.

/// A function with a body: its name, the line of its `fn`, and its length in lines.
#[derive(Debug)]
struct Function {
    name: String,
    line: usize,
    lines: usize,
}

fn functions(src: &str) -> Vec<Function> {
    let toks = tokenize(&blank(src).code);
    let mut found = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        if t.text != "fn" || !is_name(text(&toks, k + 1)) {
            continue;
        }
        if let Some(open) = body(&toks, k + 2) {
            let lines = toks[matching(&toks, open)].line - t.line + 1;
            found.push(Function { name: toks[k + 1].text.clone(), line: t.line, lines });
        }
    }
    found
}

/// The `{` opening the body of the function whose signature goes on at `from`; `None` for a
/// declaration without a body (`fn f();`).
fn body(toks: &[Token], from: usize) -> Option<usize> {
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(from) {
        match t.text.as_str() {
            "(" | "[" => depth += 1,
            ")" | "]" => depth -= 1,
            "{" if depth == 0 => return Some(k),
            ";" | "}" if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// A function longer than [`MAX_FN_LINES`], found in the tree.
struct Long {
    file: String,
    function: Function,
}

/// What is wrong with `listed` against the long functions `found`: new long functions,
/// listed functions that grew, and listed ones gone or short enough now (to remove).
fn list_problems(found: &[Long], listed: &[(&str, &str, usize)]) -> Vec<String> {
    // (file, function) -> (lengths found, lengths listed)
    let mut by_name = BTreeMap::<(&str, &str), (Vec<usize>, Vec<usize>)>::new();
    for long in found {
        by_name.entry((&long.file, &long.function.name)).or_default().0.push(long.function.lines);
    }
    for &(file, name, lines) in listed {
        by_name.entry((file, name)).or_default().1.push(lines);
    }
    let mut problems = Vec::new();
    for ((file, name), (mut now, mut was)) in by_name {
        now.sort_unstable_by(|a, b| b.cmp(a));
        was.sort_unstable_by(|a, b| b.cmp(a));
        for (k, &lines) in now.iter().enumerate() {
            problems.extend(match was.get(k) {
                None => Some(format!("{file}: {name} is {lines} lines long (at most {MAX_FN_LINES})")),
                Some(&listed) if lines > listed => Some(format!("{file}: {name} grew from {listed} to {lines} lines")),
                Some(_) => None,
            });
        }
        for listed in was.iter().skip(now.len()) {
            problems.push(format!("{file}: {name} ({listed} lines) is gone or {MAX_FN_LINES} lines or fewer now"));
        }
    }
    problems
}

/// The long functions as [`LONG_FUNCTIONS`] entries.
fn list_entries(found: &[Long]) -> String {
    let entry = |l: &Long| format!("    ({:?}, {:?}, {}),\n", l.file, l.function.name, l.function.lines);
    found.iter().map(entry).collect()
}

/// The functions longer than [`MAX_FN_LINES`] in the measured folders, in file order.
fn long_functions() -> Vec<Long> {
    let files = MEASURED.iter().flat_map(|dir| sources(dir));
    let long = |(file, src): (String, String)| {
        let functions = functions(&src).into_iter().filter(|f| f.lines > MAX_FN_LINES);
        functions.map(move |function| Long { file: file.clone(), function }).collect::<Vec<_>>()
    };
    files.flat_map(long).collect()
}

// ---------------------------------------------------------------------------------------------
// The repository.

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Rust files under `dir` (relative to the repository), recursively, sorted: their path
/// relative to the repository with `/` separators, and their text.
fn sources(dir: &str) -> Vec<(String, String)> {
    let root = repository();
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    let relative = |path: &Path| {
        let components = path.strip_prefix(&root).expect("under the repository").components();
        components.map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
    };
    let read = |path: PathBuf| {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (relative(&path), text)
    };
    files.into_iter().map(read).collect()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.expect("a directory entry").path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rules over the repository.

#[test]
fn the_domain_is_pure() {
    let found = library_violations(domain_violations);
    let rule = "src/domain/ may use no other layer, and name no std::io, std::fs, tokio or sled";
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

#[test]
fn layers_depend_only_downwards() {
    let found = library_violations(upward_violations);
    let rule = format!("a layer may use only those below it ({})", LAYERS.join(" < "));
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

#[test]
fn long_functions_are_listed() {
    let found = long_functions();
    let entries = list_entries(&found);
    println!("LONG_FUNCTIONS, as the tree is now:\n{entries}");
    let problems = list_problems(&found, LONG_FUNCTIONS);
    assert!(
        problems.is_empty(),
        "functions are at most {MAX_FN_LINES} lines long, except those in LONG_FUNCTIONS, which may not grow:\n{}\n\n\
         LONG_FUNCTIONS, as the tree is now (split the new long functions, or paste):\n{entries}",
        problems.join("\n"),
    );
}

// ---------------------------------------------------------------------------------------------
// The scanner, on snippets.

/// Blanks `input` and compares it, each line's trailing blanks aside, with `expected`.
fn check_blank(input: &str, expected: &str) {
    let code = blank(input).code;
    let trimmed: Vec<&str> = code.split('\n').map(str::trim_end).collect();
    assert_eq!(trimmed.join("\n"), expected, "blanking {input:?}");
}

#[test]
fn the_lexer_blanks_comments_and_literals_and_keeps_lines() {
    for (input, expected) in [
        ("a // crate::log\nb", "a\nb"),
        ("/// See crate::memory.\n//! And crate::log.\nfn f() {}", "\n\nfn f() {}"),
        ("a /* x /* nested */ y */ b\n/*\n*/c", "a                        b\n\n  c"),
        ("fn f<'a>(x: &'a str) -> &'static str { x }", "fn f<'a>(x: &'a str) -> &'static str { x }"),
        ("let c = 'x'; let l = 'é'; 'outer: loop {}", "let c = ' '; let l = '  '; 'outer: loop {}"),
        (r"let q = '\''; let n = '\n'; let u = '\u{1F600}';", "let q = '  '; let n = '  '; let u = '         ';"),
        (r#"let c = '"'; x"#, "let c = ' '; x"),
        (r#"let s = "a \" // b"; c"#, r#"let s = "         "; c"#),
        (r###"let s = r#"a "b" // c"#; d"###, r##"let s = r#"          "#; d"##),
        (r#"let s = r"\"; t"#, r#"let s = r" "; t"#),
        (r#"b"x" b'y' br"z" c"w" r#raw"#, r#"b" " b' ' br" " c" " r#raw"#),
        ("\"a\nb\" c", "\"\n \" c"),
    ] {
        check_blank(input, expected);
    }
}

#[test]
fn the_lexer_keeps_the_text_of_strings() {
    let blanked = blank(r###"#[serde(with = "crate::memory::x")] let s = r#"a"b"#;"###);
    let strings: Vec<(usize, &str)> = blanked.strings.iter().map(|(o, s)| (*o, s.as_str())).collect();
    assert_eq!(strings, [(15, "crate::memory::x"), (46, r#"a"b"#)]);
}

/// Runs rule 1 over `src` as `src/domain/state.rs`, and compares the `line: path` found.
fn check_domain(src: &str, expected: &[&str]) {
    check_rule(domain_violations, "src/domain/state.rs", src, &Exports::new(), expected);
}

fn check_rule(rule: fn(&Layering) -> Vec<Violation>, file: &str, src: &str, root: &Exports, expected: &[&str]) {
    let found: Vec<String> =
        rule(&layering(file, src, root)).iter().map(|v| format!("{}: {}", v.line, v.path)).collect();
    assert_eq!(found, expected, "{file}: {src:?}");
}

#[test]
fn the_domain_may_not_use_other_layers() {
    for (src, expected) in [
        ("use crate::memory::tiered;", &["1: crate::memory::tiered"][..]),
        ("use crate::domain::ids::Sku;\nuse super::money::{self, Sign};", &[]),
        ("/// Kept like crate::log::record::Envelope.\nfn f() {}\n// crate::engine", &[]),
        ("/* crate::views::Views */ fn f() {}", &[]),
        ("fn f() -> crate::log::record::Envelope {\n    todo!()\n}", &["1: crate::log::record::Envelope"]),
        ("fn f() {\n    let _ = crate::service::wire::X;\n}", &["2: crate::service::wire::X"]),
        (
            "use crate::{domain::ids::Sku, memory::{self, tiered::Tiered}};",
            &["1: crate::memory", "1: crate::memory::tiered::Tiered"],
        ),
        ("use crate::{\n    domain::ids,\n    cli::*,\n};", &["3: crate::cli::*"]),
        ("use super::super::rehearsal::demo;", &["1: super::super::rehearsal::demo"]),
        ("mod inner {\n    use super::super::super::engine;\n}", &["2: super::super::super::engine"]),
        ("macro_rules! m {\n    () => { $crate::engine::go() };\n}", &["2: $crate::engine::go"]),
        ("#[serde(with = \"crate::memory::tiered::image\")]\nx: u8,", &["1: crate::memory::tiered::image"]),
        ("#[serde(serialize_with = \"crate::domain::idmap::sorted_map\")]\nx: u8,", &[]),
        ("#[doc = \"crate::memory::x\"]\nfn f() { let s = \"crate::log::y\"; }", &[]),
        ("fn f<'a>(x: &'a str) -> &'a str {\n    crate::log::y(x)\n}", &["2: crate::log::y"]),
        ("fn f<'a>(x: &'a u8) -> impl Sized + use<'a> {\n    crate::log::y(x)\n}", &["2: crate::log::y"]),
        ("let c = '\"'; use crate::views::v;", &["1: crate::views::v"]),
        ("let s = r#\"\" crate::cli::x \"#; use crate::engine::e;", &["1: crate::engine::e"]),
    ] {
        check_domain(src, expected);
    }
}

#[test]
fn the_domain_may_not_name_io() {
    for (src, expected) in [
        ("use std::io;", &["1: std::io"][..]),
        ("use std::{fs, io};", &["1: std::fs", "1: std::io"]),
        ("use std::{collections::BTreeMap, io::{self, Read}};", &["1: std::io", "1: std::io::Read"]),
        ("fn f() -> std::io::Result<()> {\n    Ok(())\n}", &["1: std::io::Result"]),
        ("use ::std::fs::File as F;", &["1: ::std::fs::File"]),
        ("fn f() {\n    let _ = ::std::fs::read(p);\n}", &["2: ::std::fs::read"]),
        ("use tokio::sync::Mutex;\nextern crate sled;", &["1: tokio::sync::Mutex", "2: sled"]),
        ("fn f(db: &sled::Db) {}\n#[tokio::main]\nfn main() {}", &["1: sled::Db", "2: tokio::main"]),
        ("use std::collections::BTreeMap;\nuse std::iter;\n// std::io", &[]),
        ("fn f(io: u8) -> u8 {\n    io\n}", &[]),
    ] {
        check_domain(src, expected);
    }
}

#[test]
fn test_modules_are_exempt_from_the_layering() {
    for (src, expected) in [
        (
            "#[cfg(test)]\nmod tests {\n    use crate::memory::x;\n    use std::fs;\n}\nuse crate::log::y;",
            &["6: crate::log::y"][..],
        ),
        ("#[cfg(test)]\n#[allow(unused)]\nmod tests {\n    use std::io;\n}", &[]),
        ("#[cfg(test)]\nuse crate::memory::x;\nuse crate::log::y;", &["3: crate::log::y"]),
        ("#[cfg(test)]\nfn f() {\n    crate::memory::x();\n}\nfn g() {}", &[]),
        ("#[cfg(not(test))]\nmod m {\n    use std::io;\n}", &["3: std::io"]),
        ("#[cfg(any(test, feature = \"x\"))]\nuse std::io;", &["2: std::io"]),
        ("#![cfg(test)]\nuse std::io;\nfn f() {\n    crate::log::x();\n}", &[]),
        ("mod m {\n    #![cfg(test)]\n    use std::io;\n}\nuse std::fs;", &["5: std::fs"]),
    ] {
        check_domain(src, expected);
    }
    let src = "#[cfg(test)]\nmod tests;\nmod real;\nmod inner {\n    #![cfg(test)]\n    mod deeper;\n}";
    let declared = layering("src/domain/state.rs", src, &Exports::new());
    assert_eq!(declared.test_modules, [vec!["domain", "state", "tests"], vec!["domain", "state", "inner", "deeper"]]);
}

#[test]
fn layers_may_use_only_those_below() {
    let root = root_exports("pub mod engine;\npub use engine::Engine;\npub use domain::ids::{Sku as Item};");
    for (file, src, expected) in [
        ("src/views/shop.rs", "use crate::engine::Engine;", &["1: crate::engine::Engine"][..]),
        ("src/views/shop.rs", "use crate::log::record::Envelope;\nuse crate::domain::Event;", &[]),
        ("src/views/shop.rs", "use crate::{Engine, Item};", &["1: crate::Engine"]),
        ("src/engine/mod.rs", "use crate::views::Views;\nuse crate::memory::tiered;", &[]),
        ("src/log/store/chunks.rs", "use super::memory::MemoryStore;\nuse memory::X;", &[]),
        ("src/log/store/chunks.rs", "use super::super::super::memory::X;", &[]),
        ("src/memory/spill.rs", "#[serde(with = \"crate::log::x\")]\ny: u8,", &["1: crate::log::x"]),
        ("src/service/mod.rs", "fn f() {\n    crate::rehearsal::demo::run();\n}", &["2: crate::rehearsal::demo::run"]),
        (
            "src/rehearsal/loadgen/http.rs",
            "use super::super::super::cli;\nuse crate::service;",
            &["1: super::super::super::cli"],
        ),
        ("src/cli/mod.rs", "use crate::rehearsal::sim;\nuse crate::domain;", &[]),
        ("src/lib.rs", "pub use cli::run;\nuse crate::cli::x;", &[]),
        ("src/main.rs", "use emporium::cli;\nuse crate::x::y;", &[]),
        ("src/util.rs", "fn f() {}", &["1: crate::util"]),
    ] {
        check_rule(upward_violations, file, src, &root, expected);
    }
}

#[test]
fn modules_are_named_by_their_files() {
    for (file, expected) in [
        ("src/lib.rs", Some(&[][..])),
        ("src/main.rs", None),
        ("src/domain/mod.rs", Some(&["domain"][..])),
        ("src/log/store/mod.rs", Some(&["log", "store"])),
        ("src/log/store/sled_store.rs", Some(&["log", "store", "sled_store"])),
        ("projections/src/lib.rs", None),
    ] {
        assert_eq!(
            module_path(file).as_deref(),
            expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).as_deref(),
            "{file}"
        );
    }
}

/// A function of `lines` lines, from `fn` to its closing brace.
fn sized(name: &str, lines: usize) -> String {
    format!("fn {name}() {{\n{}}}\n", "    step();\n".repeat(lines - 2))
}

/// Compares the functions found in `src` as `name line lines`.
fn check_functions(src: &str, expected: &[&str]) {
    let found: Vec<String> = functions(src).iter().map(|f| format!("{} {} {}", f.name, f.line, f.lines)).collect();
    assert_eq!(found, expected, "{src:?}");
}

#[test]
fn functions_are_measured_from_fn_to_closing_brace() {
    for (src, expected) in [
        (sized("f", 71), &["f 1 71"][..]),
        (format!("// x\n{}", sized("g", 70)), &["g 2 70"]),
        ("fn f() {}".into(), &["f 1 1"]),
        ("trait T {\n    fn a(&self);\n    fn b(&self) {\n    }\n}".into(), &["b 3 2"]),
        ("fn g(f: fn(u8) -> u8) -> u8 {\n    f(1)\n}".into(), &["g 1 3"]),
        ("fn h() {\n    let s = \"}\"; // }\n    let c = '}';\n}".into(), &["h 1 4"]),
        ("fn k(S { a, b }: S, [x, y]: [u8; 2]) {\n}".into(), &["k 1 2"]),
        ("fn outer() {\n    fn inner() {\n    }\n}".into(), &["outer 1 4", "inner 2 2"]),
        ("pub async fn w<'a, T>(\n    x: &'a T,\n) -> u8\nwhere\n    T: Copy,\n{\n    0\n}".into(), &["w 1 8"]),
        ("macro_rules! m {\n    ($n:ident) => { fn $n() {} };\n}".into(), &[]),
        ("#[cfg(test)]\nmod tests {\n    fn t() {\n    }\n}".into(), &["t 3 2"]),
    ] {
        check_functions(&src, expected);
    }
}

#[test]
fn the_list_of_long_functions_only_shrinks() {
    let long = |file: &str, name: &str, lines| Long {
        file: file.into(),
        function: Function { name: name.into(), line: 1, lines },
    };
    let found = [
        long("src/a.rs", "new", 71),
        long("src/a.rs", "grown", 90),
        long("src/a.rs", "shrunk", 75),
        long("src/b.rs", "same", 80),
    ];
    let listed =
        [("src/a.rs", "grown", 85), ("src/a.rs", "shrunk", 80), ("src/b.rs", "same", 80), ("src/b.rs", "gone", 72)];
    assert_eq!(
        list_problems(&found, &listed),
        [
            "src/a.rs: grown grew from 85 to 90 lines",
            "src/a.rs: new is 71 lines long (at most 70)",
            "src/b.rs: gone (72 lines) is gone or 70 lines or fewer now",
        ]
    );
    assert!(list_problems(&found[2..], &listed[1..3]).is_empty());
    assert_eq!(list_entries(&found[..1]), "    (\"src/a.rs\", \"new\", 71),\n");
}
