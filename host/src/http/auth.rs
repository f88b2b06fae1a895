//! Who may do what: bearer tokens with scopes, from a token file.
//!
//! The token file (`--auth FILE`) is TOML, one `[[token]]` per client,
//! holding the SHA-256 of each token, never a token:
//!
//! ```toml
//! [[token]]
//! name = "shop-frontend"
//! sha256 = "3c9a…"                    # plugbus token new prints the line
//! scopes = ["publish:order.*", "read"]
//! ```
//!
//! Scopes: `publish` (any topic) or `publish:PATTERN` (topics matching the
//! pattern; several may be given), `read` (plugins, the log, state, dead
//! letters, metrics) and `admin` (re-drive, purge, replay; it includes
//! `read`). A request's token is hashed and compared with every entry in
//! constant time. The file is read again when it changes (looked at, at
//! most once a second, when a request comes); a file that does not parse
//! is reported and the previous tokens kept.
//!
//! It owns which scope each route needs ([`needed`]) and the 401 and 403
//! answers; it knows nothing of events beyond their topics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::reload::Watched;
use crate::metrics::Metrics;
use plugbus_contract::topic::Pattern;

/// The prefix of every token `plugbus token new` makes.
pub const TOKEN_PREFIX: &str = "pbt_";

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: anyone may call it.
    Open,
    /// The `publish` scope (the topics are checked by the handler).
    Publish,
    /// The `read` scope (or `admin`).
    Read,
    /// The `admin` scope.
    Admin,
}

impl Need {
    fn scope(self) -> &'static str {
        match self {
            Need::Open => "",
            Need::Publish => "publish",
            Need::Read => "read",
            Need::Admin => "admin",
        }
    }
}

/// The scope the route `path` (as routed: `/v1/dead/{plugin}/purge`) needs
/// for `method`. `/healthz` and `/readyz` are open, and `/metrics` when `metrics_open`.
pub fn needed(method: &Method, path: &str, metrics_open: bool) -> Need {
    match (method, path) {
        (_, "/healthz" | "/readyz") => Need::Open,
        // The console's files hold no data; the API calls it makes need a
        // token like any other client's.
        // Nor does the API's own description.
        (
            &Method::GET | &Method::HEAD,
            "/console" | "/console/" | "/console/{*path}" | "/v1/openapi.json",
        ) => Need::Open,
        (_, "/metrics") if metrics_open => Need::Open,
        (&Method::POST, "/v1/events" | "/v1/events/{type}") => Need::Publish,
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        _ => Need::Admin,
    }
}

/// Which topics a token may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// None.
    No,
    /// Any.
    Any,
    /// Those matching one of these patterns.
    Topics(Vec<Pattern>),
}

/// A client the token file names, and what it may do.
#[derive(Debug)]
pub struct Principal {
    /// Its name in the token file.
    pub name: String,
    sha256: [u8; 32],
    /// Its `publish` scope.
    pub publish: Publish,
    /// Its `read` scope (`admin` includes it).
    pub read: bool,
    /// Its `admin` scope.
    pub admin: bool,
}

impl Principal {
    fn has(&self, need: Need) -> bool {
        match need {
            Need::Open => true,
            Need::Publish => self.publish != Publish::No,
            Need::Read => self.read || self.admin,
            Need::Admin => self.admin,
        }
    }

