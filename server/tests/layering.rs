//! The server's layering rule, checked on its source: every `.rs` file under `server/src/` belongs
//! to a layer by where it lives, and every `crate::…` path it uses (in `use` items and inline,
//! `super::` and `self::` paths resolved against the file and its inline modules) must point at a
//! layer it may use. Within `http/`, a handler module never uses another handler module.
//!
//! The allowed graph is the table below; a failure lists every `file:line uses crate::…` that
//! breaks it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// A layer of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// `lib.rs`, `main.rs`, `server.rs`, `admin.rs`, `error.rs` (starting and administering):
    /// wiring, may use everything.
    Top,
    /// `http/`: axum extractors and handlers.
    Http,
    /// `domain/`: the rules.
    Domain,
    /// `delivery/`: push, email and SMS, notification posts.
    Delivery,
    /// `store/`: SQL only.
    Store,
    /// Single files every layer may use, which use no layer themselves.
    Leaf,
}

use Layer::{Delivery, Domain, Http, Leaf, Store, Top};

/// Directories of `server/src/` and their layer.
const LAYER_DIRS: &[(&str, Layer)] = &[
    ("http", Http),
    ("domain", Domain),
    ("store", Store),
    ("delivery", Delivery),
];

/// Files directly under `server/src/` and their layer.
const LAYER_FILES: &[(&str, Layer)] = &[
    ("lib.rs", Top),
    ("main.rs", Top),
    ("server.rs", Top),
    ("admin.rs", Top),
    ("error.rs", Top),
    ("config.rs", Leaf),
    ("config_file.rs", Leaf),
    ("clock.rs", Leaf),
    ("keys.rs", Leaf),
    ("metrics.rs", Leaf),
    ("ip_table.rs", Leaf),
    ("qr_render.rs", Leaf),
    ("secrets.rs", Leaf),
    ("i18n.rs", Leaf),
];

/// The allowed graph: which other layers each layer may use (a layer may always use itself).
const MAY_USE: &[(Layer, &[Layer])] = &[
    (Top, &[Http, Domain, Delivery, Store, Leaf]),
    (Http, &[Domain, Leaf]),
    (Domain, &[Store, Leaf]),
    (Delivery, &[Domain, Store, Leaf]),
    (Store, &[Leaf]),
    (Leaf, &[]),
];

/// The modules of `http/` every handler module may use; every other module of `http/` is a
/// handler module, and handler modules never use one another.
const HTTP_SHARED: &[&str] = &["mod", "errors", "extract"];

// ---------------------------------------------------------------------------------------------

#[test]
fn every_source_file_keeps_to_its_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert!(
        files.iter().any(|(p, _)| p == "lib.rs"),
        "no lib.rs under {}",
        src.display()
    );
    let violations = check(&files);
    assert!(
        violations.is_empty(),
        "{} layering violation(s) in server/src (allowed graph: tests/layering.rs):\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_synthetic_violation_is_reported() {
    let files = [
        (
            "lib.rs",
            "mod store;\nmod domain;\nmod http;\npub use store::Database;\n",
        ),
        (
            "store/users.rs",
            "use crate::config::Limits;\n\
             use crate::{clock, domain::{users::{self, Rule}}};\n\
             fn f() {\n    let _ = crate::http::errors::map(1);\n}\n",
        ),
        (
            "http/qr.rs",
            "use super::errors::ApiError;\nuse super::{extract, pairing::helper};\n\
             // use super::otp::Commented;\n\
             const S: &str = \"crate::delivery::x\";\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::otp::Code;\n}\n",
        ),
        ("http/pairing.rs", "use crate::Database;\n"),
        ("http/otp.rs", "use super::extract::Device;\n"),
        (
            "config.rs",
            "pub struct Limits;\nfn g() { crate::store::users::f(); }\n",
        ),
        ("stray.rs", "\n"),
    ];
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    let found: Vec<String> = check(&files).iter().map(|v| v.to_string()).collect();
    assert_eq!(
        found,
        [
            "config.rs:2 uses crate::store::users::f (leaf may not use store)",
            "http/pairing.rs:1 uses crate::Database (http may not use store)",
            "http/qr.rs:2 uses crate::http::pairing::helper (http handler qr may not use handler pairing)",
            "http/qr.rs:8 uses crate::http::otp::Code (http handler qr may not use handler otp)",
            "store/users.rs:2 uses crate::domain::users (store may not use domain)",
            "store/users.rs:2 uses crate::domain::users::Rule (store may not use domain)",
            "store/users.rs:4 uses crate::http::errors::map (store may not use http)",
            "stray.rs:1 has no layer (add it to LAYER_FILES or LAYER_DIRS in tests/layering.rs)",
        ]
    );
}

// ---------------------------------------------------------------------------------------------

