//! The plugin author's loop, as an author runs it: `plugbus new` in an
//! empty folder, `plugbus build`, `plugbus test`, the built plugin in the
//! real binary with an order through, and `plugbus dev` swapping an edit
//! in. Rust and Python (componentize-py, skipped with the reason when it
//! is not installed; scripts/test.sh installs it).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::*;

/// Where plugin projects build: one target directory for the test run, as
/// `plugbus build` shares one between projects.
fn plugin_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-target")
}

/// Held by a test for as long as it builds Rust projects in
/// [`plugin_target`]: cargo locks a target directory while it compiles,
/// but a project's doc tests read its dependencies' libraries after the
/// lock is let go, while another project's build may be rewriting them (a
/// first run from a fresh clone failed so). One builder at a time, by
/// construction.
fn one_builder() -> std::sync::MutexGuard<'static, ()> {
    static BUILDER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BUILDER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `plugbus ARGS` in `dir`, with the shared plugin target directory and
/// the e2e compile cache.
fn plugbus(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("PLUGBUS_PLUGIN_TARGET_DIR", plugin_target())
        .env(
            "PLUGBUS_CACHE_DIR",
            std::env::temp_dir().join("plugbus-e2e-compile-cache"),
        )
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("plugbus runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn succeeds(dir: &Path, args: &[&str]) -> String {
    let out = plugbus(dir, args, &[]);
    let said = text(&out);
    assert!(out.status.success(), "plugbus {args:?} failed:\n{said}");
    said
}

/// A new project NAME in `work`, built, tested, and its plugin run in the
/// real binary: an order through, handled, its follow-up published and its
/// state kept.
fn new_build_test_run(work: &Path, name: &str, lang: &str, release: bool) {
    let said = succeeds(work, &["new", name, "--lang", lang]);
    assert!(said.contains("plugbus dev"), "{said}");
    let project = work.join(name);
    let mut build = vec!["build"];
    if release {
        build.push("--release");
    }
    let said = succeeds(&project, &build);
    assert!(said.contains(&format!("dist/{name}.wasm")), "{said}");
    assert!(said.contains("subscribes to order.placed"), "{said}");
    let said = succeeds(&project, &["test"]);
    assert!(said.contains("ok: 1 event(s), 0 unexpected"), "{said}");
    assert!(
        said.contains(&format!("published {name}.counted")),
        "{said}"
    );
    assert!(said.contains("state orders = 1"), "{said}");

    // A fixture the plugin does not do what it expects with fails the run,
    // naming the file and what happened.
    let wrong = project.join("events/wrong.json");
    std::fs::write(
        &wrong,
        r#"{"type": "order.placed", "data": {"order_id": "o-9"}, "expect": {"outcome": "reject"}}"#,
    )
    .expect("fixture");
    let out = plugbus(&project, &["test"], &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("FAIL wrong.json"), "{said}");
    assert!(said.contains("expected reject, got ack"), "{said}");
    std::fs::remove_file(&wrong).expect("rm");

    // What dist/ holds is what an operator deploys.
    let wasm = project.join(format!("dist/{name}.wasm"));
    let manifest = std::fs::read_to_string(project.join(format!("dist/{name}.toml")))
        .expect("the manifest beside the plugin");
    let wasm = wasm.display().to_string();
    let h = host(
        &[
            PluginFile::Wasm(name, &wasm),
            PluginFile::Manifest(name, &manifest),
        ],
        &[],
    );
    let accepted = h
        .publish("order.placed", &order("o-1", "widget", 1, 2500))
        .expect("publish");
    h.wait_until("the plugin to handle the order", WAIT, |h| {
        h.count(name, "handled") == 1
    })
    .expect("handled");
    let kept = h
        .get(&format!("/v1/plugins/{name}/kv/orders"))
        .expect("state");
    assert_eq!(kept["value"], json!(1), "{kept}");
    let id = accepted["id"].as_str().expect("id");
    let trace = h.get(&format!("/v1/trace/{id}")).expect("trace");
    let events = trace["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == format!("{name}.counted").as_str()
                && e["causationid"] == id
                && e["published_by"] == name),
        "{trace}"
    );
    // The host read the contracts the template declares, embedded in
    // the build: its follow-up names the major it was checked against.
    let counted = h.log_events(Some(&format!("{name}.counted")));
    assert_eq!(
        counted[0]["dataschema"],
        format!("/v1/schemas/{name}.counted/1").as_str(),
        "{counted:?}"
    );
    assert!(h.stop().expect("stops").success());
}

