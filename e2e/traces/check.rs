//! What the collector must have received for the shop: one trace per request, each a single tree
//! rooted at the frontend with spans from every service, HTTP calls linked client -> server across
//! services, database spans under their service, and every span's resource naming the service and
//! the pod (`k8s.*`) it came from.

use crate::collector::{Span, KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER};
use anyhow::{bail, ensure, Context as _};
use std::collections::{BTreeMap, BTreeSet};

/// Where a service's spans must say they come from (read from the pod the API server stored).
#[derive(Clone, Debug)]
pub struct PodIdentity {
    pub service: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub node: String,
    pub container: String,
    pub deployment: String,
}

/// The shape every trace must have.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Service of the root span (a server span).
    pub root: String,
    /// Every service that must appear in each trace (and no other).
    pub services: BTreeSet<String>,
    /// `(client service, server service)`: a client span of the first whose child is a server span
    /// of the second.
    pub http_calls: Vec<(String, String)>,
    /// `(producer service, consumer service)`: a producer span of the first with a consumer span
    /// of the second in the same trace, linked as child or as span link.
    pub messages: Vec<(String, String)>,
    /// `(service, db.system.name)`: a client span with that database system under a span of
    /// the service.
    pub db_calls: Vec<(String, String)>,
    /// Resource attributes every span must carry (policy `resourceAttributes`).
    pub resource_attributes: BTreeMap<String, String>,
}

/// Spans grouped by trace id.
pub fn by_trace(spans: &[Span]) -> BTreeMap<&str, Vec<&Span>> {
    let mut traces: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    traces
}

/// Checks `spans` against `topology` for exactly `requests` traces.
pub fn check(spans: &[Span], requests: usize, topology: &Topology, pods: &[PodIdentity]) -> anyhow::Result<()> {
    let traces = by_trace(spans);
    ensure!(
        traces.len() == requests,
        "{} traces for {requests} requests (spans per trace: {:?})",
        traces.len(),
        traces.values().map(Vec::len).collect::<Vec<_>>()
    );
    check_complete(spans, topology, pods).map(|_| ())
}

/// Checks that every trace in `spans` is complete and well linked; returns how many there are.
pub fn check_complete(spans: &[Span], topology: &Topology, pods: &[PodIdentity]) -> anyhow::Result<usize> {
    let traces = by_trace(spans);
    for (id, trace) in &traces {
        check_trace(trace, topology).with_context(|| format!("trace {id}:\n{}", dump(trace)))?;
    }
    for s in spans {
        check_resource(s, topology, pods).with_context(|| format!("span {}", s.describe()))?;
    }
    Ok(traces.len())
}

/// The accepted number of kept traces when `n` traces are sampled at `ratio`: the binomial mean
/// plus or minus 5 standard deviations (an unbiased sampler falls outside with probability < 1e-6).
pub fn sampling_bound(n: usize, ratio: f64) -> (usize, usize) {
    let mean = n as f64 * ratio;
    let sd = (n as f64 * ratio * (1.0 - ratio)).sqrt();
    ((mean - 5.0 * sd).max(0.0).ceil() as usize, (mean + 5.0 * sd).floor() as usize)
}

fn check_trace(trace: &[&Span], t: &Topology) -> anyhow::Result<()> {
    let by_id: BTreeMap<&str, &Span> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    ensure!(by_id.len() == trace.len(), "duplicate span ids");
    let roots: Vec<&&Span> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    ensure!(roots.len() == 1, "{} root spans (one tree per request expected)", roots.len());
    let root = roots[0];
    ensure!(root.service() == t.root && root.kind == KIND_SERVER, "root is not a {} server span", t.root);
    for s in trace {
        ensure!(
            s.parent_span_id.is_empty() || by_id.contains_key(s.parent_span_id.as_str()),
            "span {:?} of {} has parent {} which is not in the trace (broken propagation or a lost span)",
            s.name,
            s.service(),
            s.parent_span_id
        );
    }
    let services: BTreeSet<String> = trace.iter().map(|s| s.service().to_string()).collect();
    ensure!(services == t.services, "services {services:?}, expected {:?}", t.services);
    let parent_of = |s: &Span| by_id.get(s.parent_span_id.as_str()).copied();
    for (client, server) in &t.http_calls {
        let linked = trace.iter().any(|s| {
            s.service() == server
                && s.kind == KIND_SERVER
                && parent_of(s).is_some_and(|p| p.service() == client && p.kind == KIND_CLIENT)
        });
        ensure!(linked, "no {server} server span whose parent is a {client} client span");
    }
    for (producer, consumer) in &t.messages {
        let producers: Vec<&&Span> =
            trace.iter().filter(|s| s.service() == producer && s.kind == KIND_PRODUCER).collect();
        ensure!(!producers.is_empty(), "no {producer} producer span");
        let consumed = trace.iter().any(|s| {
            s.service() == consumer
                && (s.kind == KIND_CONSUMER)
                && parent_of(s).is_some_and(|p| producers.iter().any(|q| q.span_id == p.span_id))
        });
        ensure!(consumed, "no {consumer} consumer span whose parent is a {producer} producer span");
    }
    for (service, system) in &t.db_calls {
        let found = trace.iter().any(|s| {
            s.service() == service
                && s.kind == KIND_CLIENT
                && (s.attr("db.system.name") == Some(system) || s.attr("db.system") == Some(system))
                && parent_of(s).is_some_and(|p| p.service() == service)
        });
        ensure!(found, "no {system} database span of {service} under one of its spans");
    }
    Ok(())
}

