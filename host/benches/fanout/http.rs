//! The HTTP ingress rows: the real binary under wrk (one event per POST
//! and 1000 per POST in batch mode), plain, with a token file (each request
//! carries a bearer token, hashed and compared with the file's entries),
//! over TLS (rustls; wrk keeps its 32 connections open, so this is the cost
//! per request, not per handshake) and with both; each as a ratio of
//! plain, measured in the same run.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader};

use super::{payload, row, which, Row, Server, SUBSCRIBERS};

/// A client that does not check certificates: the bench's own, made for
/// loopback (wrk does not check them either).
fn agent() -> ureq::Agent {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(config))
        .build()
}

/// Start the binary on `dir` with `args`, on a free loopback port; returns
/// it and its base URL (https when `args` has `--tls-cert`).
pub(crate) fn start_host(dir: &Path, args: &[&str]) -> Result<(Server, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .arg("run")
        .arg("--plugins")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn,plugbus::server=info")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let server = Server(child);
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("plugbus ready"))
        .ok_or("host did not start")?;
    thread::spawn(move || for _ in lines {});
    let addr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .ok_or("no listen address")?
        .to_string();
    let scheme = if args.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    Ok((server, format!("{scheme}://{addr}")))
}

/// Wait until the host's plugins have handled everything it accepted, and
/// say so (accepted events are only half the story).
pub(crate) fn delivered(url: &str) -> String {
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = agent()
            .get(&format!("{url}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let published = metric(&text, "plugbus_events_published_total");
        let handled = metric(&text, "plugbus_events_handled_total");
        if handled >= published * SUBSCRIBERS as f64 || Instant::now() > deadline {
            return format!(
                "every plugin handled {:.0} of {published:.0} accepted",
                handled / SUBSCRIBERS as f64
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Run wrk with a POST body (and a bearer `token`); returns (requests/s,
/// non-2xx responses).
fn wrk(
    url: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
    dir: &Path,
) -> Result<(f64, u64), String> {
    let bin = which("wrk").ok_or("wrk not installed")?;
    let script = dir.join(format!("post-{}-{}.lua", body.len(), token.is_some()));
    let mut f = std::fs::File::create(&script).map_err(|e| e.to_string())?;
    writeln!(
        f,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"{content_type}\"\nwrk.body = [==[{body}]==]"
    )
    .map_err(|e| e.to_string())?;
    if let Some(token) = token {
        writeln!(f, "wrk.headers[\"Authorization\"] = \"Bearer {token}\"")
            .map_err(|e| e.to_string())?;
    }
    // A short run first warms the host (allocator pages, buffers, guest
    // memory); then three measured runs, of which the median counts, since
    // a shared two-core machine is noisy.
    let run = |duration: &str| -> Result<(f64, u64), String> {
        let out = Command::new(&bin)
            .args(["-t", "1", "-c", "32", "-d", duration, "-s"])
            .arg(&script)
            .arg(url)
            .output()
            .map_err(|e| e.to_string())?;
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    };
    run("2s")?;
    let mut runs = [run("4s")?, run("4s")?, run("4s")?];
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let non2xx = runs.iter().map(|r| r.1).sum();
    Ok((runs[1].0, non2xx))
}

/// (requests/s, non-2xx responses) from wrk's report.
fn parse_wrk(text: &str) -> Result<(f64, u64), String> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("unexpected wrk output: {text}"))?;
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((rps, non2xx))
}

/// A self-signed certificate and key for 127.0.0.1 in `dir` (openssl).
fn certificate(dir: &Path) -> Result<(String, String), String> {
    let (cert, key) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=bench", "-addext"])
        .arg("subjectAltName=IP:127.0.0.1")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err("openssl could not make a certificate".into());
    }
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// A token with the publish scope, and a token file in `dir` holding it.
fn token(dir: &Path) -> Result<(String, String), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_plugbus"))
        .args(["token", "new", "bench", "--scope", "publish"])
        .output()
        .map_err(|e| e.to_string())?;
    let token = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("pbt_"))
        .ok_or("plugbus token new printed no token")?
        .to_string();
    let file = dir.join("bench-tokens.toml");
    std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
    Ok((token, file.display().to_string()))
}

/// The HTTP rows: plain, token, TLS, TLS and token.
pub(crate) fn rows(dir: &Path, rows: &mut Vec<Row>) {
    let base = [
        "--memory",
        "--queue-events-max",
        "65536",
        "--publish-timeout-ms",
        "10000",
        "--metrics-open",
    ];
    let (token, tokens) = match token(dir) {
        Ok(t) => t,
        Err(e) => {
            rows.push(row("HTTP ingress", None, format!("skipped: {e}")));
            return;
        }
    };
    let tls = certificate(dir);
    let mut plain: Option<(f64, f64)> = None;
    for (label, auth, with_tls) in [
        ("", false, false),
        (", with a token", true, false),
        (", over TLS", false, true),
        (", over TLS with a token", true, true),
    ] {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        if auth {
            args.extend(["--auth".to_string(), tokens.clone()]);
        }
        if with_tls {
            match &tls {
                Ok((cert, key)) => args.extend([
                    "--tls-cert".to_string(),
                    cert.clone(),
                    "--tls-key".to_string(),
                    key.clone(),
                ]),
                Err(e) => {
                    rows.push(row(
                        &format!("HTTP ingress{label}"),
                        None,
                        format!("skipped: {e}"),
                    ));
                    continue;
                }
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let measured = variant(dir, &args, auth.then_some(token.as_str()));
        match measured {
            Ok((single, batch, note)) => {
                let ratio = |now: f64, of: Option<f64>| match of {
                    Some(p) if !label.is_empty() => format!("; {:.0} % of plain", now / p * 100.0),
                    _ => String::new(),
                };
                rows.push(row(
                    &format!("HTTP ingress{label}, one event per POST (wrk, 32 conns)"),
                    Some(single),
                    ratio(single, plain.map(|p| p.0))
                        .trim_start_matches("; ")
                        .to_string(),
                ));
                rows.push(row(
                    &format!("HTTP ingress{label}, batch mode ({BATCH} per POST)"),
                    Some(batch),
                    format!("{note}{}", ratio(batch, plain.map(|p| p.1))),
                ));
                if label.is_empty() {
                    plain = Some((single, batch));
                }
            }
            Err(e) => rows.push(row(
                &format!("HTTP ingress{label}"),
                None,
                format!("skipped: {e}"),
            )),
        }
    }
}

/// Events per POST in batch mode.
const BATCH: usize = 1000;

/// One host with `args`: (single events/s, batch events/s, a note).
fn variant(dir: &Path, args: &[&str], token: Option<&str>) -> Result<(f64, f64, String), String> {
    let (server, url) = start_host(dir, args)?;
    let single = String::from_utf8_lossy(&payload(0)).into_owned();
    let (single_rps, bad_single) = wrk(
        &format!("{url}/v1/events/order.placed"),
        "application/json",
        &single,
        token,
        dir,
    )?;
    let events: Vec<String> = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"specversion":"1.0","id":"b-{i}","source":"/bench","type":"order.placed","data":{}}}"#,
                String::from_utf8_lossy(&payload(i))
            )
        })
        .collect();
    let body = format!("[{}]", events.join(","));
    let (batch_rps, bad_batch) = wrk(
        &format!("{url}/v1/events"),
        "application/cloudevents-batch+json",
        &body,
        token,
        dir,
    )?;
    let note = format!(
        "{batch_rps:.0} requests/s, {} non-2xx; {}",
        bad_single + bad_batch,
        delivered(&url)
    );
    drop(server);
    Ok((single_rps, batch_rps * BATCH as f64, note))
}
