//! Who may do what: tokens with scopes from a token file, checked with
//! real clients (curl and the plugbus CLI), over plain HTTP and over TLS
//! with a certificate authority made in the test (openssl), and a
//! certificate replaced on disk served without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// `plugbus token new NAME --scope ...`: the token (printed once, on
/// stderr) and the token file entry (stdout).
fn token_new(name: &str, scopes: &[&str]) -> (String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "new", name]);
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let out = cmd.output().expect("plugbus token new");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let token = stderr
        .lines()
        .find(|l| l.starts_with("pbt_"))
        .unwrap_or_else(|| panic!("no token in {stderr}"))
        .to_string();
    let entry = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !entry.contains(&token),
        "the file entry holds the hash, never the token"
    );
    (token, entry)
}

/// What curl got: the status, the headers and the body.
pub(crate) struct Curl {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

/// curl `method` `url` with `args` (e.g. `-H`, `--cacert`).
pub(crate) fn curl(method: &str, url: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-D", "-", "--max-time", "60"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {method} {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .map_or((text.clone(), String::new()), |(h, b)| {
            (h.to_string(), b.to_string())
        });
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Curl {
        status,
        headers,
        body,
    }
}

pub(crate) fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

/// Tokens for the tests: `admin` (admin), `shop` (publish to `order.*`,
/// read) and `reader` (read); the token file holds the three.
pub(crate) struct Tokens {
    pub(crate) admin: String,
    pub(crate) shop: String,
    pub(crate) reader: String,
    pub(crate) file: PathBuf,
}

pub(crate) fn tokens(dir: &Path) -> Tokens {
    let (admin, a) = token_new("admin", &["admin"]);
    let (shop, s) = token_new("shop", &["publish:order.*", "read"]);
    let (reader, r) = token_new("reader", &["read"]);
    let file = dir.join("tokens.toml");
    std::fs::write(&file, format!("{a}\n{s}\n{r}")).expect("token file");
    Tokens {
        admin,
        shop,
        reader,
        file,
    }
}

