//! Tests of the controller's pure rollout glue: observation from cache snapshots, which restarts
//! are requested, what the status records.

use super::*;
use crate::api::{NamespaceStatus, TracingPolicySpec};
use crate::decision::governance::GovernedNamespace;
// The engine tests' fixtures: a Deployment whose 2 pods are not injected yet.
use crate::rollout::tests::{fresh as workload, id, HASH};
use crate::rollout::{PodCounts, RestartMark, Rollback, RolloutPhase};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::time::Duration;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn policy(name: &str, created: i64) -> TracingPolicy {
    let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
        "collector": {"endpoint": "http://collector:4317", "protocol": "grpc"},
        "rollout": {"phases": [
            {"name": "pilot", "batchSize": 2, "soakDuration": "5s", "healthDeadline": "30s"},
            {"name": "expansion"}
        ]}
    }))
    .unwrap();
    let mut p = TracingPolicy::new(name, spec);
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    p
}

fn namespace(name: &str, enabled: bool) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    if enabled {
        ns.metadata.labels = Some([("tracelight.io/enabled".to_string(), "true".to_string())].into());
    }
    ns
}

fn governed(names: &[(&str, &str)]) -> Governance {
    Governance {
        governed: names
            .iter()
            .map(|(name, phase)| GovernedNamespace { name: name.to_string(), rollout_phase: phase.to_string() })
            .collect(),
        overlaps: Vec::new(),
    }
}

