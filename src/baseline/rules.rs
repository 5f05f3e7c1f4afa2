//! The per-workload regression alerts (pure): a `PrometheusRule` (monitoring.coreos.com/v1)
//! with, for each workload of the baseline, a latency alert (p99 above the baseline's p99 times
//! `spec.alerting.latencyFactor`) and an error-rate alert (share of failed requests above the
//! baseline's plus `spec.alerting.errorRateIncrease`).
//!
//! The series are the agents' RED histograms (`crate::baseline` explains why the baseline's
//! percentiles are computed as `histogram_quantile` does), as the chart's PodMonitor scrapes them:
//! the target's `namespace`, and the workload's `service_name`s as its agents reported them. Both
//! span kinds count together, like in the baseline. Thresholds are the baseline's numbers written
//! into the expressions, so the rule changes, and is applied again, when the baseline does.

use crate::api::{AlertingSpec, BaselineStatus, WorkloadBaseline};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Alert names (each has a section in docs/alerts.md).
pub const LATENCY_ALERT: &str = "TracelightWorkloadLatencyRegression";
pub const ERROR_RATE_ALERT: &str = "TracelightWorkloadErrorRateRegression";
/// Where the runbook sections are (as for the chart's alerts).
pub const RUNBOOK_BASE: &str = "https://github.com/tracelight/tracelight/blob/main/docs/alerts.md";
/// The range the alerts' rates are taken over.
pub const RATE_WINDOW: &str = "5m";
/// The RED histograms of both span kinds (their label sets differ, so `or` keeps both).
const HISTOGRAMS: [&str; 2] = ["http_server_request_duration_seconds", "messaging_process_duration_seconds"];

/// Name of the rule object of `policy`.
pub fn rule_name(policy: &str) -> String {
    format!("tracelight-baseline-{policy}")
}

/// The `spec` of the PrometheusRule: one group, two alerts per workload with requests and
/// services (none for a workload the baseline cannot judge).
pub fn rule_spec(policy: &str, baseline: &BaselineStatus, alerting: &AlertingSpec) -> Value {
    let rules: Vec<Value> = baseline.workloads.iter().flat_map(|w| workload_rules(policy, w, alerting)).collect();
    json!({ "groups": [{ "name": rule_name(policy), "rules": rules }] })
}

fn workload_rules(policy: &str, w: &WorkloadBaseline, alerting: &AlertingSpec) -> Vec<Value> {
    if w.services.is_empty() || w.requests_per_second <= 0.0 {
        return Vec::new();
    }
    // Regex matchers only: `namespace` is a target label (not in the agent's exposition, which
    // `make test-alerts` checks equality matchers against); a namespace name is [a-z0-9-] only.
    let selector = format!(
        "namespace=~\"{}\", service_name=~\"{}\"",
        label_escape(&w.namespace),
        label_escape(&w.services.iter().map(|s| regex_escape(s)).collect::<Vec<_>>().join("|"))
    );
    let workload = format!("{}/{}", w.kind, w.name);
    let labels = json!({
        "severity": "warning",
        "policy": policy,
        "namespace": w.namespace,
        "kind": w.kind,
        "workload": w.name,
    });
    let window = format!("{} to {}", w.window_start.0, w.window_end.0);
    let mut rules = Vec::new();
    if let Some(p99) = w.duration_p99_seconds.filter(|p| *p > 0.0) {
        let threshold = super::round(p99 * alerting.latency_factor, 6);
        rules.push(json!({
            "alert": LATENCY_ALERT,
            "expr": format!(
                "histogram_quantile(0.99, sum by (le) ({})) > {threshold}",
                either(|h| format!("rate({h}_bucket{{{selector}}}[{RATE_WINDOW}])"))
            ),
            "for": alerting.for_.to_string(),
            "labels": labels,
            "annotations": {
                "summary": format!("{workload} in {} is slower than its baseline.", w.namespace),
                "description": format!(
                    "The p99 duration of {workload} in namespace {} is {{{{ $value | humanizeDuration }}}}, above {} times its baseline p99 of {p99} s (measured {window}, TracingPolicy {policy}).",
                    w.namespace, alerting.latency_factor
                ),
                "runbook_url": format!("{RUNBOOK_BASE}#{}", LATENCY_ALERT.to_lowercase()),
            },
        }));
    }
    let threshold = super::round(w.error_rate + alerting.error_rate_increase, 6);
    if threshold < 1.0 {
        let failed = either(|h| format!("rate({h}_count{{{selector}, error_type!=\"\"}}[{RATE_WINDOW}])"));
        let all = either(|h| format!("rate({h}_count{{{selector}}}[{RATE_WINDOW}])"));
        rules.push(json!({
            "alert": ERROR_RATE_ALERT,
            "expr": format!("sum({failed}) / sum({all}) > {threshold}"),
            "for": alerting.for_.to_string(),
            "labels": labels,
            "annotations": {
                "summary": format!("{workload} in {} fails more requests than its baseline.", w.namespace),
                "description": format!(
                    "{{{{ $value | humanizePercentage }}}} of the requests of {workload} in namespace {} fail, against {} in its baseline (measured {window}, TracingPolicy {policy}); the alert fires above {threshold}.",
                    w.namespace, w.error_rate
                ),
                "runbook_url": format!("{RUNBOOK_BASE}#{}", ERROR_RATE_ALERT.to_lowercase()),
            },
        }));
    }
    rules
}

