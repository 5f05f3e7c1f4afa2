//! The kubelet's probes, from the host to the pod's IP: `httpGet` (2xx/3xx) and `tcpSocket`.
//! `exec` and `grpc` probes are not emulated (an error says so).

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resolves a probe port (a number or the name of one of the container's ports).
fn port_of(container: &Container, port: &IntOrString) -> anyhow::Result<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).context("probe port out of range"),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .with_context(|| format!("container {} has no port named {name}", container.name)),
    }
}

/// One probe attempt: `Ok(())` on success, `Err` saying what was seen.
pub async fn check(container: &Container, probe: &Probe, ip: Ipv4Addr) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(get) = &probe.http_get {
        let port = port_of(container, &get.port)?;
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let io = async {
            let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/runner\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
        };
        let response = tokio::time::timeout(timeout, io).await.context("timed out")??;
        let status: u16 = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if !(200..400).contains(&status) {
            bail!("GET {ip}:{port}{path}: HTTP {status}");
        }
        return Ok(());
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(container, &tcp.port)?;
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port)))
            .await
            .context("timed out")?
            .with_context(|| format!("connecting to {ip}:{port}"))?;
        return Ok(());
    }
    bail!("container {}: only httpGet and tcpSocket probes are emulated, not {probe:?}", container.name)
}
