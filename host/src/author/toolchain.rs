//! What a build needs on this machine, found or named with the exact fix:
//! cargo, a C compiler and linker (`cc`, which cargo links build scripts
//! and proc macros with) and the `wasm32-wasip1` standard library for
//! Rust projects, componentize-py (the pinned version) for Python ones.

use std::path::PathBuf;
use std::process::Command;

use super::AuthorError;

/// The componentize-py release the Python template is built and tested
/// with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The Rust target plugins compile to.
pub const WASM_TARGET: &str = "wasm32-wasip1";

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Check that cargo can build for [`WASM_TARGET`].
pub fn rust() -> Result<(), AuthorError> {
    if output("cargo", &["--version"]).is_none() {
        return Err(AuthorError::Toolchain {
            what: "cargo (Rust)".to_string(),
            fix: "install Rust with rustup (https://rustup.rs), then run this again".to_string(),
        });
    }
    c_compiler(&std::env::var("CC").unwrap_or_else(|_| "cc".to_string()))?;
    let missing = || AuthorError::Toolchain {
        what: format!("the {WASM_TARGET} target of your Rust toolchain"),
        fix: format!("run `rustup target add {WASM_TARGET}`"),
    };
    if let Some(installed) = output("rustup", &["target", "list", "--installed"]) {
        return match installed.lines().any(|l| l.trim() == WASM_TARGET) {
            true => Ok(()),
            false => Err(missing()),
        };
    }
    // No rustup: look for the target's standard library in the sysroot.
    let sysroot = output("rustc", &["--print", "sysroot"]).unwrap_or_default();
    let lib = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(WASM_TARGET);
    match lib.is_dir() {
        true => Ok(()),
        false => Err(AuthorError::Toolchain {
            what: format!("the {WASM_TARGET} standard library ({})", lib.display()),
            fix: format!(
                "install it for your Rust; with rustup: `rustup target add {WASM_TARGET}`"
            ),
        }),
    }
}

/// Check that `cc` (the C compiler and linker cargo uses) runs.
fn c_compiler(cc: &str) -> Result<(), AuthorError> {
    match output(cc, &["--version"]) {
        Some(_) => Ok(()),
        None => Err(AuthorError::Toolchain {
            what: format!("a C compiler and linker (`{cc}`, which cargo links build scripts with)"),
            fix: "install one: on Debian or Ubuntu `sudo apt-get install gcc libc6-dev`, on Fedora `sudo dnf install gcc`, on macOS `xcode-select --install`; then run this again".to_string(),
        }),
    }
}

/// Where plugbus keeps tools it is told to install:
/// `~/.cache/plugbus/tools`.
pub fn tools_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/plugbus/tools"))
}

/// The componentize-py to run: `$PLUGBUS_COMPONENTIZE_PY`, the one on
/// `PATH`, or the one in plugbus's tools directory; it must be
/// [`COMPONENTIZE_PY_VERSION`].
pub fn componentize_py() -> Result<PathBuf, AuthorError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PLUGBUS_COMPONENTIZE_PY") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("componentize-py"));
    if let Some(tools) = tools_dir() {
        candidates.push(
            tools
                .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"))
                .join("bin/componentize-py"),
        );
    }
    let venv = tools_dir().map_or_else(
        || "~/.cache/plugbus/tools/componentize-py".to_string(),
        |t| {
            t.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"))
                .display()
                .to_string()
        },
    );
    let install = format!(
        "python3 -m venv {venv} && {venv}/bin/pip install componentize-py=={COMPONENTIZE_PY_VERSION}"
    );
    let mut wrong = None;
    for c in candidates {
        let Some(text) = c.to_str().and_then(|c| output(c, &["--version"])) else {
            continue;
        };
        if text.split_whitespace().last() == Some(COMPONENTIZE_PY_VERSION) {
            return Ok(c);
        }
        wrong.get_or_insert_with(|| format!("{} is {}", c.display(), text.trim()));
    }
    Err(AuthorError::Toolchain {
        what: match wrong {
            Some(w) => format!("componentize-py {COMPONENTIZE_PY_VERSION} ({w})"),
            None => format!("componentize-py {COMPONENTIZE_PY_VERSION} (builds Python plugins)"),
        },
        fix: format!("run `{install}` (plugbus finds it there), or put it on PATH"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_c_compiler_is_named_with_the_fix() {
        let err = super::c_compiler("plugbus-no-such-cc").expect_err("no such compiler");
        let text = err.to_string();
        assert!(
            text.contains("plugbus-no-such-cc") && text.contains("apt-get install gcc"),
            "{text}"
        );
        super::c_compiler("cc").expect("the machine's cc runs");
    }
}
