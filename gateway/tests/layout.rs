//! The gateway crate's layout, checked: dependencies between its modules run
//! one way, and no file grows past what one reader can hold.
//!
//! It reads `gateway/src` as text (no new dependency): every `crate::…` and
//! `super::…` path in code (comments skipped, `use` groups expanded) is an
//! edge from the file's module to the deepest module the path names. Then:
//! - no cycle between modules, and none between the top-level parts
//!   (`request`, `admin`, …), listed with where each edge is written;
//! - the parts in [`LAYERS`] order: a part uses only the parts below it;
//! - a path reaches an item through its home module, not the re-exports of
//!   the crate root (kept for tests/ and benches/) or of an enclosing folder
//!   (a child using its parent while the parent uses it is a cycle);
//! - no file over [`MAX_LINES`] lines but those in [`LONG_FILES`], each with
//!   its reason (and an entry that is no longer needed fails too).
//!
//! Inline modules (`mod tests { … }`) are assumed to close the file, as they
//! do here: from the line that opens one, `super` is the file's own module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level parts, top first: each may use only those after it.
const LAYERS: &[&str] = &["cli", "tools", "server", "admin", "request", "ops"];

/// The most lines a file under `gateway/src` may have.
const MAX_LINES: usize = 800;

/// Files allowed past [`MAX_LINES`], and why one concept needs the room.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "request/sender.rs",
        "one grammar: the From mailbox grammar and the streaming JSON walk that must \
         agree with the upstream on every ambiguity; about 700 of its lines are the \
         unit tests that pin those cases",
    ),
    (
        "admin/client.rs",
        "one command: `scopegate admin`, a subcommand per admin API call, each with \
         its own output; splitting it would scatter each command from its printing",
    ),
    (
        "tools/demo.rs",
        "one script: the demo's scenario, a request per step with its expected \
         answer and what it shows the newcomer, read top to bottom",
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of the library (not `main.rs`, a separate crate), as
/// (path relative to `src`, module path, text).
fn sources() -> Vec<(String, Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read gateway/src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "main.rs" {
                return None;
            }
            let module: Vec<String> = if rel == "lib.rs" {
                Vec::new()
            } else {
                let stem = rel.trim_end_matches(".rs");
                let stem = stem.strip_suffix("/mod").unwrap_or(stem);
                stem.split('/').map(str::to_string).collect()
            };
            let text = std::fs::read_to_string(&p).expect("read source");
            Some((rel, module, text))
        })
        .collect()
}

/// Where a line stands in a string literal that began on an earlier line.
#[derive(Clone, Copy, PartialEq)]
enum Lit {
    Code,
    /// In a `"…"` string.
    Str,
    /// In a raw string closed by `"` and this many `#`.
    Raw(usize),
}