/// `part` of both histograms, joined with `or`.
fn either(part: impl Fn(&str) -> String) -> String {
    HISTOGRAMS.map(part).join(" or ")
}

/// The whole object, for server-side apply.
pub fn prometheus_rule(
    policy: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    owner: Value,
    spec: Value,
) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": rule_name(policy),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": spec,
    })
}

/// `s` as a literal inside a PromQL (RE2) regular expression.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` inside a double-quoted PromQL string.
fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Duration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn workload(name: &str, services: &[&str], rps: f64, error_rate: f64, p99: Option<f64>) -> WorkloadBaseline {
        WorkloadBaseline {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: name.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            window_start: Time(Timestamp::from_second(1_800_000_000).unwrap()),
            window_end: Time(Timestamp::from_second(1_800_000_300).unwrap()),
            requests_per_second: rps,
            error_rate,
            duration_p99_seconds: p99,
            ..Default::default()
        }
    }

    fn baseline(workloads: Vec<WorkloadBaseline>) -> BaselineStatus {
        BaselineStatus { workloads, ..Default::default() }
    }

    #[test]
    fn each_workload_gets_a_latency_and_an_error_rate_alert_at_its_own_thresholds() {
        let alerting = AlertingSpec { latency_factor: 3.0, for_: Duration::from_secs(120), ..Default::default() };
        let spec = rule_spec(
            "default",
            &baseline(vec![workload("web", &["web", "web.v2"], 10.0, 0.01, Some(0.25))]),
            &alerting,
        );
        let rules = spec["groups"][0]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["alert"], LATENCY_ALERT);
        assert_eq!(
            rules[0]["expr"],
            "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{namespace=~\"shop\", service_name=~\"web|web\\\\.v2\"}[5m]) or rate(messaging_process_duration_seconds_bucket{namespace=~\"shop\", service_name=~\"web|web\\\\.v2\"}[5m]))) > 0.75"
        );
        assert_eq!(rules[0]["for"], "2m");
        assert_eq!(rules[0]["labels"]["workload"], "web");
        assert_eq!(rules[1]["alert"], ERROR_RATE_ALERT);
        let expr = rules[1]["expr"].as_str().unwrap();
        assert!(expr.ends_with("> 0.06"), "{expr}");
        assert!(expr.contains("error_type!=\"\""), "{expr}");
        assert_eq!(
            rules[1]["annotations"]["runbook_url"],
            format!("{RUNBOOK_BASE}#tracelightworkloaderrorrateregression")
        );
    }

    #[test]
    fn workloads_the_baseline_cannot_judge_get_no_alert() {
        let spec = rule_spec(
            "p",
            &baseline(vec![
                workload("idle", &["idle"], 0.0, 0.0, None),
                workload("anonymous", &[], 5.0, 0.0, Some(0.1)),
                workload("failing", &["failing"], 5.0, 0.99, None),
            ]),
            &AlertingSpec::default(),
        );
        assert_eq!(
            spec["groups"][0]["rules"],
            json!([]),
            "no requests, no services, error alert could not fire, no p99"
        );
    }

    /// The rules of a sample baseline as a Prometheus rules file. With
    /// `TRACELIGHT_METRICS_DUMP=<dir>` (`make test-alerts`) it is written to
    /// `<dir>/baseline-rules.yaml`, where `promtool check rules`, `promtool test rules`
    /// (e2e/alerts/tests/baseline.test.yaml) and metriccheck read it.
    #[test]
    fn exposition_for_the_alert_checks_baseline_rules() {
        let mut checkout = workload("checkout", &["checkout"], 20.0, 0.01, Some(0.25));
        checkout.duration_p50_seconds = Some(0.02);
        let worker =
            WorkloadBaseline { kind: "StatefulSet".into(), ..workload("worker", &["worker"], 2.0, 0.0, Some(1.0)) };
        let spec = rule_spec("shop", &baseline(vec![checkout, worker]), &AlertingSpec::default());
        let yaml = serde_yaml::to_string(&spec).unwrap();
        assert!(yaml.contains("alert: TracelightWorkloadLatencyRegression"), "{yaml}");
        if let Some(dir) = std::env::var_os("TRACELIGHT_METRICS_DUMP") {
            let path = std::path::Path::new(&dir).join("baseline-rules.yaml");
            std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }

    #[test]
    fn names_are_escaped_in_the_selector() {
        assert_eq!(regex_escape("a.b(c)|d"), "a\\.b\\(c\\)\\|d");
        assert_eq!(label_escape("say \"hi\"\\"), "say \\\"hi\\\"\\\\");
    }
}
