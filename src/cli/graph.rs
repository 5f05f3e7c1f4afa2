//! `tracelight graph`: the service graph as Tracelight sees it, from the policies' status (the
//! operator joins the agents' probe traces into it): one line per edge as text, or Graphviz DOT
//! with `-o dot` (`tracelight graph -o dot | dot -Tsvg > graph.svg`). Broken edges are marked
//! with their likely cause; `tracelight verify` is the check that fails on them.

use crate::api::{EdgeKind, GraphEdge, TracingPolicy};
use anyhow::Context as _;
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// Name of a TracingPolicy (default: every policy).
    pub name: Option<String>,
    /// Only edges with an end in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Dot,
}

/// The edges of the selected policies and namespace, each once, sorted; and the probe traces.
fn edges(policies: &[TracingPolicy], args: &GraphArgs) -> (Vec<GraphEdge>, u32) {
    let mut all: BTreeMap<(String, String, EdgeKind), GraphEdge> = BTreeMap::new();
    let mut probe_traces = 0;
    let in_namespace =
        |end: &str| args.namespace.as_ref().is_none_or(|ns| end.split_once('/').is_some_and(|(n, _)| n == ns));
    for p in policies.iter().filter(|p| args.name.as_ref().is_none_or(|n| *n == p.name_any())) {
        let Some(graph) = p.status.as_ref().and_then(|s| s.service_graph.as_ref()) else { continue };
        probe_traces += graph.probe_traces;
        for e in graph.edges.iter().filter(|e| in_namespace(&e.from) || in_namespace(&e.to)) {
            // Two policies list an edge between their namespaces: the same calls, once.
            all.entry((e.from.clone(), e.to.clone(), e.kind)).or_insert_with(|| e.clone());
        }
    }
    (all.into_values().collect(), probe_traces)
}

fn text(edges: &[GraphEdge], probe_traces: u32) -> String {
    let mut out = String::new();
    if edges.is_empty() {
        let _ = writeln!(out, "no edges yet ({probe_traces} probe traces): are probes on and requests flowing?");
        return out;
    }
    let from_w = edges.iter().map(|e| e.from.len()).chain([4]).max().unwrap_or_default();
    let to_w = edges.iter().map(|e| e.to.len()).chain([2]).max().unwrap_or_default();
    let _ =
        writeln!(out, "{:<from_w$}     {:<to_w$}  {:<8} {:>7} {:>7}  CAUSE", "FROM", "TO", "KIND", "CALLS", "BROKEN");
    for e in edges {
        let cause = e
            .reason
            .map(|r| format!("{} (example trace {})", r.as_str(), e.example_trace_id.as_deref().unwrap_or("-")))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<from_w$} ->  {:<to_w$}  {:<8} {:>7} {:>7}  {cause}",
            e.from,
            e.to,
            e.kind.as_str(),
            e.calls,
            e.broken
        );
    }
    let broken = edges.iter().filter(|e| e.broken > 0).count();
    let _ = writeln!(out, "\n{} edges, {broken} broken, from {probe_traces} probe traces", edges.len());
    out
}

/// A DOT identifier: quoted, with `"` and `\` escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(edges: &[GraphEdge]) -> String {
    let mut out = String::from("digraph tracelight {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    // Hosts that are no workload (no namespace/name) are drawn apart.
    let mut nodes: Vec<&str> = edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]).collect();
    nodes.sort();
    nodes.dedup();
    for n in nodes {
        let shape = if n.contains('/') { "" } else { " [shape=ellipse, style=dashed]" };
        let _ = writeln!(out, "  {}{shape};", quoted(n));
    }
    for e in edges {
        let mut label = format!("{} {}", e.kind.as_str(), e.calls);
        let mut attrs = String::new();
        if let Some(reason) = e.reason.filter(|_| e.broken > 0) {
            let _ = write!(label, "\\n{} broken: {}", e.broken, reason.as_str());
            attrs.push_str(", color=red, fontcolor=red, style=dashed");
        } else if e.kind == EdgeKind::Message {
            attrs.push_str(", style=bold");
        }
        let _ = writeln!(out, "  {} -> {} [label=\"{label}\"{attrs}];", quoted(&e.from), quoted(&e.to));
    }
    out.push_str("}\n");
    out
}

