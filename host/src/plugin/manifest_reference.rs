//! The manifest's documentation, generated from the [`Manifest`] type
//! itself (its doc comments and examples, through its JSON Schema), so it
//! cannot drift from what the host reads: the commented `NAME.toml` that
//! `plugbus new` writes, and the reference page `docs/plugins/manifest.md`.

use serde_json::Value;

use super::manifest::Manifest;

/// One key: its TOML path, what it does, its type and an example value.
struct Key {
    section: Option<String>,
    name: String,
    doc: String,
    kind: String,
    example: Option<Value>,
}

/// A section (none: the top level) and what it is for.
type Section = (Option<String>, String);

/// The manifest's description, its sections and its keys.
fn keys() -> (String, Vec<Section>, Vec<Key>) {
    let schema = schemars::schema_for!(Manifest);
    let root = schema.as_value();
    let defs = root.get("$defs").cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| {
        let t = v.get(k).and_then(Value::as_str).unwrap_or_default();
        t.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let mut sections = Vec::new();
    let mut out = Vec::new();
    let props = root["properties"].as_object().cloned().unwrap_or_default();
    for (name, prop) in &props {
        let target = prop
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .and_then(|d| defs.get(d));
        match target {
            Some(def) => {
                sections.push((Some(name.clone()), text(prop, "description")));
                for (key, p) in def["properties"].as_object().cloned().unwrap_or_default() {
                    out.push(key_of(Some(name), &key, &p));
                }
            }
            // A table of free keys (`[config]`): a section of its own.
            None if prop.get("additionalProperties").is_some() => {
                sections.push((Some(name.clone()), text(prop, "description")));
                let mut key = key_of(Some(name), "KEY", prop);
                key.kind = "string".to_string();
                key.doc = "Any key the plugin reads, with a string value.".to_string();
                out.push(key);
            }
            None => out.push(key_of(None, name, prop)),
        }
    }
    sections.insert(0, (None, String::new()));
    (text(root, "description"), sections, out)
}

fn key_of(section: Option<&String>, name: &str, p: &Value) -> Key {
    let kind = match p.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any")
            .to_string(),
        Some(Value::String(t)) => t.clone(),
        _ => "any".to_string(),
    };
    let kind = match (kind.as_str(), p.get("additionalProperties")) {
        ("array", _) => "list of strings".to_string(),
        ("object", Some(_)) => "table of strings".to_string(),
        ("integer", _) => "integer".to_string(),
        _ => kind,
    };
    Key {
        section: section.cloned(),
        name: name.to_string(),
        doc: p
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        kind,
        example: p.get("examples").and_then(|e| e.get(0)).cloned(),
    }
}

fn toml_value(v: &Value) -> String {
    toml::Value::try_from(v).map_or_else(|_| v.to_string(), |t| t.to_string())
}

/// Wrap `text` into `# `-comment lines of at most 76 columns.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 76 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The manifest `plugbus new` writes for plugin `name`: every key, with
/// what it does, commented out at an example value.
pub fn template(name: &str) -> String {
    let (_, sections, keys) = keys();
    let mut out = format!(
        "# {name}.toml: the manifest of plugin `{name}`, the operator's settings for\n\
         # it, deployed beside {name}.wasm (`plugbus build` puts both in dist/).\n\
         # Every key is optional: a missing one takes the host's setting (its\n\
         # command-line flag) or the default said here. Uncomment a line to set\n\
         # it; an unknown key is refused with its name.\n"
    );
    for (section, doc) in sections {
        if let Some(s) = &section {
            out.push('\n');
            out.push_str(&comment(&doc));
            out.push_str(&format!("[{s}]\n"));
        }
        for k in keys.iter().filter(|k| k.section == section) {
            out.push('\n');
            out.push_str(&comment(&k.doc));
            match (&k.example, k.kind.as_str()) {
                (Some(Value::Object(map)), _) => {
                    for (key, v) in map {
                        out.push_str(&format!("# {key} = {}\n", toml_value(v)));
                    }
                }
                (Some(v), _) => out.push_str(&format!("# {} = {}\n", k.name, toml_value(v))),
                (None, _) => {}
            }
        }
    }
    out
}

/// The manifest reference page (Markdown): one table per section.
pub fn reference() -> String {
    let (about, sections, keys) = keys();
    let mut out = String::from(
        "# Plugin manifest reference\n\n\
         <!-- Generated from `Manifest` in host/src/plugin/manifest.rs by \
         host/src/plugin/manifest_reference.rs; a unit test fails when this \
         file differs: rerun it with PLUGBUS_BLESS=1 to rewrite it. -->\n\n",
    );
    out.push_str(&about.split_whitespace().collect::<Vec<_>>().join(" "));
    out.push_str(
        "\n\nThe manifest is `NAME.toml` beside `NAME.wasm` in the plugin directory. \
         Every key is optional; an unknown key is refused with its name, so a typo \
         never silently does nothing. `plugbus new` writes one with every key \
         commented out.\n",
    );
    for (section, doc) in sections {
        match &section {
            None => out.push_str("\n## Top level\n\n"),
            Some(s) => out.push_str(&format!("\n## `[{s}]`\n\n{doc}\n\n")),
        }
        out.push_str("| key | type | what it does | example |\n|---|---|---|---|\n");
        for k in keys.iter().filter(|k| k.section == section) {
            let example = match &k.example {
                Some(Value::Object(map)) => map
                    .iter()
                    .map(|(key, v)| format!("`{key} = {}`", toml_value(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(v) => format!("`{} = {}`", k.name, toml_value(v)),
                None => String::new(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.name,
                k.kind,
                k.doc.replace('|', "\\|"),
                example.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_names_every_key_and_parses_with_each_one_set() {
        let text = template("audit");
        let manifest = Manifest::parse(std::path::Path::new("audit.toml"), &text)
            .expect("the template as written is valid");
        assert_eq!(manifest, Manifest::default());
        // Uncommenting every example gives a valid manifest with each key set.
        let all: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.contains(':') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let set = Manifest::parse(std::path::Path::new("audit.toml"), &all)
            .unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(set.concurrency, Some(2));
        assert_eq!(set.limits.deadline_ms, Some(1000));
        assert_eq!(set.retry.ordering.as_deref(), Some("none"));
        assert_eq!(set.config["smtp_host"], "mail.example");
        assert_eq!(set.publish.deny, ["inventory.internal.>"]);
    }

    #[test]
    fn the_reference_page_is_generated_from_the_type() {
        let page = reference();
        for key in [
            "`concurrency`",
            "`deadline_ms`",
            "`[retry]`",
            "`chain_events_max`",
        ] {
            assert!(page.contains(key), "{key} missing:\n{page}");
        }
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plugins/manifest.md");
        if std::env::var_os("PLUGBUS_BLESS").is_some() {
            std::fs::write(&file, &page).expect("write docs/plugins/manifest.md");
        }
        let kept = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            kept == page,
            "docs/plugins/manifest.md differs from the Manifest type: rerun with PLUGBUS_BLESS=1 \
             (cargo test --release -p plugbus --lib manifest_reference)"
        );
    }
}
