use super::*;
use crate::api::Duration;
use crate::baseline::tests::{at, report, steady_pod};

fn coverage(name: &str, state: CoverageState, pods: u32) -> WorkloadCoverage {
    WorkloadCoverage { kind: "Deployment".into(), name: name.into(), state, pods, ..Default::default() }
}

fn input<'h>(c: &'h WorkloadCoverage, last_span: Option<i64>, pods: Vec<&'h PodHistory>) -> WorkloadInput<'h> {
    WorkloadInput {
        namespace: "shop".into(),
        coverage: c,
        active: true,
        excluded: false,
        last_span_at: last_span.map(at),
        pods,
        broken_link: None,
    }
}

fn spec(interval_secs: u64) -> ReviewSpec {
    ReviewSpec { interval: Duration::from_secs(interval_secs), ..Default::default() }
}

fn kinds(r: &ReviewStatus) -> Vec<(FindingKind, &str)> {
    r.findings.iter().map(|f| (f.kind, f.workload.as_str())).collect()
}

#[test]
fn a_review_is_due_first_on_schedule_and_when_workloads_change() {
    let r = review(&spec(60), None, "h1".into(), &[], at(0));
    assert_eq!(r.next_review_time.0, at(60));
    assert!(due(None, "h1", at(0)));
    assert!(!due(Some(&r), "h1", at(59)));
    assert!(due(Some(&r), "h1", at(60)), "on schedule");
    assert!(due(Some(&r), "h2", at(1)), "another set of workloads");
    assert_eq!(review(&spec(1), None, "h".into(), &[], at(0)).next_review_time.0, at(10), "at least 10 s");
}

