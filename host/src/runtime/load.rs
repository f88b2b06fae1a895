//! From a `.wasm` file to a compiled component: telling core modules from
//! components and componentizing a wasm32-wasip1 module, checking the
//! contract version it was built against, the engines of both tiers with
//! their linker, compiling in a child process, and the compile cache.

use super::*;

/// An engine with epoch interruption (when `epochs`), a stack cap of
/// `stack` bytes and the compiler of `tier`, and its linker with the host
/// imports.
pub(super) fn engine_with_stack(
    stack: usize,
    epochs: bool,
    tier: Tier,
) -> Result<(Engine, Linker<HostState>), String> {
    let mut config = Config::new();
    config.strategy(match tier {
        Tier::Baseline => wasmtime::Strategy::Winch,
        Tier::Optimized => wasmtime::Strategy::Cranelift,
    });
    config.epoch_interruption(epochs);
    config.max_wasm_stack(stack);
    config.wasm_component_model(true);
    let engine = Engine::new(&config).map_err(|e| format!("cannot start wasmtime: {e:#}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| format!("cannot link WASI: {e:#}"))?;
    host_api::add_to_linker(&mut linker).map_err(|e| format!("cannot link host API: {e:#}"))?;
    Ok((engine, linker))
}

/// A plugin file's content hash (SHA-256, hex): what the compile cache is
/// keyed by and what `/v1/plugins` shows the start of.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Turn a core module into a component; pass a component through.
pub(super) fn componentize(file: &Path, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(bytes.to_vec());
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::NotWasm {
            file: file.to_path_buf(),
        });
    }
    let fail = |e: anyhow::Error| LoadError::Componentize {
        file: file.to_path_buf(),
        reason: format!("{e:#}"),
    };
    // The encoder can panic on a malformed module (seen on a truncated
    // file): that is a bad file, not a host failure.
    std::panic::catch_unwind(|| {
        wit_component::ComponentEncoder::default()
            .validate(true)
            .module(bytes)?
            .adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?
            .encode()
    })
    .map_err(|_| LoadError::Componentize {
        file: file.to_path_buf(),
        reason: "the component encoder failed on this module (is the file complete?)".into(),
    })?
    .map_err(fail)
}

/// The version in an interface name such as `plugbus:plugin/handler@0.1.0`.
fn contract_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(CONTRACT_PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@').map(|(_, v)| v)
}

/// Semver compatibility as the component model uses it: same major, and for
/// 0.x the same minor.
fn compatible(found: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(found), parts(CONTRACT_VERSION)) {
        (Some((0, fm)), Some((0, cm))) => fm == cm,
        (Some((fmaj, _)), Some((cmaj, _))) => fmaj == cmaj && fmaj != 0,
        _ => false,
    }
}

fn check_contract(file: &Path, engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let names = ty
        .exports(engine)
        .map(|(n, item)| {
            (
                n.to_string(),
                matches!(item.ty, ComponentItem::ComponentInstance(_)),
            )
        })
        .chain(ty.imports(engine).map(|(n, _)| (n.to_string(), false)));
    let mut has_handler = false;
    for (name, is_export) in names {
        if let Some(version) = contract_version(&name) {
            if !compatible(version) {
                return Err(LoadError::ContractVersion {
                    file: file.to_path_buf(),
                    found: version.to_string(),
                });
            }
            has_handler |= is_export && name.starts_with("plugbus:plugin/handler@");
        }
    }
    if !has_handler {
        return Err(LoadError::NoHandler {
            file: file.to_path_buf(),
        });
    }
    Ok(())
}

