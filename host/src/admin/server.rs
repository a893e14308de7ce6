//! The admin HTTP server: four read-only `GET` endpoints (`/metrics`,
//! `/healthz`, `/readyz`, `/status`; see `docs/admin.md`) and the web view
//! (`/`, with its script and style sheet, embedded in the binary: the page
//! polls `/status` and renders it) on one address.
//!
//! The host is thread-based, so the server runs on a thread of its own with
//! a single-threaded tokio runtime; handlers only read the shared
//! [`Admin`] state and never block on units. The listening socket is bound
//! before [`AdminServer::start`] returns, so a bad or busy address is an
//! error at startup, not a log line later; the address it got is printed
//! on stderr whatever the log filter (`:0` picks a free port, and this line
//! is how to find it). Dropping the server stops it.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::status::StatusReport;
use super::Admin;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for admin HTTP on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the admin HTTP server: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Bind `address` and serve `admin` on it from a new thread.
    pub fn start(address: SocketAddr, admin: Admin) -> Result<AdminServer, StartError> {
        let listener = std::net::TcpListener::bind(address)
            .map_err(|source| StartError::Bind { address, source })?;
        listener.set_nonblocking(true)?;
        // The port actually bound (`:0` picks a free one).
        let bound = listener.local_addr()?;
        let host_id = admin.status().report().host_id;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("admin-http".to_string())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, router(admin))
                        .with_graceful_shutdown(async {
                            // A dropped sender stops the server too.
                            let _ = stopped.await;
                        })
                        .await
                });
                if let Err(error) = served {
                    tracing::error!("admin HTTP server on {bound} failed: {error}");
                }
            })?;
        // Not a log line: printed at every `--log` level. In one write: two
        // hosts started from one shell share its stderr, and a line written
        // in pieces (as `eprintln!` does) interleaves with the other's.
        let line = format!("host {host_id}: admin HTTP listening on http://{bound}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        Ok(AdminServer {
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The web view's files (`web/`), served as they are: no build step.
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// The web view's Content-Security-Policy: its own script, style sheet and
/// `/status` only — no inline script or style, nothing from elsewhere, no
/// framing. What the page renders from `/status` goes in as text
/// (`textContent`), never as markup.
pub const WEB_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn router(admin: Admin) -> Router {
    // `get` only: any other method is answered 405, nothing changes state.
    Router::new()
        .route("/", get(|| web(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/web/app.js",
            get(|| web(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/web/style.css",
            get(|| web(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(admin)
}

/// One file of the web view, with its type and the security headers.
async fn web(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, WEB_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, super::metrics::content_type())],
        admin.metrics().render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, String) {
    match admin.status().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn status(State(admin): State<Admin>) -> Json<StatusReport> {
    Json(admin.status().report())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// One HTTP/1.0 exchange: the status code, the headers (names in lower
    /// case) and the body.
    fn exchange(
        address: SocketAddr,
        method: &str,
        path: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {address}\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        (status.parse().unwrap(), headers, body.to_string())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_web_view_is_served_with_its_type_and_a_strict_csp_and_is_get_only() {
        let server =
            AdminServer::start("127.0.0.1:0".parse().unwrap(), Admin::new("h", "h:1:2")).unwrap();
        let address = server.address();
        for (path, content_type, contains) in [
            (
                "/",
                "text/html; charset=utf-8",
                "<script src=\"/web/app.js\"",
            ),
            (
                "/web/app.js",
                "text/javascript; charset=utf-8",
                "fetch(\"/status\"",
            ),
            ("/web/style.css", "text/css; charset=utf-8", "body"),
        ] {
            let (status, headers, body) = exchange(address, "GET", path);
            assert_eq!(status, 200, "GET {path}");
            assert_eq!(
                header(&headers, "content-type"),
                Some(content_type),
                "{path}"
            );
            assert_eq!(
                header(&headers, "content-security-policy"),
                Some(WEB_CSP),
                "{path}"
            );
            assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
            assert!(body.contains(contains), "{path}: {body}");
        }
        // Only 'self', and nothing inline.
        assert!(!WEB_CSP.contains("unsafe-inline") && !WEB_CSP.contains("http"));
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        // No markup from data: the script renders text only.
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("insertAdjacentHTML"));
        for (method, path) in [
            ("POST", "/"),
            ("PUT", "/"),
            ("POST", "/web/app.js"),
            ("POST", "/status"),
        ] {
            let (status, _, _) = exchange(address, method, path);
            assert_eq!(status, 405, "{method} {path}");
        }
    }
}