#[test]
fn workloads_hash_ignores_order_and_sees_a_new_workload() {
    let a = workloads_hash([("shop", "Deployment", "web"), ("shop", "Deployment", "api")]);
    let b = workloads_hash([("shop", "Deployment", "api"), ("shop", "Deployment", "web")]);
    let c =
        workloads_hash([("shop", "Deployment", "api"), ("shop", "Deployment", "web"), ("shop", "Deployment", "new")]);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_new_uninstrumented_workload_is_found_unless_opted_out_excluded_or_scaled_to_zero() {
    let new = coverage("new", CoverageState::NotInjected, 2);
    let opted = coverage("opted", CoverageState::OptedOut, 1);
    let zero = coverage("zero", CoverageState::NotInjected, 0);
    let excluded = coverage("excluded", CoverageState::NotInjected, 1);
    let pending = coverage("pending", CoverageState::NotInjected, 1);
    let mut inputs = vec![input(&new, None, vec![]), input(&opted, None, vec![]), input(&zero, None, vec![])];
    inputs.push(WorkloadInput { excluded: true, ..input(&excluded, None, vec![]) });
    inputs.push(WorkloadInput { active: false, ..input(&pending, None, vec![]) });
    let r = review(&spec(60), None, String::new(), &inputs, at(0));
    assert_eq!(kinds(&r), [(FindingKind::NotInstrumented, "Deployment/new")]);
    let (status, reason, message) = condition(&r);
    assert!(status);
    assert_eq!(reason, "NotInstrumented");
    assert!(message.contains("NotInstrumented shop/Deployment/new"), "{message}");
}

#[test]
fn a_workload_silent_for_a_whole_interval_has_gone_silent() {
    let web = coverage("web", CoverageState::Reporting, 1);
    let quiet = coverage("quiet", CoverageState::Silent, 1);
    let never = coverage("never", CoverageState::Silent, 1);
    let unreported = coverage("unreported", CoverageState::Unreported, 1);
    let inputs = [
        input(&web, Some(990), vec![]),
        input(&quiet, Some(900), vec![]),
        input(&never, None, vec![]),
        input(&unreported, Some(0), vec![]),
    ];
    let r = review(&spec(60), None, String::new(), &inputs, at(1000));
    assert_eq!(kinds(&r), [(FindingKind::WentSilent, "Deployment/quiet")], "never sent: not gone; unreported: unknown");
    let r = review(&spec(3600), None, String::new(), &inputs, at(1000));
    assert!(r.findings.is_empty(), "100 s without spans is not silence for an hourly review");
}

#[test]
fn drops_since_the_previous_review_are_found() {
    let c = coverage("web", CoverageState::Reporting, 1);
    let mut pod = steady_pod(10, 0, 300);
    let mut r = report(3000, 0, [0, 3000, 0, 0], 1.5, 1);
    r.spans.dropped.insert("queueFull".into(), 7);
    pod = pod.next(&r, at(330));
    let first = review(&spec(60), None, String::new(), &[input(&c, Some(330), vec![&pod])], at(200));
    assert!(first.findings.is_empty(), "no previous review: nothing to compare with");
    let second = review(&spec(60), Some(&first), String::new(), &[input(&c, Some(330), vec![&pod])], at(340));
    assert_eq!(kinds(&second), [(FindingKind::SpansDropped, "Deployment/web")]);
    assert!(second.findings[0].message.contains("7 span(s)"));
    let third = review(&spec(60), Some(&second), String::new(), &[input(&c, Some(390), vec![&pod])], at(400));
    assert!(third.findings.is_empty(), "no new drops");
}

#[test]
fn agent_overhead_above_the_bounds_is_found() {
    let c = coverage("web", CoverageState::Reporting, 1);
    let pod = steady_pod(10, 0, 600); // 5 millicores, 6 MB
    let within = ReviewSpec { max_agent_cpu_millicores: Some(10), max_agent_memory_mib: Some(64), ..spec(300) };
    assert!(review(&within, None, String::new(), &[input(&c, Some(600), vec![&pod])], at(600)).findings.is_empty());
    let tight = ReviewSpec { max_agent_cpu_millicores: Some(2), max_agent_memory_mib: Some(5), ..spec(300) };
    let r = review(&tight, None, String::new(), &[input(&c, Some(600), vec![&pod])], at(600));
    assert_eq!(kinds(&r), [(FindingKind::OverheadAboveBound, "Deployment/web")]);
    assert!(r.findings[0].message.contains("CPU 5.0m above the bound of 2m"), "{}", r.findings[0].message);
    assert!(r.findings[0].message.contains("memory 5.7 MiB"), "{}", r.findings[0].message);
}

#[test]
fn a_broken_trace_link_is_found() {
    use crate::api::BreakReason;
    let tax = coverage("tax", CoverageState::Reporting, 1);
    let web = coverage("web", CoverageState::Reporting, 1);
    let link = BrokenLink {
        edge: "shop/pricing -> shop/tax".into(),
        reason: BreakReason::PropagatorOverride,
        message: "tax sets OTEL_PROPAGATORS=b3".into(),
        example_trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    let inputs =
        [WorkloadInput { broken_link: Some(link), ..input(&tax, Some(590), vec![]) }, input(&web, Some(590), vec![])];
    let r = review(&spec(60), None, String::new(), &inputs, at(600));
    assert_eq!(kinds(&r), [(FindingKind::TracesBroken, "Deployment/tax")]);
    let message = &r.findings[0].message;
    assert!(message.contains("shop/pricing -> shop/tax: PropagatorOverride"), "{message}");
    assert!(message.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{message}");
    assert_eq!(condition(&r).1, "TracesBroken");
}

#[test]
fn only_new_findings_get_events_and_no_findings_clear_the_condition() {
    let quiet = coverage("quiet", CoverageState::Silent, 1);
    let new = coverage("new", CoverageState::NotInjected, 1);
    let first = review(&spec(60), None, String::new(), &[input(&quiet, Some(0), vec![])], at(100));
    assert_eq!(new_findings(None, &first).len(), 1);
    let second = review(
        &spec(60),
        Some(&first),
        String::new(),
        &[input(&quiet, Some(0), vec![]), input(&new, None, vec![])],
        at(200),
    );
    let fresh: Vec<_> = new_findings(Some(&first), &second).iter().map(|f| f.workload.clone()).collect();
    assert_eq!(fresh, ["Deployment/new"]);
    let clean = review(&spec(60), Some(&second), String::new(), &[], at(300));
    let (status, reason, _) = condition(&clean);
    assert_eq!((status, reason.as_str()), (false, NO_REGRESSION));
}
