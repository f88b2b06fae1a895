//! A real browser for the console's tests: Debian's `chromium` driven
//! headless through `chromedriver` (WebDriver), started on a free loopback
//! port in its own temporary profile and killed by its pid when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, TestDir};

/// How long chromedriver may take to answer at start.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// The browser binaries, when installed (`scripts/test.sh` installs
/// Debian's `chromium` and `chromium-driver`).
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    Some((
        find(&["chromedriver"])?,
        find(&["chromium", "chromium-browser"])?,
    ))
}

/// A running chromedriver.
pub struct Chromedriver {
    child: Child,
    /// Its WebDriver URL.
    pub url: String,
    /// The browser it starts.
    pub chromium: PathBuf,
    /// The browser's profile directory.
    pub profile: TestDir,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromedriver {
    /// Start chromedriver on a free loopback port and wait until it
    /// answers; `Ok(None)` when the browser is not installed.
    pub fn start() -> Result<Option<Chromedriver>> {
        let Some((driver, chromium)) = installed() else {
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + UP_WITHIN;
        loop {
            if ureq::get(&format!("{url}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<serde_json::Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("chromedriver exited at start: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("chromedriver did not answer within {UP_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(Chromedriver {
            child,
            url,
            chromium,
            profile: TestDir::new("chromium"),
        }))
    }

    /// The WebDriver capabilities for headless chromium in this profile.
    pub fn capabilities(&self) -> serde_json::Map<String, serde_json::Value> {
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,900".into(),
            format!("--user-data-dir={}", self.profile.0.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": self.chromium, "args": args }),
        );
        caps
    }
}
