//! The reference pages generated from the code, so they cannot drift from
//! it, and the check that keeps the hand-written pages honest:
//!
//! - `docs/reference/cli.md`: every command and flag, from the clap
//!   definitions (`cli`);
//! - the flag table of `docs/operating/configuration.md` (between its
//!   `generated` markers): every `plugbus run` flag with its environment
//!   variable, its key in the configuration file and its default;
//! - `docs/reference/metrics.md`: every metric family, from the registry;
//! - `docs/reference/http.md`: every route, from `host/api/openapi.json`;
//! - no page (the README, `docs/`) names a `--flag` that no plugbus
//!   command accepts, unless it is another tool's (listed below).
//!
//! A page that differs from what the code gives fails its test; rerun it
//! with `PLUGBUS_BLESS=1` to rewrite the page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const NOTICE: &str = "<!-- Generated from the code by `cargo test -p plugbus --lib reference`: \
do not edit; when the code changes, rerun it with PLUGBUS_BLESS=1. -->";

/// Compare `page` with the file at `rel`, or write it under
/// `PLUGBUS_BLESS`.
fn check_page(rel: &str, page: &str) {
    let path = root().join(rel);
    if std::env::var_os("PLUGBUS_BLESS").is_some() {
        std::fs::write(&path, page).expect("write the page");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == page,
        "{rel} differs from what the code gives: rerun `cargo test -p plugbus --lib reference` with PLUGBUS_BLESS=1"
    );
}

/// Replace what lies between `<!-- generated: NAME -->` and
/// `<!-- end generated -->` in the file at `rel` with `part`.
fn check_part(rel: &str, name: &str, part: &str) {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).expect("the page exists");
    let open = format!("<!-- generated: {name} -->\n");
    let close = "<!-- end generated -->";
    let start = text.find(&open).expect("the page has the opening marker") + open.len();
    let end = start + text[start..].find(close).expect("the closing marker");
    let page = format!("{}{NOTICE}\n\n{part}{}", &text[..start], &text[end..]);
    check_page(rel, &page);
}

/// One line of help text: clap's help, whitespace folded.
fn one_line(text: Option<&clap::builder::StyledStr>) -> String {
    let text = text.map(|t| t.to_string()).unwrap_or_default();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// An argument as a user writes it: `--url <URL>`, `-n <N>`, `PLUGIN`.
fn spelled(a: &clap::Arg) -> String {
    let value = a
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", a.get_id().as_str().to_uppercase()));
    let takes = a.get_action().takes_values();
    match (a.get_long(), a.get_short()) {
        (Some(l), Some(s)) if takes => format!("`-{s}`, `--{l} {value}`"),
        (Some(l), Some(s)) => format!("`-{s}`, `--{l}`"),
        (Some(l), None) if takes => format!("`--{l} {value}`"),
        (Some(l), None) => format!("`--{l}`"),
        (None, _) => format!("`{}`", a.get_id().as_str().to_uppercase()),
    }
}

fn default_of(a: &clap::Arg) -> String {
    let d: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    match d.is_empty() || !a.get_action().takes_values() {
        true => String::new(),
        false => format!("`{}`", d.join(",")),
    }
}

fn env_of(a: &clap::Arg) -> String {
    a.get_env()
        .map(|e| format!("`{}`", e.to_string_lossy()))
        .unwrap_or_default()
}

fn shown(a: &clap::Arg) -> bool {
    !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version"
}

/// The section of `cmd` (called `path`) and its subcommands'.
fn command_section(out: &mut String, path: &str, cmd: &clap::Command) {
    let _ = writeln!(out, "## `{path}`\n");
    let about = one_line(cmd.get_long_about().or(cmd.get_about()));
    if !about.is_empty() {
        let _ = writeln!(out, "{about}\n");
    }
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| shown(a) && !a.is_global_set())
        .collect();
    if !args.is_empty() {
        out.push_str("| argument | environment | default | what |\n|---|---|---|---|\n");
        for a in args {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                spelled(a),
                env_of(a),
                default_of(a),
                one_line(a.get_long_help().or(a.get_help()))
            );
        }
        out.push('\n');
    }
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subs.is_empty() {
        out.push_str("| command | what |\n|---|---|\n");
        for s in &subs {
            let _ = writeln!(
                out,
                "| `{path} {}` | {} |",
                s.get_name(),
                one_line(s.get_about())
            );
        }
        out.push('\n');
    }
    for s in subs {
        command_section(out, &format!("{path} {}", s.get_name()), s);
    }
}

