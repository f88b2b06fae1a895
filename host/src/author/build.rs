//! `plugbus build`: compile a project to `dist/NAME.wasm`, then load it
//! the way the host will (contract, `init` with the manifest's config,
//! subscriptions) and leave its optimized build in the compile cache, so
//! that `plugbus run` and `plugbus dev` start it from there.
//!
//! Rust projects build with cargo into one target directory shared by
//! every project (`~/.cache/plugbus/plugin-target`): a second project with
//! the same `Cargo.lock` reuses what the first compiled. Python projects
//! build with componentize-py.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::toolchain::{self, WASM_TARGET};
use super::{io_error, AuthorError, Lang, Project};
use crate::plugin::manifest::Manifest;
use crate::runtime::{Info, InstanceConfig, Limits, PluginInstance, Runtime};

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The optimized, small build (`--release`); otherwise the quick one.
    pub release: bool,
    /// Cargo's target directory (default: shared, see the module docs).
    pub target_dir: Option<PathBuf>,
    /// The compile cache (default `~/.cache/plugbus/compiled`).
    pub cache_dir: Option<PathBuf>,
    /// Show the compiler's output only if it fails (`plugbus dev`).
    pub quiet: bool,
}

/// A plugin built and checked.
#[derive(Debug, Clone)]
pub struct Built {
    /// `dist/NAME.wasm`.
    pub wasm: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The version `init` reported.
    pub version: String,
    /// What it subscribes to (the manifest's, else `init`'s).
    pub subscriptions: Vec<String>,
    /// How long compiling the project took.
    pub build_time: Duration,
    /// How long loading it here took (with compiling it for this host,
    /// unless the cache had it).
    pub check_time: Duration,
    /// The manifest it was checked with (none written: the defaults).
    pub manifest: Manifest,
}

/// The shared cargo target directory for plugin projects.
pub fn shared_target_dir() -> PathBuf {
    std::env::var_os("PLUGBUS_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/plugbus/plugin-target"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("plugbus-plugin-target"))
}

/// Build `project`, check it, and fill the compile cache. Progress goes to
/// `out`.
pub fn build(
    project: &Project,
    opts: &BuildOptions,
    out: &mut dyn Write,
) -> Result<Built, AuthorError> {
    let started = Instant::now();
    let dist = project.dist_dir();
    std::fs::create_dir_all(&dist).map_err(io_error(&dist))?;
    let wasm = dist.join(format!("{}.wasm", project.name));
    match project.lang {
        Lang::Rust => build_rust(project, opts, &wasm, out)?,
        Lang::Python => build_python(project, &wasm, out)?,
    }
    let build_time = started.elapsed();
    // The manifest goes beside the plugin: dist/ is what to deploy.
    let manifest_file = project.manifest_path();
    let manifest = match std::fs::read_to_string(&manifest_file) {
        Ok(text) => {
            let m = Manifest::parse(&manifest_file, &text).map_err(|e| AuthorError::Check {
                file: manifest_file.clone(),
                reason: e.to_string(),
            })?;
            let copy = dist.join(format!("{}.toml", project.name));
            std::fs::write(&copy, text).map_err(io_error(&copy))?;
            m
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(io_error(&manifest_file)(e)),
    };
    let checked = Instant::now();
    let (version, subscriptions) = check(&wasm, &manifest, opts.cache_dir.clone())?;
    let bytes = std::fs::metadata(&wasm).map_err(io_error(&wasm))?.len();
    Ok(Built {
        wasm,
        bytes,
        version,
        subscriptions,
        build_time,
        check_time: checked.elapsed(),
        manifest,
    })
}

fn build_rust(
    project: &Project,
    opts: &BuildOptions,
    wasm: &Path,
    out: &mut dyn Write,
) -> Result<(), AuthorError> {
    toolchain::rust()?;
    let target_dir = opts.target_dir.clone().unwrap_or_else(shared_target_dir);
    let profile = if opts.release { "release" } else { "debug" };
    let deps = target_dir.join(WASM_TARGET).join(profile).join("deps");
    let warm = std::fs::read_dir(&deps)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("libwit_bindgen")
            })
        })
        .unwrap_or(false);
    if !warm {
        let _ = writeln!(
            out,
            "first {} build: compiling the dependencies (wit-bindgen, serde) into {}; about a minute on two cores, later builds take seconds",
            if opts.release { "release" } else { "dev" },
            target_dir.display()
        );
    }
    let mut cmd = Command::new("cargo");
    cmd.arg("build")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--manifest-path")
        .arg(project.dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir);
    if opts.release {
        cmd.arg("--release");
    }
    run(cmd, opts.quiet, out)?;
    let crate_name = project.name.replace('-', "_");
    let artifact = target_dir
        .join(WASM_TARGET)
        .join(profile)
        .join(format!("{crate_name}.wasm"));
    copy_atomically(&artifact, wasm)
}

