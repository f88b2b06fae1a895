//! The on-disk compile cache: compiled components keyed by the plugin
//! file's SHA-256 and the engine's compatibility hash (both in the file
//! name, chosen by `Runtime::cache_path`). A missing, unreadable or stale
//! entry is a cache miss, never an error: the plugin is compiled again.
//!
//! One of two places in plugbus with `unsafe` (the other sets an allocator
//! option in `main.rs`): wasmtime trusts that
//! bytes it deserializes are its own compiler's output.
#![allow(unsafe_code)]

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

/// The compile cache when none is given: `$XDG_CACHE_HOME/plugbus/compiled`
/// or `~/.cache/plugbus/compiled`.
pub fn default_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|c| c.join("plugbus").join("compiled"))
}

/// Load a cached component, or `None` on any miss.
pub(super) fn load(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    match deserialize(engine, &bytes) {
        Ok(c) => Some(c),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "ignoring unusable compile cache entry");
            None
        }
    }
}

/// Write an entry: to a temporary file, then renamed into place, so a
/// reader never sees half a file. Failure only costs a recompile later.
pub(super) fn store(path: &Path, compiled: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, compiled))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), error = %e, "cannot write the compile cache; plugins will be compiled at each start");
    }
}

/// Deserialize bytes produced by `Engine::precompile_component`.
pub(super) fn deserialize(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    // SAFETY: the bytes are either what `precompile_component` of this
    // process returned, or a file in the cache directory that only plugbus
    // writes (atomically, by rename), named by the engine's compatibility
    // hash. wasmtime additionally checks the header, version and engine
    // settings and refuses a mismatch. The cache directory must be as
    // trusted as the plugbus binary itself (documented on `--cache-dir`).
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}
