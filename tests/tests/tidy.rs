//! Tidy: the architecture invariants that can be checked by reading the
//! sources (see ARCHITECTURE.md, "Architecture invariants"). No services.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library crates: what users of the agent build on.
const LIBRARIES: [&str; 5] =
    ["otturnaut-core", "otturnaut-steps", "otturnaut-adapters", "otturnaut-daemon", "otturnaut-cli"];
/// Every crate of the workspace.
const CRATES: [&str; 7] =
    ["otturnaut-core", "otturnaut-steps", "otturnaut-adapters", "otturnaut-daemon", "otturnaut-cli", "xtask", "tests"];
/// Longer files start with a line saying why.
const MAX_LINES: usize = 500;
const LONG_FILE_MARK: &str = "// Long file: ";

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The code of a file before its unit tests (`#[cfg(test)]`), without comment lines.
fn non_test_code(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// The names in a `[section]` of a Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let header = format!("[{section}]");
    manifest
        .lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split(['=', '.']).next().map(str::trim).filter(|n| !n.is_empty() && !n.starts_with('#')))
        .map(str::to_owned)
        .collect()
}

#[test]
fn steps_and_core_never_depend_on_the_outside_world() {
    for krate in ["otturnaut-core", "otturnaut-steps"] {
        let manifest = read(&root().join(krate).join("Cargo.toml"));
        let deps = dependencies(&manifest, "dependencies");
        assert!(deps.iter().any(|d| d == "tokio"), "{krate}: the manifest was not read: {deps:?}");
        for forbidden in ["bollard", "reqwest", "gix", "otturnaut-adapters", "otturnaut-cli"] {
            assert!(!deps.iter().any(|d| d == forbidden), "{krate} depends on {forbidden}");
        }
        for file in rust_files(&root().join(krate).join("src")) {
            let text = read(&file);
            for forbidden in ["bollard::", "reqwest::", "gix::"] {
                assert!(!text.contains(forbidden), "{} uses {forbidden}", file.display());
            }
        }
    }
}

#[test]
fn no_unwrap_or_eprintln_in_library_code() {
    let mut found = Vec::new();
    for krate in LIBRARIES {
        for file in rust_files(&root().join(krate).join("src")) {
            // Test support: the fakes (feature `testing`) and the fuzz tests.
            if file.ends_with("testing.rs") || file.ends_with("fuzz.rs") {
                continue;
            }
            let text = read(&file);
            for (n, line) in non_test_code(&text) {
                let printing = krate != "otturnaut-cli" && (line.contains("eprintln!") || line.contains("println!"));
                if line.contains(".unwrap()") || printing {
                    found.push(format!("{}:{n}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "unwrap() or printing in library code:\n{}", found.join("\n"));
}

#[test]
fn long_files_say_why_at_their_top() {
    let mut found = Vec::new();
    for krate in CRATES {
        for file in rust_files(&root().join(krate).join("src")) {
            let text = read(&file);
            let lines = text.lines().count();
            if lines > MAX_LINES && !text.starts_with(LONG_FILE_MARK) {
                found.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files over {MAX_LINES} lines must start with `{LONG_FILE_MARK}<the reason>`:\n{}",
        found.join("\n")
    );
}

/// Edges between the top-level modules of a crate, from `crate::module`
/// paths outside comments; the crate root (which re-exports) is left out.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let top = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
    };
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(from) = top(file) else { continue };
        let text = read(file);
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != from && modules.contains(&name) {
                    graph.entry(from.clone()).or_default().insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_cycles_inside_a_crate() {
    for krate in CRATES {
        let graph = module_graph(&root().join(krate).join("src"));
        assert!(!graph.is_empty(), "{krate}: no modules found");
        if let Some(c) = cycle(&graph) {
            panic!("{krate}: module cycle {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("undo".to_owned(), BTreeSet::from(["reaper".to_owned()])),
        ("reaper".to_owned(), BTreeSet::from(["undo".to_owned()])),
    ]
    .into();
    assert_eq!(cycle(&graph), Some(vec!["reaper".to_owned(), "undo".to_owned(), "reaper".to_owned()]));
}

#[test]
fn library_crates_deny_missing_docs_where_documented() {
    // Every library crate documents every public item; the lint, with
    // clippy's -D warnings, keeps it so.
    let documented = ["otturnaut-core", "otturnaut-cli", "otturnaut-steps", "otturnaut-adapters", "otturnaut-daemon"];
    for krate in documented {
        let lib = read(&root().join(krate).join("src/lib.rs"));
        assert!(lib.contains("#![warn(missing_docs)]"), "{krate} lost #![warn(missing_docs)]");
    }
}
