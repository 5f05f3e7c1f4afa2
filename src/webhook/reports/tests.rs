use super::*;
use axum::body::Body;
use axum::http::Request;
use futures::future::BoxFuture;
use tower::ServiceExt;

/// Accepts the token "good-a" for pod shop/web-a (uid ua), "api-down" fails like an unreachable
/// API server, and rejects everything else.
struct FakeReviewer;

impl Reviewer for FakeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedPod, ReviewError>> {
        Box::pin(async move {
            match token {
                "good-a" => Ok(ReviewedPod {
                    namespace: "shop".into(),
                    service_account: "default".into(),
                    pod_name: "web-a".into(),
                    pod_uid: "ua".into(),
                }),
                "api-down" => Err(ReviewError::Api(kube::Error::Service("connection refused".into()))),
                _ => Err(ReviewError::Rejected("invalid bearer token".into())),
            }
        })
    }
}

fn state() -> ReportsState {
    ReportsState {
        reviewer: Arc::new(FakeReviewer),
        store: ReportStore::default(),
        metrics: ReportMetrics::default(),
        forward: None,
        limits: Arc::default(),
    }
}

fn body(namespace: &str, pod: &str, uid: &str) -> String {
    format!(
        r#"{{"pod":{{"podName":"{pod}","namespace":"{namespace}","podUid":"{uid}"}},"configGeneration":2,
        "services":{{"frontend":4}},"spans":{{"received":4}},"lastSpanAgeSeconds":3}}"#
    )
}

async fn post(state: &ReportsState, token: Option<&str>, body: impl Into<Body>) -> (StatusCode, String) {
    let mut request = Request::post(REPORT_PATH).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router(state.clone()).oneshot(request.body(body.into()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_pod_reports_for_itself() {
    let s = state();
    let (status, _) = post(&s, Some("good-a"), body("shop", "web-a", "ua")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let stored = s.store.get("ua").expect("stored under the token's pod uid");
    assert_eq!((stored.config_generation, stored.services.clone()), (2, vec!["frontend".to_string()]));
    assert!(stored.last_span_at.is_some());
}

#[tokio::test]
async fn a_pod_cannot_report_for_another() {
    let s = state();
    for other in [body("shop", "web-b", "ua"), body("shop", "web-a", "ub"), body("bank", "web-a", "ua")] {
        let (status, message) = post(&s, Some("good-a"), other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
        assert!(message.contains("issued to pod shop/web-a"), "{message}");
    }
    assert!(s.store.is_empty(), "nothing recorded");
}

#[tokio::test]
async fn bad_tokens_bodies_and_an_unreachable_api_server_get_clear_answers() {
    let s = state();
    let good = body("shop", "web-a", "ua");
    let cases: Vec<(Option<&str>, String, StatusCode, &str)> = vec![
        (None, good.clone(), StatusCode::UNAUTHORIZED, "missing bearer token"),
        (Some("forged"), good.clone(), StatusCode::UNAUTHORIZED, "invalid bearer token"),
        (Some("good-a"), "{not json".into(), StatusCode::BAD_REQUEST, "malformed report"),
        (Some("good-a"), r#"{"pod":{}}"#.into(), StatusCode::BAD_REQUEST, "missing field `spans`"),
        (Some("api-down"), good.clone(), StatusCode::SERVICE_UNAVAILABLE, "TokenReview failed"),
    ];
    for (token, body, want, message) in cases {
        let (status, text) = post(&s, token, body).await;
        assert_eq!(status, want, "{text}");
        assert!(text.contains(message), "{text:?} should contain {message:?}");
    }
    let (status, _) = post(&s, Some("good-a"), vec![b' '; MAX_REPORT_BYTES + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(s.store.is_empty());
}

#[tokio::test]
async fn an_agent_pushing_too_often_gets_429_with_retry_after() {
    let s = state();
    let good = body("shop", "web-a", "ua");
    for _ in 0..6 {
        assert_eq!(post(&s, Some("good-a"), good.clone()).await.0, StatusCode::NO_CONTENT);
    }
    let request = Request::post(REPORT_PATH)
        .header(header::AUTHORIZATION, "Bearer good-a")
        .body(Body::from(good.clone()))
        .unwrap();
    let response = router(s.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "5", "one push every 5 s refills");
    // Bogus tokens are limited the same way before they are reviewed.
    for _ in 0..6 {
        assert_eq!(post(&s, Some("forged"), good.clone()).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(post(&s, Some("forged"), good).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_it_is_read() {
    let s = state();
    // A body that never ends: answered from its Content-Length alone.
    let endless = futures::stream::pending::<Result<Bytes, std::io::Error>>();
    let request = Request::post(REPORT_PATH)
        .header(header::AUTHORIZATION, "Bearer good-a")
        .header(header::CONTENT_LENGTH, (8 << 20).to_string())
        .body(Body::from_stream(endless))
        .unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(2), router(s).oneshot(request))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_the_limit() {
    let s = state();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // 1 KiB chunks without a Content-Length, forever: refused once past the limit, not buffered.
    let chunks = futures::stream::repeat_with(move || {
        counter.fetch_add(1024, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024]))
    });
    let request = Request::post(REPORT_PATH)
        .header(header::AUTHORIZATION, "Bearer good-a")
        .body(Body::from_stream(chunks))
        .unwrap();
    let response = router(s).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let read = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(read <= MAX_REPORT_BYTES + 1024, "{read} bytes read for a {MAX_REPORT_BYTES} limit");
}
