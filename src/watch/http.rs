//! The watcher's HTTP endpoints (axum): `/healthz`, `/readyz`, `/metrics`, `/api/v1/status`, the
//! status page `/`, and the Git webhook receiver `POST /hooks/git`. Read-only but for the webhook,
//! which only wakes the loop (a burst of deliveries is one fetch). Nothing here acts on hosts.

use super::{page, webhook, Shared};
use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest webhook body accepted (GitHub's pushes are well under it).
pub const MAX_BODY: usize = 1024 * 1024;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status_json))
        .route("/hooks/git", post(hook))
        .with_state(shared);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.not_ready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn status_json(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&shared.status()).unwrap_or_default(),
    )
        .into_response()
}

async fn status_page(State(shared): State<Arc<Shared>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page::render(&shared.status(), crate::state::now()),
    )
        .into_response()
}

async fn hook(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let count = |result: &str| shared.count_webhook(result);
    let Some(secret) = shared.webhook_secret.as_deref() else {
        count("disabled");
        return (
            StatusCode::FORBIDDEN,
            "webhooks are off: the watcher was started without --webhook-secret-file\n",
        )
            .into_response();
    };
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            count("too_large");
            tracing::warn!(%peer, "webhook refused: body over 1 MiB");
            return (StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB\n").into_response();
        }
    };
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match webhook::verify(value, &body, secret) {
        Ok(sender) => {
            count("accepted");
            tracing::info!(%peer, ?sender, "webhook accepted: fetching now");
            shared.webhook_received();
            (StatusCode::ACCEPTED, "accepted: fetching now\n").into_response()
        }
        Err(refused) => {
            count(match refused {
                webhook::Refused::Unsigned => "unsigned",
                webhook::Refused::BadSignature => "bad_signature",
            });
            tracing::warn!(%peer, "webhook refused: {refused}");
            (StatusCode::UNAUTHORIZED, format!("{refused}\n")).into_response()
        }
    }
}
