//! What the plugin author's loop costs, measured with the real binary and
//! printed as a table (`scripts/authoring.sh`):
//!
//! - `plugbus new` → first handled event, Rust, cold (an empty cargo home:
//!   crates downloaded and compiled; an empty target directory and compile
//!   cache) and warm (a second project on the shared target directory);
//! - edit → the new version handling events in `plugbus dev` (three edits);
//! - artifact sizes (Rust dev and release, Python);
//! - start from a warm compile cache, Python beside Rust;
//! - events/s of the Python template beside the Rust one (same handler).
//!
//! Timings are wall-clock on whatever machine runs it: compare rows of one
//! run, not runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_plugbus");
const WAIT: Duration = Duration::from_secs(600);

struct Work {
    root: PathBuf,
}

impl Work {
    fn new() -> Work {
        let root = std::env::temp_dir().join(format!("plugbus-authoring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("work dir");
        Work { root }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `plugbus ARGS` in `dir` with `env`; panics with its output on failure.
fn plugbus(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("plugbus runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "plugbus {args:?} failed:\n{said}");
    said
}

/// A host running the plugins in `plugins`, stopped on drop.
struct Host {
    child: Child,
    url: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").to_string()
}

fn get(url: &str) -> Option<Value> {
    ureq::get(url)
        .timeout(Duration::from_secs(10))
        .call()
        .ok()?
        .into_json()
        .ok()
}

/// Start a host on `plugins` with `cache`; returns it once `name` runs,
/// and how long that took from the process start.
fn start(plugins: &Path, data: &Path, cache: &Path, name: &str) -> (Host, Duration) {
    let addr = free_addr();
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(["run", "--fsync", "interval=100", "--listen", &addr])
        .arg("--plugins")
        .arg(plugins)
        .arg("--data")
        .arg(data)
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("host starts");
    let host = Host {
        child,
        url: format!("http://{addr}"),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let running = get(&format!("{}/v1/plugins", host.url)).is_some_and(|v| {
            v["plugins"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == name && p["state"] == "running")
            })
        });
        if running {
            return (host, started.elapsed());
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn handled(host: &Host, name: &str) -> u64 {
    get(&format!("{}/v1/plugins", host.url))
        .and_then(|v| {
            v["plugins"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["handled"].as_u64())
        })
        .unwrap_or(0)
}

fn wait_handled(host: &Host, name: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    while handled(host, name) < n {
        assert!(
            Instant::now() < deadline,
            "{name} handled {} of {n}",
            handled(host, name)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn order(i: usize) -> Value {
    json!({"specversion": "1.0", "type": "order.placed", "source": "/bench", "id": format!("o-{i}"),
           "data": {"order_id": format!("o-{i}"), "total_cents": 100}})
}

fn publish(host: &Host, events: &[Value]) {
    ureq::post(&format!("{}/v1/events", host.url))
        .set("content-type", "application/cloudevents-batch+json")
        .timeout(Duration::from_secs(60))
        .send_string(&Value::Array(events.to_vec()).to_string())
        .expect("publish");
}

/// `plugbus new NAME` in `parent` through its first handled event:
/// new, build (dev), a host with dist/, one order. Returns the project.
fn new_to_handled(
    parent: &Path,
    name: &str,
    lang: &str,
    env: &[(&str, &Path)],
) -> (PathBuf, Duration) {
    let started = Instant::now();
    plugbus(parent, &["new", name, "--lang", lang], env);
    let project = parent.join(name);
    plugbus(&project, &["build"], env);
    let cache = env
        .iter()
        .find(|(k, _)| *k == "PLUGBUS_CACHE_DIR")
        .map(|(_, v)| v.to_path_buf())
        .expect("cache");
    let data = parent.join(format!("{name}-data"));
    let (host, _) = start(&project.join("dist"), &data, &cache, name);
    publish(&host, &[order(0)]);
    wait_handled(&host, name, 1);
    (project, started.elapsed())
}

/// Run `plugbus dev` on `project`, make `edits` edits to `file` (replacing
/// the `n`th marker), and time each from the write to the fixture handled
/// by the new version (its follow-up seen).
fn dev_edits(
    project: &Path,
    file: &str,
    from: &str,
    env: &[(&str, &Path)],
    edits: usize,
) -> Vec<f64> {
    let mut cmd = Command::new(BIN);
    cmd.arg("dev")
        .current_dir(project)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("dev");
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut until = |pick: &dyn Fn(&str) -> bool| loop {
        let line = lines.next().expect("dev ended").expect("line");
        if pick(&line) {
            return line;
        }
    };
    until(&|l: &str| l.contains("published"));
    let path = project.join(file);
    let mut current = from.to_string();
    let mut took = Vec::new();
    for i in 0..edits {
        let next = format!("{from}{i}");
        let text = std::fs::read_to_string(&path).expect("source");
        let edited = text.replace(&format!("\"{current}\""), &format!("\"{next}\""));
        assert_ne!(text, edited, "the marker {current} is in {file}");
        let at = Instant::now();
        std::fs::write(&path, edited).expect("edit");
        let want = format!("published {next} ");
        until(&|l: &str| l.contains(&want));
        took.push(at.elapsed().as_secs_f64());
        current = next;
    }
    drop(stdin);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Events/s of the plugin in `dist` on `n` orders in batches of 500.
fn throughput(dist: &Path, data: &Path, cache: &Path, name: &str, n: usize) -> f64 {
    let (host, _) = start(dist, data, cache, name);
    let events: Vec<Value> = (1..=n).map(order).collect();
    let started = Instant::now();
    for chunk in events.chunks(500) {
        publish(&host, chunk);
    }
    wait_handled(&host, name, n as u64);
    n as f64 / started.elapsed().as_secs_f64()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let work = Work::new();
    let python = std::env::var_os("PLUGBUS_COMPONENTIZE_PY").is_some();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, value: String, note: &str| {
        println!("{what}: {value} {note}");
        rows.push((what.to_string(), value, note.to_string()));
    };

    // Cold: nothing cached, crates downloaded from the registry.
    let cold_home = work.dir("cold-cargo-home");
    let cold_target = work.dir("cold-target");
    let cold_cache = work.dir("cold-compiled");
    let cold_env: Vec<(&str, &Path)> = vec![
        ("CARGO_HOME", &cold_home),
        ("PLUGBUS_PLUGIN_TARGET_DIR", &cold_target),
        ("PLUGBUS_CACHE_DIR", &cold_cache),
    ];
    let (_, cold) = new_to_handled(&work.dir("cold"), "coldrust", "rust", &cold_env);
    row(
        "Rust: new → first handled event, cold",
        format!("{:.1} s", cold.as_secs_f64()),
        "empty cargo home (crates downloaded), target dir and compile cache (target ≤ 180 s)",
    );
    // Warm: a second project on the shared target directory.
    let target = work.dir("target");
    let cache = work.dir("compiled");
    let env: Vec<(&str, &Path)> = vec![
        ("PLUGBUS_PLUGIN_TARGET_DIR", &target),
        ("PLUGBUS_CACHE_DIR", &cache),
    ];
    let (_, _) = new_to_handled(&work.dir("prime"), "primer", "rust", &env);
    let (rust, warm) = new_to_handled(&work.dir("warm"), "warmrust", "rust", &env);
    row(
        "Rust: new → first handled event, warm",
        format!("{:.1} s", warm.as_secs_f64()),
        "second project, shared target directory (target ≤ 10 s)",
    );
    let edits = dev_edits(&rust, "src/lib.rs", "warmrust.counted", &env, 3);
    row(
        "Rust: edit → new version handling events (plugbus dev)",
        format!("{:.2} s", median(edits.clone())),
        &format!("median of {edits:.2?} (target ≤ 3 s)"),
    );
    row(
        "Rust: artifact, dev build",
        format!("{} B", size(&rust.join("dist/warmrust.wasm"))),
        "no LTO, no debug info",
    );
    plugbus(&rust, &["build", "--release"], &env);
    row(
        "Rust: artifact, release build",
        format!("{} B", size(&rust.join("dist/warmrust.wasm"))),
        "LTO, opt-level s (target ≤ 200 KB)",
    );
    let (_, rust_start) = start(
        &rust.join("dist"),
        &work.dir("rs-start"),
        &cache,
        "warmrust",
    );
    row(
        "Rust: host start → running, warm cache",
        format!("{:.2} s", rust_start.as_secs_f64()),
        "release build, compiled by plugbus build",
    );
    let rust_eps = throughput(
        &rust.join("dist"),
        &work.dir("rs-eps"),
        &cache,
        "warmrust",
        5000,
    );
    row(
        "Rust: events/s (count + publish a follow-up)",
        format!("{rust_eps:.0}"),
        "5,000 orders in batches of 500, durable log",
    );

    if python {
        let (py, py_new) = new_to_handled(&work.dir("py"), "pyaudit", "python", &env);
        row(
            "Python: new → first handled event",
            format!("{:.1} s", py_new.as_secs_f64()),
            "componentize-py and the optimized compile at build",
        );
        row(
            "Python: artifact",
            format!("{} B", size(&py.join("dist/pyaudit.wasm"))),
            "componentize-py (target ≤ 20 MB)",
        );
        let (_, py_start) = start(&py.join("dist"), &work.dir("py-start"), &cache, "pyaudit");
        row(
            "Python: host start → running, warm cache",
            format!("{:.2} s", py_start.as_secs_f64()),
            &format!(
                "{:.1}× Rust's (target ≤ 1 s)",
                py_start.as_secs_f64() / rust_start.as_secs_f64()
            ),
        );
        let edits = dev_edits(&py, "app.py", "pyaudit.counted", &env, 3);
        row(
            "Python: edit → new version handling events (plugbus dev)",
            format!("{:.2} s", median(edits.clone())),
            &format!("median of {edits:.2?}"),
        );
        let py_eps = throughput(
            &py.join("dist"),
            &work.dir("py-eps"),
            &cache,
            "pyaudit",
            5000,
        );
        row(
            "Python: events/s (same handler)",
            format!("{py_eps:.0}"),
            &format!("{:.0} % of Rust's", 100.0 * py_eps / rust_eps),
        );
    } else {
        println!("Python rows skipped: PLUGBUS_COMPONENTIZE_PY is not set (scripts/authoring.sh sets it)");
    }

    println!("\n| measurement | value | notes |\n|---|---:|---|");
    for (what, value, note) in rows {
        println!("| {what} | {value} | {note} |");
    }
}
