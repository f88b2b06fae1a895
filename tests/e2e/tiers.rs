//! Two-tier compiles: a baseline build first, the optimized one swapped in.

use super::*;

/// Files in the compile cache `dir`.
fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .count()
    })
}

/// The host's `plugin loaded` log lines (each says its `tier=`).
fn loaded_lines(h: &TestHost) -> Vec<String> {
    h.log()
        .into_iter()
        .filter(|l| l.contains("plugin loaded"))
        .collect()
}

/// `plugbus compile --cache-dir CACHE FILE`.
fn compile(cache: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("compile")
        .arg("--cache-dir")
        .arg(cache)
        .arg(file)
        .output()
        .expect("plugbus compile runs")
}

/// Tally events `from..to`, over 4 subjects.
fn tally_events(from: usize, to: usize) -> Vec<Value> {
    (from..to)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("t{i}"), "source": "/t",
                   "type": "tally.one", "subject": format!("s{}", i % 4), "data": {}})
        })
        .collect()
}

#[test]
fn a_cold_start_serves_a_baseline_build_then_swaps_the_optimized_one_in_losing_nothing() {
    let cache = TestDir::new("tiers-cache");
    let cache_arg = cache.arg();
    let mut plugins = order_flow();
    plugins.push(PluginFile::Wasm("tally", artifacts::TALLY));
    let h = host(&plugins, &["--cache-dir", &cache_arg]);
    // Started on baseline builds, each compiled by a child into the cache.
    let loaded = loaded_lines(&h);
    assert_eq!(loaded.len(), 4, "{loaded:?}");
    assert!(
        loaded.iter().all(|l| l.contains("tier=baseline")),
        "{loaded:?}"
    );
    // Events flow while the optimized builds are compiled and swapped in.
    const N: usize = 400;
    let mut sent = 0;
    while sent < N {
        h.publish_batch(tally_events(sent, sent + 20));
        h.publish(
            "order.placed",
            &order(&format!("o-{sent}"), "widget", 1, 100),
        )
        .expect("order accepted");
        sent += 20;
        std::thread::sleep(Duration::from_millis(10));
    }
    h.wait_until("every plugin on its optimized build", WAIT, |h| {
        h.get("/v1/plugins").is_ok_and(|v| {
            let list = v["plugins"].as_array().cloned().unwrap_or_default();
            list.len() == 4 && list.iter().all(|p| p["tier"] == json!("optimized"))
        })
    })
    .expect("optimized");
    h.publish_batch(tally_events(N, N + 40));
    h.wait_until("every tally event handled", WAIT, |h| {
        h.count("tally", "handled") == (N + 40) as u64
    })
    .expect("handled");
    for s in 0..4 {
        let want: Vec<String> = (0..N + 40)
            .filter(|i| i % 4 == s)
            .map(|i| format!("t{i}"))
            .collect();
        let got = h
            .get(&format!("/v1/plugins/tally/kv/order.s{s}"))
            .expect("order kept");
        let got: Vec<String> =
            serde_json::from_value(got.get("value").cloned().unwrap_or(got.clone()))
                .expect("a list of ids");
        assert_eq!(got, want, "subject s{s}: every event once, in order");
    }
    let orders = (N / 20) as u64;
    h.wait_until("every order handled", WAIT, |h| {
        ["email", "inventory", "analytics"]
            .iter()
            .all(|p| h.count(p, "handled") >= orders)
    })
    .expect("orders handled");
    // The same code optimized is not a new version.
    assert_eq!(
        h.metric("plugbus_plugin_swaps_total{plugin=\"tally\"}"),
        Some(0.0)
    );
    let swapped = h
        .log()
        .iter()
        .filter(|l| l.contains("optimized build swapped in"))
        .count();
    assert_eq!(swapped, 4, "one tier-up per plugin");
    // Both builds of each plugin are in the cache.
    assert_eq!(entries(&cache.0), 8);
    h.stop().expect("clean stop");

    // Started again, every plugin starts optimized from the cache.
    let h = host(&plugins, &["--cache-dir", &cache_arg]);
    let loaded = loaded_lines(&h);
    assert!(
        loaded.iter().all(|l| l.contains("tier=optimized")),
        "{loaded:?}"
    );
    assert!(!h
        .log()
        .iter()
        .any(|l| l.contains("optimized build compiled")));
    h.stop().expect("clean stop");
}

#[test]
fn plugbus_compile_fills_the_cache_ahead_of_a_start() {
    let cache = TestDir::new("tiers-aot");
    let out = compile(&cache.0, std::path::Path::new(artifacts::EMAIL));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(entries(&cache.0), 1);
    let h = host(
        &[PluginFile::Wasm("email", artifacts::EMAIL)],
        &["--cache-dir", &cache.arg()],
    );
    assert!(
        loaded_lines(&h)
            .iter()
            .any(|l| l.contains("tier=optimized")),
        "{:?}",
        h.log()
    );
    h.stop().expect("clean stop");

    // A file that is not wasm: the error names it, nothing is cached.
    let junk = cache.0.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let out = compile(&cache.0, &junk);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("junk.wasm"), "{said}");
    assert_eq!(entries(&cache.0), 1);
}

#[test]
fn without_tiering_a_cold_start_compiles_optimized_at_once() {
    let cache = TestDir::new("tiers-off");
    let h = host(
        &[PluginFile::Wasm("email", artifacts::EMAIL)],
        &["--cache-dir", &cache.arg(), "--no-tiering"],
    );
    assert!(
        loaded_lines(&h)
            .iter()
            .any(|l| l.contains("tier=optimized")),
        "{:?}",
        h.log()
    );
    assert_eq!(entries(&cache.0), 1);
    h.stop().expect("clean stop");
}
