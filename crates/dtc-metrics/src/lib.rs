//! # dtc-metrics: Prometheus metrics for dtc processes
//!
//! Each process (a coordinator, a participant) keeps its own metric structs
//! registered in a [`Registry`], and serves them with [`serve`]:
//!
//! ```text
//!  code paths ──inc/observe──► Counter / Gauge / Histogram (atomics, no I/O)
//!                                     │ registered in
//!                                     ▼
//!  GET /metrics ──► refresh() (gauges read at scrape time) ──► text encoding
//! ```
//!
//! Values that are cheap to read but costly to push on every change (the
//! Raft term and indexes, the pending count) are set by the `refresh`
//! callback just before each scrape rather than kept up to date.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// Buckets for durations in seconds: 0.5 ms to about 16 s, doubling.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// Called before every scrape to set the gauges read at scrape time.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Binds `addr` for [`serve`]; the error names the address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })
}

/// Serves `GET /metrics` (Prometheus/OpenMetrics text) on `listener` until
/// `shutdown` resolves; every other path is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            let refresh = refresh.clone();
            async move { scrape(&registry, &refresh) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs [`serve`] in a task of the current runtime, logging where it listens
/// ("metrics listening", with the address: tests and operators read it
/// there when the port was 0) and why it stopped, if it fails. Returns the
/// address.
pub fn spawn(
    listener: tokio::net::TcpListener,
    registry: Registry,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Option<SocketAddr> {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(%addr, "metrics listening");
    }
    tokio::spawn(async move {
        if let Err(e) = serve(listener, Arc::new(registry), refresh, shutdown).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    addr
}

fn scrape(registry: &Registry, refresh: &Refresh) -> axum::response::Response {
    refresh();
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_are_served_with_gauges_refreshed_at_each_scrape() {
        let mut registry = Registry::default();
        let hits = Counter::<u64>::default();
        let level = Gauge::<i64>::default();
        registry.register("demo_hits", "Hits", hits.clone());
        registry.register("demo_level", "Level", level.clone());
        let next = Arc::new(std::sync::atomic::AtomicI64::new(7));
        let refresh: Refresh = {
            let level = level.clone();
            let next = next.clone();
            Arc::new(move || {
                level.set(next.load(std::sync::atomic::Ordering::SeqCst));
            })
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), refresh, async {
            let _ = stopped.await;
        }));

        hits.inc();
        hits.inc();
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("openmetrics-text"), "{body}");
        assert!(body.contains("demo_hits_total 2"), "{body}");
        assert!(body.contains("demo_level 7"), "{body}");
        next.store(9, std::sync::atomic::Ordering::SeqCst);
        assert!(get(addr, "/metrics").await.contains("demo_level 9"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_busy_address_is_a_clear_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let err = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot listen for metrics on 127.0.0.1:"),
            "{err}"
        );
    }
}
