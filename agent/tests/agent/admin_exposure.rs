//! The admin server stays on the pod's loopback (issue 15): from a non-loopback address of this
//! host (standing in for the pod IP) only `/healthz` answers, and `/metrics` only when asked;
//! `/report` and `/metrics` stay reachable on 127.0.0.1, and `--admin-host=0.0.0.0` exposes
//! everything on purpose.

use crate::support::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tracelight_agent::AgentArgs;

/// A non-loopback IPv4 address of this host (the pod IP of an agent in a pod). The test needs
/// one and fails without it: on loopback alone it would prove nothing.
fn non_loopback_address() -> IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .expect("running `ip -o -4 addr` (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let addr = words.windows(2).find(|w| w[0] == "inet").map(|w| w[1].split('/').next().unwrap_or_default());
    let addr: IpAddr =
        addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no global IPv4 address in:\n{text}"));
    assert!(!addr.is_loopback(), "{addr}");
    addr
}

/// `GET path` on `addr`: the status, or the connection error.
async fn try_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not HTTP: {response:?}"))
}

/// Agent args with the admin host left at its default.
fn default_admin_args(dir: &std::path::Path) -> AgentArgs {
    AgentArgs { admin_host: AgentArgs::default().admin_host, ..args(&dir.join("absent.yaml")) }
}

#[tokio::test]
async fn the_admin_port_answers_only_health_on_a_non_loopback_address() {
    let pod_ip = non_loopback_address();
    let dir = temp_dir("admin-exposure");

    // Without a health host, nothing of the agent listens on the pod IP at all.
    let agent = tracelight_agent::start_with_identity(default_admin_args(&dir), identity()).await.expect("starts");
    assert!(agent.admin_addr.ip().is_loopback(), "admin bound to {}", agent.admin_addr);
    let outside = SocketAddr::new(pod_ip, agent.admin_addr.port());
    let refused = try_get(outside, "/report").await;
    assert!(refused.is_err(), "the admin port answered on {outside}: {refused:?}");
    agent.shutdown().await;

    // With the pod IP as health host: /healthz there, the rest only on loopback.
    let args = AgentArgs { health_host: Some(pod_ip), ..default_admin_args(&dir) };
    let agent = tracelight_agent::start_with_identity(args, identity()).await.expect("starts");
    let outside = agent.health_addr.expect("a health listener");
    assert_eq!(outside, SocketAddr::new(pod_ip, agent.admin_addr.port()), "health shares the admin port");
    assert_eq!(try_get(outside, "/healthz").await, Ok(200));
    for path in ["/report", "/metrics", "/"] {
        assert_eq!(try_get(outside, path).await, Ok(404), "{path} on {outside}");
    }
    for path in ["/healthz", "/report", "/metrics"] {
        assert_eq!(try_get(agent.admin_addr, path).await, Ok(200), "{path} on {}", agent.admin_addr);
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn metrics_and_the_whole_admin_are_exposed_only_when_asked() {
    let pod_ip = non_loopback_address();
    let dir = temp_dir("admin-opt-in");

    // --health-metrics: a PodMonitor can scrape /metrics on the pod IP; /report stays inside.
    let args = AgentArgs { health_host: Some(pod_ip), health_metrics: true, ..default_admin_args(&dir) };
    let agent = tracelight_agent::start_with_identity(args, identity()).await.expect("starts");
    let outside = agent.health_addr.expect("a health listener");
    assert_eq!(try_get(outside, "/metrics").await, Ok(200));
    let (_, text) = get(&format!("http://{outside}/metrics")).await;
    assert!(text.contains("tracelight_agent_spans_exported_total"), "{text}");
    assert_eq!(try_get(outside, "/report").await, Ok(404));
    agent.shutdown().await;

    // --admin-host=0.0.0.0: everything on every address; no separate health listener.
    let args =
        AgentArgs { admin_host: IpAddr::from([0, 0, 0, 0]), health_host: Some(pod_ip), ..default_admin_args(&dir) };
    let agent = tracelight_agent::start_with_identity(args, identity()).await.expect("starts");
    assert_eq!(agent.health_addr, None);
    let outside = SocketAddr::new(pod_ip, agent.admin_addr.port());
    for path in ["/healthz", "/report", "/metrics"] {
        assert_eq!(try_get(outside, path).await, Ok(200), "{path} on {outside}");
    }
    agent.shutdown().await;
}
