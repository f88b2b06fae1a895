//! Real brokers for the tests, each started on loopback with its data in a
//! directory of its own and stopped by its process id when dropped:
//! `nats-server` with JetStream (the pinned build `scripts/test.sh`
//! installs, named by `PLUGBUS_NATS_SERVER`) on a free port it picks and
//! reports, and `redis-server` (Debian's) on a unix socket, with
//! `appendfsync always`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, TestDir};

/// How long a broker may take to come up: liveness only.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// A broker process, killed by its pid and waited for when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `ready` gives a value, or the process exits, or
/// [`UP_WITHIN`] passes.
fn wait_for<T>(what: &str, child: &mut Child, ready: impl Fn() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + UP_WITHIN;
    loop {
        if let Some(v) = ready() {
            return Ok(v);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up within {UP_WITHIN:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `nats-server -js` on loopback, syncing every write to disk
/// (`sync_interval: always`) unless started for a benchmark at the
/// server's default.
pub struct Nats {
    /// Held to be killed when dropped; none while killed.
    process: Option<Process>,
    /// `nats://127.0.0.1:PORT` (or `tls://USER:PASSWORD@127.0.0.1:PORT`).
    pub url: String,
    /// Its directory: JetStream's store, its configuration, the pid and
    /// ports files.
    pub dir: TestDir,
    /// The port it listens on, kept across a restart.
    port: u16,
}

impl Nats {
    /// The server binary: `PLUGBUS_NATS_SERVER`, set by `scripts/test.sh`.
    pub fn binary() -> Result<PathBuf> {
        std::env::var_os("PLUGBUS_NATS_SERVER")
            .map(PathBuf::from)
            .ok_or_else(|| {
                "PLUGBUS_NATS_SERVER is not set: run the tests with scripts/test.sh, which installs the pinned nats-server and sets it".into()
            })
    }

    /// Start one, on a port it picks (`-p -1`, reported in its ports file).
    pub fn start() -> Result<Nats> {
        Nats::launch("nats", true, "", |port| format!("nats://127.0.0.1:{port}"))
    }

    /// Start one at the server's default sync (every two minutes), as it
    /// is deployed with replication for durability: for benchmarks.
    pub fn start_default_sync() -> Result<Nats> {
        Nats::launch("nats", false, "", |port| format!("nats://127.0.0.1:{port}"))
    }

    /// Start one that serves TLS only, with the certificate
    /// `NAME.pem`/`NAME.key` from `certs` and one user with a password:
    /// `tls://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn start_tls(certs: &Path, name: &str, user: &str, password: &str) -> Result<Nats> {
        let cert = |f: &str| certs.join(f).display().to_string();
        let extra = format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\nauthorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n",
            cert(&format!("{name}.pem")),
            cert(&format!("{name}.key")),
        );
        Nats::launch("nats-tls", true, &extra, |port| {
            format!("tls://{user}:{password}@127.0.0.1:{port}")
        })
    }

    /// Start one that admits clients with `token` only:
    /// `nats://TOKEN@127.0.0.1:PORT`.
    pub fn start_with_token(token: &str) -> Result<Nats> {
        let extra = format!("authorization {{\n  token: \"{token}\"\n}}\n");
        Nats::launch("nats-token", true, &extra, |port| {
            format!("nats://{token}@127.0.0.1:{port}")
        })
    }

    /// Configure one in a directory of its own (`extra` appended to its
    /// configuration) and start it; `url` names it by its port.
    fn launch(
        name: &str,
        sync_always: bool,
        extra: &str,
        url: impl Fn(u16) -> String,
    ) -> Result<Nats> {
        let dir = TestDir::new(name);
        let config = format!(
            "jetstream {{\n  store_dir: \"{}\"\n{}}}\n{extra}",
            dir.0.join("js").display(),
            if sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            }
        );
        std::fs::write(dir.0.join("nats.conf"), config)
            .map_err(|e| format!("cannot write the nats-server configuration: {e}"))?;
        let (process, port) = Nats::spawn(&dir, None)?;
        Ok(Nats {
            process: Some(process),
            url: url(port),
            dir,
            port,
        })
    }

    /// Kill it with SIGKILL (it synced every write it acknowledged).
    pub fn kill9(&mut self) {
        self.process.take();
    }

    /// Its JetStream store directory (`jetstream { store_dir }`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.0.join("js")
    }

    /// Start one (syncing every write) on a copy of the JetStream store
    /// directory `js` (another one's, copied while it was stopped): the
    /// documented restore of a JetStream backup.
    pub fn start_from_store(js: &Path) -> Result<Nats> {
        let nats = Nats::launch("nats-restored", true, "", |port| {
            format!("nats://127.0.0.1:{port}")
        })?;
        let mut nats = nats;
        nats.process.take();
        let _ = std::fs::remove_dir_all(nats.store_dir());
        let copied = Command::new("cp")
            .arg("-a")
            .arg(js)
            .arg(nats.store_dir())
            .status()
            .map_err(|e| format!("cannot run cp: {e}"))?;
        if !copied.success() {
            return Err(format!("copying {} failed", js.display()));
        }
        nats.restart()?;
        Ok(nats)
    }

    /// Start it again on the same directory and port: it recovers its
    /// streams from disk.
    pub fn restart(&mut self) -> Result<()> {
        self.process.take();
        let (process, _) = Nats::spawn(&self.dir, Some(self.port))?;
        self.process = Some(process);
        Ok(())
    }

    fn spawn(dir: &TestDir, port: Option<u16>) -> Result<(Process, u16)> {
        let bin = Nats::binary()?;
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(dir.0.join("nats.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg])
            .arg("-P")
            .arg(dir.0.join("nats.pid"))
            .arg("-ports_file_dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let ports = dir.0.join(format!("nats-server_{pid}.ports"));
        let port = wait_for("nats-server", &mut child, || client_port(&ports));
        let process = Process(child);
        Ok((process, port?))
    }
}

/// The client port in a nats-server ports file (`{"nats": ["nats://…:PORT"], …}`).
fn client_port(ports: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(ports).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}

/// A `redis-server` on a unix socket, appending every write to its AOF and
/// fsyncing it before answering.
pub struct Redis {
    /// Held to be killed when dropped; none while killed.
    process: Option<Process>,
    /// `redis+unix:///…/redis.sock`.
    pub url: String,
    /// Its directory: the socket and the append-only file.
    pub dir: TestDir,
}

impl Redis {
    /// Start one (Debian's `redis-server`, which `scripts/test.sh`
    /// installs).
    pub fn start() -> Result<Redis> {
        let dir = TestDir::new("redis");
        let process = Redis::spawn(&dir)?;
        Ok(Redis {
            url: format!("redis+unix://{}", dir.0.join("redis.sock").display()),
            process: Some(process),
            dir,
        })
    }

    /// Kill it with SIGKILL (it fsynced every write it answered).
    pub fn kill9(&mut self) {
        self.process.take();
    }

    /// Start it again on the same directory and socket: it reloads its
    /// append-only file.
    pub fn restart(&mut self) -> Result<()> {
        self.process.take();
        self.process = Some(Redis::spawn(&self.dir)?);
        Ok(())
    }

    /// Start one on a new directory holding `rdb` as its `dump.rdb` (a
    /// snapshot another one saved with BGSAVE), by the steps the README
    /// documents: with the append-only file on, Redis would start empty
    /// rather than load the snapshot, so it starts with it off, loads the
    /// snapshot, and then turns it on (`CONFIG SET appendonly yes`, which
    /// writes the file from memory).
    pub fn start_from_snapshot(rdb: &Path) -> Result<Redis> {
        let dir = TestDir::new("redis-restored");
        std::fs::copy(rdb, dir.0.join("dump.rdb"))
            .map_err(|e| format!("copy {}: {e}", rdb.display()))?;
        let socket = dir.0.join("redis.sock");
        let listen = [
            "--port".to_string(),
            "0".into(),
            "--unixsocket".into(),
            socket.display().to_string(),
        ];
        let ready = || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(drop)
        };
        let process = Redis::spawn_with_appendonly(&dir, &listen, &ready, "no")?;
        let url = format!("redis+unix://{}", socket.display());
        let cli = |args: &[&str]| -> Result<String> {
            let out = Command::new("redis-cli")
                .arg("-s")
                .arg(&socket)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run redis-cli ({e}): it comes with redis-server"))?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        cli(&["CONFIG", "SET", "appendonly", "yes"])?;
        let deadline = Instant::now() + UP_WITHIN;
        loop {
            let info = cli(&["INFO", "persistence"])?;
            let written = info.contains("aof_enabled:1")
                && info.contains("aof_rewrite_in_progress:0")
                && info.contains("aof_rewrite_scheduled:0");
            if written {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the append-only file was not written: {info}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Redis {
            url,
            process: Some(process),
            dir,
        })
    }

    /// Start one serving TLS only, on a free loopback port, with the
    /// certificate `NAME.pem`/`NAME.key` from `certs` and a password:
    /// `rediss://:PASSWORD@127.0.0.1:PORT/`.
    pub fn start_tls(certs: &Path, name: &str, password: &str) -> Result<Redis> {
        let dir = TestDir::new("redis-tls");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let cert = |f: &str| certs.join(f).display().to_string();
        let tls = [
            "--port".to_string(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            cert(&format!("{name}.pem")),
            "--tls-key-file".into(),
            cert(&format!("{name}.key")),
            "--tls-ca-cert-file".into(),
            cert("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let process = Redis::spawn_with(&dir, &tls, &|| {
            std::net::TcpStream::connect(addr).ok().map(drop)
        })?;
        Ok(Redis {
            url: format!("rediss://:{password}@127.0.0.1:{port}/"),
            process: Some(process),
            dir,
        })
    }

    fn spawn(dir: &TestDir) -> Result<Process> {
        let socket = dir.0.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let args = [
            "--port".to_string(),
            "0".into(),
            "--unixsocket".into(),
            socket.display().to_string(),
        ];
        Redis::spawn_with(dir, &args, &|| {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(drop)
        })
    }

    fn spawn_with(
        dir: &TestDir,
        listen: &[String],
        ready: &dyn Fn() -> Option<()>,
    ) -> Result<Process> {
        Redis::spawn_with_appendonly(dir, listen, ready, "yes")
    }

    fn spawn_with_appendonly(
        dir: &TestDir,
        listen: &[String],
        ready: &dyn Fn() -> Option<()>,
        appendonly: &str,
    ) -> Result<Process> {
        let mut child = Command::new("redis-server")
            .args(listen)
            .arg("--dir")
            .arg(&dir.0)
            .args([
                "--appendonly",
                appendonly,
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server ({e}): scripts/test.sh installs it"))?;
        wait_for("redis-server", &mut child, ready)?;
        Ok(Process(child))
    }
}