#[test]
fn a_rust_plugin_goes_from_an_empty_folder_to_handled_orders() {
    let _one = one_builder();
    let work = TestDir::new("author-rust");
    new_build_test_run(&work.0, "audit", "rust", true);
}

/// componentize-py as scripts/test.sh installs it, if it is there.
fn componentize_py() -> Option<PathBuf> {
    let from_env = std::env::var_os("PLUGBUS_COMPONENTIZE_PY").map(PathBuf::from);
    let found = from_env.filter(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: componentize-py is not installed (PLUGBUS_COMPONENTIZE_PY unset; scripts/test.sh installs it)");
    }
    found
}

#[test]
fn a_python_plugin_goes_from_an_empty_folder_to_handled_orders() {
    if componentize_py().is_none() {
        return;
    }
    let work = TestDir::new("author-python");
    new_build_test_run(&work.0, "pyaudit", "python", false);
    python_timers(&work.0.join("pyaudit"));
}

/// The Python helper's timers in the sandbox: the project's handler also
/// sets a reminder 100 ms after each order, and counts the reminders it
/// gets.
fn python_timers(project: &Path) {
    let app = project.join("app.py");
    let code = std::fs::read_to_string(&app).expect("app.py");
    let edited = code
        .replace(
            r#"subscriptions = ["order.placed"]"#,
            r#"subscriptions = ["order.placed", "pyaudit.reminder"]"#,
        )
        .replace(
            "    def handle(self, event, ctx):\n        try:\n",
            "    def handle(self, event, ctx):\n        if event.topic == \"pyaudit.reminder\":\n            self.state.increment(\"reminded\")\n            return ack()\n        try:\n",
        )
        .replace(
            "            ctx.publish(self.topic, {\"order_id\": order_id, \"orders\": orders})\n",
            "            ctx.publish(self.topic, {\"order_id\": order_id, \"orders\": orders})\n            ctx.schedule(\"remind.\" + order_id, \"pyaudit.reminder\", {\"order_id\": order_id}, after_ms=100)\n",
        );
    assert_eq!(
        edited.matches("pyaudit.reminder").count(),
        3,
        "the template changed:\n{code}"
    );
    std::fs::write(&app, edited).expect("app.py");
    succeeds(project, &["build"]);
    let wasm = project.join("dist/pyaudit.wasm").display().to_string();
    let manifest =
        std::fs::read_to_string(project.join("dist/pyaudit.toml")).expect("the manifest");
    let h = host(
        &[
            PluginFile::Wasm("pyaudit", &wasm),
            PluginFile::Manifest("pyaudit", &manifest),
        ],
        &[],
    );
    h.publish("order.placed", &order("o-1", "widget", 1, 2500))
        .expect("publish");
    h.wait_until("the reminder to come", WAIT, |h| {
        h.get("/v1/plugins/pyaudit/kv/reminded")
            .is_ok_and(|v| v["value"] == json!(1))
    })
    .expect("reminded");
}

#[test]
fn authoring_errors_name_the_thing_and_the_fix() {
    let _one = one_builder();
    let work = TestDir::new("author-errors");
    let out = plugbus(&work.0, &["build"], &[]);
    assert!(
        text(&out).contains("is not a plugin project") && text(&out).contains("plugbus new NAME"),
        "{}",
        text(&out)
    );
    let out = plugbus(&work.0, &["new", "Audit"], &[]);
    assert!(text(&out).contains("lowercase letter"), "{}", text(&out));
    succeeds(&work.0, &["new", "audit"]);
    let out = plugbus(&work.0, &["new", "audit"], &[]);
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    // No Rust on PATH: says how to get it.
    let project = work.0.join("audit");
    let out = plugbus(&project, &["build"], &[("PATH", "/nonexistent")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cargo (Rust) is missing: install Rust with rustup"),
        "{}",
        text(&out)
    );
    // No componentize-py: says the command that installs the pinned one.
    succeeds(&work.0, &["new", "pyaudit", "--lang", "python"]);
    let out = plugbus(
        &work.0.join("pyaudit"),
        &["build"],
        &[
            ("PATH", "/nonexistent"),
            ("HOME", &work.arg()),
            ("PLUGBUS_COMPONENTIZE_PY", "/nonexistent/componentize-py"),
        ],
    );
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("componentize-py 0.25.1")
            && said.contains("pip install componentize-py==0.25.1"),
        "{said}"
    );
    // A fixture that is not a CloudEvent is named with the reason.
    std::fs::write(project.join("events/bad.json"), r#"{"data": 1}"#).expect("fixture");
    let out = plugbus(&project, &["test"], &[]);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("bad.json") && said.contains("type"), "{said}");
}

