//! The `/metrics` answer both binaries serve: a Prometheus registry in the OpenMetrics text format.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

/// The media type of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` rendered as the answer to a scrape; a 500 that says why if it cannot be encoded.
pub fn response(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {error}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn a_registry_is_served_as_openmetrics_text() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things counted", counter.clone());
        counter.inc();
        let response = response(&registry);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
