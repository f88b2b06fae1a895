//! End-to-end test support: the wasm plugins built for this test run
//! ([`artifacts`]), and [`TestHost`], which starts the real `plugbus`
//! binary on a plugin directory of the test's choosing, on a free loopback
//! port, and talks to it over HTTP.
//!
//! The host is stopped (SIGTERM, then kill) and its directory removed when
//! the `TestHost` is dropped, so a failing test leaves nothing running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod brokers;
pub mod browser;
pub mod otlp;

/// Paths of the plugins built to wasm32-wasip1 for this run.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// The swapper test plugin tagged as `version`: its bytes, and the tag it
/// reports as its version (`SWAPTAG:` and eight digits, patched into its
/// data segment, so that a test makes as many versions as it likes).
pub fn swapper_version(version: u32) -> (Vec<u8>, String) {
    const TAG: &[u8] = b"SWAPTAG:00000000";
    let mut bytes = std::fs::read(artifacts::SWAPPER).expect("the swapper plugin is built");
    let at: Vec<usize> = bytes
        .windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the tag is in the swapper's file once");
    let tag = format!("SWAPTAG:{version:08}");
    bytes[at[0]..at[0] + TAG.len()].copy_from_slice(tag.as_bytes());
    (bytes, tag)
}

/// Errors of the harness; tests unwrap them with a message.
pub type Result<T> = std::result::Result<T, String>;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running `plugbus run` process.
pub struct TestHost {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// The plugin directory.
    pub dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The API token the harness's requests carry, if any.
    pub token: Option<String>,
}

/// A plugin to put in the directory: the file name stem and what to copy.
pub enum PluginFile<'a> {
    /// Copy this wasm file in as NAME.wasm.
    Wasm(&'a str, &'a str),
    /// Write these bytes as NAME.wasm.
    Bytes(&'a str, &'a [u8]),
    /// Write this text as NAME.toml, the plugin's manifest.
    Manifest(&'a str, &'a str),
}