#[test]
fn plugbus_dev_swaps_an_edit_in_and_shows_what_the_new_version_did() {
    let _one = one_builder();
    let work = TestDir::new("author-dev");
    succeeds(&work.0, &["new", "devtest"]);
    let project = work.0.join("devtest");
    let mut child = Command::new(BIN)
        .arg("dev")
        .current_dir(&project)
        .env("PLUGBUS_PLUGIN_TARGET_DIR", plugin_target())
        .env(
            "PLUGBUS_CACHE_DIR",
            std::env::temp_dir().join("plugbus-e2e-compile-cache"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugbus dev starts");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log_sink = logged.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log_sink.lock().expect("log").push(line);
        }
    });
    let mut seen = Vec::new();
    let mut until = |what: &str, pick: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what}; stdout:\n{}", seen.join("\n")),
            }
        }
    };
    let first = until("the console's address", &|l| l.contains("(console http://"));
    let url = first
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("url")
        .to_string();
    until("the sample handled", &|l| {
        l.contains("sample.json: order.placed") && l.ends_with(": handled")
    });
    until("its follow-up", &|l| {
        l.contains("published devtest.counted")
    });
    until("its state", &|l| l.contains("state orders = 1"));

    // An edit to the handler is rebuilt, swapped in and run on the sample.
    let lib = project.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).expect("lib.rs");
    let edited = source.replace("\"devtest.counted\"", "\"devtest.tallied\"");
    assert_ne!(
        source, edited,
        "the template's default topic is where the test expects it"
    );
    std::fs::write(&lib, edited).expect("edit");
    let live = until("the new version live", &|l| {
        l.contains("is live,") && l.contains("after the change")
    });
    until("the new version's follow-up", &|l| {
        l.contains("published devtest.tallied")
    });
    until("the state kept across the swap", &|l| {
        l.contains("state orders = 2")
    });
    // Enter publishes the fixtures again; one the plugin does not consume
    // is said to be so.
    std::fs::write(
        project.join("events/other.json"),
        r#"{"type": "order.shipped", "data": {}}"#,
    )
    .expect("fixture");
    std::fs::write(
        project.join("events/bad.json"),
        r#"{"type": "order.placed", "data": {"no": "order"}}"#,
    )
    .expect("fixture");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"\n").expect("enter");
    until("the bad order rejected", &|l| {
        l.contains("bad.json: order.placed")
            && l.contains("rejected (a dead letter after 1 attempt(s))")
    });
    until("the other event not delivered", &|l| {
        l.contains("other.json: order.shipped") && l.contains("does not subscribe")
    });
    until("a third order counted", &|l| l.contains("state orders = 3"));
    // A build that fails keeps the running version and says why.
    std::fs::write(&lib, "this is not rust").expect("break");
    until("the failed build", &|l| l.contains("build failed"));
    until("the running version kept", &|l| {
        l.contains("the running version stays")
    });
    assert!(
        get_ok(&url, "/healthz"),
        "the host still runs after a failed build"
    );
    assert!(
        logged
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("[devtest] order o-1")),
        "the plugin's log lines come through: {:?}",
        logged.lock().expect("log")
    );
    println!("plugbus dev: {live}");
    // SIGTERM stops dev and its host.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = child.wait().expect("dev exits");
    assert!(status.success(), "{status}");
    assert!(!get_ok(&url, "/healthz"), "the host stopped with dev");
}

fn get_ok(url: &str, path: &str) -> bool {
    ureq::get(&format!("{url}{path}"))
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .is_ok()
}