/// `docs/reference/cli.md`.
pub fn cli_page() -> String {
    let cli = crate::cli::Cli::command();
    let mut out = format!("# Command line reference\n\n{NOTICE}\n\n");
    out.push_str(
        "Every command of the `plugbus` binary, its arguments, the environment \
         variable each reads when it is not given, and its default. The client \
         commands (those that talk to a running host) also take `--url` \
         (`PLUGBUS_URL`, default `http://127.0.0.1:7420`), `--token` \
         (`PLUGBUS_TOKEN`) and `--ca-cert` (`PLUGBUS_CA_CERT`). \
         `plugbus run` reads its flags from a file too: see \
         [configuration](../operating/configuration.md).\n\n",
    );
    command_section(&mut out, "plugbus", &cli);
    out
}

/// The run flags' table in `docs/operating/configuration.md`.
pub fn run_flags_table() -> String {
    let cli = crate::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("plugbus run");
    let mut out = String::from(
        "| flag | configuration file key | environment | default | what |\n|---|---|---|---|---|\n",
    );
    for a in run.get_arguments().filter(|a| shown(a)) {
        let Some(long) = a.get_long() else {
            continue;
        };
        let key = match (long, a.get_action().takes_values()) {
            ("config", _) => "(the file itself)".to_string(),
            (l, true) => format!("`{l} = …`"),
            (l, false) => format!("`{l} = true`"),
        };
        let _ = writeln!(
            out,
            "| {} | {key} | {} | {} | {} |",
            spelled(a),
            env_of(a),
            default_of(a),
            one_line(a.get_long_help().or(a.get_help()))
        );
    }
    out.push('\n');
    out
}

/// `docs/reference/metrics.md`: every family the registry holds.
pub fn metrics_page() -> String {
    let metrics = crate::metrics::Metrics::new();
    let mut families: Vec<(String, String, String)> = metrics.families().to_vec();
    families.sort();
    let mut out = format!("# Metrics reference\n\n{NOTICE}\n\n");
    out.push_str(
        "Every metric family at `GET /metrics` (Prometheus text format), with \
         its type and what it counts. Counters are exposed with the `_total` \
         suffix; histograms as `_bucket`, `_sum` and `_count`. Per-plugin \
         families carry the `plugin` label; their series appear once the \
         plugin is loaded. Alert rules to start from are in \
         [monitoring](../operating/monitoring.md).\n\n| metric | type | what |\n|---|---|---|\n",
    );
    for (name, kind, help) in families {
        let help = help.replace('|', "\\|");
        let _ = writeln!(out, "| `{name}` | {kind} | {help} |");
    }
    out
}

/// `docs/reference/http.md`: every route of the OpenAPI document.
pub fn http_page() -> String {
    let text = std::fs::read_to_string(root().join("host/api/openapi.json")).expect("openapi");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("openapi is JSON");
    let mut out = format!("# HTTP API reference\n\n{NOTICE}\n\n");
    out.push_str(
        "Every route of the host's HTTP API, from `host/api/openapi.json` (served \
         at `GET /v1/openapi.json`). With a token file (`--auth`) a route needs \
         a token of the scope shown; `publish` tokens may be limited to topic \
         patterns. See [security](../operating/security.md).\n\n",
    );
    let empty = serde_json::Map::new();
    for (path, ops) in doc["paths"].as_object().unwrap_or(&empty) {
        for (method, op) in ops.as_object().unwrap_or(&empty) {
            let text = |k: &str| op[k].as_str().unwrap_or_default().to_string();
            let _ = writeln!(
                out,
                "## `{} {path}`\n\n{}\n",
                method.to_uppercase(),
                text("summary")
            );
            if !text("description").is_empty() {
                let _ = writeln!(out, "{}\n", text("description"));
            }
            if let Some(params) = op["parameters"].as_array() {
                for p in params {
                    let _ = writeln!(
                        out,
                        "- `{}` ({}): {}",
                        p["name"].as_str().unwrap_or_default(),
                        p["in"].as_str().unwrap_or_default(),
                        p["description"].as_str().unwrap_or_default()
                    );
                }
                out.push('\n');
            }
            let codes: Vec<&String> = op["responses"]
                .as_object()
                .map(|r| r.keys().collect())
                .unwrap_or_default();
            if !codes.is_empty() {
                let codes: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
                let _ = writeln!(out, "Answers: {}.\n", codes.join(", "));
            }
        }
    }
    out
}

/// Every `--flag` a plugbus command accepts.
fn accepted_flags() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                out.insert(l.to_string());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    // clap's own, on every command.
    let mut out: std::collections::BTreeSet<String> =
        ["help", "version"].iter().map(|s| s.to_string()).collect();
    walk(&crate::cli::Cli::command(), &mut out);
    out
}

