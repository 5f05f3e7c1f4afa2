//! The report push, beyond what `receiver::reports_are_pushed_with_the_rotating_bearer_token`
//! covers: the agent keeps running while its token is not there yet, and the report tells the
//! operator which services sent spans and how long ago the last one arrived (coverage).

use crate::support::{self, temp_dir, wait_until};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracelight_contract::report::{AgentReport, REPORT_PATH};

type Received = Arc<Mutex<Vec<(String, AgentReport)>>>;

/// A stand-in for the operator's endpoint that records (authorization, report).
async fn operator() -> (String, Received) {
    let received: Received = Arc::default();
    async fn receive(State(r): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        match serde_json::from_slice(&body) {
            Ok(report) => {
                r.lock().unwrap().push((auth, report));
                StatusCode::NO_CONTENT
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    }
    let app = Router::new().route(REPORT_PATH, post(receive)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{REPORT_PATH}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn last(received: &Received) -> Option<(String, AgentReport)> {
    received.lock().unwrap().last().cloned()
}

#[tokio::test]
async fn a_missing_token_delays_reports_and_reports_carry_services_and_the_last_span() {
    let (url, received) = operator().await;
    let dir = temp_dir("report");
    let token = dir.join("token");
    let mut args = support::args(&dir.join("config.yaml"));
    args.report_url = Some(url.parse().unwrap());
    args.report_token_file = Some(token.clone());
    args.report_interval_secs = 1;
    let agent = tracelight_agent::start_with_identity(args, support::identity()).await.expect("agent starts");

    // No token yet: pushes fail, the agent goes on serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(received.lock().unwrap().is_empty());
    let (status, _) = support::get(&format!("http://{}/healthz", agent.admin_addr)).await;
    assert_eq!(status, 200, "a report channel failure never stops the agent");

    support::write_atomic(&token, "tok-1\n");
    assert!(wait_until(Duration::from_secs(10), || last(&received).is_some()).await, "first report");
    let (auth, report) = last(&received).unwrap();
    assert_eq!(auth, "Bearer tok-1", "token trimmed, sent as bearer");
    assert_eq!(report.pod.pod_name.as_deref(), Some("web-7d9f"));
    assert_eq!(report.pod.pod_uid.as_deref(), Some("1234"));
    assert_eq!(report.last_span_age_seconds, None, "no span yet");

    let body = prost::Message::encode_to_vec(&support::request(3, "checkout"));
    let (status, _, _) = support::post(
        &format!("http://{}/v1/traces", agent.http_addr),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let with_span = || {
        last(&received).is_some_and(|(_, r)| {
            r.services.get("checkout") == Some(&3) && r.last_span_age_seconds.is_some_and(|age| age < 10)
        })
    };
    assert!(wait_until(Duration::from_secs(10), with_span).await, "services and the span: {:?}", last(&received));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_70_kb_service_name_still_makes_a_report_the_operator_accepts() {
    use tracelight_contract::report::{MAX_REPORT_BYTES, MAX_SERVICE_NAME_BYTES};
    let (url, received) = operator().await;
    let dir = temp_dir("report-long");
    let token = dir.join("token");
    support::write_atomic(&token, "tok\n");
    let mut args = support::args(&dir.join("config.yaml"));
    args.report_url = Some(url.parse().unwrap());
    args.report_token_file = Some(token);
    args.report_interval_secs = 1;
    let agent = tracelight_agent::start_with_identity(args, support::identity()).await.expect("agent starts");
    let long = "s".repeat(70_000);
    let body = prost::Message::encode_to_vec(&support::request(2, &long));
    let (status, _, _) = support::post(
        &format!("http://{}/v1/traces", agent.http_addr),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let cut = || last(&received).is_some_and(|(_, r)| r.truncated.is_some_and(|t| t.service_names == 1));
    assert!(wait_until(Duration::from_secs(10), cut).await, "{:?}", last(&received).map(|(_, r)| r.truncated));
    let (_, report) = last(&received).unwrap();
    assert!(serde_json::to_vec(&report).unwrap().len() < MAX_REPORT_BYTES);
    assert_eq!(report.services.get(&long[..MAX_SERVICE_NAME_BYTES]), Some(&2));
    agent.shutdown().await;
}

/// An operator that answers every push with `status` and `Retry-After` (when given), recording when.
async fn failing_operator(
    status: u16,
    retry_after: Option<&'static str>,
) -> (String, Arc<Mutex<Vec<std::time::Instant>>>) {
    let times: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let t = times.clone();
    let app = Router::new().route(
        REPORT_PATH,
        post(move || {
            let t = t.clone();
            async move {
                t.lock().unwrap().push(std::time::Instant::now());
                let mut resp = axum::response::IntoResponse::into_response(StatusCode::from_u16(status).unwrap());
                if let Some(v) = retry_after {
                    resp.headers_mut().insert(header::RETRY_AFTER, v.parse().unwrap());
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{REPORT_PATH}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, times)
}

fn pusher(url: &str, base: Duration) -> tracelight_agent::report_push::ReportPusher {
    let dir = temp_dir("pusher");
    let token = dir.join("token");
    support::write_atomic(&token, "tok\n");
    let metrics = Arc::new(tracelight_agent::metrics::Metrics::default());
    let queue = Arc::new(tracelight_agent::queue::Queue::new(1 << 20, metrics.clone()));
    let pipeline = Arc::new(tracelight_agent::pipeline::Pipeline::new(support::identity(), queue, metrics.clone()));
    let shared = Arc::new(tracelight_agent::Shared {
        pipeline,
        metrics,
        config: Default::default(),
        admission: tracelight_agent::admission::Admission::new(1 << 20),
        started: std::time::Instant::now(),
    });
    let mut p = tracelight_agent::report_push::ReportPusher::new(
        url.parse().unwrap(),
        token,
        None,
        Duration::from_millis(10),
        shared,
    );
    p.backoff = tracelight_agent::report_push::PushBackoff { base, cap: Duration::from_secs(5) };
    p
}

#[tokio::test]
async fn failed_pushes_back_off_exponentially_and_honour_retry_after() {
    let (url, times) = failing_operator(500, None).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(pusher(&url, Duration::from_millis(100)).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    task.await.unwrap();
    let t = times.lock().unwrap().clone();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // 100, 200, 400, 800 ms, each less at most half by jitter: 4-6 pushes in 2.5 s, not 250.
    assert!((4..=7).contains(&t.len()), "{} pushes: {gaps:?}", t.len());
    for (n, gap) in gaps.iter().enumerate() {
        let full = Duration::from_millis(100 << n);
        assert!(*gap >= full / 2, "gap {n} {gap:?} under half of {full:?}");
    }
    assert!(gaps.last() > gaps.first(), "waits grow: {gaps:?}");

    let (url, times) = failing_operator(429, Some("2")).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(pusher(&url, Duration::from_millis(100)).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.cancel();
    task.await.unwrap();
    let t = times.lock().unwrap().clone();
    assert_eq!(t.len(), 2, "the second push waits the 2 s asked for");
    assert!(t[1] - t[0] >= Duration::from_secs(2), "{:?}", t[1] - t[0]);
}
