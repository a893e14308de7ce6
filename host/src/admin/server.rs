//! The admin HTTP server: four read-only `GET` endpoints (`/metrics`,
//! `/healthz`, `/readyz`, `/status`; see `docs/admin.md`) on one address.
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

fn router(admin: Admin) -> Router {
    // `get` only: any other method is answered 405, nothing changes state.
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(admin)
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
