//! `tracelight verify --baseline`: the baseline each policy recorded at its last soak end (rate,
//! errors, p50/p95/p99, agent overhead per pod, the window measured), and what the last review
//! found.

use crate::api::{TracingPolicy, WorkloadBaseline};
use kube::ResourceExt;
use std::fmt::Write as _;

/// The baseline table of `policies` (filtered by policy `name` and `namespace`), and whether
/// any workload has a baseline.
pub fn table(policies: &[TracingPolicy], name: Option<&str>, namespace: Option<&str>) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<20} {:<32} {:>5} {:>9} {:>7} {:>9} {:>9} {:>9} {:>8} {:>9}  WINDOW",
        "POLICY", "NAMESPACE", "WORKLOAD", "PODS", "REQ/S", "ERRORS", "P50", "P95", "P99", "AGENT CPU", "AGENT MEM"
    );
    let mut rows = 0;
    let mut findings = Vec::new();
    for p in policies.iter().filter(|p| name.is_none_or(|n| n == p.name_any())) {
        let Some(status) = &p.status else { continue };
        for w in status.baseline.iter().flat_map(|b| &b.workloads) {
            if namespace.is_some_and(|n| n != w.namespace) {
                continue;
            }
            rows += 1;
            let _ = writeln!(out, "{}", row(&p.name_any(), w));
        }
        if let Some(review) = &status.review {
            findings.push(format!(
                "{}: last review {}, next {}: {}",
                p.name_any(),
                review.last_review_time.0,
                review.next_review_time.0,
                if review.findings.is_empty() {
                    "no regression".to_string()
                } else {
                    format!("{} finding(s)", review.findings.len())
                }
            ));
            for f in review.findings.iter().filter(|f| namespace.is_none_or(|n| n == f.namespace)) {
                findings.push(format!("  {} {}/{}: {}", f.kind.as_str(), f.namespace, f.workload, f.message));
            }
        }
    }
    let _ = writeln!(out);
    if rows == 0 {
        let _ = writeln!(out, "no baseline recorded yet: it is recorded when a rollout phase's soak ends");
    }
    for line in findings {
        let _ = writeln!(out, "{line}");
    }
    (out, rows > 0)
}

fn row(policy: &str, w: &WorkloadBaseline) -> String {
    let secs = |v: Option<f64>| {
        v.map_or("-".to_string(), |s| if s < 1.0 { format!("{:.1}ms", s * 1000.0) } else { format!("{s:.2}s") })
    };
    format!(
        "{:<12} {:<20} {:<32} {:>5} {:>9.2} {:>6.2}% {:>9} {:>9} {:>9} {:>8} {:>9}  {} to {}",
        policy,
        w.namespace,
        format!("{}/{}", w.kind, w.name),
        w.pods,
        w.requests_per_second,
        w.error_rate * 100.0,
        secs(w.duration_p50_seconds),
        secs(w.duration_p95_seconds),
        secs(w.duration_p99_seconds),
        w.agent_cpu_millicores.map_or("-".to_string(), |m| format!("{m:.1}m")),
        w.agent_memory_bytes.map_or("-".to_string(), |b| format!("{:.1}Mi", b as f64 / 1048576.0)),
        w.window_start.0.strftime("%Y-%m-%d %H:%M:%SZ"),
        w.window_end.0.strftime("%H:%M:%SZ"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BaselineStatus, TracingPolicyStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn policy(workloads: Vec<WorkloadBaseline>) -> TracingPolicy {
        let spec = serde_json::json!({"collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}});
        let mut p = TracingPolicy::new("tracing", serde_json::from_value(spec).unwrap());
        p.status = Some(TracingPolicyStatus {
            baseline: Some(BaselineStatus { phase: "pilot".into(), workloads, ..Default::default() }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn each_workload_prints_its_figures_and_window() {
        let w = WorkloadBaseline {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            pods: 2,
            requests_per_second: 41.5,
            error_rate: 0.012,
            duration_p50_seconds: Some(0.0042),
            duration_p99_seconds: Some(1.5),
            agent_cpu_millicores: Some(3.25),
            agent_memory_bytes: Some(6 * 1048576),
            window_start: Time(Timestamp::from_second(1_800_000_000).unwrap()),
            window_end: Time(Timestamp::from_second(1_800_000_300).unwrap()),
            ..Default::default()
        };
        let (out, ok) = table(&[policy(vec![w])], None, None);
        assert!(ok, "{out}");
        let line = out.lines().nth(1).unwrap();
        for part in [
            "shop",
            "Deployment/web",
            "41.50",
            "1.20%",
            "4.2ms",
            "1.50s",
            "3.2m",
            "6.0Mi",
            "2027-01-15 08:00:00Z to 08:05:00Z",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        let (out, ok) = table(&[policy(Vec::new())], None, None);
        assert!(!ok && out.contains("no baseline recorded yet"), "{out}");
        assert!(!table(&[policy(Vec::new())], None, Some("other")).1);
    }
}