fn status_with(namespaces: &[(&str, NamespaceState)]) -> TracingPolicyStatus {
    TracingPolicyStatus {
        namespaces: namespaces
            .iter()
            .map(|(name, state)| NamespaceStatus { name: name.to_string(), state: *state, ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

fn restart(namespace: &str, name: &str, reason: RestartReason) -> Restart {
    let hash = if reason == RestartReason::Leave { "" } else { HASH };
    Restart { workload: id(namespace, name), reason, hash: hash.into() }
}

fn plan_with(restarts: Vec<Restart>, in_flight: Vec<WorkloadId>) -> Plan {
    Plan {
        state: RolloutPhase::Progressing,
        active_namespaces: Vec::new(),
        restarts,
        rollbacks: Vec::new(),
        in_flight,
        progress: Progress { phase: 1, soak_started: None, rerun: None },
        message: "phase \"pilot\": 1 restarting".into(),
        requeue_after: None,
    }
}

fn deployment(namespace: &str, name: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta::default()),
                spec: Some(PodSpec {
                    containers: vec![Container { name: "app".into(), ..Default::default() }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ready_replicas: Some(1),
            ..Default::default()
        }),
    }
}

/// A cached pod of Deployment `name` (through its ReplicaSet `name-abc12`).
fn pod_of(namespace: &str, name: &str, injected_with: Option<&str>) -> PodSummary {
    let mut labels = BTreeMap::from([("pod-template-hash".to_string(), "abc12".to_string())]);
    let mut annotations = BTreeMap::new();
    if let Some(hash) = injected_with {
        labels.insert("tracelight.io/injected".into(), "true".into());
        annotations.insert("tracelight.io/manifest-hash".to_string(), hash.to_string());
    }
    let meta = ObjectMeta {
        name: Some(format!("{name}-abc12-x")),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: format!("{name}-abc12"),
            controller: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    PodSummary::from_meta(&meta, Box::default())
}

#[test]
fn phase_settings_follow_the_spec_and_batch_size_is_at_least_one() {
    let mut p = policy("p", 1);
    p.spec.rollout.phases[1].batch_size = 0;
    let phases = phase_settings(&p);
    assert_eq!(phases.len(), 2);
    assert_eq!((phases[0].name.as_str(), phases[0].batch_size), ("pilot", 2));
    assert_eq!(phases[0].soak, Duration::from_secs(5));
    assert_eq!(phases[0].health_deadline, Duration::from_secs(30));
    assert_eq!(phases[1].batch_size, 1, "a zero batch would never restart anything");
    assert_eq!(phases[1].soak, Duration::from_secs(300), "defaults apply");
    assert_eq!(phase_index(&p, "expansion"), 1);
    assert_eq!(phase_index(&p, "default"), 0, "unknown phase names fall back to the first phase");
    p.spec.rollout.phases.clear();
    assert!(phase_settings(&p).is_empty());
}

#[test]
fn progress_is_read_back_from_the_status() {
    assert_eq!(progress_from(None), Progress::default());
    assert_eq!(progress_from(Some(&TracingPolicyStatus::default())), Progress::default());
    let status = TracingPolicyStatus {
        rollout: Some(RolloutStatus { phase_index: 1, soak_started_at: Some(Time(t(5))), ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(progress_from(Some(&status)), Progress { phase: 1, soak_started: Some(t(5)), rerun: None });
}

#[test]
fn namespaces_leave_when_no_longer_governed_and_no_other_policy_claims_them() {
    let plan = governed(&[("kept", "pilot")]);
    let previous = status_with(&[
        ("kept", NamespaceState::Active),
        ("unlabelled", NamespaceState::Active),
        ("still-leaving", NamespaceState::Leaving),
        ("never-active", NamespaceState::Pending),
        ("taken-over", NamespaceState::Active),
    ]);
    let unclaimed: BTreeSet<String> =
        ["kept", "unlabelled", "still-leaving", "never-active"].iter().map(ToString::to_string).collect();
    assert_eq!(leaving_namespaces(Some(&previous), &plan, &unclaimed), vec!["still-leaving", "unlabelled"]);
    assert!(leaving_namespaces(None, &plan, &unclaimed).is_empty(), "a policy never rolled out leaves nothing");
}

#[test]
fn unclaimed_namespaces_exclude_those_another_policy_governs() {
    let older = policy("older", 1);
    let me = policy("me", 2);
    let mut deleting = policy("deleting", 0);
    deleting.metadata.deletion_timestamp = Some(Time(t(0)));
    let namespaces = [namespace("labelled", true), namespace("plain", false)];
    let unclaimed = unclaimed_namespaces("me", &[&me], namespaces.iter());
    assert_eq!(unclaimed.into_iter().collect::<Vec<_>>(), vec!["labelled", "plain"], "mine or nobody's");
    let unclaimed = unclaimed_namespaces("me", &[&older, &me], namespaces.iter());
    assert_eq!(unclaimed.into_iter().collect::<Vec<_>>(), vec!["plain"], "the older policy governs `labelled`");
    let unclaimed = unclaimed_namespaces("me", &[&deleting], namespaces.iter());
    assert_eq!(unclaimed.len(), 2, "a policy being deleted claims nothing");
}

#[test]
fn workloads_are_observed_in_governed_and_leaving_namespaces_only() {
    let p = policy("p", 1);
    let plan = governed(&[("shop", "pilot")]);
    let (shop_b, shop_a, gone, other) =
        (deployment("shop", "b"), deployment("shop", "a"), deployment("gone", "web"), deployment("other", "web"));
    let mut deleting = deployment("shop", "deleting");
    deleting.metadata.deletion_timestamp = Some(Time(t(0)));
    let pods = [pod_of("shop", "a", None), pod_of("gone", "web", Some("old")), pod_of("other", "web", None)];
    let workloads: Vec<Workload> = [&shop_b, &shop_a, &gone, &other, &deleting].map(Workload::from).into();
    let snapshot = Snapshot { workloads: workloads.iter().collect(), pods: pods.iter().collect() };
    let observed = observe_workloads(&p, &plan, &["gone".to_string()], &snapshot, &InjectOptions::default());
    let ids: Vec<String> = observed.iter().map(|w| w.id.to_string()).collect();
    assert_eq!(ids, vec!["gone/Deployment/web", "shop/Deployment/a", "shop/Deployment/b"], "sorted, relevant only");
    let gone = &observed[0];
    assert_eq!(gone.desired_hash, None, "a leaving namespace's workloads should carry no injection");
    assert_eq!(gone.pods.outdated, 1, "their injected pods count as outdated");
    let a = &observed[1];
    assert!(a.desired_hash.is_some());
    assert_eq!((a.pods.total, a.pods.missed), (1, 1), "pods are matched to their workload through owners");
    assert_eq!(observed[2].pods.total, 0, "b has no pods");
}

#[test]
fn health_is_checked_only_for_restarts_still_settling() {
    let mut w = workload("shop", "web");
    assert_eq!(health_check_since(&w), None, "never restarted");
    w.restart = Some(RestartMark { hash: HASH.into(), at: t(10) });
    w.rolled_out = false;
    assert_eq!(health_check_since(&w), Some(t(10)), "rolling");
    w.rolled_out = true;
    w.pods = PodCounts { total: 2, current: 2, ready: 2, ..Default::default() };
    assert_eq!(health_check_since(&w), None, "settled");
    w.pods.ready = 1;
    assert_eq!(health_check_since(&w), Some(t(10)), "a pod not ready yet");
    w.restart = Some(RestartMark { hash: "older".into(), at: t(10) });
    assert_eq!(health_check_since(&w), None, "a restart for another manifest is not this rollout's");
    w.restart = Some(RestartMark { hash: String::new(), at: t(10) });
    w.desired_hash = None;
    assert_eq!(health_check_since(&w), None, "a restart removing injection never rolls back");
    w.desired_hash = Some(HASH.into());
    w.restart = Some(RestartMark { hash: HASH.into(), at: t(10) });
    w.excluded = Some("crash loop".into());
    assert_eq!(health_check_since(&w), None, "already rolled back");
}

#[test]
fn observation_resolves_phases_and_carries_the_switches() {
    let mut p = policy("p", 1);
    p.spec.rollout.paused = true;
    p.spec.rollout.repair_missed = false;
    let plan = governed(&[("a", "pilot"), ("b", "expansion")]);
    let previous = TracingPolicyStatus {
        rollout: Some(RolloutStatus { phase_index: 1, ..Default::default() }),
        ..Default::default()
    };
    let o = observation(&p, &plan, vec![workload("a", "web")], Some(&previous), t(3));
    assert_eq!(o.namespaces.iter().map(|n| (n.name.as_str(), n.phase)).collect::<Vec<_>>(), vec![("a", 0), ("b", 1)]);
    assert_eq!(o.progress.phase, 1);
    assert!(o.paused);
    assert!(!o.repair_missed);
    assert_eq!(o.now, t(3));
    assert_eq!(o.workloads.len(), 1);
}

#[test]
fn injecting_restarts_wait_until_their_namespace_was_active_before_this_reconcile() {
    let plan = plan_with(
        vec![
            restart("active", "a", RestartReason::Inject),
            restart("new", "b", RestartReason::Inject),
            restart("left", "c", RestartReason::Leave),
            restart("active", "d", RestartReason::Repair),
        ],
        Vec::new(),
    );
    let active: BTreeSet<String> = ["active".to_string()].into();
    let requested: Vec<String> =
        restarts_to_request(&plan, &active, false).iter().map(|r| r.workload.to_string()).collect();
    assert_eq!(requested, vec!["active/Deployment/a", "left/Deployment/c", "active/Deployment/d"]);
    assert!(restarts_to_request(&plan, &active, true).is_empty(), "a dry run restarts nothing");
}

#[test]
fn a_namespace_is_leaving_until_no_injected_pod_or_restart_is_left() {
    let mut injected = workload("a", "web");
    injected.desired_hash = None;
    injected.pods = PodCounts { total: 1, outdated: 1, ..Default::default() };
    let mut clean = workload("b", "web");
    clean.desired_hash = None;
    clean.pods = PodCounts { total: 1, ..Default::default() };
    let mut settling = workload("c", "web");
    settling.desired_hash = None;
    settling.pods = PodCounts { total: 1, ..Default::default() };
    let leaving: Vec<String> = ["a", "b", "c", "d"].iter().map(ToString::to_string).collect();
    let plan = plan_with(vec![restart("d", "api", RestartReason::Leave)], vec![id("c", "web")]);
    assert_eq!(still_leaving(&leaving, &[injected, clean, settling], &plan), vec!["a", "c", "d"]);
}

#[test]
fn outdated_pods_are_summed_per_namespace() {
    let mut a = workload("a", "web");
    a.pods.outdated = 2;
    let mut b = workload("a", "api");
    b.pods.outdated = 1;
    let c = workload("b", "web");
    let outdated = outdated_by_namespace(&[a, b, c]);
    assert_eq!(outdated, BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 0)]));
}

#[test]
fn status_records_progress_requested_restarts_and_exclusions() {
    let mut plan = plan_with(
        vec![restart("active", "a", RestartReason::Inject), restart("new", "b", RestartReason::Inject)],
        vec![id("active", "a"), id("new", "b"), id("active", "z")],
    );
    plan.rollbacks = vec![Rollback { workload: id("active", "crashing"), reason: "crash loop".into() }];
    plan.progress = Progress { phase: 1, soak_started: Some(t(7)), rerun: None };
    let mut excluded = workload("active", "crashing");
    excluded.excluded = Some("crash loop".into());
    let mut older = workload("active", "alpha");
    older.excluded = Some("not ready".into());
    let workloads = [excluded, older];
    let requested: Vec<&Restart> = plan.restarts.iter().take(1).collect();

    let s = rollout_status(&plan, &workloads, &requested, None, false);
    assert_eq!(s.phase_index, 1);
    assert_eq!(s.soak_started_at, Some(Time(t(7))));
    assert_eq!(s.in_flight, vec!["active/Deployment/a", "active/Deployment/z"], "a skipped restart is not in flight");
    let names: Vec<(&str, &str)> = s.excluded.iter().map(|e| (e.name.as_str(), e.reason.as_str())).collect();
    assert_eq!(names, vec![("alpha", "not ready"), ("crashing", "crash loop")], "sorted, one entry per workload");
    assert_eq!(s.excluded[0].kind, "Deployment");
}

#[test]
fn soak_start_is_recorded_rounded_up_so_the_soak_is_never_shortened() {
    // The status keeps whole seconds (metav1.Time); 10.5s recorded as 10s would end a soak early.
    let mut plan = plan_with(Vec::new(), Vec::new());
    plan.progress.soak_started = Some(t(10).checked_add(jiff::SignedDuration::from_millis(500)).unwrap());
    let s = rollout_status(&plan, &[], &[], None, false);
    assert_eq!(s.soak_started_at, Some(Time(t(11))));
    let back = serde_json::from_value::<Time>(serde_json::to_value(s.soak_started_at.unwrap()).unwrap()).unwrap();
    assert_eq!(back, Time(t(11)), "survives the round trip through the API");
    plan.progress.soak_started = Some(t(10));
    assert_eq!(rollout_status(&plan, &[], &[], None, false).soak_started_at, Some(Time(t(10))));
}

#[test]
fn a_dry_run_records_no_progress_and_no_rollback() {
    let mut plan = plan_with(Vec::new(), Vec::new());
    plan.rollbacks = vec![Rollback { workload: id("a", "web"), reason: "crash loop".into() }];
    let previous = TracingPolicyStatus {
        rollout: Some(RolloutStatus { phase_index: 0, ..Default::default() }),
        ..Default::default()
    };
    let s = rollout_status(&plan, &[], &[], Some(&previous), true);
    assert_eq!(s.phase_index, 0, "the plan's phase 1 was not reached: nothing happened");
    assert!(s.excluded.is_empty());
}

#[test]
fn restart_note_names_each_workload_and_why() {
    let plan = plan_with(Vec::new(), Vec::new());
    let restarts = [
        restart("a", "web", RestartReason::Inject),
        restart("a", "api", RestartReason::Repair),
        restart("b", "x", RestartReason::Leave),
    ];
    let refs: Vec<&Restart> = restarts.iter().collect();
    let note = restart_note(&refs, &plan);
    assert_eq!(
        note,
        "restarting a/Deployment/web, a/Deployment/api (missed injection), b/Deployment/x (removing injection); \
         phase \"pilot\": 1 restarting"
    );
}

#[test]
fn restart_note_of_a_large_batch_fits_in_an_event() {
    let plan = plan_with(Vec::new(), Vec::new());
    let restarts: Vec<Restart> =
        (0..200).map(|i| restart(&format!("namespace-{i}"), &format!("workload-{i}"), RestartReason::Inject)).collect();
    let refs: Vec<&Restart> = restarts.iter().collect();
    let note = restart_note(&refs, &plan);
    assert!(note.len() <= MAX_EVENT_NOTE, "{} bytes", note.len());
    assert!(note.starts_with("restarting namespace-0/Deployment/workload-0, "), "{note}");
    let more: usize = note.split(", and ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    let shown = note.matches("/Deployment/").count();
    assert_eq!(shown + more, 200, "{note}");
    assert!(note.ends_with("; phase \"pilot\": 1 restarting"), "{note}");
}

/// A workload of a namespace being left, with `injected` injected pods.
fn leaving(namespace: &str, name: &str, injected: u32) -> WorkloadObservation {
    let mut w = workload(namespace, name);
    w.desired_hash = None;
    w.pods = PodCounts { total: 2, outdated: injected, ready: 2, ..Default::default() };
    w
}

#[test]
fn a_deleted_policy_waits_for_its_workloads_to_lose_injection_but_not_forever() {
    let deadline = Duration::from_secs(30);
    let untouched = leaving("a", "untouched", 2);
    let mut rolling = leaving("a", "rolling", 1);
    rolling.restart = Some(RestartMark { hash: String::new(), at: t(990) });
    let mut stuck = leaving("a", "stuck", 1);
    stuck.restart = Some(RestartMark { hash: String::new(), at: t(900) });
    let mut done = leaving("a", "done", 0);
    done.restart = Some(RestartMark { hash: String::new(), at: t(900) });
    let plan = plan_with(
        vec![restart("a", "untouched", RestartReason::Leave), restart("a", "stuck", RestartReason::Leave)],
        vec![id("a", "rolling")],
    );
    let d = departure(&[untouched, rolling, stuck, done], &plan, deadline, t(1000));
    let restarted: Vec<String> = d.restarts.iter().map(|r| r.workload.to_string()).collect();
    assert_eq!(restarted, vec!["a/Deployment/untouched"], "a workload given up on is not restarted again");
    assert_eq!(d.waiting, vec![id("a", "untouched"), id("a", "rolling")]);
    assert_eq!(d.given_up, vec![id("a", "stuck")], "restarted 100s ago with a 30s deadline, still injected");

    let idle = plan_with(Vec::new(), Vec::new());
    let all_done = departure(&[leaving("a", "x", 0)], &idle, deadline, t(1000));
    assert_eq!(all_done, Departure::default(), "nothing left: the finalizer can go");
}

#[test]
fn the_longest_health_deadline_bounds_the_wait() {
    let mut p = policy("p", 1);
    assert_eq!(longest_health_deadline(&p), Duration::from_secs(600), "expansion's default 10m beats pilot's 30s");
    p.spec.rollout.phases[1].health_deadline = crate::api::Duration::from_secs(20);
    assert_eq!(longest_health_deadline(&p), Duration::from_secs(30));
    p.spec.rollout.phases.clear();
    assert_eq!(longest_health_deadline(&p), crate::rollout::engine::DEFAULT_HEALTH_DEADLINE);
}

#[test]
fn requested_patches_show_until_the_cache_catches_up() {
    let mut requested = Requested::default();
    requested.record(id("a", "web"), RestartMark { hash: HASH.into(), at: t(100) }, None);
    requested.record(id("a", "bad"), RestartMark { hash: String::new(), at: t(100) }, Some("crash loop".into()));

    // The cache still shows the templates from before the patches.
    let mut workloads = vec![workload("a", "web"), workload("a", "bad"), workload("a", "other")];
    requested.overlay(&mut workloads, t(101));
    assert_eq!(workloads[0].restart, Some(RestartMark { hash: HASH.into(), at: t(100) }));
    assert!(!workloads[0].rolled_out, "a restart the cache does not show yet has not rolled out");
    assert_eq!(workloads[1].excluded.as_deref(), Some("crash loop"));
    assert_eq!(workloads[2], workload("a", "other"), "other workloads are untouched");
    assert_eq!(requested.len(), 2);

    // The cache shows the restart: it is forgotten and the cached state stands.
    let mut caught_up = workload("a", "web");
    caught_up.restart = Some(RestartMark { hash: HASH.into(), at: t(100) });
    let mut workloads = vec![caught_up.clone()];
    requested.overlay(&mut workloads, t(102));
    assert_eq!(workloads, vec![caught_up]);
    assert_eq!(requested.len(), 1);

    // Workloads that never show up (deleted meanwhile) are forgotten after a while.
    requested.overlay(&mut [], t(100 + 301));
    assert!(requested.is_empty());
}

#[test]
fn workload_events_say_which_policy_restarted_it_and_why() {
    let note = workload_restart_note("default", RestartReason::Inject);
    assert!(note.contains("TracingPolicy default") && note.contains("get the tracing agent"), "{note}");
    assert!(workload_restart_note("default", RestartReason::Leave).contains("without the tracing agent"));
    assert!(workload_restart_note("default", RestartReason::Repair).contains("missed injection"));
}

#[test]
fn coverage_joins_pods_with_their_reports_and_feeds_the_gate_and_the_status() {
    use crate::api::CoverageState;
    let plan = governed(&[("shop", "pilot")]);
    let (web, worker, cache, elsewhere) = (
        deployment("shop", "web"),
        deployment("shop", "worker"),
        deployment("shop", "cache"),
        deployment("other", "x"),
    );
    let mut cache = cache;
    let template = cache.spec.template.metadata.get_or_insert_with(Default::default);
    template.labels = Some(BTreeMap::from([("tracelight.io/inject".to_string(), "false".to_string())]));
    let mut pods = [
        pod_of("shop", "web", Some(HASH)),
        pod_of("shop", "worker", Some(HASH)),
        pod_of("shop", "cache", None),
        pod_of("other", "x", Some(HASH)),
    ];
    for (i, p) in pods.iter_mut().enumerate() {
        p.uid = format!("pod-{i}").into();
    }
    let workloads: Vec<Workload> = [&web, &worker, &cache, &elsewhere].map(Workload::from).into();
    let snapshot = Snapshot { workloads: workloads.iter().collect(), pods: pods.iter().collect() };
    let report = |last_span: Option<i64>| PodReport {
        received_at: t(100),
        last_span_at: last_span.map(t),
        services: vec!["web".into()],
        config_generation: 3,
        agent_version: "0.2.0".into(),
        sampling: Default::default(),
        history: Default::default(),
    };
    // web's agent saw spans; worker's agent reports none; the other namespace is not governed.
    let report_of = |uid: &str| match uid {
        "pod-0" => Some(report(Some(90))),
        "pod-1" => Some(report(None)),
        _ => None,
    };
    let by_ns = coverage(&plan, &snapshot, &report_of, 3, t(120));
    assert_eq!(by_ns.keys().collect::<Vec<_>>(), ["shop"], "governed namespaces only");
    let states: BTreeMap<String, CoverageState> =
        by_ns["shop"].iter().map(|(id, c)| (id.name.clone(), c.state)).collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("cache".to_string(), CoverageState::OptedOut),
            ("web".to_string(), CoverageState::Reporting),
            ("worker".to_string(), CoverageState::Silent),
        ])
    );

    let mut observed = vec![workload("shop", "web"), workload("shop", "worker"), workload("shop", "cache")];
    apply_reporting(&mut observed, &by_ns);
    let gate: Vec<Option<bool>> = observed.iter().map(|w| w.reporting).collect();
    assert_eq!(gate, [Some(true), Some(false), None], "the span gate: reporting, silent, nothing to judge by");

    let mut ns = NamespaceStatus { name: "shop".into(), ..Default::default() };
    add_coverage(&mut ns, &by_ns["shop"]);
    assert_eq!((ns.counts.reporting, ns.counts.silent), (1, 1));
    assert_eq!(ns.counts.agent_versions.iter().collect::<Vec<_>>(), [("0.2.0", 2)], "summed over the workloads");
    let listed: Vec<&str> = ns.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(listed, ["worker", "web", "cache"], "least covered first");
}

#[test]
fn a_new_leader_holds_coverage_that_its_own_reports_would_lower() {
    let previous = NamespaceStatus {
        name: "shop".into(),
        counts: crate::api::Coverage { reporting: 6, silent: 1, ..Default::default() },
        ..Default::default()
    };
    let mut half = NamespaceStatus {
        name: "shop".into(),
        counts: crate::api::Coverage { reporting: 3, silent: 1, injected: 7, ..Default::default() },
        ..Default::default()
    };
    hold_coverage(&mut half, Some(&previous));
    assert_eq!((half.counts.reporting, half.counts.silent, half.counts.injected), (6, 1, 7), "held, pods counted anew");
    let mut more = NamespaceStatus {
        name: "shop".into(),
        counts: crate::api::Coverage { reporting: 7, silent: 1, ..Default::default() },
        ..Default::default()
    };
    hold_coverage(&mut more, Some(&previous));
    assert_eq!(more.counts.reporting, 7, "a rise is shown at once");
    let mut first = half.clone();
    first.counts.reporting = 0;
    hold_coverage(&mut first, None);
    assert_eq!(first.counts.reporting, 0, "nothing to hold without a previous status");
}