/// What `tracelight graph` prints for `policies`.
fn render(policies: &[TracingPolicy], args: &GraphArgs) -> String {
    let (edges, probe_traces) = edges(policies, args);
    match args.output {
        Format::Text => text(&edges, probe_traces),
        Format::Dot => dot(&edges),
    }
}

pub fn run(args: &GraphArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = Client::try_default().await.context("connecting to the cluster (KUBECONFIG)")?;
        let policies = super::list_policies(&client, args.name.as_deref()).await?;
        print!("{}", render(&policies, args));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BreakReason, ServiceGraph, TracingPolicyStatus};

    fn edge(from: &str, to: &str, kind: EdgeKind, calls: u64, broken: u64) -> GraphEdge {
        GraphEdge {
            from: from.into(),
            to: to.into(),
            kind,
            calls,
            broken,
            reason: (broken > 0).then_some(BreakReason::PropagatorOverride),
            example_trace_id: (broken > 0).then(|| "0af7651916cd43dd8448eb211c80319c".into()),
        }
    }

    fn policy(name: &str, edges: Vec<GraphEdge>) -> TracingPolicy {
        let spec = serde_json::json!({"collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}});
        let mut p = TracingPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.status = Some(TracingPolicyStatus {
            service_graph: Some(ServiceGraph { probe_traces: 5, edges }),
            ..Default::default()
        });
        p
    }

    fn args(name: Option<&str>, namespace: Option<&str>, output: Format) -> GraphArgs {
        GraphArgs { name: name.map(Into::into), namespace: namespace.map(Into::into), output }
    }

    fn shop() -> Vec<TracingPolicy> {
        vec![
            policy(
                "tracing",
                vec![
                    edge("shop/frontend", "shop/pricing", EdgeKind::Request, 5, 0),
                    edge("shop/frontend", "shop/worker", EdgeKind::Message, 5, 0),
                    edge("shop/pricing", "shop/tax", EdgeKind::Request, 5, 5),
                    edge("shop/frontend", "bank/ledger", EdgeKind::Request, 2, 0),
                ],
            ),
            // The other end's policy lists the cross-namespace edge too.
            policy("bank", vec![edge("shop/frontend", "bank/ledger", EdgeKind::Request, 2, 0)]),
        ]
    }

    #[test]
    fn text_lists_each_edge_once_with_its_cause() {
        let out = render(&shop(), &args(None, None, Format::Text));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("FROM"), "{out}");
        assert_eq!(lines.iter().filter(|l| l.contains("bank/ledger")).count(), 1, "{out}");
        assert!(out.contains("shop/pricing  ->  shop/tax"), "{out}");
        assert!(out.contains("PropagatorOverride (example trace 0af7651916cd43dd8448eb211c80319c)"), "{out}");
        assert!(out.contains("4 edges, 1 broken, from 10 probe traces"), "{out}");
        let bank = render(&shop(), &args(Some("bank"), Some("bank"), Format::Text));
        assert!(bank.contains("1 edges, 0 broken"), "{bank}");
        let none = render(&shop(), &args(None, Some("nowhere"), Format::Text));
        assert!(none.starts_with("no edges yet"), "{none}");
    }

    #[test]
    fn dot_draws_broken_edges_red_and_queues_bold() {
        let out = render(&shop(), &args(Some("tracing"), None, Format::Dot));
        assert!(out.starts_with("digraph tracelight {\n"), "{out}");
        assert!(out.ends_with("}\n"), "{out}");
        assert!(
            out.contains(r#""shop/pricing" -> "shop/tax" [label="request 5\n5 broken: PropagatorOverride", color=red"#),
            "{out}"
        );
        assert!(out.contains(r#""shop/frontend" -> "shop/worker" [label="message 5", style=bold];"#), "{out}");
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
    }
}
