//! `plugbus new NAME`: a ready project from templates embedded in this
//! binary. The Rust template carries the SDK and the WIT contract of this
//! very build, and a `Cargo.lock`, so a project never drifts from the host
//! that made it and needs no template store or network (beyond crates.io
//! for its first build).

use std::path::{Path, PathBuf};

use super::{check_name, io_error, AuthorError, Lang};

/// Files in a project, as (path, text); `{{name}}`, `{{crate}}` and
/// `{{plugbus_version}}` are filled in.
type Files = &'static [(&'static str, &'static str)];

macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path))
    };
}

/// The contract, as `wit/` in a project.
const WIT: Files = &[
    ("wit/plugin.wit", repo_file!("wit/plugin.wit")),
    (
        "wit/deps/keyvalue/atomic.wit",
        repo_file!("wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        repo_file!("wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/store.wit",
        repo_file!("wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/watch.wit",
        repo_file!("wit/deps/keyvalue/watch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        repo_file!("wit/deps/keyvalue/world.wit"),
    ),
    (
        "wit/deps/keyvalue/README.md",
        repo_file!("wit/deps/keyvalue/README.md"),
    ),
    (
        "wit/deps/logging/logging.wit",
        repo_file!("wit/deps/logging/logging.wit"),
    ),
];

/// The Rust SDK of this build, as `plugbus-sdk/` in a project, with the
/// rules it shares with the host as `plugbus-contract/`.
const SDK: Files = &[
    (
        "plugbus-sdk/Cargo.toml",
        repo_file!("host/templates/rust/sdk-Cargo.toml.tmpl"),
    ),
    ("plugbus-sdk/src/lib.rs", repo_file!("guest-sdk/src/lib.rs")),
    (
        "plugbus-sdk/src/host.rs",
        repo_file!("guest-sdk/src/host.rs"),
    ),
    (
        "plugbus-sdk/src/state.rs",
        repo_file!("guest-sdk/src/state.rs"),
    ),
    (
        "plugbus-sdk/src/testing/mod.rs",
        repo_file!("guest-sdk/src/testing/mod.rs"),
    ),
    (
        "plugbus-sdk/src/testing/sandbox.rs",
        repo_file!("guest-sdk/src/testing/sandbox.rs"),
    ),
    (
        "plugbus-sdk/src/testing/tests.rs",
        repo_file!("guest-sdk/src/testing/tests.rs"),
    ),
    (
        "plugbus-contract/Cargo.toml",
        repo_file!("host/templates/rust/contract-Cargo.toml.tmpl"),
    ),
    (
        "plugbus-contract/src/lib.rs",
        repo_file!("contract/src/lib.rs"),
    ),
    (
        "plugbus-contract/src/ack.rs",
        repo_file!("contract/src/ack.rs"),
    ),
    (
        "plugbus-contract/src/batch.rs",
        repo_file!("contract/src/batch.rs"),
    ),
    (
        "plugbus-contract/src/publish.rs",
        repo_file!("contract/src/publish.rs"),
    ),
    (
        "plugbus-contract/src/state.rs",
        repo_file!("contract/src/state.rs"),
    ),
    (
        "plugbus-contract/src/timer.rs",
        repo_file!("contract/src/timer.rs"),
    ),
    (
        "plugbus-contract/src/topic.rs",
        repo_file!("contract/src/topic.rs"),
    ),
];

/// The Rust project's own files.
const RUST: Files = &[
    (
        "Cargo.toml",
        repo_file!("host/templates/rust/Cargo.toml.tmpl"),
    ),
    (
        "Cargo.lock",
        repo_file!("host/templates/rust/Cargo.lock.tmpl"),
    ),
    (
        "src/lib.rs",
        repo_file!("host/templates/rust/src/lib.rs.tmpl"),
    ),
    (
        "tests/handler.rs",
        repo_file!("host/templates/rust/tests/handler.rs.tmpl"),
    ),
    (
        "contracts.json",
        repo_file!("host/templates/rust/contracts.json.tmpl"),
    ),
    (
        "events/sample.json",
        repo_file!("host/templates/rust/events/sample.json"),
    ),
    (
        ".gitignore",
        repo_file!("host/templates/rust/gitignore.tmpl"),
    ),
];

/// The Python project's own files.
const PYTHON: Files = &[
    ("app.py", repo_file!("host/templates/python/app.py.tmpl")),
    ("plugbus.py", repo_file!("host/templates/python/plugbus.py")),
    (
        "test_app.py",
        repo_file!("host/templates/python/test_app.py.tmpl"),
    ),
    (
        "contracts.json",
        repo_file!("host/templates/rust/contracts.json.tmpl"),
    ),
    (
        "pyproject.toml",
        repo_file!("host/templates/python/pyproject.toml.tmpl"),
    ),
    (
        "events/sample.json",
        repo_file!("host/templates/rust/events/sample.json"),
    ),
    (
        ".gitignore",
        repo_file!("host/templates/python/gitignore.tmpl"),
    ),
];

/// Write a new `lang` project for plugin `name` into `parent/name`;
/// returns its directory and the files written.
pub fn create(
    parent: &Path,
    name: &str,
    lang: Lang,
) -> Result<(PathBuf, Vec<PathBuf>), AuthorError> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(AuthorError::Exists(dir));
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{plugbus_version}}", env!("CARGO_PKG_VERSION"))
            .replace(
                "{{componentize_py}}",
                super::toolchain::COMPONENTIZE_PY_VERSION,
            )
    };
    let mut files: Vec<(String, String)> = Vec::new();
    let own = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
    };
    for (path, text) in own.iter().chain(WIT) {
        files.push((path.to_string(), fill(text)));
    }
    if lang == Lang::Rust {
        for (path, text) in SDK {
            files.push((path.to_string(), fill(text)));
        }
    }
    files.push((
        format!("{name}.toml"),
        crate::plugin::manifest_reference::template(name),
    ));
    // Written into a temporary directory first and renamed: an error
    // halfway leaves nothing behind.
    let staging = parent.join(format!(".{name}.plugbus-new"));
    let _ = std::fs::remove_dir_all(&staging);
    let written = write_all(&staging, &files).and_then(|written| {
        std::fs::rename(&staging, &dir).map_err(io_error(&dir))?;
        Ok(written)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let written = written?;
    Ok((
        dir.clone(),
        written.into_iter().map(|p| dir.join(p)).collect(),
    ))
}

fn write_all(root: &Path, files: &[(String, String)]) -> Result<Vec<PathBuf>, AuthorError> {
    let mut written = Vec::new();
    for (path, text) in files {
        let file = root.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::write(&file, text).map_err(io_error(&file))?;
        written.push(PathBuf::from(path));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_written_whole_with_its_name_filled_in() {
        let parent = std::env::temp_dir().join(format!("plugbus-new-{}", std::process::id()));
        std::fs::create_dir_all(&parent).expect("dir");
        let (dir, files) = create(&parent, "order-audit", Lang::Rust).expect("created");
        assert!(files
            .iter()
            .any(|f| f.ends_with("plugbus-sdk/src/testing/mod.rs")));
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains("name = \"order-audit\""), "{cargo}");
        let test = std::fs::read_to_string(dir.join("tests/handler.rs")).expect("test");
        assert!(test.contains("use order_audit::"), "{test}");
        let manifest = std::fs::read_to_string(dir.join("order-audit.toml")).expect("manifest");
        crate::plugin::manifest::Manifest::parse(&dir.join("order-audit.toml"), &manifest)
            .expect("the written manifest is valid");
        // Nothing is left unfilled, and a second `new` refuses.
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read");
            assert!(
                !text.contains("{{"),
                "{} has a placeholder left",
                f.display()
            );
        }
        let again = create(&parent, "order-audit", Lang::Rust).expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
        let bad = create(&parent, "Order", Lang::Rust).expect_err("bad name");
        assert!(bad.to_string().contains("lowercase"), "{bad}");
        std::fs::remove_dir_all(&parent).expect("clean");
    }

    #[test]
    fn the_template_lock_uses_the_versions_this_repository_builds() {
        // A project resolves to the crates the repository already tested,
        // and a shared target directory reuses what they compiled.
        let lock = |text: &str| -> Vec<(String, String)> {
            let doc: toml::Table = toml::from_str(text).expect("lock is TOML");
            doc["package"]
                .as_array()
                .expect("packages")
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["version"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let ours = lock(repo_file!("Cargo.lock"));
        for (name, version) in lock(repo_file!("host/templates/rust/Cargo.lock.tmpl")) {
            if name == "{{name}}" || name == "plugbus-sdk" {
                continue;
            }
            assert!(
                ours.contains(&(name.clone(), version.clone())),
                "the template locks {name} {version}, which the repository's Cargo.lock does not have: regenerate host/templates/rust/Cargo.lock.tmpl"
            );
        }
    }

    #[test]
    fn every_file_of_the_sdk_and_the_contract_is_written() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut missing = Vec::new();
        for (dir, into, files) in [
            ("guest-sdk/src", "plugbus-sdk/src", SDK),
            ("contract/src", "plugbus-contract/src", SDK),
            ("wit", "wit", WIT),
        ] {
            let mut dirs = vec![root.join(dir)];
            while let Some(d) = dirs.pop() {
                for entry in std::fs::read_dir(&d).expect("dir").flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    let rel = path.strip_prefix(root.join(dir)).expect("under");
                    let written = Path::new(into).join(rel);
                    if !files.iter().any(|(p, _)| Path::new(p) == written) {
                        missing.push(written.display().to_string());
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "plugbus new does not write {missing:?}: add them to host/src/author/new.rs"
        );
    }

    #[test]
    fn the_sdk_template_depends_on_what_the_sdk_does() {
        let deps = |text: &str| -> Vec<String> {
            let doc: toml::Table = toml::from_str(text).expect("TOML");
            let mut names: Vec<String> = doc["dependencies"]
                .as_table()
                .expect("deps")
                .keys()
                .cloned()
                .collect();
            if let Some(t) = doc.get("target").and_then(|t| t.as_table()) {
                for (_, v) in t {
                    names.extend(v["dependencies"].as_table().expect("deps").keys().cloned());
                }
            }
            names.sort();
            names
        };
        assert_eq!(
            deps(repo_file!("guest-sdk/Cargo.toml")),
            deps(repo_file!("host/templates/rust/sdk-Cargo.toml.tmpl")),
            "host/templates/rust/sdk-Cargo.toml.tmpl must list the SDK's dependencies"
        );
    }
}
