//! The HTTP client the CLI's subcommands use to talk to a running host:
//! plain or HTTPS (the system's web roots, or the CA of `--ca-cert`), with
//! the API token as `Authorization: Bearer`. Every error says what to
//! check: the address, the token, the certificate.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use clap::Args;
use std::path::PathBuf;

/// Where the client subcommands find the host by default: the run's
/// `LISTEN_DEFAULT` over HTTP (a test in `cli` keeps the two in step).
pub const URL_DEFAULT: &str = "http://127.0.0.1:7420";

/// Where a client subcommand finds the host, and how it proves who it is.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The host's address: http://HOST:PORT, or https://HOST:PORT when it
    /// serves TLS.
    #[arg(long, global = true, env = "PLUGBUS_URL", default_value = URL_DEFAULT)]
    pub url: String,
    /// The API token, when the host was started with --auth (sent as
    /// `Authorization: Bearer`).
    #[arg(long, global = true, env = "PLUGBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file with the certificate authority that signed the host's TLS
    /// certificate (default: the system's web roots).
    #[arg(long, global = true, value_name = "FILE", env = "PLUGBUS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// A client of one host.
pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `args`; fails on a CA file that cannot be used.
    pub fn new(args: &ClientArgs) -> Result<Client, String> {
        let mut agent = ureq::AgentBuilder::new();
        if let Some(ca) = &args.ca_cert {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("--ca-cert {}: cannot read: {e}", ca.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    format!("--ca-cert {}: not a PEM certificate: {e}", ca.display())
                })?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--ca-cert {}: holds no certificate; give the PEM file of the authority that signed the host's certificate",
                    ca.display()
                ));
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            agent = agent.tls_config(Arc::new(config));
        }
        Ok(Client {
            url: args.url.trim_end_matches('/').to_string(),
            token: args.token.clone(),
            agent: agent.build(),
        })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.set("authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// GET `path`, as JSON.
    pub fn get_json(&self, path: &str) -> Result<Value, String> {
        let response = self
            .request("GET", path)
            .call()
            .map_err(|e| self.error(e))?;
        self.json(path, response)
    }

    /// POST `body` as JSON to `path`; the answer as JSON.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .request("POST", path)
            .send_json(body)
            .map_err(|e| self.error(e))?;
        self.json(path, response)
    }

    /// POST to `path` with no body; the answer's body as it comes (a
    /// backup).
    pub fn post_reader(&self, path: &str) -> Result<Box<dyn std::io::Read + Send + Sync>, String> {
        let response = self
            .request("POST", path)
            .call()
            .map_err(|e| self.error(e))?;
        Ok(response.into_reader())
    }

    /// PUT `body` of `content_type` to `path`; the answer as JSON.
    pub fn put_text(&self, path: &str, content_type: &str, body: &str) -> Result<Value, String> {
        self.send_text("PUT", path, content_type, body)
    }

    /// POST `body` of `content_type` to `path`; the answer as JSON.
    pub fn post_text(&self, path: &str, content_type: &str, body: &str) -> Result<Value, String> {
        self.send_text("POST", path, content_type, body)
    }

    fn send_text(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Value, String> {
        let response = self
            .request(method, path)
            .set("content-type", content_type)
            .send_string(body)
            .map_err(|e| self.error(e))?;
        self.json(path, response)
    }

    fn json(&self, path: &str, response: ureq::Response) -> Result<Value, String> {
        response
            .into_json()
            .map_err(|e| format!("unexpected answer from {}{path}: {e}", self.url))
    }

    fn error(&self, e: ureq::Error) -> String {
        match e {
            ureq::Error::Status(code, response) => {
                let body = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(body);
                let hint = match (code, &self.token) {
                    (401, None) => " (pass --token or set PLUGBUS_TOKEN)",
                    _ => "",
                };
                format!("the host answered {code}: {message}{hint}")
            }
            ureq::Error::Transport(t) => format!(
                "cannot reach plugbus at {}: {t}; is `plugbus run` running there? (set --url or PLUGBUS_URL; for a host serving TLS use https:// and, for a private authority, --ca-cert)",
                self.url
            ),
        }
    }
}
