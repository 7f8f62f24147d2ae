//! The HTTP side of long-running processes (`/healthz`, `/readyz`,
//! `/metrics`), served by axum: protocol handling is hyper's job.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serve `router` on `listener` until `stop`; then finish open requests.
pub async fn serve(listener: TcpListener, router: axum::Router, stop: CancellationToken) {
    let shutdown = async move { stop.cancelled().await };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!("http endpoint stopped: {e}");
    }
}

/// A plain-text answer.
pub fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

/// Prometheus text exposition of `handle`'s metrics.
pub fn metrics(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