/// One use of a path the table forbids, or a file without a layer.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {}", self.file, self.line, self.what)
    }
}

fn layer_name(layer: Layer) -> &'static str {
    match layer {
        Top => "top",
        Http => "http",
        Domain => "domain",
        Delivery => "delivery",
        Store => "store",
        Leaf => "leaf",
    }
}

/// Reads every `.rs` file under `dir` as (path relative to `root` with `/`, source).
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let source = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.push((rel, source));
        }
    }
}

/// The layer of a file, by its path relative to `src/`.
fn file_layer(path: &str) -> Option<Layer> {
    match path.split_once('/') {
        Some((dir, _)) => LAYER_DIRS.iter().find(|(d, _)| *d == dir).map(|(_, l)| *l),
        None => LAYER_FILES
            .iter()
            .find(|(f, _)| *f == path)
            .map(|(_, l)| *l),
    }
}

/// The layer of a top-level module of the crate.
fn module_layer(module: &str) -> Option<Layer> {
    LAYER_DIRS
        .iter()
        .find(|(d, _)| *d == module)
        .map(|(_, l)| *l)
        .or_else(|| file_layer(&format!("{module}.rs")))
}

/// The module path of a file: `http/qr.rs` is `http::qr`, `delivery/push/mod.rs` is
/// `delivery::push`, `lib.rs` and `main.rs` are the crate root.
fn module_of(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    let at_root = parts.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !at_root {
        parts.push(stem.to_string());
    }
    parts
}

/// Checks every file against the table.
fn check(files: &[(String, String)]) -> Vec<Violation> {
    let reexports = files
        .iter()
        .find(|(p, _)| p == "lib.rs")
        .map(|(_, s)| root_reexports(s))
        .unwrap_or_default();
    let http_handlers: BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("http/"))
        .map(|rest| {
            rest.split('/')
                .next()
                .unwrap_or(rest)
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|m| !HTTP_SHARED.contains(&m.as_str()))
        .collect();
    let mut violations = BTreeSet::new();
    for (path, source) in files {
        let Some(from) = file_layer(path) else {
            violations.insert(Violation {
                file: path.clone(),
                line: 1,
                what: "has no layer (add it to LAYER_FILES or LAYER_DIRS in tests/layering.rs)"
                    .into(),
            });
            continue;
        };
        let module = module_of(path);
        for used in crate_paths(source, &module) {
            let mut target = used.path.clone();
            let Some(first) = target.first().cloned() else {
                continue;
            };
            let layer = match module_layer(&first) {
                Some(layer) => layer,
                // An item re-exported at the crate root counts as the module it comes from.
                None => match reexports.get(&first).and_then(|m| module_layer(m)) {
                    Some(layer) => {
                        target.insert(0, reexports[&first].clone());
                        layer
                    }
                    None => continue,
                },
            };
            let shown = format!("crate::{}", used.path.join("::"));
            let allowed = from == layer
                || MAY_USE
                    .iter()
                    .any(|(l, may)| *l == from && may.contains(&layer));
            if !allowed {
                violations.insert(Violation {
                    file: path.clone(),
                    line: used.line,
                    what: format!(
                        "uses {shown} ({} may not use {})",
                        layer_name(from),
                        layer_name(layer)
                    ),
                });
                continue;
            }
            // Within http: a handler module never uses another handler module.
            if from == Http && layer == Http {
                let own = module.get(1).map(String::as_str).unwrap_or("mod");
                let Some(other) = target.get(1) else { continue };
                if http_handlers.contains(own) && http_handlers.contains(other) && own != other {
                    violations.insert(Violation {
                        file: path.clone(),
                        line: used.line,
                        what: format!(
                            "uses {shown} (http handler {own} may not use handler {other})"
                        ),
                    });
                }
            }
        }
    }
    violations.into_iter().collect()
}

