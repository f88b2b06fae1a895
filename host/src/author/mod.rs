//! Plugin authoring: the commands that take a plugin author from an empty
//! folder to a tested, running plugin. `plugbus new` writes a project from
//! templates embedded in this binary (so they match its contract),
//! `plugbus build` compiles it to WebAssembly and checks it loads here,
//! `plugbus test` runs its native tests and then the built plugin against
//! its fixture events in the real runtime, and `plugbus dev` runs it in a
//! host in memory, rebuilding and swapping it in on every edit.
//!
//! Rooms: `new` (templates), `toolchain` (what a build needs and the exact
//! fix when it is missing), `build` (compiling, the load check, the compile
//! cache), `fixtures` (events/*.json run through the built plugin), `dev`
//! (the edit loop).

pub mod build;
pub mod commands;
pub mod dev;
pub mod fixtures;
pub mod new;
#[cfg(test)]
mod python_contract;
pub mod toolchain;

use std::path::{Path, PathBuf};

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with the plugbus SDK, built with cargo.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

/// Why an authoring command could not do what it was asked. Every message
/// names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthorError {
    /// `plugbus new` was given a name no plugin can have.
    #[error("`{name}` cannot name a plugin: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// `plugbus new` would overwrite something.
    #[error("{0} already exists; pick another name or remove it")]
    Exists(PathBuf),
    /// The directory is not a plugin project.
    #[error("{0} is not a plugin project: it has neither Cargo.toml nor app.py; create one with `plugbus new NAME`")]
    NotAProject(PathBuf),
    /// A tool the build needs is missing.
    #[error("{what} is missing: {fix}")]
    Toolchain {
        /// What is missing.
        what: String,
        /// The exact command or step that fixes it.
        fix: String,
    },
    /// A command the build ran failed.
    #[error("`{command}` failed ({status}); its output is above")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
    },
    /// The plugin built but does not load, or does not do what its
    /// project says.
    #[error("{file}: {reason}")]
    Check {
        /// The built plugin.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A fixture event is not usable, or the plugin did not do with it
    /// what it expects.
    #[error("{file}: {reason}")]
    Fixture {
        /// The fixture file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Ctrl-C or SIGTERM arrived while waiting.
    #[error("stopped")]
    Stopped,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// An I/O error about `path`.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorError + '_ {
    move |source| AuthorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A plugin project on disk.
#[derive(Debug, Clone)]
pub struct Project {
    /// Its directory.
    pub dir: PathBuf,
    /// The plugin's name (its file will be `NAME.wasm`).
    pub name: String,
    /// Its language.
    pub lang: Lang,
}

impl Project {
    /// The project in `dir`: a Rust crate (`Cargo.toml`) or a Python app
    /// (`app.py`).
    pub fn open(dir: &Path) -> Result<Project, AuthorError> {
        let dir = dir.canonicalize().map_err(io_error(dir))?;
        let cargo = dir.join("Cargo.toml");
        if cargo.is_file() {
            let text = std::fs::read_to_string(&cargo).map_err(io_error(&cargo))?;
            let doc: toml::Table = toml::from_str(&text).map_err(|e| AuthorError::Check {
                file: cargo.clone(),
                reason: format!("is not TOML: {e}"),
            })?;
            let name = doc
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| AuthorError::Check {
                    file: cargo.clone(),
                    reason: "has no [package] name".to_string(),
                })?
                .to_string();
            return Ok(Project {
                dir,
                name,
                lang: Lang::Rust,
            });
        }
        if dir.join("app.py").is_file() {
            let pyproject = dir.join("pyproject.toml");
            let name = std::fs::read_to_string(&pyproject)
                .ok()
                .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
                .and_then(|d| d.get("project")?.get("name")?.as_str().map(str::to_string))
                .or_else(|| dir.file_name()?.to_str().map(str::to_string))
                .ok_or_else(|| AuthorError::NotAProject(dir.clone()))?;
            return Ok(Project {
                dir,
                name,
                lang: Lang::Python,
            });
        }
        Err(AuthorError::NotAProject(dir))
    }

    /// The manifest: `NAME.toml` in the project.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(format!("{}.toml", self.name))
    }

    /// Where a build puts what to deploy: `dist/NAME.wasm` (and the
    /// manifest beside it).
    pub fn dist_dir(&self) -> PathBuf {
        self.dir.join("dist")
    }

    /// The fixture events: `events/*.json`, sorted.
    pub fn fixtures(&self) -> Result<Vec<PathBuf>, AuthorError> {
        let dir = self.dir.join("events");
        let mut files = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry.map_err(io_error(&dir))?.path();
                    if path.extension().is_some_and(|e| e == "json") {
                        files.push(path);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&dir)(e)),
        }
        files.sort();
        Ok(files)
    }
}

