//! The static release binaries that `scripts/release.sh` builds: each runs
//! the reference order flow with plugins its own engine compiled (one for
//! another architecture under qemu-user), and serves TLS with a token. The
//! binaries are named in `PLUGBUS_RELEASE_BINARIES` (paths separated by
//! `:`): the suite (`scripts/test.sh`) builds the aarch64 one and sets it,
//! `scripts/release.sh` sets both. The systemd unit shipped beside them is
//! verified too.

use std::path::Path;

use super::auth::{bearer, curl, make_ca, make_server_cert, tokens};
use super::order_flow::two_orders_through;
use super::*;

/// ELF `e_machine` values.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

#[test]
fn the_static_release_binaries_run_the_order_flow_and_serve_tls() {
    let binaries = std::env::var("PLUGBUS_RELEASE_BINARIES").unwrap_or_default();
    assert!(
        !binaries.is_empty(),
        "PLUGBUS_RELEASE_BINARIES names the static binaries to test: run scripts/test.sh or scripts/release.sh, which build them and set it"
    );
    for bin in binaries.split(':') {
        let elf = Elf::read(Path::new(bin));
        // A binary for another machine runs under qemu-user.
        let (arch, runner) = match elf.machine {
            EM_X86_64 => ("x86_64", "qemu-x86_64"),
            EM_AARCH64 => ("aarch64", "qemu-aarch64"),
            other => panic!("{bin}: ELF machine {other} is neither x86_64 nor aarch64"),
        };
        assert!(
            !elf.has_interpreter,
            "{bin} asks for a dynamic loader: it is not static"
        );
        let runner = (arch != std::env::consts::ARCH).then_some(runner);
        runs_the_order_flow_and_serves_tls(bin, runner, elf.machine);
    }
}

/// `bin`, a static binary for `machine` (run by `runner` when given), with
/// the reference plugins and TLS.
fn runs_the_order_flow_and_serves_tls(bin: &str, runner: Option<&str>, machine: u16) {
    // The reference plugins, compiled by this binary's engine into a
    // compile cache of the test's own.
    let top = TestDir::new("release");
    let cache = top.0.join("cache").display().to_string();
    let h = TestHost::start_under(runner, bin, &order_flow(), &["--cache-dir", &cache], &[])
        .unwrap_or_else(|e| panic!("{bin} did not start: {e}"));
    two_orders_through(&h);
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    let compiled: Vec<_> = std::fs::read_dir(&cache)
        .expect("the compile cache was written")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert!(
        compiled.len() >= 3,
        "one compiled build per plugin at least: {compiled:?}"
    );
    for file in &compiled {
        assert_eq!(
            Elf::read(file).machine,
            machine,
            "{} holds code for another machine",
            file.display()
        );
    }

    // TLS (rustls with ring) and tokens on this platform: a publish with a
    // token over HTTPS, refused without it.
    let dir = &top.0;
    make_ca(dir);
    make_server_cert(dir, "server");
    let t = tokens(dir);
    let (file, cert, key) = (
        t.file.display().to_string(),
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string(),
    );
    let h = TestHost::start_under(
        runner,
        bin,
        &[],
        &[
            "--memory",
            "--auth",
            &file,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("{bin} did not start with TLS: {e}"));
    let ca = dir.join("ca.pem").display().to_string();
    let url = format!("{}/v1/events/order.placed", h.url);
    let body = order("o-1", "widget", 1, 100).to_string();
    let json = "content-type: application/json";
    let refused = curl("POST", &url, &["--cacert", &ca, "-H", json, "-d", &body]);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let accepted = curl(
        "POST",
        &url,
        &[
            "--cacert",
            &ca,
            "-H",
            json,
            "-H",
            &bearer(&t.shop),
            "-d",
            &body,
        ],
    );
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

/// What the tests read of an ELF file's header.
struct Elf {
    machine: u16,
    /// A `PT_INTERP` program header: the file needs a dynamic loader.
    has_interpreter: bool,
}

impl Elf {
    /// Read `path`'s ELF64 little-endian header and program headers.
    fn read(path: &Path) -> Elf {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() > 64 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2 && bytes[5] == 1,
            "{} is not a 64-bit little-endian ELF file",
            path.display()
        );
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let phoff = u64_at(0x20) as usize;
        let (phentsize, phnum) = (u16_at(0x36) as usize, u16_at(0x38) as usize);
        let has_interpreter = (0..phnum).any(|i| {
            let at = phoff + i * phentsize;
            at + 4 <= bytes.len() && bytes[at..at + 4] == 3u32.to_le_bytes()
        });
        Elf {
            machine: u16_at(0x12),
            has_interpreter,
        }
    }
}

/// The shipped systemd unit passes `systemd-analyze verify` with nothing to
/// say (an unknown or misspelt key is a warning there), run with this
/// build's binary in its `ExecStart`.
#[test]
fn the_shipped_systemd_unit_verifies_clean() {
    let top = TestDir::new("unit");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/plugbus.service"
    ))
    .expect("packaging/plugbus.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/plugbus run"));
    let file = top.0.join("plugbus.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/plugbus", BIN)).expect("write");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze runs (scripts/test.sh installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