impl Runtime {
    /// The engine and linker for a stack cap of `stack` bytes and `tier`,
    /// to compile or run the plugin in `file` (named in the error).
    fn engine_for(
        &self,
        file: &Path,
        stack: usize,
        tier: Tier,
    ) -> Result<EngineAndLinker, LoadError> {
        if stack == self.limits.stack_bytes_max && tier == Tier::Optimized {
            return Ok((self.engine.clone(), self.linker.clone()));
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, (engine, linker))) = others.iter().find(|(k, _)| *k == (stack, tier)) {
            return Ok((engine.clone(), linker.clone()));
        }
        let (engine, linker) =
            engine_with_stack(stack, self.limits.enforce, tier).map_err(|reason| {
                LoadError::Compile {
                    file: file.to_path_buf(),
                    reason,
                }
            })?;
        let linker = Arc::new(linker);
        self.ticked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(engine.weak());
        others.push(((stack, tier), (engine.clone(), linker.clone())));
        Ok((engine, linker))
    }

    /// Compile the plugin in `file` with `tier`'s compiler into the compile
    /// cache, for a stack cap of `stack` bytes, in a child process
    /// (`plugbus compile`). `stop` ends the wait early (the child is
    /// killed). The next load of the file finds the build in the cache.
    pub fn compile_in_child(
        &self,
        file: &Path,
        stack: usize,
        tier: Tier,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let (Some(program), Some(cache)) = (&self.optimizer, &self.cache_dir) else {
            return Err("not compiling in tiers".into());
        };
        let mut child = std::process::Command::new(program)
            .arg("compile")
            .arg("--cache-dir")
            .arg(cache)
            .arg("--stack-bytes-max")
            .arg(stack.to_string())
            .arg("--tier")
            .arg(tier.to_string())
            .arg(file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let stderr = child.stderr.take();
        let said = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                let _ = std::io::Read::read_to_string(&mut s, &mut text);
            }
            text
        });
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if stop.load(Ordering::Relaxed) => break Err("stopped".to_string()),
                Ok(None) if started.elapsed() > OPTIMIZE_TIMEOUT => {
                    break Err(format!("took longer than {} s", OPTIMIZE_TIMEOUT.as_secs()))
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(e) => break Err(e.to_string()),
            }
        };
        if !matches!(status, Ok(s) if s.success()) {
            let _ = child.kill();
        }
        let _ = child.wait();
        let said = said.join().unwrap_or_default();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{s}: {}", said.trim())),
            Err(e) => Err(e),
        }
    }

    /// Load a plugin from a file: read, componentize if needed, compile (or
    /// take from the cache), check the contract version, link.
    pub fn load_file(&self, file: &Path) -> Result<LoadedPlugin, LoadError> {
        self.load_file_with_stack(file, self.limits.stack_bytes_max)
    }

    /// [`Runtime::load_file`] with a stack cap of `stack` bytes for its calls.
    pub fn load_file_with_stack(
        &self,
        file: &Path,
        stack: usize,
    ) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(file).map_err(|source| LoadError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load_bytes_with_stack(file, &name, &bytes, stack)
    }

    /// Load a plugin from bytes; `file` is used in messages only.
    pub fn load_bytes(
        &self,
        file: &Path,
        name: &str,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_bytes_with_stack(file, name, bytes, self.limits.stack_bytes_max)
    }

    fn load_bytes_with_stack(
        &self,
        file: &Path,
        name: &str,
        bytes: &[u8],
        stack: usize,
    ) -> Result<LoadedPlugin, LoadError> {
        let (mut engine, mut linker) = self.engine_for(file, stack, Tier::Optimized)?;
        let mut tier = Tier::Optimized;
        let content_hash = content_hash(bytes);
        let mut found = self.cached(&engine, &content_hash);
        if found.is_none() && self.optimizer.is_some() {
            // Serve with a baseline build until the optimized one is in the
            // cache: from the cache, else compiled by a child into it.
            (engine, linker) = self.engine_for(file, stack, Tier::Baseline)?;
            tier = Tier::Baseline;
            found = self.cached(&engine, &content_hash).or_else(|| {
                let never = AtomicBool::new(false);
                if let Err(e) = self.compile_in_child(file, stack, tier, &never) {
                    tracing::debug!(file = %file.display(), "compiling in a child failed ({e}); compiling here");
                }
                self.cached(&engine, &content_hash)
            });
        }
        let component = match found {
            Some(component) => component,
            None => self.compile_and_cache(file, bytes, &engine, &content_hash)?,
        };
        check_contract(file, &engine, &component)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                file: file.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
        let pre = bindings::PluginPre::new(instance_pre).map_err(|e| LoadError::Link {
            file: file.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
        Ok(LoadedPlugin {
            name: name.to_string(),
            content_hash,
            pre,
            engine,
            tier,
            contracts: crate::schema::declared::section(bytes),
        })
    }

    /// Compile the plugin in `file` with `tier`'s compiler into the compile
    /// cache (what `plugbus compile` does, in the child process), for a
    /// stack cap of `stack` bytes.
    pub fn compile_into_cache(
        &self,
        file: &Path,
        stack: usize,
        tier: Tier,
    ) -> Result<(), LoadError> {
        let bytes = std::fs::read(file).map_err(|source| LoadError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let (engine, _) = self.engine_for(file, stack, tier)?;
        let content_hash = content_hash(&bytes);
        if self.cache_path(&engine, &content_hash).is_none() {
            return Err(LoadError::Compile {
                file: file.to_path_buf(),
                reason: "no compile cache to compile into".into(),
            });
        }
        self.compile_and_cache(file, &bytes, &engine, &content_hash)
            .map(drop)
    }

    /// Compile `bytes` (from `file`) with `engine`, store the build in the
    /// cache (if any) and load it.
    fn compile_and_cache(
        &self,
        file: &Path,
        bytes: &[u8],
        engine: &Engine,
        content_hash: &str,
    ) -> Result<Component, LoadError> {
        let component_bytes = componentize(file, bytes)?;
        let compiled =
            engine
                .precompile_component(&component_bytes)
                .map_err(|e| LoadError::Compile {
                    file: file.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
        if let Some(path) = self.cache_path(engine, content_hash) {
            cache::store(&path, &compiled);
        }
        cache::deserialize(engine, &compiled).map_err(|reason| LoadError::Compile {
            file: file.to_path_buf(),
            reason,
        })
    }

    fn cache_path(&self, engine: &Engine, content_hash: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{content_hash}-{:016x}.cwasm", h.finish())))
    }

    fn cached(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.cache_path(engine, content_hash)?;
        cache::load(engine, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_versions_follow_semver_for_0x() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("garbage"));
    }

    #[test]
    fn version_is_read_from_interface_names() {
        assert_eq!(
            contract_version("plugbus:plugin/handler@0.2.0"),
            Some("0.2.0")
        );
        assert_eq!(contract_version("wasi:logging/logging@0.1.0-draft"), None);
        assert_eq!(contract_version("plugbus:plugin/handler"), None);
    }

    #[test]
    fn the_compile_cache_is_written_then_used() {
        let dir = std::env::temp_dir().join(format!("plugbus-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = Runtime::new(Limits::default(), Some(dir.clone())).expect("runtime");
        let file = Path::new(plugbus_e2e::artifacts::NOOP);
        let first = rt.load_file(file).expect("compiles");
        let entries: Vec<_> = std::fs::read_dir(&dir).expect("cache dir made").collect();
        assert_eq!(entries.len(), 1, "one artifact per content hash and engine");
        let path = rt
            .cache_path(rt.engine(), first.content_hash())
            .expect("cache on");
        assert!(path.is_file());
        assert!(
            rt.cached(rt.engine(), first.content_hash()).is_some(),
            "the entry deserializes"
        );
        // A damaged entry is a miss, not an error: the plugin compiles again.
        std::fs::write(&path, b"not a compiled component").expect("damage it");
        assert!(rt.cached(rt.engine(), first.content_hash()).is_none());
        rt.load_file(file).expect("recompiles over a damaged entry");
        assert!(
            rt.cached(rt.engine(), first.content_hash()).is_some(),
            "and rewrites it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn another_contract_version_is_refused_naming_both() {
        let rt = Runtime::new(Limits::default(), None).expect("runtime");
        let err = rt
            .load_file(Path::new(plugbus_e2e::artifacts::CONTRACT_V2))
            .err()
            .expect("refused");
        assert!(
            matches!(&err, LoadError::ContractVersion { found, .. } if found == "0.2.0"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("plugbus:plugin@0.2.0") && msg.contains("plugbus:plugin@0.1.1"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_is_not_wasm() {
        let err = componentize(Path::new("x.wasm"), b"hello").expect_err("not wasm");
        assert!(matches!(err, LoadError::NotWasm { .. }));
        assert!(err.to_string().contains("x.wasm"));
    }
}
