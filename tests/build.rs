//! Builds every plugin the tests and benchmarks use to wasm32-wasip1, once
//! per build of this crate, and writes their paths as constants into
//! `$OUT_DIR/artifacts.rs` (the way wasmtime's test-programs do).
//!
//! The wasm build has its own target directory beside this build's
//! (`<target>/wasm`, or `$PLUGBUS_WASM_TARGET_DIR`), so the nested cargo
//! does not wait on the outer one's lock and is incremental across runs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// (constant name, package, example name or None for the package's lib)
const PLUGINS: &[(&str, &str, Option<&str>)] = &[
    ("EMAIL", "plugbus-plugin-email", None),
    ("INVENTORY", "plugbus-plugin-inventory", None),
    ("ANALYTICS", "plugbus-plugin-analytics", None),
    ("PAYMENT", "plugbus-plugin-payment", None),
    ("ORDER_SAGA", "plugbus-plugin-order-saga", None),
    ("NOOP", "plugbus-test-plugins", Some("noop")),
    ("TRAP", "plugbus-test-plugins", Some("trap")),
    ("SLOW", "plugbus-test-plugins", Some("slow")),
    ("RECORDER", "plugbus-test-plugins", Some("recorder")),
    ("TALLY", "plugbus-test-plugins", Some("tally")),
    ("PROBE", "plugbus-test-plugins", Some("probe")),
    ("SWAPPER", "plugbus-test-plugins", Some("swapper")),
    ("HOSTILE", "plugbus-test-plugins", Some("hostile")),
    ("INIT_FAILS", "plugbus-test-plugins", Some("init_fails")),
    ("CONTRACT_V2", "plugbus-test-plugins", Some("contract_v2")),
    (
        "CONTRACT_V010",
        "plugbus-test-plugins",
        Some("contract_v010"),
    ),
    ("TIMERS", "plugbus-test-plugins", Some("timers")),
    (
        "CONFIG_READER",
        "plugbus-test-plugins",
        Some("config_reader"),
    ),
    (
        "INVENTORY_RENAMED",
        "plugbus-test-plugins",
        Some("inventory_renamed"),
    ),
    (
        "INVENTORY_WAREHOUSE",
        "plugbus-test-plugins",
        Some("inventory_warehouse"),
    ),
    ("ANALYTICS_V2", "plugbus-test-plugins", Some("analytics_v2")),
    (
        "INVENTORY_UNDECLARED",
        "plugbus-test-plugins",
        Some("inventory_undeclared"),
    ),
];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    for dir in [
        "wit",
        "guest-sdk",
        "plugins",
        "tests/test-plugins",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=PLUGBUS_WASM_TARGET_DIR");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let wasm_target = env::var_os("PLUGBUS_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| out.ancestors().nth(4).map(|t| t.join("wasm")))
        .expect("OUT_DIR has the usual shape");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip1",
            "--target-dir",
        ])
        .arg(&wasm_target);
    let mut packages: Vec<&str> = PLUGINS.iter().map(|p| p.1).collect();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(["--lib", "--examples"]);
    // The outer build's compiler wrappers and flags (clippy's, coverage's)
    // are for host code, not for the plugins.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the wasm plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip1 failed (see above); if the target is missing, run `rustup target add wasm32-wasip1`"
    );

    let release = wasm_target.join("wasm32-wasip1").join("plugin");
    let mut consts = String::new();
    for (name, package, example) in PLUGINS {
        let path = match example {
            Some(ex) => release.join("examples").join(format!("{ex}.wasm")),
            None => release.join(format!("{}.wasm", package.replace('-', "_"))),
        };
        assert!(
            path.is_file(),
            "expected {} after the build",
            path.display()
        );
        consts.push_str(&format!(
            "/// `{package}`{} built to wasm32-wasip1.\npub const {name}: &str = {:?};\n",
            example
                .map(|e| format!(" example `{e}`"))
                .unwrap_or_default(),
            path.display().to_string()
        ));
    }
    std::fs::write(out.join("artifacts.rs"), consts).expect("cannot write artifacts.rs");
}