/// A request's status and JSON answer (its text when not JSON; status 0
/// and the error when there was no answer).
fn answer(result: std::result::Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return (0, Value::String(e.to_string())),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

impl TestHost {
    /// Start `bin` (`env!("CARGO_BIN_EXE_plugbus")`) with `plugins` and
    /// extra `args`, and wait until it is ready.
    pub fn start(bin: &str, plugins: &[PluginFile<'_>], args: &[&str]) -> Result<TestHost> {
        TestHost::start_with_env(bin, plugins, args, &[])
    }

    /// [`TestHost::start`] with extra environment variables.
    pub fn start_with_env(
        bin: &str,
        plugins: &[PluginFile<'_>],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<TestHost> {
        TestHost::start_under(None, bin, plugins, args, env)
    }

    /// [`TestHost::start_with_env`] with `bin` run by `runner` when given
    /// (e.g. `qemu-aarch64` for a binary of another architecture).
    pub fn start_under(
        runner: Option<&str>,
        bin: &str,
        plugins: &[PluginFile<'_>],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<TestHost> {
        let dir = std::env::temp_dir().join(format!(
            "plugbus-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).map_err(|e| format!("mkdir: {e}"))?;
        for p in plugins {
            match p {
                PluginFile::Wasm(name, src) => {
                    std::fs::copy(src, plugin_dir.join(format!("{name}.wasm")))
                        .map_err(|e| format!("copy {src}: {e}"))?;
                }
                PluginFile::Bytes(name, bytes) => {
                    std::fs::write(plugin_dir.join(format!("{name}.wasm")), bytes)
                        .map_err(|e| format!("write {name}: {e}"))?;
                }
                PluginFile::Manifest(name, text) => {
                    std::fs::write(plugin_dir.join(format!("{name}.toml")), text)
                        .map_err(|e| format!("write {name}.toml: {e}"))?;
                }
            }
        }
        // One compile cache for the whole test run keeps starts fast, unless
        // the test brings its own.
        let cache = std::env::temp_dir().join("plugbus-e2e-compile-cache");
        // Durable in a fresh data directory, unless the test asks for memory
        // or a broker, or brings its own (to restart on it).
        let data: Vec<std::ffi::OsString> =
            if args.contains(&"--memory") || args.contains(&"--data") || args.contains(&"--broker")
            {
                Vec::new()
            } else {
                vec!["--data".into(), dir.join("data").into()]
            };
        let cache: Vec<std::ffi::OsString> =
            if args.contains(&"--cache-dir") || args.contains(&"--no-cache") {
                Vec::new()
            } else {
                vec!["--cache-dir".into(), cache.into()]
            };
        let mut command = match runner {
            Some(runner) => {
                let mut c = Command::new(runner);
                c.arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .arg("run")
            .arg("--plugins")
            .arg(&plugin_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(&cache)
            .args(&data)
            .args(args)
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if std::env::var_os("PLUGBUS_E2E_ECHO").is_some() {
                    eprintln!("host| {line}");
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let mut host = TestHost {
            child: Some(child),
            url: String::new(),
            dir: plugin_dir,
            log,
            reader: Some(reader),
            token: None,
        };
        let ready = host.wait_ready(Duration::from_secs(120))?;
        // A text line (`listen=ADDR`) or a JSON one (`--log-format json`).
        let json_listen = serde_json::from_str::<Value>(&ready)
            .ok()
            .and_then(|v| v["fields"]["listen"].as_str().map(str::to_string));
        let addr = match &json_listen {
            Some(a) => a.as_str(),
            None => ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .ok_or_else(|| format!("no listen= in {ready:?}"))?,
        };
        let scheme = if args.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        host.url = format!("{scheme}://{addr}");
        Ok(host)
    }

    /// The `plugbus ready` line, once logged; an error with the log as soon
    /// as the process exits instead (or after `timeout`).
    fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains("plugbus ready")) {
                return Ok(line);
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().map_err(|e| e.to_string())?,
                None => return Err("no process".into()),
            };
            if let Some(status) = exited {
                // The pipe is closed: the reader ends after the last line.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Err(format!(
                    "the host exited at start ({status}); log:\n{}",
                    self.log().join("\n")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no log line with \"plugbus ready\" within {timeout:?}; log:\n{}",
                    self.log().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publish `events` (CloudEvents in structured mode) as one batch, and
    /// check that it was accepted whole.
    pub fn publish_batch(&self, events: Vec<Value>) {
        let (status, body) = self.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            Value::Array(events).to_string().as_bytes(),
        );
        assert_eq!(status, 202, "batch refused: {body}");
    }

    /// Every line the host wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait for a log line containing `needle`; returns the line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Ok(line);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.log().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `check` is true, polling.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&TestHost) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {what}; plugins: {}\nlog:\n{}",
                    self.get("/v1/plugins")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    self.log().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `request` with the harness's token, if it has one.
    fn authorized(&self, request: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => request.set("authorization", &format!("Bearer {t}")),
            None => request,
        }
    }

    /// POST `body` to `path` with `content_type` (and extra headers);
    /// returns the status and the JSON body (Null if not JSON).
    pub fn post(
        &self,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = self.authorized(ureq::post(&format!("{}{path}", self.url)));
        if let Some(ct) = content_type {
            req = req.set("content-type", ct);
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        answer(req.send_bytes(body))
    }

    /// PUT `body` (JSON) to `path`: the status and the JSON answer.
    pub fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let req = self
            .authorized(ureq::put(&format!("{}{path}", self.url)))
            .set("content-type", "application/json");
        answer(req.send_string(&body.to_string()))
    }

    /// POST one structured CloudEvent (`application/cloudevents+json`):
    /// the status and the JSON answer.
    pub fn post_event(&self, event: &Value) -> (u16, Value) {
        self.post(
            "/v1/events",
            Some("application/cloudevents+json"),
            &[],
            event.to_string().as_bytes(),
        )
    }

    /// POST a JSON order to `/v1/events/{topic}`; returns the 202 body.
    pub fn publish(&self, topic: &str, data: &Value) -> Result<Value> {
        match self.post(
            &format!("/v1/events/{topic}"),
            Some("application/json"),
            &[],
            data.to_string().as_bytes(),
        ) {
            (202, body) => Ok(body),
            (status, body) => Err(format!("publish answered {status}: {body}")),
        }
    }

    /// GET `path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.authorized(ureq::get(&format!("{}{path}", self.url)))
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())
    }

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> Result<String> {
        self.authorized(ureq::get(&format!("{}{path}", self.url)))
            .call()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())
    }

    /// Open the server-sent-events stream at `path` (resuming after
    /// `last_event_id`, if given).
    pub fn stream(&self, path: &str, last_event_id: Option<u64>) -> Result<SseStream> {
        let mut req = self
            .authorized(ureq::get(&format!("{}{path}", self.url)))
            .timeout(Duration::from_secs(120));
        if let Some(id) = last_event_id {
            req = req.set("last-event-id", &id.to_string());
        }
        let response = req.call().map_err(|e| e.to_string())?;
        Ok(SseStream {
            reader: BufReader::new(response.into_reader()),
        })
    }

    /// The `/v1/plugins` entry of `name`.
    pub fn plugin(&self, name: &str) -> Option<Value> {
        let all = self.get("/v1/plugins").ok()?;
        all["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// A counter of `name`'s `/v1/plugins` entry (`handled`, `failed`, …).
    pub fn count(&self, name: &str, field: &str) -> u64 {
        self.plugin(name)
            .and_then(|p| p[field].as_u64())
            .unwrap_or(0)
    }

    /// Replay `plugin` from the first event of the log, its state emptied
    /// first (`POST /v1/plugins/{plugin}/replay`); anything but 200 fails.
    pub fn replay_from_start(&self, plugin: &str) {
        let (status, body) = self.post(
            &format!("/v1/plugins/{plugin}/replay"),
            Some("application/json"),
            &[],
            br#"{"from_sequence": 1, "reset_state": true}"#,
        );
        assert_eq!(status, 200, "{body}");
    }

    /// Every event in the log (`GET /v1/log`, page by page), oldest
    /// first; `topic`: only those of it.
    pub fn log_events(&self, topic: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = self
                .get(&format!("/v1/log?from={from}&limit=1000"))
                .expect("log page");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return out;
            }
            from += events.len() as u64;
            out.extend(
                events
                    .into_iter()
                    .filter(|e| topic.is_none_or(|t| e["type"] == t)),
            );
        }
    }

    /// The value of a metric line starting with `series` in `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get_text("/metrics").ok()?;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Every event of every plugin is accounted for: handled, a dead
    /// letter, dropped by its own overflow policy, or pending
    /// (`GET /v1/audit`); panics naming the plugins otherwise. A host that
    /// keeps no log to count against (memory mode, a broker: 501), refuses
    /// the test's token, or does not answer is not audited.
    pub fn audit_clean(&self) {
        let answer = self
            .authorized(ureq::get(&format!("{}/v1/audit", self.url)))
            .call();
        let audit: Value = match answer {
            Ok(r) => r.into_json().unwrap_or_else(|e| panic!("audit: {e}")),
            Err(ureq::Error::Status(401 | 403 | 501, _)) | Err(ureq::Error::Transport(_)) => return,
            Err(e) => panic!("the audit failed: {e}"),
        };
        assert_eq!(
            audit["unaccounted"], 0,
            "events unaccounted for (neither handled, dead, dropped by policy nor pending): {audit:#}"
        );
    }

    /// Wait up to `timeout` until the audit lists at least `plugins`
    /// plugins, each checked with nothing pending (on NATS the audit checks
    /// a plugin only at rest), then assert the accounts hold; returns the
    /// audit. For a test whose plugins have finished their work.
    pub fn audit_at_rest(&self, plugins: usize, timeout: Duration) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        let done = self.wait_until("every plugin's audit checked at rest", timeout, |h| {
            let Ok(audit) = h.get("/v1/audit") else {
                return false;
            };
            let rest = audit["plugins"].as_array().is_some_and(|ps| {
                ps.len() >= plugins && ps.iter().all(|p| p["checked"] == true && p["pending"] == 0)
            });
            *last.borrow_mut() = audit;
            rest
        });
        let last = last.into_inner();
        if let Err(e) = done {
            panic!("{e}; last audit: {last:#}");
        }
        assert_eq!(
            last["unaccounted"], 0,
            "events unaccounted for (neither handled, dead, dropped by policy nor pending): {last:#}"
        );
        last
    }

    /// Audit the host ([`TestHost::audit_clean`]), then stop it with
    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.audit_clean();
        let mut child = self.child.take().ok_or("already stopped")?;
        signal(&child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("host did not stop within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The plugin directory's path.
    pub fn plugin_dir(&self) -> &Path {
        &self.dir
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

impl TestHost {
    /// Stop the host's process where it is (SIGSTOP), as a stalled machine
    /// would be; [`TestHost::resume`] lets it go on.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
        }
    }

    /// Let a paused host go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
    }

    /// Wait for the host to exit by itself, as its supervisor would; its
    /// exit status and log. Killed (and an error) after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let mut child = self.child.take().ok_or("already stopped")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("host did not exit by itself within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok((status, self.log()))
    }

    /// Kill the host with SIGKILL (no shutdown at all) and return its log.
    pub fn kill9(mut self) -> Vec<String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pipe is closed now: the reader ends after the last line.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log()
    }
}

/// A directory for a test to keep across host restarts; removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    /// A new, empty directory.
    pub fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!(
            "plugbus-e2e-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        TestDir(dir)
    }

    /// The path as a string, for command lines.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// CPU hogs (`yes`), one per core and at least two, that keep every core
/// busy for as long as they live: the busy-machine tests and benchmark
/// start them, and dropping them kills each by its process id.
pub struct Hogs(Vec<Child>);

impl Hogs {
    /// Start them; fails if `yes` cannot be run.
    pub fn start() -> Result<Hogs> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (0..cores.max(2))
            .map(|_| {
                Command::new("yes")
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start a CPU hog (yes): {e}"))
            })
            .collect::<Result<Vec<Child>>>()
            .map(Hogs)
    }

    /// How many there are.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// A server-sent-events stream being read.
pub struct SseStream {
    reader: BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>,
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseFrame {
    /// Its `event:` type (`message` when none).
    pub event: String,
    /// Its `id:`, if any.
    pub id: Option<String>,
    /// Its data lines, joined with newlines.
    pub data: String,
}

impl SseFrame {
    /// The data as JSON (Null when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

impl SseStream {
    /// The next event (comments and keep-alives skipped); `None` when the
    /// stream ended.
    pub fn next_frame(&mut self) -> Option<SseFrame> {
        let mut frame = SseFrame::default();
        let mut any = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    if frame.event.is_empty() {
                        frame.event = "message".into();
                    }
                    return Some(frame);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => frame.event = value.to_string(),
                "id" => frame.id = Some(value.to_string()),
                "data" => {
                    if !frame.data.is_empty() {
                        frame.data.push('\n');
                    }
                    frame.data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// Read until a frame of type `event` for which `pick` holds.
    pub fn until(&mut self, event: &str, pick: impl Fn(&SseFrame) -> bool) -> Result<SseFrame> {
        while let Some(f) = self.next_frame() {
            if f.event == event && pick(&f) {
                return Ok(f);
            }
        }
        Err(format!(
            "the stream ended before a `{event}` event that fits"
        ))
    }
}
