//! The center's module graph: who may use whom. Read from the sources, so that an import
//! circle or an actor reaching into another actor's helpers fails the build's tests instead
//! of waiting for a reviewer (ARCHITECTURE.md, "Module layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, each with the ones it may use. The graph this allows has no circle;
/// `no_import_circle_between_top_level_modules` checks the real one anyway.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("error", &["store"]),
    ("metrics", &[]),
    ("store", &["config"]),
    ("cron_files", &["store"]),
    ("dispatch", &["config", "error", "store"]),
    (
        "actors",
        &[
            "config",
            "cron_files",
            "dispatch",
            "error",
            "metrics",
            "store",
        ],
    ),
    (
        "api",
        &["actors", "config", "dispatch", "error", "metrics", "store"],
    ),
    ("submit", &["api", "dispatch", "error", "store"]),
    // The dashboard: the API's authorization and calls, the store's reads.
    ("ui", &["actors", "api", "config", "error", "store"]),
    // Sits under the HTTP server, before the API: answers with the API's error envelope.
    ("http_guard", &["error"]),
];

/// Actors that must not use one another's helpers: what they share lives in `dispatch` or
/// `store`. Root supervises them all and may name every one.
const SIBLING_ACTORS: &[&str] = &[
    "scheduler",
    "task_queue",
    "cron",
    "heartbeat",
    "app_store",
    "batch",
    "inventory",
];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module path of a source file: `actors/cron/mod.rs` → `["actors", "cron"]`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(source_dir()).unwrap_or(file);
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The production code of a file, without comments: unit-test modules may use whatever they
/// test with, and a doc comment may name any module.
fn production_code(text: &str) -> String {
    let end = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|start| text.find(start))
    .min()
    .unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` a file names, as `[a, b]` (`b` empty when there is none), including
/// those inside `use crate::{a::x, b}` groups.
fn crate_paths(code: &str) -> Vec<[String; 2]> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                paths.push(split_path(item.trim()));
            }
        } else {
            paths.push(split_path(rest));
        }
    }
    paths
}

fn split_path(text: &str) -> [String; 2] {
    let word = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let first = word(text);
    let after = &text[first.len()..];
    let second = after.strip_prefix("::").map(word).unwrap_or_default();
    [first, second]
}

/// `module → modules it names`, both as module paths.
fn uses() -> BTreeMap<Vec<String>, BTreeSet<[String; 2]>> {
    let mut files = Vec::new();
    rust_files(&source_dir(), &mut files);
    let mut graph = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut named: BTreeSet<[String; 2]> =
            crate_paths(&production_code(&text)).into_iter().collect();
        // `super::x` from `actors/y.rs` is `crate::actors::x`.
        let module = module_of(&file);
        if let [parent, _] = module.as_slice() {
            let only_super = production_code(&text)
                .replace("crate::", "\u{1}")
                .replace("super::", "crate::");
            for [first, _] in crate_paths(&only_super) {
                named.insert([parent.clone(), first]);
            }
        }
        graph.insert(module, named);
    }
    graph
}

fn top_level_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, named) in uses() {
        let Some(top) = module.first() else { continue };
        let entry = graph.entry(top.clone()).or_default();
        for [first, _] in named {
            if !first.is_empty() && first != *top && first != "self" {
                entry.insert(first);
            }
        }
    }
    graph
}

fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = top_level_graph();
    assert!(graph.contains_key("actors") && graph.contains_key("api"));
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}\ngraph: {graph:#?}", circle.join(" → "));
    }
}

#[test]
fn every_top_level_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, named) in top_level_graph() {
        if module == "lib" || module.is_empty() {
            continue;
        }
        let Some(may_use) = allowed.get(module.as_str()) else {
            wrong.push(format!("{module} is not in ALLOWED: place it in a layer"));
            continue;
        };
        for used in named {
            let known = allowed.contains_key(used.as_str());
            if known && !may_use.contains(&used.as_str()) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations: {wrong:#?}");
}

#[test]
fn actors_do_not_use_one_another_s_helpers() {
    let mut wrong = Vec::new();
    for (module, named) in uses() {
        let [top, actor] = [module.first(), module.get(1)];
        if top.map(String::as_str) != Some("actors") {
            continue;
        }
        let Some(actor) = actor.filter(|actor| SIBLING_ACTORS.contains(&actor.as_str())) else {
            continue;
        };
        for [first, second] in named {
            if first == "actors" && second != *actor && SIBLING_ACTORS.contains(&second.as_str()) {
                wrong.push(format!("actors::{actor} uses actors::{second}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_reader_sees_groups_and_super_paths() {
    let paths = crate_paths("use crate::{store::Store, dispatch};\nlet x = crate::error::E;");
    assert_eq!(
        paths,
        [
            ["store".to_string(), "Store".to_string()],
            ["dispatch".to_string(), String::new()],
            ["error".to_string(), "E".to_string()],
        ]
    );
}