    /// May it publish to `topic`? The refusal names the topic, the token
    /// and what it may publish.
    pub fn may_publish(&self, topic: &str) -> Result<(), String> {
        match &self.publish {
            Publish::Any => Ok(()),
            Publish::Topics(patterns) if patterns.iter().any(|p| p.matches(topic)) => Ok(()),
            Publish::Topics(patterns) => Err(format!(
                "token `{}` may not publish to `{topic}`: its scopes allow {}; publishing nothing of the request. Give it `publish:{topic}` (or a pattern matching it) in the token file",
                self.name,
                patterns
                    .iter()
                    .map(|p| format!("`publish:{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Publish::No => Err(format!(
                "token `{}` lacks the `publish` scope; give it `publish` or `publish:PATTERN` in the token file",
                self.name
            )),
        }
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading it failed.
    #[error("token file {file}: cannot read: {source}; --auth takes a TOML file of [[token]] entries (plugbus token new prints one)")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not what it should be.
    #[error("token file {file}: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong, where.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    token: Vec<EntryToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryToml {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

/// Parse a token file's text. Errors name the entry and the fix.
pub fn parse(text: &str) -> Result<Vec<Principal>, String> {
    let file: FileToml = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Principal> = Vec::new();
    for entry in file.token {
        let name = entry.name;
        let bad = |what: String| format!("token `{name}`: {what}");
        let sha256 = parse_hash(&entry.sha256).ok_or_else(|| {
            bad(format!(
                "sha256 `{}` is not 64 hex digits (the SHA-256 of the token; plugbus token new prints it)",
                entry.sha256
            ))
        })?;
        if out.iter().any(|p| p.name == name) {
            return Err(bad("named twice; give each token its own name".into()));
        }
        let mut principal = Principal {
            name: name.clone(),
            sha256,
            publish: Publish::No,
            read: false,
            admin: false,
        };
        for scope in &entry.scopes {
            match scope.split_once(':') {
                None if scope == "publish" => principal.publish = Publish::Any,
                None if scope == "read" => principal.read = true,
                None if scope == "admin" => principal.admin = true,
                Some(("publish", pattern)) => {
                    let pattern = Pattern::parse(pattern)
                        .map_err(|e| bad(format!("scope `{scope}`: {e}")))?;
                    match &mut principal.publish {
                        Publish::Any => {}
                        Publish::Topics(ps) => ps.push(pattern),
                        p @ Publish::No => *p = Publish::Topics(vec![pattern]),
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown scope `{scope}`; the scopes are `publish`, `publish:PATTERN` (e.g. `publish:order.*`), `read` and `admin`"
                    )))
                }
            }
        }
        out.push(principal);
    }
    Ok(out)
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `token`, as the token file holds it.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: [`TOKEN_PREFIX`] and 32 random bytes in hex.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The tokens of a token file, read again when it changes.
pub struct Tokens {
    file: PathBuf,
    current: ArcSwap<Vec<Arc<Principal>>>,
    watched: Watched,
    /// `/metrics` needs no token.
    pub metrics_open: bool,
}

impl Tokens {
    /// Read `file`; an error names it and what is wrong.
    pub fn load(file: &Path, metrics_open: bool) -> Result<Tokens, AuthError> {
        let watched = Watched::new(&[file]);
        let principals = read(file)?;
        if principals.is_empty() {
            tracing::warn!(file = %file.display(), "the token file has no tokens: every request but /healthz is refused");
        }
        Ok(Tokens {
            file: file.to_path_buf(),
            current: ArcSwap::from_pointee(principals),
            watched,
            metrics_open,
        })
    }

    fn refresh(&self) {
        self.watched.reload_if_changed(|| match read(&self.file) {
            Ok(principals) => {
                tracing::info!(file = %self.file.display(), tokens = principals.len(), "token file reloaded");
                self.current.store(Arc::new(principals));
                true
            }
            Err(e) => {
                tracing::warn!("{e}; the previous tokens stay in force");
                false
            }
        });
    }

    /// The client whose token `presented` is, if any.
    fn find(&self, presented: &str) -> Option<Arc<Principal>> {
        self.refresh();
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let current = self.current.load();
        let mut found = None;
        // Every entry is compared, in constant time, found or not.
        for p in current.iter() {
            if bool::from(p.sha256.ct_eq(&hash)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

fn read(file: &Path) -> Result<Vec<Arc<Principal>>, AuthError> {
    let text = std::fs::read_to_string(file).map_err(|source| AuthError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&text)
        .map(|ps| ps.into_iter().map(Arc::new).collect())
        .map_err(|reason| AuthError::Invalid {
            file: file.to_path_buf(),
            reason,
        })
}

/// What the middleware needs.
#[derive(Clone)]
pub struct AuthState {
    /// The tokens (`None`: no auth, every request allowed).
    pub tokens: Option<Arc<Tokens>>,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// The middleware: let the request through if its token has the scope its
/// route needs, with the client ([`Principal`]) in its extensions; else
/// 401 or 403 with the reason and the fix.
pub async fn authorize(
    State(auth): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &auth.tokens else {
        return next.run(request).await;
    };
    let path = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let need = needed(request.method(), &path, tokens.metrics_open);
    if need == Need::Open {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        auth.metrics.http_refused("unauthorized").inc();
        return unauthorized(
            "this API needs a token: send `Authorization: Bearer TOKEN` (the plugbus CLI: --token or PLUGBUS_TOKEN); an operator makes one with `plugbus token new NAME --scope ...`",
            None,
        );
    };
    // At most one stat a second, and a read of a small file when it changed.
    let principal = tokens.find(presented);
    let Some(principal) = principal else {
        auth.metrics.http_refused("unauthorized").inc();
        return unauthorized(
            "the token is not known: it is not in the server's token file (--auth), or was removed from it; ask an operator for a token",
            Some("invalid_token"),
        );
    };
    if !principal.has(need) {
        auth.metrics.http_refused("forbidden").inc();
        let scope = need.scope();
        let message = format!(
            "token `{}` lacks the `{scope}` scope, which {} {path} needs; give it `{scope}` in the token file",
            principal.name,
            request.method()
        );
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": message, "scope_needed": scope })),
        )
            .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(message: &str, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"plugbus\", error=\"{e}\""),
        None => "Bearer realm=\"plugbus\"".to_string(),
    };
    let mut response =
        (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[token]]
name = "shop"
sha256 = "HASH_SHOP"
scopes = ["publish:order.*", "publish:cart.>", "read"]

[[token]]
name = "ops"
sha256 = "HASH_OPS"
scopes = ["admin"]
"#;

    fn file() -> String {
        FILE.replace("HASH_SHOP", &hash_hex("s3cret"))
            .replace("HASH_OPS", &hash_hex("0ps"))
    }

    #[test]
    fn a_token_file_gives_each_name_its_scopes() {
        let ps = parse(&file()).expect("parses");
        let shop = &ps[0];
        assert!(shop.has(Need::Publish) && shop.has(Need::Read) && !shop.has(Need::Admin));
        assert!(shop.may_publish("order.placed").is_ok());
        assert!(shop.may_publish("cart.a.b").is_ok());
        let e = shop.may_publish("payment.x").expect_err("not its topic");
        assert!(
            e.contains("payment.x") && e.contains("publish:order.*"),
            "{e}"
        );
        let ops = &ps[1];
        assert!(ops.has(Need::Admin) && ops.has(Need::Read) && !ops.has(Need::Publish));
    }

    #[test]
    fn a_bad_entry_is_named_with_the_fix() {
        let e = parse(&file().replace("\"admin\"", "\"root\"")).expect_err("unknown scope");
        assert!(e.contains("token `ops`") && e.contains("`read`"), "{e}");
        let e = parse("[[token]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = []\n")
            .expect_err("short hash");
        assert!(e.contains("64 hex digits"), "{e}");
        let e = parse(&format!("{}\n{}", file(), file())).expect_err("twice");
        assert!(e.contains("token `shop`: named twice"), "{e}");
        let e = parse("[[token]]\nname = \"x\"\ntoken = \"plain\"\n").expect_err("plain token");
        assert!(e.contains("token"), "{e}");
    }

    #[test]
    fn routes_need_the_scope_their_effect_needs() {
        assert_eq!(needed(&Method::GET, "/healthz", false), Need::Open);
        assert_eq!(needed(&Method::GET, "/metrics", true), Need::Open);
        assert_eq!(needed(&Method::GET, "/metrics", false), Need::Read);
        assert_eq!(needed(&Method::GET, "/console/{*path}", false), Need::Open);
        assert_eq!(needed(&Method::GET, "/v1/openapi.json", false), Need::Open);
        assert_eq!(needed(&Method::POST, "/console/", false), Need::Admin);
        assert_eq!(needed(&Method::GET, "/v1/stream", false), Need::Read);
        assert_eq!(
            needed(&Method::POST, "/v1/events/{type}", false),
            Need::Publish
        );
        assert_eq!(
            needed(&Method::GET, "/v1/plugins/{plugin}/kv", false),
            Need::Read
        );
        assert_eq!(
            needed(&Method::POST, "/v1/dead/{plugin}/purge", false),
            Need::Admin
        );
        assert_eq!(
            needed(&Method::POST, "/v1/plugins/{plugin}/replay", false),
            Need::Admin
        );
    }

    #[test]
    fn tokens_are_found_by_hash_and_new_ones_are_random() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(parse_hash(&hash_hex(&a)).map(|h| h.len()), Some(32));
    }
}