fn build_python(project: &Project, wasm: &Path, out: &mut dyn Write) -> Result<(), AuthorError> {
    let componentize = toolchain::componentize_py()?;
    let _ = writeln!(
        out,
        "componentizing app.py with {} (tens of seconds)",
        componentize.display()
    );
    let staged = wasm.with_extension("wasm.part");
    let mut cmd = Command::new(&componentize);
    cmd.current_dir(&project.dir)
        .args(["-d", "wit", "-w", "plugin", "componentize", "app", "-o"])
        .arg(&staged);
    run(cmd, true, out)?;
    embed_contracts(project, &staged, out)?;
    std::fs::rename(&staged, wasm).map_err(io_error(wasm))
}

/// Embed the project's `contracts.json` (if it has one) in the component
/// `wasm` as its `plugbus:contracts` section, as the Rust SDK's
/// `contracts!` does in the module: checked first, as the host will read
/// it.
fn embed_contracts(project: &Project, wasm: &Path, out: &mut dyn Write) -> Result<(), AuthorError> {
    let file = project.dir.join("contracts.json");
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(&file)(e)),
    };
    let declared = crate::schema::Declared::build(
        &project.name,
        Some(&bytes),
        &crate::schema::Declarations::default(),
        &project.dir,
    )
    .map_err(|e| AuthorError::Check {
        file: file.clone(),
        reason: format!("{e}; fix it, or remove the file to declare nothing"),
    })?;
    let mut component = std::fs::read(wasm).map_err(io_error(wasm))?;
    wasm_encoder::ComponentSection::append_to_component(
        &wasm_encoder::CustomSection {
            name: crate::schema::declared::SECTION.into(),
            data: bytes.as_slice().into(),
        },
        &mut component,
    );
    std::fs::write(wasm, &component).map_err(io_error(wasm))?;
    let _ = writeln!(
        out,
        "embedded contracts.json: reads {} topic(s), publishes {}",
        declared.consumes.len(),
        declared.publishes.len()
    );
    Ok(())
}

/// Run `cmd`; its output is shown as it runs, or (quiet) only if it fails.
fn run(mut cmd: Command, quiet: bool, out: &mut dyn Write) -> Result<(), AuthorError> {
    let line = format!("{cmd:?}").replace('"', "");
    let result = if quiet {
        cmd.stdin(Stdio::null())
            .output()
            .map(|o| (o.status, o.stderr, o.stdout))
    } else {
        cmd.stdin(Stdio::null())
            .status()
            .map(|s| (s, Vec::new(), Vec::new()))
    };
    let (status, stderr, stdout) = result.map_err(|e| AuthorError::Toolchain {
        what: line.clone(),
        fix: format!("it could not be started ({e}); is it installed and on PATH?"),
    })?;
    if status.success() {
        return Ok(());
    }
    let _ = out.write_all(&stdout);
    let _ = out.write_all(&stderr);
    let text = String::from_utf8_lossy(&stderr);
    if text.contains("can't find crate for `core`") || text.contains("target may not be installed")
    {
        return Err(AuthorError::Toolchain {
            what: format!("the {WASM_TARGET} target"),
            fix: format!("run `rustup target add {WASM_TARGET}`"),
        });
    }
    Err(AuthorError::Command {
        command: line,
        status: status.to_string(),
    })
}

