//! `wasi:config/store`, the standard config interface, at the two versions
//! other hosts serve: `0.2.0-draft-2024-09-27` (Spin) and `0.2.0-rc.1`
//! (wasmCloud). A plugin may import either besides (or instead of) the
//! contract's own `config` interface; both read the manifest's `[config]`,
//! so config code is portable between those hosts and plugbus.

use wasmtime::component::{ComponentType, Lift, Linker, Lower};
use wasmtime::StoreContextMut;

use super::HostState;

/// The versions linked.
pub const VERSIONS: [&str; 2] = ["0.2.0-draft-2024-09-27", "0.2.0-rc.1"];

/// `variant error { upstream(string), io(string) }`, the same at both
/// versions. plugbus's config is in memory and never fails.
#[derive(ComponentType, Lift, Lower, Debug, Clone)]
#[component(variant)]
#[allow(dead_code)]
enum ConfigError {
    #[component(name = "upstream")]
    Upstream(String),
    #[component(name = "io")]
    Io(String),
}

type Value = (Result<Option<String>, ConfigError>,);
type All = (Result<Vec<(String, String)>, ConfigError>,);

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for version in VERSIONS {
        let mut store = linker.instance(&format!("wasi:config/store@{version}"))?;
        store.func_wrap(
            "get",
            |cx: StoreContextMut<'_, HostState>, (key,): (String,)| -> wasmtime::Result<Value> {
                Ok((Ok(cx.data().config_value(&key)),))
            },
        )?;
        store.func_wrap(
            "get-all",
            |cx: StoreContextMut<'_, HostState>, (): ()| -> wasmtime::Result<All> {
                Ok((Ok(cx.data().config_values()),))
            },
        )?;
    }
    Ok(())
}
