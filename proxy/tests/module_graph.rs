//! No import circles inside a crate: the modules of each crate in [`CRATES`], with an edge
//! from a module to every module of the same crate whose items it names (`use crate::…`,
//! `use super::…`, `self::…`, a child module's `child::…`, in `use` trees and in code),
//! form a DAG. A module that calls back into its caller (the proxy's `fetch` into `conn`,
//! `conn` into the worker's scheduler) shows up here as a circle.
//!
//! The graph is built from the source text (comments and literals removed); inline
//! modules (`mod tests { … }`) count as part of their file's module, so a test module's
//! `use super::*` is no edge. Run with `--nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose module graph must be acyclic (directories under the workspace root).
/// Adding one is adding its name here.
const CRATES: &[&str] = &["proxy", "cached"];

/// A module's path inside its crate (`[]` is the crate root).
type ModPath = Vec<String>;

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in CRATES {
        let files = read_sources(&root.join(name).join("src"));
        assert!(!files.is_empty(), "{name}: no sources found");
        let graph = module_graph(&files);
        println!("{name}:\n{}", show(&graph));
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{name}: import circle {}\n{}",
                cycle.iter().map(display).collect::<Vec<_>>().join(" -> "),
                show(&graph)
            );
        }
    }
}

#[test]
fn a_circle_is_found() {
    let files = vec![
        (PathBuf::from("main.rs"), "mod a; mod b; fn main() { a::f() }".to_string()),
        (
            PathBuf::from("a/mod.rs"),
            "mod c;\nuse self::c::{Thing, other as o};\n// use crate::b;\npub fn f() {}".to_string(),
        ),
        (
            PathBuf::from("a/c.rs"),
            "/* super::x */ pub struct Thing; pub fn other() { let _ = (\"crate::b\", r#\"super::x\"#, '\"'); super::super::b::g() }\n\
             #[cfg(test)] mod tests { use super::*; }"
                .to_string(),
        ),
        (PathBuf::from("b.rs"), "pub fn g() {}".to_string()),
    ];
    let graph = module_graph(&files);
    let m = |s: &str| -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    let edges = |s: &str| graph[&m(s)].clone();
    assert_eq!(edges(""), BTreeSet::from([m("a")]));
    assert_eq!(
        edges("a"),
        BTreeSet::from([m("a::c")]),
        "comments are no edges"
    );
    assert_eq!(
        edges("a::c"),
        BTreeSet::from([m("b")]),
        "literals and tests are no edges"
    );
    assert_eq!(find_cycle(&graph), None);

    let mut with_circle = files.clone();
    with_circle[3].1 = "use crate::a::c::Thing; pub fn g() {}".to_string();
    let graph = module_graph(&with_circle);
    let cycle = find_cycle(&graph).expect("b -> a::c -> b is a circle");
    assert!(
        cycle.contains(&m("b")) && cycle.contains(&m("a::c")),
        "{cycle:?}"
    );
}

/// Every `.rs` file under `src`, as (path relative to `src`, text).
fn read_sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(src).unwrap().to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