fn check_resource(s: &Span, t: &Topology, pods: &[PodIdentity]) -> anyhow::Result<()> {
    let Some(pod) = pods.iter().find(|p| p.service == s.service() && Some(&p.pod) == s.resource.get("k8s.pod.name"))
    else {
        bail!(
            "service.name {:?} with k8s.pod.name {:?} is none of the shop's pods {:?}",
            s.service(),
            s.resource.get("k8s.pod.name"),
            pods.iter().map(|p| format!("{}:{}", p.service, p.pod)).collect::<Vec<_>>()
        );
    };
    let want: Vec<(&str, &str)> = vec![
        ("k8s.namespace.name", &pod.namespace),
        ("k8s.pod.uid", &pod.uid),
        ("k8s.node.name", &pod.node),
        ("k8s.container.name", &pod.container),
        ("k8s.deployment.name", &pod.deployment),
    ];
    for (key, value) in want.into_iter().chain(t.resource_attributes.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        let got = s.resource.get(key).map(String::as_str);
        ensure!(got == Some(value), "resource {key} is {got:?}, expected {value:?}");
    }
    Ok(())
}

/// A trace as an indented tree, for failure messages.
pub fn dump(trace: &[&Span]) -> String {
    fn walk(out: &mut String, trace: &[&Span], parent: &str, depth: usize) {
        for s in trace.iter().filter(|s| s.parent_span_id == parent) {
            out.push_str(&format!("{}{}\n", "  ".repeat(depth + 1), s.describe()));
            walk(out, trace, &s.span_id, depth + 1);
        }
    }
    let mut out = String::new();
    walk(&mut out, trace, "", 0);
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for orphan in trace.iter().filter(|s| !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_str())) {
        out.push_str(&format!("  (orphan) {}\n", orphan.describe()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, id: &str, parent: &str, kind: i64, attrs: &[(&str, &str)]) -> Span {
        let resource: BTreeMap<String, String> = [
            ("service.name", service),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", &format!("{service}-pod")),
            ("k8s.pod.uid", "uid"),
            ("k8s.node.name", "node"),
            ("k8s.container.name", "c"),
            ("k8s.deployment.name", service),
            ("deployment.environment", "e2e"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Span {
            resource,
            scope: "s".into(),
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: id.into(),
            kind,
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            duration_seconds: 0.001,
            start_unix_nano: 0,
        }
    }

    fn topology() -> Topology {
        Topology {
            root: "frontend".into(),
            services: ["frontend", "inventory"].map(String::from).into(),
            http_calls: vec![("frontend".into(), "inventory".into())],
            messages: vec![],
            db_calls: vec![("inventory".into(), "sqlite".into())],
            resource_attributes: [("deployment.environment".to_string(), "e2e".to_string())].into(),
        }
    }

    fn pods() -> Vec<PodIdentity> {
        ["frontend", "inventory"]
            .map(|s| PodIdentity {
                service: s.into(),
                namespace: "shop".into(),
                pod: format!("{s}-pod"),
                uid: "uid".into(),
                node: "node".into(),
                container: "c".into(),
                deployment: s.into(),
            })
            .to_vec()
    }

    fn good() -> Vec<Span> {
        vec![
            span("frontend", "a", "", KIND_SERVER, &[]),
            span("frontend", "b", "a", KIND_CLIENT, &[]),
            span("inventory", "c", "b", KIND_SERVER, &[]),
            span("inventory", "d", "c", KIND_CLIENT, &[("db.system.name", "sqlite")]),
        ]
    }

    #[test]
    fn sampling_bound_is_five_sigma() {
        assert_eq!(sampling_bound(200, 0.25), (20, 80));
        assert_eq!(sampling_bound(100, 1.0), (100, 100));
    }

    #[test]
    fn a_complete_trace_passes() {
        check(&good(), 1, &topology(), &pods()).unwrap();
    }

    #[test]
    fn a_broken_propagation_fails() {
        let mut spans = good();
        spans[2].parent_span_id = String::new();
        spans[2].trace_id = "t2".into();
        spans[3].trace_id = "t2".into();
        let err = format!("{:#}", check(&spans, 1, &topology(), &pods()).unwrap_err());
        assert!(err.contains("2 traces for 1 requests"), "{err}");
    }

    #[test]
    fn a_missing_service_or_db_span_fails() {
        let spans: Vec<Span> = good().into_iter().take(3).collect();
        let err = format!("{:#}", check(&spans, 1, &topology(), &pods()).unwrap_err());
        assert!(err.contains("no sqlite database span"), "{err}");
        let spans: Vec<Span> = good().into_iter().take(2).collect();
        let err = format!("{:#}", check(&spans, 1, &topology(), &pods()).unwrap_err());
        assert!(err.contains("services"), "{err}");
    }

    #[test]
    fn a_wrong_k8s_attribute_fails() {
        let mut spans = good();
        spans[1].resource.insert("k8s.node.name".into(), "elsewhere".into());
        let err = format!("{:#}", check(&spans, 1, &topology(), &pods()).unwrap_err());
        assert!(err.contains("k8s.node.name"), "{err}");
    }
}
