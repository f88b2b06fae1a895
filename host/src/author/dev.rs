//! `plugbus dev`: the edit loop. Builds the project, runs a host on
//! loopback (this binary's `run`, its log in a temporary directory, in
//! memory under /dev/shm where there is one, removed at exit) with the
//! plugin in its plugin directory, and publishes the fixture events
//! (`events/*.json`), printing what the plugin did with each: its outcome,
//! its follow-up events, its state changes (its log lines come from the
//! host as they happen). On every change to the project's sources or
//! manifest (never `target/` or `dist/`) it rebuilds, swaps the new build
//! in through the host's hot swap, and publishes the fixtures again.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use notify::Watcher;
use serde_json::Value;

use crate::client::Client;

use super::build::{self, BuildOptions};
use super::fixtures;
use super::{io_error, AuthorError, Project};

/// How long to wait for the host, a swap, or an event to be handled.
const WAIT: Duration = Duration::from_secs(120);

/// What the loop reacts to.
enum Cue {
    Changed(PathBuf),
    Publish,
    Quit,
}

/// Options of `plugbus dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where the host listens (default: a free port on 127.0.0.1).
    pub listen: Option<std::net::SocketAddr>,
    /// Build with `--release`.
    pub release: bool,
    /// The compile cache the builds fill and the host starts them from.
    pub cache_dir: Option<PathBuf>,
}

/// A host child and its directories, stopped and removed when dropped.
struct Host {
    child: Child,
    url: String,
    client: Client,
    dirs: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM stops the host cleanly; SIGKILL if it does not.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dirs);
    }
}

/// Run the loop until Ctrl-C, SIGTERM or `q`.
pub fn dev(project: &Project, opts: &DevOptions, out: &mut dyn Write) -> Result<(), AuthorError> {
    let (tx, rx) = crossbeam_channel::unbounded::<Cue>();
    on_signal(tx.clone());
    // Watching from the start: a change made while the first build runs
    // is rebuilt right after it.
    let watcher = watch_sources(project, tx.clone())?;
    let build_opts = BuildOptions {
        release: opts.release,
        cache_dir: opts.cache_dir.clone(),
        ..BuildOptions::default()
    };
    let built = build::build(project, &build_opts, out)?;
    let dirs = host_dirs(project)?;
    // In the plugin directory before the host starts: it starts with it.
    let deployed = deploy(project, &dirs.join("plugins"), &built.wasm)?;
    let host = start_host(dirs, opts.listen, opts.cache_dir.as_deref())?;
    let _ = writeln!(
        out,
        "plugbus dev: {} {} on {} (console {}/console/)\nwatching {} — Enter publishes events/*.json again, q quits",
        project.name,
        built.version,
        host.url,
        host.url,
        project.dir.display()
    );
    let plugins = host.dirs.join("plugins");
    wait_live(&host.client, &project.name, &deployed)?;
    let _ = writeln!(
        out,
        "{} is live ({})",
        project.name,
        build::size(built.bytes)
    );
    publish_fixtures(project, &host.client, out)?;

    read_keys(tx.clone());

    let quiet = BuildOptions {
        quiet: true,
        ..build_opts
    };
    loop {
        let first = match rx.recv() {
            Ok(Cue::Quit) | Err(_) => break,
            Ok(Cue::Publish) => {
                publish_fixtures(project, &host.client, out)?;
                continue;
            }
            Ok(Cue::Changed(p)) => p,
        };
        let Some(changed) = settle_changes(&rx, first) else {
            break;
        };
        rebuild(project, &quiet, &host, &plugins, &changed, out)?;
    }
    drop(watcher);
    let _ = writeln!(out, "plugbus dev: stopping");
    drop(host);
    Ok(())
}

/// Watch the project's sources (not `target/` or `dist/`): each change is
/// a cue.
fn watch_sources(
    project: &Project,
    tx: crossbeam_channel::Sender<Cue>,
) -> Result<notify::RecommendedWatcher, AuthorError> {
    let watch_tx = tx;
    let root = project.dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                for p in event.paths {
                    if is_source(&root, &p) {
                        let _ = watch_tx.send(Cue::Changed(p));
                    }
                }
            }
        }
    })
    .map_err(|e| AuthorError::Toolchain {
        what: "a file watcher".into(),
        fix: format!("{e}; raise fs.inotify.max_user_watches"),
    })?;
    watcher
        .watch(&project.dir, notify::RecursiveMode::Recursive)
        .map_err(|e| AuthorError::Toolchain {
            what: format!("watching {}", project.dir.display()),
            fix: e.to_string(),
        })?;
    Ok(watcher)
}