/// Copy `from` to `to` through a temporary file and a rename, so a host
/// watching `to`'s directory never sees half a file.
pub(crate) fn copy_atomically(from: &Path, to: &Path) -> Result<(), AuthorError> {
    let mut staged = to.as_os_str().to_owned();
    staged.push(".part");
    let staged = PathBuf::from(staged);
    std::fs::copy(from, &staged).map_err(io_error(from))?;
    std::fs::rename(&staged, to).map_err(io_error(to))
}

/// A built plugin loaded as the host would load it under its manifest:
/// contract checked, compiled (the optimized build, into the compile
/// cache), ready to instantiate at start and again after a trap.
pub(crate) struct Loaded {
    wasm: PathBuf,
    runtime: Runtime,
    limits: Limits,
    config: Vec<(String, String)>,
}

impl Loaded {
    /// Load `wasm` with `manifest`'s bounds, compiling into `cache_dir`
    /// (default `~/.cache/plugbus/compiled`).
    pub(crate) fn new(
        wasm: &Path,
        manifest: &Manifest,
        cache_dir: Option<PathBuf>,
    ) -> Result<Loaded, AuthorError> {
        let limits = limits_of(manifest);
        let cache = cache_dir.or_else(crate::runtime::cache::default_dir);
        let runtime = Runtime::new(limits.clone(), cache).map_err(|e| fail(wasm, e))?;
        Ok(Loaded {
            wasm: wasm.to_path_buf(),
            runtime,
            limits,
            config: manifest.config.clone().into_iter().collect(),
        })
    }

    /// Its bounds.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A fresh instance keeping its state in `kv`, after `init`.
    pub(crate) fn instantiate(
        &self,
        kv: crate::runtime::kv::Backend,
    ) -> Result<(PluginInstance, Info), AuthorError> {
        let loaded = self
            .runtime
            .load_file_with_stack(&self.wasm, self.limits.stack_bytes_max)
            .map_err(|e| fail(&self.wasm, e.to_string()))?;
        let config = InstanceConfig {
            config: self.config.clone(),
            hops_max: 32,
            kv,
            limits: self.limits.clone(),
            ..InstanceConfig::default()
        };
        crate::runtime::instantiate(Arc::new(loaded), config)
            .map_err(|e| fail(&self.wasm, e.to_string()))
    }
}

/// What is wrong with the built plugin `wasm`.
pub(crate) fn fail(wasm: &Path, reason: String) -> AuthorError {
    AuthorError::Check {
        file: wasm.to_path_buf(),
        reason,
    }
}

/// Load `wasm` as the host would with `manifest`: check the contract, run
/// `init` with the manifest's config, and check the subscriptions. The
/// optimized build lands in the compile cache. Returns the version and the
/// subscriptions.
pub fn check(
    wasm: &Path,
    manifest: &Manifest,
    cache_dir: Option<PathBuf>,
) -> Result<(String, Vec<String>), AuthorError> {
    let (_, info) = Loaded::new(wasm, manifest, cache_dir)?.instantiate(Default::default())?;
    let subscriptions = manifest.subscriptions.clone().unwrap_or(info.subscriptions);
    if subscriptions.is_empty() {
        return Err(fail(
            wasm,
            "subscribes to nothing: return topic patterns from `info`, or set `subscriptions` in the manifest".to_string(),
        ));
    }
    for s in &subscriptions {
        plugbus_contract::topic::Pattern::parse(s)
            .map_err(|e| fail(wasm, format!("subscription `{s}`: {e}")))?;
    }
    Ok((info.version, subscriptions))
}

/// The bounds the host would run a plugin with under `manifest`.
pub fn limits_of(manifest: &Manifest) -> Limits {
    let mut limits = Limits::default();
    if let Some(m) = manifest.limits.memory_bytes_max {
        limits.memory_bytes_max = usize::try_from(m).unwrap_or(usize::MAX);
    }
    if let Some(d) = manifest.limits.deadline_ms {
        limits.deadline_ms = d;
    }
    if let Some(s) = manifest.limits.stack_bytes_max {
        limits.stack_bytes_max = usize::try_from(s).unwrap_or(limits.stack_bytes_max);
    }
    limits
}

/// `bytes` for people: `143.9 KB`, `18.4 MB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} KB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}
