//! `tracelight verify`: the "confirm traces appear for every service" step of a rollout. Reads
//! the policies' coverage (which the operator fills from the agents' reports), prints one row per
//! workload — instrumented, reporting, last span seen, whether its traces are whole, agent
//! versions, services — and fails when an opted-in workload sends no spans or is an end of a
//! broken trace link (a call whose callee did not continue the trace, from the probe traces).
//! With `--wait`, looks again until every workload passes or time is up.

use crate::api::{ContinuityState, CoverageState, Duration, TracingPolicy, WorkloadCoverage};
use anyhow::Context as _;
use kube::{Client, ResourceExt};
use std::fmt::Write as _;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Name of a TracingPolicy (default: every policy).
    pub name: Option<String>,
    /// Only this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Keep looking until every workload reports, for at most this long (e.g. 2m).
    #[arg(long, value_parser = Duration::parse)]
    pub wait: Option<Duration>,
    /// Print the baseline recorded at the end of the rollout's soaks (requests/s, error rate,
    /// p50/p95/p99, agent CPU and memory per pod, the window) and the last review's findings
    /// instead; fails when no baseline is recorded.
    #[arg(long)]
    pub baseline: bool,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    policy: String,
    namespace: String,
    workload: WorkloadCoverage,
}

impl Row {
    /// Whether this workload's spans fail to arrive, and why.
    fn problem(&self) -> Option<&'static str> {
        match self.workload.state {
            CoverageState::Reporting | CoverageState::OptedOut => None,
            CoverageState::Silent => Some("silent: its agents receive no spans"),
            CoverageState::Unreported => Some("no agent report (agent down or cannot reach the operator)"),
            CoverageState::NotInjected => Some("not instrumented (not rolled out yet, or rolled back)"),
        }
    }

    /// The broken trace link this workload is an end of, as a line.
    fn broken_link(&self) -> Option<String> {
        let traces = self.workload.traces.as_ref().filter(|t| t.state == ContinuityState::Broken)?;
        let b = traces.broken.as_ref()?;
        Some(format!(
            "broken trace link {}: {}: {} (example trace {})",
            b.edge,
            b.reason.as_str(),
            b.message,
            b.example_trace_id
        ))
    }

    fn traces(&self) -> String {
        self.workload.traces.as_ref().map_or("-".to_string(), |t| format!("{:?}", t.state))
    }
}

/// The verdict over `policies`: the rendered table and whether every workload passed.
fn verdict(policies: &[TracingPolicy], args: &VerifyArgs) -> (String, bool) {
    let rows = rows(policies, args);
    let agents: Vec<String> = rows.iter().map(|r| r.workload.agent_versions.summary().unwrap_or("-".into())).collect();
    let agents_width = agents.iter().map(String::len).chain(["AGENTS".len()]).max().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<32} {:<11} {:>8} {:>9} {:>6}  {:<17} {:<9} {:<agents_width$} SERVICES",
        "NAMESPACE", "WORKLOAD", "STATE", "INJECTED", "REPORTING", "CONFIG", "LAST SPAN", "TRACES", "AGENTS"
    );
    for (r, agents) in rows.iter().zip(&agents) {
        let w = &r.workload;
        let last = w.last_span_time.as_ref().map_or("-".to_string(), |t| t.0.strftime("%Y-%m-%d %H:%MZ").to_string());
        let services = if w.services.is_empty() { "-".to_string() } else { w.services.join(",") };
        let _ = writeln!(
            out,
            "{:<20} {:<32} {:<11} {:>8} {:>9} {:>6}  {:<17} {:<9} {:<agents_width$} {}",
            r.namespace,
            format!("{}/{}", w.kind, w.name),
            format!("{:?}", w.state),
            format!("{}/{}", w.injected, w.pods),
            w.reporting,
            format!("{}/{}", w.current_config, w.injected),
            last,
            r.traces(),
            agents,
            services
        );
    }
    let failing: Vec<&Row> = rows.iter().filter(|r| r.problem().is_some()).collect();
    let broken: Vec<(&Row, String)> = rows.iter().filter_map(|r| Some((r, r.broken_link()?))).collect();
    let _ = writeln!(out);
    for r in &failing {
        let problem = r.problem().unwrap_or_default();
        let _ = writeln!(out, "FAIL {}/{}/{} ({}): {problem}", r.namespace, r.workload.kind, r.workload.name, r.policy);
    }
    for (r, link) in &broken {
        let _ = writeln!(out, "FAIL {}/{}/{} ({}): {link}", r.namespace, r.workload.kind, r.workload.name, r.policy);
    }
    for r in &rows {
        for finding in r.workload.traces.iter().flat_map(|t| &t.findings) {
            let _ = writeln!(out, "WARN {}/{}/{}: {finding}", r.namespace, r.workload.kind, r.workload.name);
        }
    }
    let ok = failing.is_empty() && broken.is_empty() && !rows.is_empty();
    let _ = match (rows.is_empty(), ok) {
        (true, _) => writeln!(out, "no workloads found: is the policy applied and a namespace opted in?"),
        (false, true) => writeln!(out, "OK: every instrumented workload sends spans ({} workloads)", rows.len()),
        (false, false) => {
            if !failing.is_empty() {
                let _ = writeln!(out, "{} of {} workloads send no spans", failing.len(), rows.len());
            }
            let mut edges: Vec<&str> = broken
                .iter()
                .filter_map(|(r, _)| r.workload.traces.as_ref()?.broken.as_ref())
                .map(|b| b.edge.as_str())
                .collect();
            edges.sort();
            edges.dedup();
            if edges.is_empty() {
                Ok(())
            } else {
                writeln!(out, "{} broken trace link(s): {}", edges.len(), edges.join(", "))
            }
        }
    };
    (out, ok)
}