/// Enter publishes the fixtures again, `q` (or the end of input) quits.
fn read_keys(tx: crossbeam_channel::Sender<Cue>) {
    let stdin_tx = tx;
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let cue = match line.as_deref().map(str::trim) {
                Ok("q") | Ok("quit") | Err(_) => Cue::Quit,
                Ok(_) => Cue::Publish,
            };
            let quit = matches!(cue, Cue::Quit);
            if stdin_tx.send(cue).is_err() || quit {
                return;
            }
        }
    });
}

/// The changes that follow `first` within 100 ms, taken together (an
/// editor writes a file in several steps): the file that changed, when,
/// or none when asked to quit meanwhile.
fn settle_changes(
    rx: &crossbeam_channel::Receiver<Cue>,
    first: PathBuf,
) -> Option<(PathBuf, Instant)> {
    // An editor writes a file in several steps: take them together.
    let changed_at = Instant::now();
    let mut quit = false;
    let mut first = first;
    while let Ok(cue) = rx.recv_timeout(Duration::from_millis(100)) {
        match cue {
            Cue::Quit => quit = true,
            // An editor's temporary file is gone by now; the file it
            // saved is not.
            Cue::Changed(p) if !first.exists() => first = p,
            _ => {}
        }
    }
    (!quit).then_some((first, changed_at))
}

/// Rebuild after a change, swap the new build in and show what it does
/// with the fixtures; a failed build or start keeps the running version.
fn rebuild(
    project: &Project,
    quiet: &BuildOptions,
    host: &Host,
    plugins: &std::path::Path,
    changed: &(PathBuf, Instant),
    out: &mut dyn Write,
) -> Result<(), AuthorError> {
    let shown = changed.0.strip_prefix(&project.dir).unwrap_or(&changed.0);
    let _ = writeln!(out, "changed: {}; rebuilding", shown.display());
    let built = match build::build(project, quiet, out) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(
                out,
                "build failed: {e}\nthe running version stays; fix and save again"
            );
            return Ok(());
        }
    };
    let deployed = deploy(project, plugins, &built.wasm)?;
    if let Err(e) = wait_live(&host.client, &project.name, &deployed) {
        let _ = writeln!(out, "the new build did not start: {e}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{} {} is live, {:.1} s after the change (build {:.1} s, load {:.1} s)",
        project.name,
        built.version,
        changed.1.elapsed().as_secs_f64(),
        built.build_time.as_secs_f64(),
        built.check_time.as_secs_f64()
    );
    publish_fixtures(project, &host.client, out)?;
    Ok(())
}

/// Set when Ctrl-C or SIGTERM arrives: waits give up, the loop ends, the
/// host is stopped.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stopping() -> Result<(), AuthorError> {
    match STOPPING.load(std::sync::atomic::Ordering::Relaxed) {
        true => Err(AuthorError::Stopped),
        false => Ok(()),
    }
}

/// Turn Ctrl-C and SIGTERM into [`Cue::Quit`].
fn on_signal(tx: crossbeam_channel::Sender<Cue>) {
    let (ready_tx, ready) = crossbeam_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            let _ = ready_tx.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tx.send(Cue::Quit);
    });
    // The handlers are in place before anything is started.
    let _ = ready.recv_timeout(Duration::from_secs(5));
}

/// Whether a change to `path` is worth a rebuild: anything in the project
/// but build output, version control and editor droppings.
fn is_source(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let Some(first) = parts.next() else {
        return false;
    };
    // Cargo.lock is cargo's: a build may rewrite it.
    if [
        "target",
        "dist",
        ".git",
        "__pycache__",
        "events",
        "Cargo.lock",
    ]
    .contains(&first.as_str())
    {
        return false;
    }
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    !(name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".part"))
}