/// The checks every listener must pass, plain or TLS (`tls`: curl's
/// extra arguments, e.g. `--cacert`).
fn scopes_are_enforced(h: &TestHost, t: &Tokens, tls: &[&str]) {
    let url = |path: &str| format!("{}{path}", h.url);
    let order = order("o-1", "widget", 1, 100).to_string();
    let with = |extra: &[&str]| -> Vec<String> {
        tls.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |method: &str, path: &str, extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(method, &url(path), &args)
    };
    let json = "content-type: application/json";
    let purge = |token: &str| {
        let header = bearer(token);
        run(
            "POST",
            "/v1/dead/email/purge",
            &["-H", &header, "-H", json, "-d", r#"{"all":true}"#],
        )
    };

    // No token: 401 with a Bearer challenge; nothing published.
    let r = run(
        "POST",
        "/v1/events/order.placed",
        &["-H", json, "-d", &order],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    assert!(r.body.contains("Authorization: Bearer"), "{}", r.body);
    // The console's files hold no data and need no token; the API calls
    // it makes (the stream among them) do.
    let page = run("GET", "/console/", &[]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.headers
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{}",
        page.headers
    );
    assert_eq!(run("GET", "/v1/openapi.json", &[]).status, 200);
    assert_eq!(run("GET", "/v1/stream", &[]).status, 401);
    assert_eq!(run("GET", "/v1/flow", &[]).status, 401);
    // A wrong token: 401, said to be unknown.
    let wrong = bearer("pbt_not-a-token");
    let r = run("GET", "/v1/plugins", &["-H", &wrong]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.contains("invalid_token"), "{}", r.headers);
    // A token without the admin scope on an admin route: 403 naming it.
    let shop = bearer(&t.shop);
    let r = purge(&t.shop);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("`admin` scope") && r.body.contains("token `shop`"),
        "{}",
        r.body
    );
    // A publish token limited to order.* publishing payment.x: 403.
    let r = run(
        "POST",
        "/v1/events/payment.x",
        &["-H", &shop, "-H", json, "-d", "{}"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("payment.x") && r.body.contains("publish:order.*"),
        "{}",
        r.body
    );
    // ... and in a batch with an allowed topic: nothing of it published.
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/t", "type": "order.placed"},
        {"specversion": "1.0", "id": "b-2", "source": "/t", "type": "payment.x"}
    ])
    .to_string();
    let r = run(
        "POST",
        "/v1/events",
        &[
            "-H",
            &shop,
            "-H",
            "content-type: application/cloudevents-batch+json",
            "-d",
            &batch,
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Its own topic: accepted.
    let r = run(
        "POST",
        "/v1/events/order.placed",
        &["-H", &shop, "-H", json, "-d", &order],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // A read token may not publish.
    let reader = bearer(&t.reader);
    let r = run(
        "POST",
        "/v1/events/order.placed",
        &["-H", &reader, "-H", json, "-d", &order],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("`publish` scope"), "{}", r.body);
    // Read routes take read; state too; /healthz is open, /metrics is not.
    assert_eq!(run("GET", "/v1/plugins", &["-H", &reader]).status, 200);
    assert_eq!(
        run("GET", "/v1/plugins/analytics/kv", &["-H", &reader]).status,
        200
    );
    assert_eq!(run("GET", "/healthz", &[]).status, 200);
    assert_eq!(run("GET", "/metrics", &[]).status, 401);
    assert_eq!(run("GET", "/metrics", &["-H", &reader]).status, 200);
    // The admin token may purge.
    let r = purge(&t.admin);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The plugbus CLI against `h` with `extra` flags (`--token`, `--ca-cert`).
fn cli(h: &TestHost, args: &[&str], extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", &h.url])
        .args(extra)
        .env_remove("PLUGBUS_TOKEN")
        .output()
        .expect("plugbus runs")
}

#[test]
fn tokens_with_scopes_guard_every_route_and_the_token_file_is_reloaded() {
    let top = TestDir::new("auth");
    let t = tokens(&top.0);
    let file = t.file.display().to_string();
    let mut h = host(&order_flow(), &["--auth", &file]);
    scopes_are_enforced(&h, &t, &[]);
    h.token = Some(t.admin.clone());
    h.wait_until("the order handled", WAIT, |h| {
        h.count("analytics", "handled") == 1
    })
    .expect("handled");

    // The CLI: without a token it says how to give one; with one it works.
    let out = cli(&h, &["plugins"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let out = cli(&h, &["plugins"], &["--token", &t.reader]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("analytics"));
    let out = Command::new(BIN)
        .args(["publish", "order.placed"])
        .arg(order("o-2", "widget", 1, 100).to_string())
        .args(["--url", &h.url])
        .env("PLUGBUS_TOKEN", &t.shop)
        .output()
        .expect("publish");
    assert!(out.status.success(), "{out:?}");

    // A token added to the file works without a restart; a broken file
    // keeps the tokens in force.
    let (late, entry) = token_new("late", &["read"]);
    let late_header = bearer(&late);
    let before = std::fs::read_to_string(&t.file).expect("read");
    deploy(
        &top.0,
        "tokens.toml",
        format!("{before}\n{entry}").as_bytes(),
    );
    h.wait_until("the new token to be accepted", WAIT, |h| {
        curl(
            "GET",
            &format!("{}/v1/plugins", h.url),
            &["-H", &late_header],
        )
        .status
            == 200
    })
    .expect("reloaded");
    deploy(&top.0, "tokens.toml", b"[[token]]\nname = \"broken\"\n");
    // The file is looked at when requests come.
    h.wait_until("the broken file to be reported", WAIT, |h| {
        let url = format!("{}/v1/plugins", h.url);
        curl("GET", &url, &["-H", &late_header]).status == 200
            && h.log()
                .iter()
                .any(|l| l.contains("the previous tokens stay in force"))
    })
    .expect("a broken file is reported and the tokens kept");
    let refused = h
        .metric("plugbus_http_refused_total{reason=\"unauthorized\"}")
        .unwrap_or(0.0);
    assert!(refused >= 2.0, "{refused}");
}

#[test]
fn listening_off_loopback_without_a_token_file_is_refused_naming_the_fix() {
    let top = TestDir::new("open");
    let out = Command::new(BIN)
        .args(["run", "--memory", "--listen", "0.0.0.0:0", "--plugins"])
        .arg(&top.0)
        .output()
        .expect("plugbus runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth FILE") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

/// `openssl ARGS` (split at spaces) in `dir`, failing the test with its
/// output.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args}: {out:?}");
}

/// A new P-256 key without a passphrase, for `openssl req`.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A certificate authority (`ca.pem`, `ca.key`) made in `dir`.
pub(crate) fn make_ca(dir: &Path) {
    openssl(
        dir,
        &format!(
            "req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 2 -subj /CN=plugbus-test-CA"
        ),
    );
}

/// A server certificate for 127.0.0.1 signed by the CA, as `NAME.pem` and
/// `NAME.key`; returns its serial as openssl prints it.
pub(crate) fn make_server_cert(dir: &Path, name: &str) -> String {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        &format!("req {NEW_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}"),
    );
    openssl(
        dir,
        &format!("x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile {name}.ext"),
    );
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", &format!("{name}.pem")])
        .current_dir(dir)
        .output()
        .expect("serial");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The serial of the certificate `url`'s server presents now.
fn served_serial(url: &str) -> String {
    let addr = url.trim_start_matches("https://");
    let script = format!(
        "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn over_tls_the_same_scopes_hold_and_a_replaced_certificate_is_served_without_a_restart() {
    let top = TestDir::new("tls");
    let dir = &top.0;
    make_ca(dir);
    let first = make_server_cert(dir, "server1");
    let second = make_server_cert(dir, "server2");
    assert_ne!(first, second);
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::copy(dir.join("server1.pem"), &cert).expect("cert");
    std::fs::copy(dir.join("server1.key"), &key).expect("key");
    let t = tokens(dir);
    let (file, cert_arg, key_arg) = (
        t.file.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let h = host(
        &order_flow(),
        &[
            "--auth",
            &file,
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
        ],
    );
    assert!(h.url.starts_with("https://"), "{}", h.url);
    let ca = dir.join("ca.pem").display().to_string();
    scopes_are_enforced(&h, &t, &["--cacert", &ca]);
    // Plain HTTP to the TLS port is no way in.
    let plain = h.url.replacen("https://", "http://", 1);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", &format!("{plain}/healthz")])
        .output()
        .expect("curl");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );
    // The CLI over https with the test's CA.
    let out = cli(&h, &["plugins"], &["--token", &t.reader, "--ca-cert", &ca]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&h, &["plugins"], &["--token", &t.reader]);
    assert!(!out.status.success(), "an unknown authority is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca-cert"), "{err}");

    // Rotation: the files are replaced; new connections get the new one.
    assert_eq!(served_serial(&h.url), first);
    deploy(
        dir,
        "server.key",
        &std::fs::read(dir.join("server2.key")).expect("key"),
    );
    deploy(
        dir,
        "server.pem",
        &std::fs::read(dir.join("server2.pem")).expect("cert"),
    );
    h.wait_until("the new certificate to be served", WAIT, |h| {
        served_serial(&h.url) == second
    })
    .expect("rotated without a restart");
    let r = curl(
        "GET",
        &format!("{}/v1/plugins", h.url),
        &["--cacert", &ca, "-H", &bearer(&t.reader)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    h.wait_log("TLS certificate reloaded", WAIT)
        .expect("logged");
}
