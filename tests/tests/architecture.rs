//! The module structure the design relies on (docs/design.md §1): inside
//! every crate, the modules depend on each other in one direction only.
//!
//! A module's dependencies are the modules its source names through
//! `crate::…` and `super::…` paths (in `use` lines and in the code). The
//! crate root (`lib.rs`, `main.rs`) re-exports and is left out; so are test
//! modules (`#[cfg(test)] mod …` to the end of the file). A cycle fails the
//! test with the modules that form it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` with its module path (`["bench", "load"]`
/// for `src/bench/load.rs`), the root files left out.
fn modules(src: &Path) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // `src/bin/*` are separate crates with their own roots.
                if path.file_name().unwrap() != "bin" {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let file = parts.pop().unwrap();
            let stem = file.trim_end_matches(".rs");
            if parts.is_empty() && (stem == "lib" || stem == "main") {
                continue;
            }
            if stem != "mod" {
                parts.push(stem.to_string());
            }
            out.push((parts, path));
        }
    }
    out
}

/// The source without comments, string contents and trailing test modules.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // Good enough for this source: drop what follows `//` when it is not
        // inside a string (URLs in strings are kept out by dropping strings).
        let mut in_str = false;
        let mut prev = ' ';
        for ch in line.chars() {
            if ch == '"' && prev != '\\' {
                in_str = !in_str;
                prev = ch;
                continue;
            }
            if !in_str {
                if ch == '/' && prev == '/' {
                    out.pop();
                    break;
                }
                out.push(ch);
            }
            prev = ch;
        }
        out.push('\n');
    }
    out
}

/// The paths named after `anchor` (`crate::`, `super::`) in `code`,
/// expanding one level of braces: `crate::{a, b::c}` gives `a` and `b::c`.
fn paths_after(code: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(anchor) {
        let before = rest[..i].chars().last();
        rest = &rest[i + anchor.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut heads = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            heads.extend(inner[..end].split(',').map(str::trim).map(String::from));
        } else {
            heads.push(rest.to_string());
        }
        for head in heads {
            let segs: Vec<String> = head
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            if !segs.is_empty() {
                out.push(segs);
            }
        }
    }
    out
}

/// The module (of `known`) that a path names: its longest known prefix.
fn resolve(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// Module -> the modules it depends on. Dependencies are collapsed to the
/// siblings of the depending module's ancestors, so that `bench::load ->
/// bench::report` is an edge between siblings and `bench::load -> probe`
/// an edge from `bench` to `probe`; a child naming its own ancestor is not
/// an edge (the parent declares it).
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules(src);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &mods {
        let code = code_of(path);
        let mut targets: Vec<Vec<String>> = paths_after(&code, "crate::");
        let parent = &module[..module.len() - 1];
        for rel in paths_after(&code, "super::") {
            let mut abs = parent.to_vec();
            abs.extend(rel);
            targets.push(abs);
        }
        for target in targets {
            let Some(target) = resolve(&target, &known) else {
                continue;
            };
            if module.starts_with(&target) || target.starts_with(module) {
                continue; // an ancestor or a child of its own
            }
            // The first segment where the two paths part.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let from = module[..=common].to_vec();
            let to = target[..=common.min(target.len() - 1)].to_vec();
            edges.entry(from).or_default().insert(to);
        }
    }
    edges
}

/// A cycle in `edges`, as the list of modules that form it.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|n| n == node).unwrap();
                let mut cycle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
                cycle.push(node.join("::"));
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn crate_sources() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = vec![("dtc-tests".to_string(), root.join("tests/src"))];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("src").is_dir() {
            // The directory is named after the crate.
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, dir.join("src")));
        }
    }
    out.sort();
    out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut cycles = Vec::new();
    for (name, src) in crate_sources() {
        if let Some(cycle) = find_cycle(&graph(&src)) {
            cycles.push(format!("{name}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other in a circle:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_cycle_check_finds_a_cycle_it_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "use crate::{c::Other, x};\n// crate::a in a comment is not an edge\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "fn f() { super::a::g(); }\n").unwrap();
    let cycle = find_cycle(&graph(src)).expect("a -> b -> c -> a");
    assert_eq!(cycle, ["a", "b", "c", "a"]);

    // Without c's call back into a, no cycle; a test module is not counted.
    std::fs::write(
        src.join("c.rs"),
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::a::g;\n}\n",
    )
    .unwrap();
    assert_eq!(find_cycle(&graph(src)), None);
}

/// The module map of docs/design.md §1: `### \`crate\`` headings, each
/// followed by a table whose rows start with `| \`module\` |`.
fn design_module_map() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let start = text
        .find("\n## 1.")
        .expect("docs/design.md has a section 1");
    let end = text[start + 1..]
        .find("\n## ")
        .map_or(text.len(), |e| start + 1 + e);
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in text[start..end].lines() {
        if let Some(h) = line.strip_prefix("### `") {
            let name = h.split('`').next().unwrap().to_string();
            map.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(c), Some(row)) = (&current, line.strip_prefix("| `")) {
            let module = row.split('`').next().unwrap().to_string();
            map.get_mut(c).unwrap().insert(module);
        }
    }
    map
}

#[test]
fn the_design_doc_names_every_crate_and_module_and_nothing_else() {
    let documented = design_module_map();
    let mut actual: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, src) in crate_sources() {
        actual.insert(
            name,
            modules(&src)
                .into_iter()
                .map(|(m, _)| m.join("::"))
                .collect(),
        );
    }
    let mut wrong = Vec::new();
    for (name, modules) in &actual {
        match documented.get(name) {
            None => wrong.push(format!("crate {name} has no `### \\`{name}\\`` map")),
            Some(doc) => {
                for m in modules.difference(doc) {
                    wrong.push(format!("{name}: module {m} is not in the map"));
                }
                for m in doc.difference(modules) {
                    wrong.push(format!("{name}: the map names {m}, which does not exist"));
                }
            }
        }
    }
    for name in documented.keys().filter(|n| !actual.contains_key(*n)) {
        wrong.push(format!("the map names crate {name}, which does not exist"));
    }
    assert!(
        wrong.is_empty(),
        "docs/design.md §1 and the source disagree:\n  {}",
        wrong.join("\n  ")
    );
}