/// `pub use module::…::Item;` at the crate root: item name -> module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for used in use_paths(lib) {
        if let (Some(first), Some(last)) = (used.path.first(), used.path.last())
            && used.path.len() > 1
            && module_layer(first).is_some()
        {
            map.insert(last.clone(), first.clone());
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// A small Rust scanner: blanks comments and literals, splits tokens, reads `use` trees and
// `crate::`/`self::`/`super::` paths.

/// A path used by a file, resolved to the crate root (without the leading `crate`).
#[derive(Debug)]
struct Used {
    path: Vec<String>,
    line: usize,
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
}

/// The source with comments, string and char literals blanked (newlines kept).
fn blank(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let keep = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(keep(chars[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || c == 'b')
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| i > 0 && (p.is_alphanumeric() || *p == '_'))
            && raw_string_start(&chars, i).is_some()
        {
            let (hashes, body) = raw_string_start(&chars, i).unwrap_or((0, i));
            for _ in i..body {
                out.push(' ');
            }
            i = body;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(keep(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(keep(ch));
                }
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\''
            && (next == Some('\\') || chars.get(i + 2) == Some(&'\''))
            && next != Some('\'')
        {
            // A char literal ('x' or '\n', '\u{..}'); a lifetime has no closing quote.
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#"`, `br"`…: the number of `#` and the index of the body's first char.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

fn tokens(source: &str) -> Vec<Token> {
    let text = blank(source);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Every path of the `use` items of a source, unresolved (for the crate root's re-exports).
fn use_paths(source: &str) -> Vec<Used> {
    let toks = tokens(source);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i].text == "use" && toks.get(i + 1).is_some_and(|t| t.text != "<") {
            i += 1;
            parse_tree(&toks, &mut i, Vec::new(), &mut out);
        }
        i += 1;
    }
    out
}

/// Every `crate::` path a file uses, resolved against `module` (the file's module path) and the
/// inline modules it sits in.
fn crate_paths(source: &str, module: &[String]) -> Vec<Used> {
    let toks = tokens(source);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        let here = |inline: &[(String, usize)]| {
            let mut m = module.to_vec();
            m.extend(inline.iter().map(|(n, _)| n.clone()));
            m
        };
        match t {
            "{" => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ";" => pending_mod = None,
            "mod" if toks.get(i + 1).is_some_and(|n| is_ident(&n.text)) => {
                pending_mod = Some(toks[i + 1].text.clone());
                i += 1;
            }
            "use" if toks.get(i + 1).is_some_and(|n| n.text != "<") => {
                let mut paths = Vec::new();
                i += 1;
                parse_tree(&toks, &mut i, Vec::new(), &mut paths);
                let at = here(&inline);
                out.extend(paths.into_iter().filter_map(|u| resolve(u, &at)));
            }
            "crate" | "self" | "super"
                if toks.get(i + 1).is_some_and(|n| n.text == "::")
                    && !(i > 0 && toks[i - 1].text == "::") =>
            {
                let line = toks[i].line;
                let mut path = vec![t.to_string()];
                i += 1;
                while toks.get(i).is_some_and(|n| n.text == "::")
                    && toks.get(i + 1).is_some_and(|n| is_ident(&n.text))
                {
                    path.push(toks[i + 1].text.clone());
                    i += 2;
                }
                let at = here(&inline);
                out.extend(resolve(Used { path, line }, &at));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads one use tree at `toks[*i]` and leaves `*i` at its end (the `;`, `,` or `}` after it).
fn parse_tree(toks: &[Token], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Used>) {
    while let Some(t) = toks.get(*i) {
        match t.text.as_str() {
            "::" => *i += 1,
            "{" => {
                *i += 1;
                loop {
                    parse_tree(toks, i, prefix.clone(), out);
                    match toks.get(*i).map(|t| t.text.as_str()) {
                        Some(",") => *i += 1,
                        Some("}") => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                    if toks.get(*i).is_some_and(|t| t.text == "}") {
                        *i += 1;
                        return;
                    }
                }
            }
            "*" => {
                out.push(Used {
                    path: prefix,
                    line: t.line,
                });
                *i += 1;
                return;
            }
            text if is_ident(text) => {
                let line = t.line;
                let mut path = prefix.clone();
                if text != "self" || prefix.is_empty() {
                    path.push(text.to_string());
                }
                *i += 1;
                if toks.get(*i).is_some_and(|t| t.text == "::") {
                    *i += 1;
                    if toks.get(*i).is_some_and(|t| t.text == "{" || t.text == "*") {
                        return parse_tree(toks, i, path, out);
                    }
                    let next = toks.get(*i).map(|t| t.text.clone()).unwrap_or_default();
                    if is_ident(&next) {
                        return parse_tree(toks, i, path, out);
                    }
                    return;
                }
                if toks.get(*i).is_some_and(|t| t.text == "as") {
                    *i += 2;
                }
                out.push(Used { path, line });
                return;
            }
            _ => return,
        }
    }
}

/// Resolves a `crate::`, `self::` or `super::` path against the module it is written in; `None`
/// for other paths (other crates, the standard library).
fn resolve(used: Used, at: &[String]) -> Option<Used> {
    let mut segments = used.path.into_iter().peekable();
    let mut base: Vec<String> = match segments.peek().map(String::as_str) {
        Some("crate") => {
            segments.next();
            Vec::new()
        }
        Some("self") => {
            segments.next();
            at.to_vec()
        }
        Some("super") => {
            let mut base = at.to_vec();
            while segments.peek().is_some_and(|s| s == "super") {
                segments.next();
                base.pop();
            }
            base
        }
        _ => return None,
    };
    base.extend(segments);
    Some(Used {
        path: base,
        line: used.line,
    })
}