/// A line's code: string contents blanked, the comment cut off.
fn code_of(line: &str, lit: &mut Lit) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match *lit {
            Lit::Str => {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == b'"' {
                    *lit = Lit::Code;
                    out.push('"');
                } else {
                    out.push(' ');
                }
                i += 1;
            }
            Lit::Raw(h) => {
                if b[i] == b'"' && b[i + 1..].iter().take_while(|c| **c == b'#').count() >= h {
                    *lit = Lit::Code;
                    out.push('"');
                    i += 1 + h;
                } else {
                    out.push(' ');
                    i += 1;
                }
            }
            Lit::Code => {
                let rest = &b[i..];
                if rest.starts_with(b"//") {
                    break;
                } else if rest.len() >= 3 && rest[0] == b'\'' && rest[2] == b'\'' {
                    out.push_str("' '");
                    i += 3;
                } else if rest.len() >= 4
                    && rest[0] == b'\''
                    && rest[1] == b'\\'
                    && rest[3] == b'\''
                {
                    out.push_str("'  '");
                    i += 4;
                } else if rest[0] == b'"' {
                    // `r"…"`, `r#"…"#`, `br#"…"#`: raw when an `r` and hashes precede.
                    let hashes = b[..i].iter().rev().take_while(|c| **c == b'#').count();
                    let raw = i > hashes && b[i - hashes - 1] == b'r';
                    *lit = if raw { Lit::Raw(hashes) } else { Lit::Str };
                    out.push('"');
                    i += 1;
                } else {
                    out.push(rest[0] as char);
                    i += 1;
                }
            }
        }
    }
    out
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses the path continuing at `s[i..]` (after a `root::`), appending
/// every full path it names (groups expanded) to `out`, each prefixed by
/// `prefix`. Returns where it stopped.
fn parse_tree(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                let before = i;
                i = parse_tree(s, i, path.clone(), out);
                if i == before {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && ident_char(s[i]) {
            i += 1;
        }
        if i == start {
            // `*`, or the end of the path.
            out.push(path);
            return i;
        }
        let seg = String::from_utf8_lossy(&s[start..i]).into_owned();
        if seg != "self" {
            path.push(seg);
        }
        if s[i..].starts_with(b"::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// The module paths a file's code names, each with its line number, and
/// `(line, path)` of any that reach past the root's re-exports.
fn references(module: &[String], text: &str) -> Vec<(usize, Vec<String>)> {
    let mut refs = Vec::new();
    let mut in_inline_mod = false;
    let mut stmt = String::new();
    let mut stmt_line = 0;
    let mut lit = Lit::Code;
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line, &mut lit);
        let code = code.as_str();
        let t = code.trim_start();
        if (t.starts_with("mod ") || t.starts_with("pub mod ")) && t.trim_end().ends_with('{') {
            in_inline_mod = true;
        }
        // Join a `use` group spread over lines into one statement.
        if !stmt.is_empty() {
            stmt.push(' ');
            stmt.push_str(code);
            if code.contains(';') {
                scan(&stmt, module, in_inline_mod, stmt_line, &mut refs);
                stmt.clear();
            }
            continue;
        }
        if (t.starts_with("use ") || t.starts_with("pub use ")) && !code.contains(';') {
            stmt = code.to_string();
            stmt_line = n + 1;
            continue;
        }
        scan(code, module, in_inline_mod, n + 1, &mut refs);
    }
    refs
}

fn scan(
    code: &str,
    module: &[String],
    in_inline_mod: bool,
    line: usize,
    refs: &mut Vec<(usize, Vec<String>)>,
) {
    let s = code.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let boundary = i == 0 || !(ident_char(s[i - 1]) || s[i - 1] == b':');
        let base = if !boundary {
            None
        } else if rest.starts_with(b"crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if rest.starts_with(b"super::") {
            // In an inline module the first `super` is the file's module.
            let mut up = if in_inline_mod { 0 } else { 1 };
            i += "super::".len();
            while s[i..].starts_with(b"super::") {
                up += 1;
                i += "super::".len();
            }
            Some(module[..module.len().saturating_sub(up)].to_vec())
        } else {
            None
        };
        match base {
            Some(base) => {
                let mut paths = Vec::new();
                i = parse_tree(s, i, base, &mut paths);
                refs.extend(paths.into_iter().map(|p| (line, p)));
            }
            None => i += 1,
        }
    }
}

struct Graph {
    /// module → module it uses → where (file:line), first place written.
    edges: BTreeMap<String, BTreeMap<String, String>>,
    /// References through the re-exports of the crate root or an enclosing
    /// folder's module.
    via_root: Vec<String>,
}