/// The module a file holds: `main.rs`/`lib.rs` the root, `a/mod.rs` and `a.rs` `a`,
/// `a/b.rs` `a::b`.
fn module_of(file: &Path) -> ModPath {
    let mut parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") || parts == ["main"] || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// Module → the other modules of the crate it names.
fn module_graph(files: &[(PathBuf, String)]) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = files.iter().map(|(f, _)| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for (file, text) in files {
        let module = module_of(file);
        let mut targets = BTreeSet::new();
        for (scope, path) in paths(&module, &tokens(text)) {
            let Some(abs) = resolve(&scope, &path, &modules) else {
                continue;
            };
            // The longest prefix that is a file module (the rest names items).
            let target = (0..=abs.len())
                .rev()
                .map(|n| abs[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target {
                if t != module {
                    targets.insert(t);
                }
            }
        }
        graph.insert(module, targets);
    }
    graph
}

/// `path` as named in module `scope`, made absolute; `None` if it does not start inside
/// the crate (`std::…`, another crate, a local name).
fn resolve(scope: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut abs = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => scope.clone(),
        child => {
            let mut c = scope.clone();
            c.push(child.to_string());
            // A child module (relative path), or nothing of ours. Inline modules count as
            // children too: they resolve into their file's module below.
            if !modules.contains(&c) && !modules.iter().any(|m| m.starts_with(&c)) {
                return None;
            }
            return Some(path_after(c, &path[1..]));
        }
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        abs.pop();
        while rest.first().is_some_and(|s| s == "super") {
            abs.pop();
            rest = &rest[1..];
        }
    }
    Some(path_after(abs, rest))
}

fn path_after(mut base: ModPath, rest: &[String]) -> ModPath {
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    base
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// The tokens that matter for paths, with comments, strings and char literals removed.
fn tokens(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => i = skip_string(b, i + 1),
            b'r' if matches!(b.get(i + 1), Some(b'#' | b'"')) => {
                let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
                if b.get(i + 1 + hashes) == Some(&b'"') {
                    let close = format!("\"{}", "#".repeat(hashes)).into_bytes();
                    i += 2 + hashes;
                    while i < b.len() && !b[i..].starts_with(&close) {
                        i += 1;
                    }
                    i += close.len();
                } else {
                    out.push(Tok::Ident("r".into()));
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), or a lifetime / label ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    i += 3;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if let Some(len) = src[i + 1..].chars().next().map(char::len_utf8) {
                    if b.get(i + 1 + len) == Some(&b'\'') {
                        i += 2 + len;
                    } else {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(Tok::Colons);
                i += 2;
            }
            b'{' | b'}' | b',' | b';' | b'*' => {
                out.push(match c {
                    b'{' => Tok::Open,
                    b'}' => Tok::Close,
                    b',' => Tok::Comma,
                    b';' => Tok::Semi,
                    _ => Tok::Star,
                });
                i += 1;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                // b"…" and br"…" are byte strings, not identifiers.
                let word = &src[start..i];
                if (word == "b" || word == "br") && matches!(b.get(i), Some(b'"' | b'#' | b'\'')) {
                    if b[i] == b'\'' {
                        i = skip_char(b, i);
                    } else if word == "b" && b[i] == b'"' {
                        i = skip_string(b, i + 1);
                    } else {
                        i = start + 1; // br: let the raw-string arm take it
                    }
                    continue;
                }
                out.push(Tok::Ident(word.to_string()));
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                out.push(Tok::Other);
                i += 1;
            }
        }
    }
    out
}

/// The index after a string literal whose opening quote ends before `i`.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'"' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the char literal starting at `i` (`'x'` or `'\n'`).
fn skip_char(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() && b[i] != b'\'' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// Every path the tokens name, with the (inline) module scope it is named in.
fn paths(file_module: &ModPath, toks: &[Tok]) -> Vec<(ModPath, Vec<String>)> {
    let mut out = Vec::new();
    // Inline modules: (scope, brace depth at which its block opened).
    let mut scopes: Vec<(ModPath, usize)> = vec![(file_module.clone(), 0)];
    let mut depth = 0;
    let mut i = 0;
    let ident = |t: Option<&Tok>| match t {
        Some(Tok::Ident(s)) => Some(s.clone()),
        _ => None,
    };
    while i < toks.len() {
        let scope = scopes.last().unwrap().0.clone();
        match &toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if scopes.len() > 1 && depth < scopes.last().unwrap().1 {
                    scopes.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), Some(Tok::Open)) = (ident(toks.get(i + 1)), toks.get(i + 2)) {
                    let mut inner = scope.clone();
                    inner.push(name);
                    depth += 1;
                    scopes.push((inner, depth));
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let end = toks[i..]
                    .iter()
                    .position(|t| *t == Tok::Semi)
                    .map_or(toks.len(), |p| i + p);
                let mut pos = i + 1;
                for p in use_tree(&toks[..end], &mut pos, Vec::new()) {
                    out.push((scope.clone(), p));
                }
                i = end;
                continue;
            }
            Tok::Ident(first) if i == 0 || toks[i - 1] != Tok::Colons => {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Colons) {
                    match ident(toks.get(j + 1)) {
                        Some(s) => path.push(s),
                        None => break,
                    }
                    j += 2;
                }
                if path.len() > 1 {
                    out.push((scope, path));
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The paths of a `use` tree starting at `pos`, each after `prefix`.
fn use_tree(toks: &[Tok], pos: &mut usize, mut prefix: Vec<String>) -> Vec<Vec<String>> {
    loop {
        match toks.get(*pos) {
            Some(Tok::Colons) => *pos += 1,
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                *pos += 1;
                if toks.get(*pos) == Some(&Tok::Ident("as".into())) {
                    *pos += 2;
                }
                if toks.get(*pos) != Some(&Tok::Colons) {
                    return vec![prefix];
                }
            }
            Some(Tok::Star) => {
                *pos += 1;
                return vec![prefix];
            }
            Some(Tok::Open) => {
                *pos += 1;
                let mut all = Vec::new();
                loop {
                    match toks.get(*pos) {
                        Some(Tok::Close) => {
                            *pos += 1;
                            return all;
                        }
                        Some(Tok::Comma) => *pos += 1,
                        None => return all,
                        _ => all.extend(use_tree(toks, pos, prefix.clone())),
                    }
                }
            }
            _ => return vec![prefix],
        }
    }
}

/// A circle in the graph, as the modules along it (first = last), if there is one.
fn find_cycle(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    fn visit(
        m: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        marks: &mut BTreeMap<ModPath, Mark>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        marks.insert(m.clone(), Mark::OnStack);
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::OnStack => {
                    let from = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(m, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn display(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn show(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> String {
    graph
        .iter()
        .map(|(m, to)| {
            let to: Vec<String> = to.iter().map(display).collect();
            format!("  {} -> {}\n", display(m), to.join(", "))
        })
        .collect()
}
