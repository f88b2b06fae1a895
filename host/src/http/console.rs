//! The operator console at `/console/`: static files embedded in the
//! binary (`host/console/`: our HTML, CSS and JavaScript, and the vendored
//! files listed with their sha256 in `host/console/vendor.lock`), served
//! with an ETag (answering `If-None-Match` with 304) and a content security
//! policy that allows only this origin. The page is a client of the public
//! API like any other: it holds no data, so its files need no token (the
//! API calls it makes do).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// Its path under `/console/`.
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!("../../console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("js/errors.js", JS),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/pages.js", JS),
    asset!("js/flow.js", JS),
    asset!("js/trace.js", JS),
    asset!("js/catalog.js", JS),
    asset!("vendor/dagre.min.js", JS),
    asset!("vendor/dagre.LICENSE", "text/plain; charset=utf-8"),
];

/// Scripts, styles, data and connections from this origin only; no inline
/// code, no frames.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Each asset's ETag, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let sum = Sha256::digest(a.bytes);
                let hex: String = sum[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// `/console`: to the page.
pub(super) async fn root() -> Redirect {
    Redirect::permanent("/console/")
}

/// `/console/`: the page.
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `/console/{*path}`: a file of the page.
pub(super) async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        let body = serde_json::json!({
            "error": format!("the console has no file `{path}`; open /console/")
        });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // Checked again each time (a 304 when unchanged): a new binary serves
    // its own console at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored files are the bytes `vendor.lock` names.
    #[test]
    fn vendored_files_match_their_lock() {
        let lock = include_str!("../../console/vendor.lock");
        let mut checked = 0;
        let mut path = None;
        for line in lock.lines() {
            let value = || line.split('"').nth(1).unwrap_or_default().to_string();
            if line.starts_with("path") {
                path = Some(value());
            }
            if line.starts_with("sha256") {
                let path = path.take().expect("a path before its sha256");
                let asset = ASSETS
                    .iter()
                    .find(|a| a.path == path)
                    .unwrap_or_else(|| panic!("{path} of vendor.lock is not embedded"));
                let sum: String = Sha256::digest(asset.bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(sum, value(), "{path} differs from vendor.lock");
                checked += 1;
            }
        }
        assert!(checked >= 1);
    }

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        for part in index.split(['"', '\'']) {
            if part.ends_with(".js") || part.ends_with(".css") {
                assert!(ASSETS.iter().any(|a| a.path == part), "{part} not embedded");
            }
        }
        for a in ASSETS.iter().filter(|a| a.path.starts_with("js/")) {
            let text = std::str::from_utf8(a.bytes).expect("utf-8");
            for import in text.lines().filter(|l| l.starts_with("import ")) {
                let target = import.split('\'').nth(1).expect("a quoted path");
                let path = format!("js/{}", target.trim_start_matches("./"));
                assert!(ASSETS.iter().any(|a| a.path == path), "{path} not embedded");
            }
        }
    }
}