fn graph() -> Graph {
    let files = sources();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(_, m, _)| m.clone()).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut via_root = Vec::new();
    for (rel, module, text) in &files {
        if module.is_empty() {
            continue; // lib.rs: declarations and re-exports, the wiring root.
        }
        let from = module.join("::");
        edges.entry(from.clone()).or_default();
        for (line, path) in references(module, text) {
            let target = (0..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            // The root or an enclosing folder's module: only declarations
            // and re-exports live there, so this is a re-export (or `*`).
            if module.starts_with(&target) && target.len() < module.len() {
                if !path.is_empty() {
                    via_root.push(format!("{rel}:{line}: crate::{}", path.join("::")));
                }
                continue;
            }
            let to = target.join("::");
            if to != from {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{rel}:{line}"));
            }
        }
    }
    Graph { edges, via_root }
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(k, vs)| std::iter::once(k.as_str()).chain(vs.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn part(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn no_cycles_between_modules() {
    let g = graph();
    // Not vacuous: the phases are seen using the decision.
    assert!(
        g.edges["request::proxy"].contains_key("request::decide"),
        "the layout test no longer sees request::proxy -> request::decide"
    );
    let plain = g
        .edges
        .iter()
        .map(|(k, v)| (k.clone(), v.keys().cloned().collect()))
        .collect();
    let mut report = String::new();
    for scc in cycles(&plain) {
        report.push_str(&format!("cycle between modules {}:\n", scc.join(", ")));
        for a in &scc {
            for (b, at) in &g.edges[a] {
                if scc.contains(b) {
                    report.push_str(&format!("  {a} -> {b}   ({at})\n"));
                }
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn parts_depend_one_way() {
    let g = graph();
    let mut parts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
    for (a, tos) in &g.edges {
        for (b, at) in tos {
            let (pa, pb) = (part(a).to_string(), part(b).to_string());
            parts.entry(pa.clone()).or_default();
            if pa != pb {
                parts.entry(pa.clone()).or_default().insert(pb.clone());
                why.entry((pa, pb))
                    .or_insert_with(|| format!("{a} -> {b} ({at})"));
            }
        }
    }
    let mut report = String::new();
    for scc in cycles(&parts) {
        report.push_str(&format!("cycle between parts {}:\n", scc.join(", ")));
        for ((a, b), at) in &why {
            if scc.contains(a) && scc.contains(b) {
                report.push_str(&format!("  {at}\n"));
            }
        }
    }
    let rank = |p: &str| LAYERS.iter().position(|l| *l == p);
    for p in parts.keys() {
        if rank(p).is_none() {
            report.push_str(&format!(
                "top-level module {p} is in no layer: add it to LAYERS\n"
            ));
        }
    }
    for ((a, b), at) in &why {
        if let (Some(ra), Some(rb)) = (rank(a), rank(b)) {
            if rb < ra {
                report.push_str(&format!("{a} uses {b}, which sits above it: {at}\n"));
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn items_are_reached_through_their_home_module() {
    let g = graph();
    assert!(
        g.via_root.is_empty(),
        "these name an item through the re-exports of the crate root (kept for \
         tests/ and benches/) or of an enclosing folder; use its own module:\n{}",
        g.via_root.join("\n")
    );
}

#[test]
fn no_file_is_over_the_line_limit() {
    let mut report = String::new();
    let mut long = BTreeSet::new();
    for (rel, _, text) in sources() {
        let n = text.lines().count();
        if n > MAX_LINES {
            long.insert(rel.clone());
            if !LONG_FILES.iter().any(|(f, _)| *f == rel) {
                report.push_str(&format!(
                    "{rel}: {n} lines, over {MAX_LINES}: split it by concept, or add it \
                     to LONG_FILES with the reason one concept needs the room\n"
                ));
            }
        }
    }
    for (f, _) in LONG_FILES {
        if !long.contains(*f) {
            report.push_str(&format!(
                "{f}: in LONG_FILES but not over {MAX_LINES} lines (or gone): drop the entry\n"
            ));
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn the_parser_expands_groups_and_resolves_super() {
    let module = vec!["request".to_string(), "decide".to_string()];
    let text = "use crate::{ops::metrics::{Metrics, Outcome}, request::ctx::Ctx};\n\
                use super::head::content_length; // crate::not::this\n\
                let x = \"http://crate::nor::this\"; let y = r#\"a \"crate::x\" b\"#;\n\
                mod tests {\n    use super::*;\n}\n";
    let refs: Vec<String> = references(&module, text)
        .into_iter()
        .map(|(l, p)| format!("{l}:{}", p.join("::")))
        .collect();
    assert_eq!(
        refs,
        [
            "1:ops::metrics::Metrics",
            "1:ops::metrics::Outcome",
            "1:request::ctx::Ctx",
            "2:request::head::content_length",
            "5:request::decide",
        ]
    );
}