/// Flags of other tools the docs show (cargo, curl, systemd, …), which
/// the check lets pass.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    // cargo
    "lib",
    "test",
    // scripts/release.sh
    "build-only",
    // useradd, systemctl (installing on a device)
    "system",
    "home-dir",
    "shell",
    "now",
    // redis-server (restoring a snapshot)
    "appendonly",
];

/// The markdown pages: the README and every page under `docs/`.
fn pages() -> Vec<(String, String)> {
    let root = root();
    let mut out = vec![(
        "README.md".to_string(),
        std::fs::read_to_string(root.join("README.md")).expect("README"),
    )];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                let name = path.strip_prefix(&root).expect("under root");
                let text = std::fs::read_to_string(&path).expect("page");
                out.push((name.to_string_lossy().into_owned(), text));
            }
        }
    }
    out.sort();
    out
}

/// The `--flags` of `text`.
fn flags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("--") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '<' || c == '!') {
            continue;
        }
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let name = name.trim_end_matches('-');
        if name.len() > 1 && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(name.to_string());
        }
    }
    out
}

#[test]
fn the_cli_reference_is_generated_from_the_clap_definitions() {
    check_page("docs/reference/cli.md", &cli_page());
    check_part(
        "docs/operating/configuration.md",
        "run flags",
        &run_flags_table(),
    );
}

#[test]
fn the_metrics_reference_is_generated_from_the_registry() {
    check_page("docs/reference/metrics.md", &metrics_page());
}

#[test]
fn the_http_reference_is_generated_from_the_openapi_document() {
    check_page("docs/reference/http.md", &http_page());
}

#[test]
fn no_page_names_a_flag_the_binary_does_not_accept() {
    let accepted = accepted_flags();
    let mut wrong = Vec::new();
    for (page, text) in pages() {
        for flag in flags_in(&text) {
            if !accepted.contains(&flag) && !OTHER_TOOLS_FLAGS.contains(&flag.as_str()) {
                wrong.push(format!("{page}: --{flag}"));
            }
        }
    }
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "pages name flags no plugbus command accepts (fix the page, or list another tool's flag in OTHER_TOOLS_FLAGS):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_flag_check_sees_flags() {
    assert_eq!(
        flags_in("run `plugbus run --fsync always --hops-max 3` <!-- x --> a--b"),
        ["fsync", "hops-max"]
    );
    assert!(accepted_flags().contains("fsync"));
    assert!(!accepted_flags().contains("hops-max"));
    assert!(accepted_flags().contains("help"));
}

#[test]
fn no_page_names_a_metric_the_binary_does_not_have() {
    let metrics = crate::metrics::Metrics::new();
    let families: Vec<&str> = metrics.families().iter().map(|f| f.0.as_str()).collect();
    let mut wrong = Vec::new();
    for (page, text) in pages() {
        for (at, _) in text.match_indices("plugbus_") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            // A prefix in prose (`plugbus_plugin_*`) is not a metric, nor
            // are the crates' names or a NATS bucket's.
            let not_metrics = ["plugbus_sdk", "plugbus_contract", "plugbus_analytics"];
            if name.ends_with('_')
                || not_metrics.contains(&name.as_str())
                || families.contains(&base)
                || families.contains(&name.as_str())
            {
                continue;
            }
            wrong.push(format!("{page}: {name}"));
        }
    }
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "pages name metrics the binary does not have:\n{}",
        wrong.join("\n")
    );
}

/// A heading's anchor as GitHub makes it.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_between_pages_leads_somewhere() {
    let root = root();
    let mut broken = Vec::new();
    for (page, text) in pages() {
        let dir = root
            .join(&page)
            .parent()
            .expect("a directory")
            .to_path_buf();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for (at, _) in line.match_indices("](") {
                let rest = &line[at + 2..];
                let Some(end) = rest.find(')') else { continue };
                let target = &rest[..end];
                if target.starts_with("http") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() {
                    root.join(&page)
                } else {
                    dir.join(file)
                };
                let Ok(body) = std::fs::read_to_string(&path) else {
                    if !path.is_dir() {
                        broken.push(format!("{page}: {target} (no such file)"));
                    }
                    continue;
                };
                if !anchor.is_empty()
                    && !body
                        .lines()
                        .filter_map(|l| l.strip_prefix('#'))
                        .any(|h| slug(h.trim_start_matches('#')) == anchor)
                {
                    broken.push(format!("{page}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
