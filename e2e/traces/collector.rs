//! A real OpenTelemetry Collector (built by `e2e/collector/build.sh`) on the "node" side of the
//! pods' bridge, writing what it receives to a file (OTLP/JSON lines), and a reader of that file.

use anyhow::{ensure, Context as _};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Collector {
    child: Child,
    pub output: PathBuf,
}

impl Collector {
    /// Starts `bin` with an OTLP/gRPC receiver on `grpc` and the file exporter writing to
    /// `dir/traces.jsonl`; waits until the receiver accepts connections.
    pub async fn start(bin: &Path, dir: &Path, grpc: SocketAddr) -> anyhow::Result<Collector> {
        std::fs::create_dir_all(dir)?;
        let output = dir.join("traces.jsonl");
        let config = dir.join("otelcol.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {grpc}\n\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
                 \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                output.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("otelcol.log"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut collector = Collector { child, output };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            ensure!(
                collector.child.try_wait()?.is_none(),
                "the collector exited; see {}",
                dir.join("otelcol.log").display()
            );
            if tokio::net::TcpStream::connect(grpc).await.is_ok() {
                return Ok(collector);
            }
            ensure!(Instant::now() < deadline, "the collector does not listen on {grpc} after 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the collector gracefully (SIGTERM: the file exporter flushes), SIGKILL after 15s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                self.child.kill()?;
                anyhow::bail!("the collector ignored SIGTERM for 15s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Every span in the output file so far.
    pub fn spans(&self) -> Vec<Span> {
        read_spans(&self.output)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Span kinds as OTLP numbers them.
pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;
pub const KIND_PRODUCER: i64 = 4;
pub const KIND_CONSUMER: i64 = 5;

/// One span as the collector's file exporter wrote it.
#[derive(Clone, Debug)]
pub struct Span {
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i64,
    pub attributes: BTreeMap<String, String>,
    /// End minus start, in seconds (0 when the times are missing).
    pub duration_seconds: f64,
    /// `startTimeUnixNano` (0 when absent).
    pub start_unix_nano: u64,
}

impl Span {
    pub fn service(&self) -> &str {
        self.resource.get("service.name").map(String::as_str).unwrap_or("")
    }

    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} [{}] {:?} kind {} parent {:?} {:?}",
            self.service(),
            &self.span_id,
            self.scope,
            self.name,
            self.kind,
            self.parent_span_id,
            self.attributes
        )
    }
}

/// Attribute values as strings (string, int, double, bool).
fn attrs(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let v = &kv["value"];
            let text = v["stringValue"]
                .as_str()
                .map(str::to_string)
                .or_else(|| v["intValue"].as_str().map(str::to_string))
                .or_else(|| v["intValue"].as_i64().map(|n| n.to_string()))
                .or_else(|| v["doubleValue"].as_f64().map(|n| n.to_string()))
                .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))?;
            Some((kv["key"].as_str()?.to_string(), text))
        })
        .collect()
}

pub fn read_spans(path: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attrs(&rs["resource"]["attributes"]);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                let scope = ss["scope"]["name"].as_str().unwrap_or("").to_string();
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let field = |k: &str| s[k].as_str().unwrap_or("").to_string();
                    let nanos = |k: &str| s[k].as_str().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                    let duration_seconds =
                        nanos("endTimeUnixNano").saturating_sub(nanos("startTimeUnixNano")) as f64 / 1e9;
                    spans.push(Span {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        trace_id: field("traceId"),
                        span_id: field("spanId"),
                        parent_span_id: field("parentSpanId"),
                        name: field("name"),
                        kind: s["kind"].as_i64().unwrap_or(0),
                        attributes: attrs(&s["attributes"]),
                        duration_seconds,
                        start_unix_nano: s["startTimeUnixNano"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0),
                    });
                }
            }
        }
    }
    spans
}