fn rows(policies: &[TracingPolicy], args: &VerifyArgs) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in policies.iter().filter(|p| args.name.as_ref().is_none_or(|n| *n == p.name_any())) {
        for ns in p.status.iter().flat_map(|s| &s.namespaces) {
            if args.namespace.as_ref().is_some_and(|n| *n != ns.name) {
                continue;
            }
            rows.extend(ns.workloads.iter().map(|w| Row {
                policy: p.name_any(),
                namespace: ns.name.clone(),
                workload: w.clone(),
            }));
        }
    }
    rows.sort_by(|a, b| {
        (&a.namespace, &a.workload.kind, &a.workload.name).cmp(&(&b.namespace, &b.workload.kind, &b.workload.name))
    });
    rows
}

/// Prints the table; `Ok(false)` when a workload fails verification.
pub fn run(args: &VerifyArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = Client::try_default().await.context("connecting to the cluster (KUBECONFIG)")?;
        let deadline = args.wait.map(|w| tokio::time::Instant::now() + w.get());
        loop {
            let policies = super::list_policies(&client, args.name.as_deref()).await?;
            let (table, ok) = if args.baseline {
                super::baseline::table(&policies, args.name.as_deref(), args.namespace.as_deref())
            } else {
                verdict(&policies, args)
            };
            if ok || deadline.is_none_or(|d| tokio::time::Instant::now() >= d) {
                print!("{table}");
                return Ok(ok);
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentVersions, NamespaceStatus, TracingPolicyStatus};

    fn workload(name: &str, state: CoverageState) -> WorkloadCoverage {
        let reporting = u32::from(state == CoverageState::Reporting);
        WorkloadCoverage {
            kind: "Deployment".into(),
            name: name.into(),
            state,
            pods: 1,
            injected: u32::from(state != CoverageState::OptedOut && state != CoverageState::NotInjected),
            reporting,
            current_config: 1,
            services: if reporting > 0 { vec![name.to_string()] } else { Vec::new() },
            last_span_time: None,
            agent_versions: AgentVersions::default(),
            ..Default::default()
        }
    }

    fn policy(name: &str, namespaces: &[(&str, Vec<WorkloadCoverage>)]) -> TracingPolicy {
        let spec = serde_json::json!({"collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}});
        let mut p = TracingPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.status = Some(TracingPolicyStatus {
            namespaces: namespaces
                .iter()
                .map(|(ns, workloads)| NamespaceStatus {
                    name: ns.to_string(),
                    workloads: workloads.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    fn args(name: Option<&str>, namespace: Option<&str>) -> VerifyArgs {
        VerifyArgs { name: name.map(Into::into), namespace: namespace.map(Into::into), wait: None, baseline: false }
    }

    #[test]
    fn a_silent_workload_fails_and_is_named() {
        let p = policy(
            "tracing",
            &[(
                "shop",
                vec![workload("frontend", CoverageState::Reporting), workload("legacy", CoverageState::Silent)],
            )],
        );
        let (table, ok) = verdict(&[p], &args(None, None));
        assert!(!ok);
        assert!(table.contains("FAIL shop/Deployment/legacy (tracing): silent"), "{table}");
        assert!(!table.contains("FAIL shop/Deployment/frontend"), "{table}");
        assert!(table.contains("1 of 2 workloads send no spans"), "{table}");
    }

    #[test]
    fn reporting_and_opted_out_workloads_pass() {
        let p = policy(
            "tracing",
            &[(
                "shop",
                vec![workload("frontend", CoverageState::Reporting), workload("redis", CoverageState::OptedOut)],
            )],
        );
        let (table, ok) = verdict(&[p], &args(Some("tracing"), None));
        assert!(ok, "{table}");
        assert!(table.contains("OK: every instrumented workload sends spans (2 workloads)"), "{table}");
    }

    #[test]
    fn each_row_shows_its_agent_versions() {
        let mut upgrading = workload("frontend", CoverageState::Reporting);
        upgrading.agent_versions =
            AgentVersions::from_counts([("0.2.0".to_string(), 2), (AgentVersions::unknown(1), 1)]);
        let p = policy("tracing", &[("shop", vec![upgrading, workload("legacy", CoverageState::Unreported)])]);
        let (table, _) = verdict(&[p], &args(None, None));
        let lines: Vec<&str> = table.lines().collect();
        let column = lines[0].find("AGENTS").unwrap();
        assert!(lines[1][column..].starts_with("0.2.0:2,unknown (contract 1):1 frontend"), "{table}");
        assert!(lines[2][column..].starts_with("-  "), "{table}");
    }

    #[test]
    fn a_broken_trace_link_fails_and_names_the_edge_and_its_cause() {
        use crate::api::{BreakReason, BrokenLink, TraceContinuity};
        let mut tax = workload("tax", CoverageState::Reporting);
        tax.traces = Some(TraceContinuity {
            state: ContinuityState::Broken,
            probe_traces: 4,
            broken: Some(BrokenLink {
                edge: "shop/pricing -> shop/tax".into(),
                reason: BreakReason::PropagatorOverride,
                message: "shop/tax's container api sets OTEL_PROPAGATORS=b3 itself".into(),
                example_trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            }),
            findings: vec!["clock skew of at least 900 ms between shop/pricing and shop/tax".into()],
        });
        let mut frontend = workload("frontend", CoverageState::Reporting);
        frontend.traces =
            Some(TraceContinuity { state: ContinuityState::Connected, probe_traces: 4, ..Default::default() });
        let (table, ok) = verdict(&[policy("tracing", &[("shop", vec![frontend.clone(), tax])])], &args(None, None));
        assert!(!ok, "{table}");
        assert!(
            table.contains(
                "FAIL shop/Deployment/tax (tracing): broken trace link shop/pricing -> shop/tax: PropagatorOverride: \
                 shop/tax's container api sets OTEL_PROPAGATORS=b3 itself (example trace 0af7651916cd43dd8448eb211c80319c)"
            ),
            "{table}"
        );
        assert!(table.contains("WARN shop/Deployment/tax: clock skew"), "{table}");
        assert!(table.contains("1 broken trace link(s): shop/pricing -> shop/tax"), "{table}");
        assert!(!table.contains("send no spans"), "{table}");
        let (table, ok) = verdict(&[policy("tracing", &[("shop", vec![frontend])])], &args(None, None));
        assert!(ok && table.contains(" Connected "), "{table}");
    }

    #[test]
    fn filters_select_policy_and_namespace_and_nothing_found_fails() {
        let a = policy("a", &[("shop", vec![workload("web", CoverageState::Unreported)])]);
        let b = policy("b", &[("bank", vec![workload("api", CoverageState::Reporting)])]);
        let policies = [a, b];
        assert!(verdict(&policies, &args(Some("b"), None)).1);
        assert!(verdict(&policies, &args(None, Some("bank"))).1);
        let (table, ok) = verdict(&policies, &args(None, Some("shop")));
        assert!(!ok && table.contains("no agent report"), "{table}");
        let (table, ok) = verdict(&policies, &args(None, Some("nowhere")));
        assert!(!ok && table.contains("no workloads found"), "{table}");
    }
}