/// Run the project's own tests natively: `cargo test` for Rust,
/// `python3 -m unittest` for Python.
pub fn native_tests(project: &Project, target_dir: Option<PathBuf>) -> Result<(), AuthorError> {
    let mut cmd = match project.lang {
        Lang::Rust => {
            let mut c = std::process::Command::new("cargo");
            c.arg("test")
                .arg("--manifest-path")
                .arg(project.dir.join("Cargo.toml"))
                .env(
                    "CARGO_TARGET_DIR",
                    target_dir.unwrap_or_else(build::shared_target_dir),
                );
            c
        }
        Lang::Python => {
            let mut c = std::process::Command::new("python3");
            c.args(["-m", "unittest", "-v"]).current_dir(&project.dir);
            c
        }
    };
    let line = format!("{cmd:?}").replace('"', "");
    let status = cmd
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| AuthorError::Toolchain {
            what: line.clone(),
            fix: format!("it could not be started ({e}); is it installed and on PATH?"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(AuthorError::Command {
            command: line,
            status: status.to_string(),
        })
    }
}

/// Whether `name` can name a plugin and a crate: a lowercase ASCII letter,
/// then letters, digits, `-` or `_`, at most 64 bytes.
pub fn check_name(name: &str) -> Result<(), AuthorError> {
    let bad = |why: &str| AuthorError::BadName {
        name: name.to_string(),
        why: why.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(bad("start it with a lowercase letter, e.g. `audit`"))
        }
        _ => {}
    }
    if name.len() > 64 {
        return Err(bad("keep it to 64 bytes"));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(bad(&format!(
            "`{c}` is not allowed; use lowercase letters, digits, `-` and `_`"
        )));
    }
    if [
        "test",
        "build",
        "core",
        "std",
        "alloc",
        "plugbus-sdk",
        "plugbus_sdk",
    ]
    .contains(&name)
    {
        return Err(bad("it is taken by Rust or the SDK; pick another"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_text_the_troubleshooting_page_lists_is_still_printed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let page =
            std::fs::read_to_string(root.join("docs/operating/troubleshooting.md")).expect("page");
        let mut sources = String::new();
        let mut dirs = vec![
            root.join("host/src"),
            root.join("guest-sdk/src"),
            root.join("contract/src"),
            root.join("host/templates"),
        ];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs" || e == "py") {
                    sources.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        let mut checked = 0;
        for line in page.lines() {
            let Some(fragment) = line
                .strip_prefix("<!-- source: \"")
                .and_then(|l| l.strip_suffix("\" -->"))
            else {
                continue;
            };
            assert!(
                sources.contains(fragment),
                "docs/operating/troubleshooting.md lists `{fragment}`, which no source prints any more"
            );
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} entries checked");
    }

    #[test]
    fn names_are_checked_with_the_fix() {
        check_name("audit-log_2").expect("fine");
        for (name, hint) in [
            ("", "empty"),
            ("Audit", "lowercase letter"),
            ("9lives", "lowercase letter"),
            ("a.b", "`.` is not allowed"),
            ("test", "taken"),
        ] {
            let e = check_name(name).expect_err(name).to_string();
            assert!(e.contains(hint), "{name}: {e}");
        }
    }
}
