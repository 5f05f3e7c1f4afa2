//! What tracing will cost in namespaces not rolled out yet (pure, for `tracelight preview`).
//!
//! Method: the per-pod average of the workloads already reporting (their received and kept spans
//! per second and kept bytes per second in the policy's status, summed, divided by the pods
//! whose agents measured them), times the pods of each namespace still to come. It assumes the
//! pods to come look like the pods measured: a rough guide, stated as such in the output.

use crate::api::{NamespaceState, TracingPolicyStatus};

/// Per-pod averages, from the workloads that have measured rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerPod {
    pub received: f64,
    pub kept: f64,
    /// `None` when no agent reported bytes.
    pub kept_bytes: Option<f64>,
    /// Pods the averages come from.
    pub pods: u32,
    /// Namespaces they run in.
    pub namespaces: usize,
}

/// The per-pod averages of the policy's status; `None` before any workload has rates.
pub fn per_pod(status: &TracingPolicyStatus) -> Option<PerPod> {
    let mut p = PerPod { received: 0.0, kept: 0.0, kept_bytes: None, pods: 0, namespaces: 0 };
    for ns in status.namespaces.iter().filter(|n| n.state == NamespaceState::Active) {
        let mut any = false;
        for s in ns.workloads.iter().filter_map(|w| w.sampling.as_ref()) {
            p.received += s.received_spans_per_second;
            p.kept += s.kept_spans_per_second;
            if let Some(b) = s.kept_bytes_per_second {
                *p.kept_bytes.get_or_insert(0.0) += b;
            }
            p.pods += s.pods.max(1);
            any = true;
        }
        p.namespaces += usize::from(any);
    }
    if p.pods == 0 {
        return None;
    }
    let n = f64::from(p.pods);
    Some(PerPod { received: p.received / n, kept: p.kept / n, kept_bytes: p.kept_bytes.map(|b| b / n), ..p })
}

/// Projected rates of `pods` pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    pub received: f64,
    pub kept: f64,
    pub kept_bytes: Option<f64>,
}

pub fn project(per_pod: &PerPod, pods: u32) -> Projection {
    let n = f64::from(pods);
    Projection { received: per_pod.received * n, kept: per_pod.kept * n, kept_bytes: per_pod.kept_bytes.map(|b| b * n) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NamespaceStatus, WorkloadCoverage, WorkloadSampling};

    fn workload(received: f64, kept: f64, bytes: Option<f64>, pods: u32) -> WorkloadCoverage {
        WorkloadCoverage {
            sampling: Some(WorkloadSampling {
                received_spans_per_second: received,
                kept_spans_per_second: kept,
                kept_bytes_per_second: bytes,
                pods,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn per_pod_average_of_active_namespaces_times_pods() {
        let status = TracingPolicyStatus {
            namespaces: vec![
                NamespaceStatus {
                    name: "pilot".into(),
                    state: NamespaceState::Active,
                    workloads: vec![workload(300.0, 30.0, Some(15000.0), 2), workload(100.0, 10.0, Some(5000.0), 2)],
                    ..Default::default()
                },
                NamespaceStatus {
                    name: "later".into(),
                    state: NamespaceState::Pending,
                    workloads: vec![workload(1e6, 1e6, None, 1)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let p = per_pod(&status).unwrap();
        assert_eq!((p.received, p.kept, p.kept_bytes, p.pods, p.namespaces), (100.0, 10.0, Some(5000.0), 4, 1));
        let projected = project(&p, 10);
        assert_eq!((projected.received, projected.kept, projected.kept_bytes), (1000.0, 100.0, Some(50000.0)));
        assert_eq!(per_pod(&TracingPolicyStatus::default()), None);
    }
}
