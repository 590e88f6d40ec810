//! The module import graph of `src/`, drawn from the `use` lines (and
//! `crate::…` paths written inline), has no circle: data flows one way
//! (transport → runtime → script → answer), and a module that reaches back
//! up is a sign its boundary is wrong (issue 11). Regression guard for the
//! circle `commands` ↔ `events` ↔ `forms` that the runtime once had.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → ``.
fn module_of(path: &Path, src: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths a file imports: every `use` item (groups expanded) and every
/// `crate::…` path, as written, with `super` and `crate` resolved.
fn imported_paths(text: &str, module: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    // The unit tests at the bottom of a file may use anything.
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut paths = Vec::new();
    let use_line = regex::Regex::new(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);").unwrap();
    for statement in use_line.captures_iter(code) {
        expand(&statement[1], "", &mut paths);
    }
    for (at, _) in code.match_indices("crate::") {
        let rest: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(rest);
    }
    paths
        .into_iter()
        .filter_map(|path| resolve(&path, module))
        .collect()
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let close = tree
            .rfind('}')
            .filter(|&close| close > open)
            .unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &join(prefix, head), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &join(prefix, head), out);
    } else if !tree.is_empty() {
        let item = tree.split(" as ").next().unwrap_or_default().trim();
        out.push(join(prefix, item));
    }
}

fn join(prefix: &str, item: &str) -> String {
    match (prefix.is_empty(), item) {
        (true, _) => item.to_string(),
        (false, "self") => prefix.to_string(),
        (false, _) => format!("{prefix}::{item}"),
    }
}

/// An absolute path inside the crate, or `None` for other crates.
fn resolve(path: &str, module: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    match parts.first().copied() {
        Some("crate") => {
            parts.remove(0);
            base.clear();
        }
        Some("super") => {
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        Some("self") => {
            parts.remove(0);
        }
        _ => return None,
    }
    base.extend(parts);
    Some(base.join("::"))
}

/// The longest known module that `path` lies in.
fn owning_module<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let mut candidate = path.to_string();
    loop {
        if let Some(module) = modules.get(&candidate) {
            return Some(module);
        }
        candidate = candidate.rsplit_once("::")?.0.to_string();
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f, &src)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file, &src);
        let text = std::fs::read_to_string(file).unwrap();
        for path in imported_paths(&text, &module) {
            if let Some(target) = owning_module(&path, &modules)
                && *target != module
                && !target.is_empty()
            {
                edges
                    .entry(module.clone())
                    .or_default()
                    .insert(target.clone());
            }
        }
    }
    edges
}

/// A circle through `from`, if there is one.
fn circle(
    edges: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| m == from) {
        return Some(path[at..].to_vec());
    }
    path.push(from.to_string());
    for next in edges.get(from).into_iter().flatten() {
        if let Some(found) = circle(edges, next, path) {
            return Some(found);
        }
    }
    path.pop();
    None
}

#[test]
fn the_module_import_graph_has_no_circle() {
    let edges = graph();
    assert!(
        edges
            .get("runtime::commands")
            .is_some_and(|e| e.contains("runtime::handlers")),
        "the graph is drawn (commands uses handlers): {edges:#?}"
    );
    for module in edges.keys() {
        if let Some(found) = circle(&edges, module, &mut Vec::new()) {
            panic!(
                "import circle: {} -> {}\nall edges: {edges:#?}",
                found.join(" -> "),
                found[0]
            );
        }
    }
}

#[test]
fn the_drawing_sees_groups_super_and_inline_paths() {
    let text = "use super::{events, forms::{self, submit}};\nuse crate::answer::Status;\nfn f() { crate::metrics::METRICS.push(); }";
    let paths = imported_paths(text, "runtime::commands");
    for expected in [
        "runtime::events",
        "runtime::forms",
        "runtime::forms::submit",
        "answer::Status",
        "metrics::METRICS.push",
    ] {
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with(expected.split('.').next().unwrap())),
            "{expected} in {paths:?}"
        );
    }
}

#[test]
fn a_circle_is_found() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut edge = |from: &str, to: &str| {
        edges
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string());
    };
    edge("runtime::commands", "runtime::events");
    edge("runtime::events", "runtime::forms");
    edge("runtime::forms", "runtime::commands");
    edge("runtime::forms", "answer");
    let found = circle(&edges, "runtime::commands", &mut Vec::new()).unwrap();
    assert_eq!(
        found,
        ["runtime::commands", "runtime::events", "runtime::forms"]
    );
    edges
        .get_mut("runtime::forms")
        .unwrap()
        .remove("runtime::commands");
    assert!(circle(&edges, "runtime::commands", &mut Vec::new()).is_none());
}
