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
