//! House rules checked on the source itself (as TigerBeetle's `tidy`
//! does): no file over [`FILE_LINES_MAX`] lines, no function over
//! [`FUNCTION_LINES_MAX`], and no import cycle between the host's files,
//! so data flows one way (ingress → dispatch → backend → worker → runtime
//! → plugin). Test code (from a file's `#[cfg(test)] mod`) is not counted.
//! A rule is broken only with an entry in an allow list below that says
//! why; an entry that is no longer needed fails too, so the lists shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest file, in lines, test module excluded.
const FILE_LINES_MAX: usize = 800;
/// The longest function, in lines.
const FUNCTION_LINES_MAX: usize = 100;

/// Files allowed past [`FILE_LINES_MAX`], each with why.
const LONG_FILES: &[(&str, &str)] = &[(
    "host/src/backend/conformance.rs",
    "test code only: the conformance suite, one case after another",
)];

/// Functions allowed past [`FUNCTION_LINES_MAX`] (`file:function`), each
/// with why.
const LONG_FUNCTIONS: &[(&str, &str)] = &[
    (
        "host/src/main.rs:main",
        "one match arm per subcommand, each a call: the CLI's dispatch table",
    ),
    (
        "host/src/metrics.rs:new",
        "registers every metric with its help text: a list, not logic",
    ),
    (
        "host/src/backend/conformance.rs:the_audit_holds_through_every_verdict",
        "test code: one scenario through every verdict, in order",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under the crates' sources, relative to the root.
fn sources() -> Vec<(String, String)> {
    let root = root();
    let mut dirs: Vec<PathBuf> = ["host/src", "contract/src", "guest-sdk/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    for plugin in std::fs::read_dir(root.join("plugins"))
        .expect("plugins/")
        .flatten()
    {
        dirs.push(plugin.path().join("src"));
    }
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source readable");
                let name = path
                    .strip_prefix(&root)
                    .expect("under the root")
                    .to_string_lossy()
                    .into_owned();
                files.push((name, without_tests(&text).to_string()));
            }
        }
    }
    files.sort();
    files
}

/// `text` up to its test module.
fn without_tests(text: &str) -> &str {
    let cut = [
        "#[cfg(test)]\nmod ",
        "#[cfg(test)]\npub mod ",
        "#[cfg(test)]\npub(crate) mod ",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min()
    .unwrap_or(text.len());
    &text[..cut]
}

/// The functions of `text` with their lengths in lines: from the line
/// with `fn NAME` to the line that closes it at the same indentation.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        let before = &trimmed[..at];
        let is_item = before.split_whitespace().all(|w| {
            ["pub", "async", "const", "unsafe", "extern"].contains(&w)
                || w.starts_with("pub(")
                || w.starts_with('"')
        });
        if !is_item || trimmed.starts_with("//") {
            continue;
        }
        let name: String = trimmed[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{indent}}}");
        // A declaration without a body (a trait's) ends with `;`.
        let Some(open) = lines[i..]
            .iter()
            .position(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'))
        else {
            continue;
        };
        if lines[i + open].trim_end().ends_with(';') {
            continue;
        }
        if let Some(end) = lines[i..].iter().position(|l| l.trim_end() == close) {
            out.push((name, end + 1));
        }
    }
    out
}

#[test]
fn no_file_is_too_long() {
    let mut long = Vec::new();
    for (name, text) in sources() {
        let n = text.lines().count();
        let allowed = LONG_FILES.iter().any(|(f, _)| *f == name);
        if n > FILE_LINES_MAX && !allowed {
            long.push(format!("{name}: {n} lines"));
        }
        if allowed && n <= FILE_LINES_MAX {
            long.push(format!(
                "{name} is allowed in LONG_FILES but has {n} lines: take it off"
            ));
        }
    }
    assert!(
        long.is_empty(),
        "over {FILE_LINES_MAX} lines (split by concern):\n{}",
        long.join("\n")
    );
}

#[test]
fn no_function_is_too_long() {
    let mut long = Vec::new();
    let mut allowed_seen = BTreeSet::new();
    for (name, text) in sources() {
        for (f, n) in functions(&text) {
            let key = format!("{name}:{f}");
            if n <= FUNCTION_LINES_MAX {
                continue;
            }
            if LONG_FUNCTIONS.iter().any(|(k, _)| *k == key) {
                allowed_seen.insert(key);
            } else {
                long.push(format!("{key}: {n} lines"));
            }
        }
    }
    for (k, _) in LONG_FUNCTIONS {
        if !allowed_seen.contains(*k) {
            long.push(format!(
                "{k} is allowed in LONG_FUNCTIONS but is short now: take it off"
            ));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines (make them named steps):\n{}",
        long.join("\n")
    );
}

/// The host's module files, by module path (`store::log` → its file).
fn modules(files: &[(String, String)]) -> BTreeMap<String, String> {
    files
        .iter()
        .filter_map(|(name, _)| {
            let rel = name.strip_prefix("host/src/")?;
            let module = rel
                .trim_end_matches(".rs")
                .trim_end_matches("/mod")
                .replace('/', "::");
            Some((module, name.clone()))
        })
        .collect()
}

/// The module paths `text` names as `crate::…` (groups opened one level).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':').to_string();
        let after = &rest[path.len()..];
        if let Some(group) = after.strip_prefix("::{") {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let item = item.trim().split("::").next().unwrap_or("").trim();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{path}::{item}"));
                }
            }
        }
        out.push(path);
    }
    out
}

#[test]
fn the_host_has_no_import_cycle() {
    let files = sources();
    let modules = modules(&files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in files.iter().filter(|(n, _)| n.starts_with("host/src/")) {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for path in crate_paths(&code) {
            // The deepest module the path names.
            let mut parts: Vec<&str> = path.split("::").collect();
            while !parts.is_empty() {
                if let Some(file) = modules.get(&parts.join("::")) {
                    if file != name && !file.ends_with("lib.rs") {
                        edges.entry(name.clone()).or_default().insert(file.clone());
                    }
                    break;
                }
                parts.pop();
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(at) {
            Some(true) => return None,
            Some(false) => {
                let from = stack.iter().position(|s| s == at).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(at.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(at.to_string(), false);
        stack.push(at.to_string());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(at.to_string(), true);
        None
    }
    let mut state = BTreeMap::new();
    for start in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(start, &edges, &mut state, &mut stack) {
            panic!(
                "an import cycle (each file names the next with `crate::`): {}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_checks_see_what_they_check() {
    let text = "pub(crate) fn a() {\n    x();\n}\n\n    async fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\n    fn c();\n";
    assert_eq!(
        functions(text),
        [("a".to_string(), 3), ("b".to_string(), 5)]
    );
    assert_eq!(
        crate_paths("use crate::store::{log::Log, Store};\nlet _ = crate::bus::Bus::new();"),
        ["store::log", "store::Store", "store", "bus::Bus::new"]
    );
    assert_eq!(without_tests("a\n#[cfg(test)]\nmod tests {}"), "a\n");
    assert!(sources().len() > 100);
}