/// The host's plugin and data directories, fresh: in /dev/shm (memory)
/// where there is one, else in the temporary directory.
fn host_dirs(project: &Project) -> Result<PathBuf, AuthorError> {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dirs = base.join(format!(
        "plugbus-dev-{}-{}",
        project.name,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dirs);
    for d in ["plugins", "data"] {
        let p = dirs.join(d);
        std::fs::create_dir_all(&p).map_err(io_error(&p))?;
    }
    Ok(dirs)
}

fn start_host(
    dirs: PathBuf,
    listen: Option<std::net::SocketAddr>,
    cache: Option<&Path>,
) -> Result<Host, AuthorError> {
    let addr = match listen {
        Some(a) => a,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_error(Path::new("127.0.0.1:0")))?,
    };
    let url = format!("http://{addr}");
    let client = Client::new(&crate::client::ClientArgs {
        url: url.clone(),
        token: None,
        ca_cert: None,
    })
    .map_err(|e| AuthorError::Toolchain {
        what: "an HTTP client".into(),
        fix: e,
    })?;
    let exe = std::env::current_exe().map_err(io_error(Path::new("plugbus")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run");
    if let Some(cache) = cache {
        cmd.arg("--cache-dir").arg(cache);
    }
    let child = cmd
        .arg("--plugins")
        .arg(dirs.join("plugins"))
        .arg("--data")
        .arg(dirs.join("data"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--fsync", "interval=100"])
        .env("RUST_LOG", "warn,plugin=info")
        .env_remove("PLUGBUS_BROKER")
        .stdin(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dirs);
            return Err(AuthorError::Toolchain {
                what: "the plugbus host".into(),
                fix: format!("it could not be started: {e}"),
            });
        }
    };
    let host = Host {
        child,
        url,
        client,
        dirs,
    };
    let deadline = Instant::now() + WAIT;
    while host.client.get_json("/healthz").is_err() {
        stopping()?;
        if Instant::now() > deadline {
            return Err(AuthorError::Toolchain {
                what: format!("a host on {addr}"),
                fix: "it did not answer; is the address free? pass --listen ADDR".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(host)
}

/// Put the build (and the manifest) into the host's plugin directory;
/// returns the build's content hash.
fn deploy(project: &Project, plugins: &Path, wasm: &Path) -> Result<String, AuthorError> {
    let manifest = project.dist_dir().join(format!("{}.toml", project.name));
    let target_manifest = plugins.join(format!("{}.toml", project.name));
    if manifest.is_file() {
        build::copy_atomically(&manifest, &target_manifest)?;
    } else {
        let _ = std::fs::remove_file(&target_manifest);
    }
    build::copy_atomically(wasm, &plugins.join(format!("{}.wasm", project.name)))?;
    let bytes = std::fs::read(wasm).map_err(io_error(wasm))?;
    Ok(crate::runtime::content_hash(&bytes))
}

/// Wait until the host runs the build with `hash`.
fn wait_live(client: &Client, name: &str, hash: &str) -> Result<(), AuthorError> {
    let deadline = Instant::now() + WAIT;
    loop {
        stopping()?;
        let plugin = plugin_status(client, name);
        if let Some(p) = &plugin {
            // The host shows the start of the hash.
            let same = p["content_hash"]
                .as_str()
                .is_some_and(|h| !h.is_empty() && hash.starts_with(h));
            if same && p["state"] == "running" {
                return Ok(());
            }
            if same && p["state"] == "failed" {
                return Err(AuthorError::Check {
                    file: PathBuf::from(format!("{name}.wasm")),
                    reason: format!("the host did not start it: {}", p["error"]),
                });
            }
        }
        if Instant::now() > deadline {
            return Err(AuthorError::Check {
                file: PathBuf::from(format!("{name}.wasm")),
                reason: format!("not running after {WAIT:?}: {plugin:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kv(client: &Client, name: &str) -> Vec<(String, String)> {
    client
        .get_json(&format!("/v1/plugins/{name}/kv"))
        .ok()
        .and_then(|v| {
            v["entries"].as_array().map(|es| {
                es.iter()
                    .map(|e| {
                        let value = match &e["value"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (e["key"].as_str().unwrap_or_default().to_string(), value)
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Publish every fixture event to the host and print what the plugin did
/// with it.
fn publish_fixtures(
    project: &Project,
    client: &Client,
    out: &mut dyn Write,
) -> Result<(), AuthorError> {
    let files = project.fixtures()?;
    if files.is_empty() {
        let _ = writeln!(
            out,
            "no events/*.json to publish; add one (a CloudEvent) and press Enter"
        );
        return Ok(());
    }
    let list = match fixtures::load(&files) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(out, "{e}");
            return Ok(());
        }
    };
    for f in list {
        let before = kv(client, &project.name);
        let counters = plugin_status(client, &project.name);
        let mut body = f.event.to_json();
        body["id"] = Value::String(crate::event::new_id());
        // The log gives the sequence; sent, it would be an extension.
        if let Some(attributes) = body.as_object_mut() {
            attributes.remove("sequence");
        }
        let sent = client.post_text(
            "/v1/events",
            "application/cloudevents+json",
            &body.to_string(),
        );
        let accepted: Value = match sent {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(out, "publishing {}: {e}", f.file.display());
                continue;
            }
        };
        let id = accepted["id"].as_str().unwrap_or_default().to_string();
        let sequence = accepted["sequence"].as_u64().unwrap_or_default();
        let outcome = settle(client, &project.name, &f.event.topic, sequence, &counters);
        // Its follow-ups, from the trace of its chain (indexed from the
        // first follow-up on).
        let chain = body["correlationid"].as_str().unwrap_or(&id).to_string();
        let follow_ups: Vec<Value> = client
            .get_json(&format!("/v1/trace/{chain}"))
            .ok()
            .and_then(|t| t["events"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["causationid"] == id.as_str())
            .collect();
        let name = f
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(out, "{name}: {} {id}: {outcome}", f.event.topic);
        for e in &follow_ups {
            let data = match &e["data"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let _ = writeln!(
                out,
                "  published {} {data}",
                e["type"].as_str().unwrap_or_default()
            );
        }
        let after = kv(client, &project.name);
        for (k, v) in &after {
            if !before.iter().any(|(bk, bv)| bk == k && bv == v) {
                let _ = writeln!(out, "  state {k} = {v}");
            }
        }
        for (k, _) in before
            .iter()
            .filter(|(k, _)| !after.iter().any(|(ak, _)| ak == k))
        {
            let _ = writeln!(out, "  state {k} deleted");
        }
    }
    Ok(())
}

/// A plugin's status: its counters (handled, failed, retried) and
/// subscriptions.
fn plugin_status(client: &Client, name: &str) -> Option<Value> {
    client.get_json("/v1/plugins").ok().and_then(|all| {
        all["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    })
}

/// Wait until the plugin settled the event at `sequence` (published just
/// now, while nothing else was) and say how: its counters moved from
/// `before`, and a failure's dead letter says why.
fn settle(
    client: &Client,
    name: &str,
    topic: &str,
    sequence: u64,
    before: &Option<Value>,
) -> String {
    let count = |p: &Option<Value>, k: &str| p.as_ref().and_then(|p| p[k].as_u64()).unwrap_or(0);
    let subscribed = before.as_ref().is_some_and(|p| {
        p["subscriptions"].as_array().is_some_and(|subs| {
            subs.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| plugbus_contract::topic::Pattern::parse(s).ok())
                .any(|pattern| pattern.matches(topic))
        })
    });
    if !subscribed {
        return "not delivered: the plugin does not subscribe to it".to_string();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let now = plugin_status(client, name);
        if count(&now, "handled") > count(before, "handled") {
            return "handled".to_string();
        }
        if count(&now, "failed") > count(before, "failed") {
            let letter = client
                .get_json(&format!("/v1/dead/{name}/{sequence}"))
                .unwrap_or_default();
            return format!(
                "rejected (a dead letter after {} attempt(s)): {}",
                letter["attempts"],
                letter["error"].as_str().unwrap_or("see the host's log")
            );
        }
        if count(&now, "retried") > count(before, "retried") {
            return "retrying: the attempt failed (the host's log says why); it is delivered again with backoff".to_string();
        }
        if Instant::now() > deadline || stopping().is_err() {
            return format!("not settled after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
