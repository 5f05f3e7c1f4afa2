//! Table and property tests of the rollout engine.

use super::engine::HEALTH_POLL;
use super::*;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use std::time::Duration;

pub(crate) const HASH: &str = "h1";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn phase(name: &str, batch: u32, soak_secs: u64) -> PhaseSettings {
    PhaseSettings {
        name: name.into(),
        batch_size: batch,
        soak: Duration::from_secs(soak_secs),
        health_deadline: Duration::from_secs(300),
    }
}

fn ns(name: &str, phase: usize) -> NamespaceObservation {
    NamespaceObservation { name: name.into(), phase }
}

pub(crate) fn id(namespace: &str, name: &str) -> WorkloadId {
    WorkloadId { namespace: namespace.into(), kind: WorkloadKind::Deployment, name: name.into() }
}

/// A workload whose 2 pods are not injected yet.
pub(crate) fn fresh(namespace: &str, name: &str) -> WorkloadObservation {
    WorkloadObservation {
        id: id(namespace, name),
        desired_hash: Some(HASH.into()),
        pods: PodCounts { total: 2, current: 0, outdated: 0, missed: 2, ready: 2 },
        newest_missed: None,
        restart: None,
        rolled_out: true,
        health: Health::Healthy,
        reporting: None,
        excluded: None,
    }
}

/// Restart requested at `at`, still rolling.
fn rolling(mut w: WorkloadObservation, at: i64) -> WorkloadObservation {
    w.restart = Some(RestartMark { hash: HASH.into(), at: t(at) });
    w.rolled_out = false;
    w.pods = PodCounts { total: 2, current: 1, outdated: 0, missed: 1, ready: 1 };
    w
}

/// Restart requested at `at` and finished: every pod current and ready.
fn done(mut w: WorkloadObservation, at: i64) -> WorkloadObservation {
    w.restart = Some(RestartMark { hash: HASH.into(), at: t(at) });
    w.rolled_out = true;
    w.pods = PodCounts { total: 2, current: 2, outdated: 0, missed: 0, ready: 2 };
    w
}

fn obs(
    phases: Vec<PhaseSettings>,
    namespaces: Vec<NamespaceObservation>,
    workloads: Vec<WorkloadObservation>,
) -> Observation {
    Observation {
        phases,
        namespaces,
        workloads,
        progress: Progress::default(),
        paused: false,
        repair_missed: true,
        now: t(1000),
    }
}

fn restarted(plan: &Plan) -> Vec<String> {
    plan.restarts.iter().map(|r| r.workload.to_string()).collect()
}

#[test]
fn no_governed_namespace_is_pending() {
    let plan = plan(&obs(vec![], vec![], vec![]));
    assert_eq!(plan.state, RolloutPhase::Pending);
    assert!(plan.restarts.is_empty());
}

#[test]
fn default_phase_restarts_one_workload_at_a_time_in_stable_order() {
    let o = obs(vec![], vec![ns("shop", 0)], vec![fresh("shop", "web"), fresh("shop", "api")]);
    let plan = plan(&o);
    assert_eq!(plan.state, RolloutPhase::Progressing);
    assert_eq!(plan.active_namespaces, vec!["shop"]);
    assert_eq!(restarted(&plan), vec!["shop/Deployment/api"]);
    assert_eq!(plan.restarts[0].hash, HASH);
    assert_eq!(plan.restarts[0].reason, RestartReason::Inject);
}

#[test]
fn batch_size_counts_restarts_in_flight() {
    let workloads = vec![rolling(fresh("shop", "a"), 990), fresh("shop", "b"), fresh("shop", "c"), fresh("shop", "d")];
    let plan = plan(&obs(vec![phase("all", 3, 0)], vec![ns("shop", 0)], workloads));
    assert_eq!(restarted(&plan), vec!["shop/Deployment/b", "shop/Deployment/c"]);
    assert_eq!(plan.in_flight.len(), 3);
    assert_eq!(plan.requeue_after, Some(HEALTH_POLL), "looks at its pods' health again soon");
}

#[test]
fn expansion_waits_for_pilot_and_its_soak() {
    let phases = vec![phase("pilot", 1, 600), phase("expansion", 2, 0)];
    let namespaces = vec![ns("canary", 0), ns("shop", 1)];
    // Pilot in progress: expansion is not active, nothing there restarts.
    let o = obs(phases.clone(), namespaces.clone(), vec![fresh("canary", "web"), fresh("shop", "web")]);
    let p = plan(&o);
    assert_eq!(p.active_namespaces, vec!["canary"]);
    assert_eq!(restarted(&p), vec!["canary/Deployment/web"]);

    // Pilot done: soak starts now.
    let mut o = obs(phases.clone(), namespaces.clone(), vec![done(fresh("canary", "web"), 900), fresh("shop", "web")]);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Soaking);
    assert_eq!(p.progress, Progress { phase: 0, soak_started: Some(t(1000)), rerun: None });
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
    assert!(p.restarts.is_empty());

    // Half-way through the soak: still waiting.
    o.progress = p.progress.clone();
    o.now = t(1300);
    assert_eq!(plan(&o).state, RolloutPhase::Soaking);

    // Soak over: expansion becomes active and its first batch restarts in the same reconcile.
    o.now = t(1600);
    let p = plan(&o);
    assert_eq!(p.progress, Progress { phase: 1, soak_started: None, rerun: None });
    assert_eq!(p.active_namespaces, vec!["canary", "shop"]);
    assert_eq!(restarted(&p), vec!["shop/Deployment/web"]);
}

#[test]
fn last_phase_done_is_complete() {
    let o = obs(vec![phase("all", 2, 0)], vec![ns("shop", 0)], vec![done(fresh("shop", "web"), 900)]);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Complete);
    assert!(p.restarts.is_empty() && p.in_flight.is_empty());
}

#[test]
fn paused_policy_plans_no_restart_and_no_advance() {
    let mut o =
        obs(vec![phase("pilot", 1, 0), phase("rest", 1, 0)], vec![ns("a", 0), ns("b", 1)], vec![fresh("a", "web")]);
    o.paused = true;
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Paused);
    assert!(p.restarts.is_empty());
    assert_eq!(p.progress.phase, 0);
}

#[test]
fn crash_looping_restart_is_rolled_back_and_stops_the_rollout() {
    let mut failing = rolling(fresh("shop", "web"), 990);
    failing.health = Health::Failing("container app restarted 3 times (CrashLoopBackOff)".into());
    let o = obs(vec![phase("all", 2, 0)], vec![ns("shop", 0)], vec![failing, fresh("shop", "api")]);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Degraded);
    assert_eq!(
        p.rollbacks,
        vec![Rollback {
            workload: id("shop", "web"),
            reason: "container app restarted 3 times (CrashLoopBackOff)".into()
        }]
    );
    assert!(p.restarts.is_empty(), "no new batch while degraded");
    assert!(p.message.contains("shop/Deployment/web"));
}

#[test]
fn not_ready_past_deadline_is_rolled_back() {
    let mut o = obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], vec![rolling(fresh("shop", "web"), 600)]);
    o.now = t(901);
    let p = plan(&o);
    assert_eq!(p.rollbacks.len(), 1);
    assert!(p.rollbacks[0].reason.contains("not ready within 300s"));
}

#[test]
fn excluded_workload_keeps_the_policy_degraded_until_cleared() {
    let mut excluded = fresh("shop", "web");
    excluded.excluded = Some("crash loop".into());
    let o = obs(vec![], vec![ns("shop", 0)], vec![excluded.clone(), fresh("shop", "api")]);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Degraded);
    assert!(p.restarts.is_empty());
    excluded.excluded = None;
    let p = plan(&obs(vec![], vec![ns("shop", 0)], vec![excluded, fresh("shop", "api")]));
    assert_eq!(restarted(&p), vec!["shop/Deployment/api"], "retried once the exclusion is cleared");
}

#[test]
fn span_gate_holds_a_silent_workload_until_its_deadline() {
    let mut w = done(fresh("shop", "web"), 900);
    w.reporting = Some(false);
    let mut o = obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], vec![w.clone(), fresh("shop", "x")]);
    let p = plan(&o);
    assert_eq!(p.in_flight, vec![id("shop", "web")]);
    assert!(p.restarts.is_empty(), "the batch has not passed");
    o.now = t(1201);
    assert_eq!(restarted(&plan(&o)), vec!["shop/Deployment/x"], "silent past the deadline passes");
    w.reporting = Some(true);
    o.workloads[0] = w;
    o.now = t(1000);
    assert_eq!(restarted(&plan(&o)), vec!["shop/Deployment/x"]);
}

#[test]
fn leaving_namespace_restarts_without_injection() {
    let mut w = done(fresh("old", "web"), 100);
    w.desired_hash = None;
    let p = plan(&obs(vec![], vec![ns("shop", 0)], vec![w.clone()]));
    assert_eq!(
        p.restarts,
        vec![Restart { workload: id("old", "web"), reason: RestartReason::Leave, hash: String::new() }]
    );
    // Once its pods are uninjected it is done.
    w.restart = Some(RestartMark { hash: String::new(), at: t(990) });
    w.pods = PodCounts { total: 2, current: 0, outdated: 0, missed: 0, ready: 2 };
    let p = plan(&obs(vec![], vec![ns("shop", 0)], vec![w]));
    assert!(p.restarts.is_empty() && p.in_flight.is_empty());
}

#[test]
fn a_policy_governing_nothing_waits_for_its_leaving_restarts_to_settle() {
    // Between the old pod's deletion and the new one's creation a StatefulSet has no injected pod.
    let mut w = fresh("old", "ledger");
    w.desired_hash = None;
    w.restart = Some(RestartMark { hash: String::new(), at: t(990) });
    w.rolled_out = false;
    w.pods = PodCounts::default();
    let p = plan(&obs(vec![], vec![], vec![w.clone()]));
    assert_eq!(p.in_flight, vec![id("old", "ledger")]);
    assert!(p.restarts.is_empty());
    w.rolled_out = true;
    let p = plan(&obs(vec![], vec![], vec![w]));
    assert!(p.in_flight.is_empty() && p.restarts.is_empty(), "rolled out: nothing left to wait for");
}

#[test]
fn pods_missed_after_a_rollout_are_repaired_only_when_allowed() {
    let mut w = done(fresh("shop", "web"), 100);
    w.pods = PodCounts { total: 3, current: 2, outdated: 0, missed: 1, ready: 3 };
    let mut o = obs(vec![], vec![ns("shop", 0)], vec![w]);
    let p = plan(&o);
    assert_eq!(p.restarts.len(), 1);
    assert_eq!(p.restarts[0].reason, RestartReason::Repair);
    o.repair_missed = false;
    assert!(plan(&o).restarts.is_empty());
}

#[test]
fn a_new_agent_version_goes_through_the_pilot_first() {
    let phases = vec![phase("pilot", 1, 0), phase("expansion", 5, 0)];
    let mut outdated_pilot = done(fresh("canary", "web"), 100);
    outdated_pilot.desired_hash = Some("h2".into());
    outdated_pilot.pods = PodCounts { total: 2, current: 0, outdated: 2, missed: 0, ready: 2 };
    let mut outdated_shop = outdated_pilot.clone();
    outdated_shop.id = id("shop", "web");
    let mut o = obs(phases, vec![ns("canary", 0), ns("shop", 1)], vec![outdated_pilot, outdated_shop]);
    o.progress = Progress { phase: 1, soak_started: Some(t(0)), rerun: None };
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["canary/Deployment/web"]);
    assert_eq!(p.restarts[0].hash, "h2");
}

/// An operator upgrade ships a new agent (hash h2) to a policy rolled out in pilot and
/// expansion: the pilot restarts first, expansion waits while the pilot is in flight and while
/// it soaks, then restarts; each workload once.
#[test]
fn a_re_rollout_soaks_each_phase_before_the_next() {
    let phases = vec![phase("pilot", 1, 60), phase("expansion", 5, 0)];
    let upgraded = |ns: &str, name: &str| {
        let mut w = done(fresh(ns, name), 10);
        w.desired_hash = Some("h2".into());
        w.pods = PodCounts { total: 2, current: 0, outdated: 2, missed: 0, ready: 2 };
        w
    };
    let namespaces = vec![ns("canary", 0), ns("shop", 1)];
    let workloads = vec![upgraded("canary", "web"), upgraded("shop", "web"), upgraded("shop", "api")];
    let mut o = obs(phases, namespaces, workloads);
    o.progress = Progress { phase: 1, soak_started: Some(t(0)), rerun: None };
    o.now = t(100);

    // 1. The pilot goes first, alone.
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["canary/Deployment/web"]);
    assert_eq!(p.progress.rerun, Some(Rerun { phase: 0, soak_started: None }));
    assert_eq!(p.active_namespaces, vec!["canary", "shop"], "namespaces stay active");

    // 2. While the pilot's restart is in flight, expansion waits.
    o.progress = p.progress;
    o.workloads[0].restart = Some(RestartMark { hash: "h2".into(), at: t(100) });
    o.workloads[0].rolled_out = false;
    o.now = t(150);
    let p = plan(&o);
    assert!(p.restarts.is_empty(), "expansion started while the pilot was in flight: {:?}", restarted(&p));

    // 3. The pilot is done: it soaks 60 s before expansion starts.
    o.progress = p.progress;
    o.workloads[0].rolled_out = true;
    o.workloads[0].pods = PodCounts { total: 2, current: 2, outdated: 0, missed: 0, ready: 2 };
    o.now = t(200);
    let p = plan(&o);
    assert!(p.restarts.is_empty(), "{:?}", restarted(&p));
    assert_eq!(p.state, RolloutPhase::Soaking);
    assert_eq!(p.progress.rerun, Some(Rerun { phase: 0, soak_started: Some(t(200)) }));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(60)));
    assert!(p.message.contains("\"pilot\" soaking"), "{}", p.message);

    // 4. Mid-soak (the operator may have restarted: the soak start comes from the status).
    o.progress = p.progress;
    o.now = t(230);
    let p = plan(&o);
    assert!(p.restarts.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));

    // 5. Soak over: expansion restarts, in its own batch size; the re-rollout is over.
    o.progress = p.progress;
    o.now = t(261);
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["shop/Deployment/api", "shop/Deployment/web"]);
    assert_eq!(p.progress.rerun, None);
    assert!(p.restarts.iter().all(|r| r.hash == "h2"));
}

#[test]
fn new_work_in_an_earlier_phase_during_a_re_rollout_goes_back_to_it() {
    let phases = vec![phase("pilot", 1, 60), phase("expansion", 5, 0)];
    let mut pilot = done(fresh("canary", "web"), 10);
    pilot.desired_hash = Some("h3".into());
    pilot.pods = PodCounts { total: 2, current: 0, outdated: 2, missed: 0, ready: 2 };
    let mut o = obs(phases, vec![ns("canary", 0), ns("shop", 1)], vec![pilot]);
    // Soaking after the pilot's re-rollout when yet another image arrives.
    o.progress = Progress { phase: 1, soak_started: None, rerun: Some(Rerun { phase: 0, soak_started: Some(t(990)) }) };
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["canary/Deployment/web"]);
    assert_eq!(p.progress.rerun, Some(Rerun { phase: 0, soak_started: None }));
}

// ---- properties ----

fn arb_workload() -> impl Strategy<Value = WorkloadObservation> {
    let ns = prop_oneof![Just("a"), Just("b"), Just("c"), Just("gone")];
    let name = "[a-e]";
    let mark = prop_oneof![
        Just(None),
        (0i64..1200).prop_map(|at| Some(RestartMark { hash: HASH.into(), at: t(at) })),
        (0i64..1200).prop_map(|at| Some(RestartMark { hash: String::new(), at: t(at) }))
    ];
    let pods = (0u32..4, 0u32..4, 0u32..4, 0u32..4).prop_map(|(c, o, m, r)| PodCounts {
        total: c + o + m,
        current: c,
        outdated: o,
        missed: m,
        ready: r.min(c + o + m),
    });
    let health = prop_oneof![4 => Just(Health::Healthy), 1 => Just(Health::Failing("crash".into()))];
    let reporting = prop_oneof![Just(None), Just(Some(true)), Just(Some(false))];
    let newest_missed = prop::option::of((0i64..1200).prop_map(t));
    (ns, name, any::<bool>(), pods, newest_missed, mark, any::<bool>(), health, reporting, prop::bool::weighted(0.1))
        .prop_map(|(ns, name, has_hash, pods, newest_missed, restart, rolled_out, health, reporting, excluded)| {
            WorkloadObservation {
                id: id(ns, &name),
                desired_hash: has_hash.then(|| HASH.into()),
                newest_missed: newest_missed.filter(|_| pods.missed > 0 && has_hash),
                pods,
                restart,
                rolled_out,
                health,
                reporting,
                excluded: excluded.then(|| "failed before".into()),
            }
        })
}

fn arb_observation() -> impl Strategy<Value = Observation> {
    let phases = proptest::collection::vec((1u32..4, 0u64..900), 0..3)
        .prop_map(|v| v.into_iter().enumerate().map(|(i, (b, s))| phase(&format!("p{i}"), b, s)).collect::<Vec<_>>());
    (phases, proptest::collection::vec(arb_workload(), 0..10), 0usize..3, any::<bool>(), 0i64..2000, any::<bool>())
        .prop_map(|(phases, workloads, progress_phase, paused, now, repair)| {
            let count = phases.len().max(1);
            let namespaces = vec![ns("a", 0), ns("b", 1.min(count - 1)), ns("c", count - 1)];
            let mut dedup = std::collections::BTreeSet::new();
            let workloads = workloads.into_iter().filter(|w| dedup.insert(w.id.clone())).collect();
            Observation {
                phases,
                namespaces,
                workloads,
                progress: Progress { phase: progress_phase.min(count - 1), soak_started: None, rerun: None },
                paused,
                repair_missed: repair,
                now: t(now),
            }
        })
}

fn batch_of(o: &Observation, phase: usize) -> usize {
    o.phases.get(phase).map_or(1, |p| p.batch_size as usize)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_more_restarts_than_the_batch_allows(o in arb_observation()) {
        let p = plan(&o);
        let max_batch = (0..o.phases.len().max(1)).map(|i| batch_of(&o, i)).max().unwrap();
        prop_assert!(p.restarts.len() <= max_batch, "{} restarts, batch {}", p.restarts.len(), max_batch);
        let previously_in_flight = p.in_flight.len() - p.restarts.len();
        if !p.restarts.is_empty() {
            prop_assert!(p.in_flight.len() <= max_batch.max(previously_in_flight));
        }
    }

    #[test]
    fn never_advances_past_a_failing_or_degraded_phase(o in arb_observation()) {
        let p = plan(&o);
        if p.state == RolloutPhase::Degraded {
            prop_assert_eq!(p.progress.phase, o.progress.phase);
            prop_assert!(p.restarts.iter().all(|r| r.reason == RestartReason::Leave), "{:?}", p.restarts);
        }
        if !p.rollbacks.is_empty() {
            prop_assert_eq!(p.state, RolloutPhase::Degraded);
        }
    }

    #[test]
    fn a_paused_policy_plans_nothing_new(mut o in arb_observation()) {
        o.paused = true;
        let p = plan(&o);
        prop_assert!(p.restarts.is_empty());
        prop_assert_eq!(p.progress.phase, o.progress.phase);
    }

    #[test]
    fn the_plan_does_not_depend_on_observation_order(o in arb_observation()) {
        let mut reversed = o.clone();
        reversed.workloads.reverse();
        reversed.namespaces.reverse();
        prop_assert_eq!(plan(&o), plan(&reversed));
        prop_assert_eq!(plan(&o), plan(&o), "replaying the same observation gives the same plan");
    }

    #[test]
    fn only_active_namespaces_are_restarted_for_injection(o in arb_observation()) {
        let p = plan(&o);
        for r in p.restarts.iter().filter(|r| r.reason != RestartReason::Leave) {
            prop_assert!(p.active_namespaces.contains(&r.workload.namespace), "{} restarted outside active {:?}", r.workload, p.active_namespaces);
        }
    }
}

#[test]
fn a_degraded_rollout_names_the_excluded_workloads_and_how_to_retry() {
    let mut w = done(fresh("shop", "web"), 100);
    w.excluded = Some("not ready within 300s of its restart".into());
    let p = plan(&obs(vec![], vec![ns("shop", 0)], vec![w, fresh("shop", "api")]));
    assert_eq!(p.state, RolloutPhase::Degraded);
    assert!(p.restarts.is_empty(), "nothing else restarts while a workload waits for the user");
    assert!(p.message.contains("shop/Deployment/web (not ready within 300s"), "{}", p.message);
    assert!(p.message.contains("tracelight.io/inject=false"), "{}", p.message);
}

/// A workload of a namespace the policy left, still running injected pods.
fn leaving(namespace: &str, name: &str) -> WorkloadObservation {
    let mut w = done(fresh(namespace, name), 100);
    w.desired_hash = None;
    w
}

#[test]
fn a_degraded_rollout_still_restarts_leaving_workloads_in_batches() {
    let mut excluded = fresh("shop", "web");
    excluded.excluded = Some("crash loop".into());
    let workloads = vec![excluded, fresh("shop", "api"), leaving("old", "a"), leaving("old", "b")];
    let p = plan(&obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], workloads));
    assert_eq!(p.state, RolloutPhase::Degraded);
    assert_eq!(restarted(&p), vec!["old/Deployment/a"], "leaving goes on, one batch at a time; shop/api waits");
    assert_eq!(p.restarts[0].reason, RestartReason::Leave);
    assert!(p.message.contains("restarting without injection"), "{}", p.message);
}

#[test]
fn a_paused_policy_restarts_nothing_not_even_leaving_workloads_but_still_rolls_back() {
    let mut failing = rolling(fresh("shop", "web"), 990);
    failing.health = Health::Failing("crash loop".into());
    let mut o = obs(vec![], vec![ns("shop", 0)], vec![leaving("old", "a"), fresh("shop", "api")]);
    o.paused = true;
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Paused);
    assert!(p.restarts.is_empty(), "pause freezes leaving too: {:?}", p.restarts);
    assert!(p.message.contains("1 workload(s) wait to restart without injection"), "{}", p.message);
    o.workloads.push(failing);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Degraded);
    assert_eq!(p.rollbacks.len(), 1, "a failed restart is undone even while paused");
    assert!(p.restarts.is_empty());
}

/// A restart (requested at 990) that rolled out: one pod injected, one created at `created`
/// without injection.
fn rolled_out_with_a_missed_pod(created: i64) -> WorkloadObservation {
    let mut w = done(fresh("shop", "web"), 990);
    w.pods = PodCounts { total: 2, current: 1, outdated: 0, missed: 1, ready: 2 };
    w.newest_missed = Some(t(created));
    w
}

#[test]
fn pods_missed_since_a_restart_are_repaired_at_once_not_after_the_deadline() {
    let mut o = obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], vec![rolled_out_with_a_missed_pod(995)]);
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["shop/Deployment/web"]);
    assert_eq!(p.restarts[0].reason, RestartReason::Repair);
    o.repair_missed = false;
    let p = plan(&o);
    assert!(p.restarts.is_empty() && p.in_flight.is_empty(), "counted, not repaired: {p:?}");
    assert_eq!(p.state, RolloutPhase::Complete);
}

#[test]
fn old_pods_not_replaced_yet_are_not_taken_for_missed_ones() {
    // The uninjected pod predates the restart: a stale view of the rollout, not a missed pod.
    let p = plan(&obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], vec![rolled_out_with_a_missed_pod(900)]));
    assert!(p.restarts.is_empty());
    assert_eq!(p.in_flight, vec![id("shop", "web")]);
    // No pod of the restart injected: the webhook may not inject there; the deadline paces it.
    let mut w = rolled_out_with_a_missed_pod(995);
    w.pods = PodCounts { total: 2, current: 0, outdated: 0, missed: 2, ready: 2 };
    let mut o = obs(vec![phase("all", 1, 0)], vec![ns("shop", 0)], vec![w]);
    assert!(plan(&o).restarts.is_empty());
    o.now = t(990 + 300);
    assert_eq!(plan(&o).restarts[0].reason, RestartReason::Repair, "past the deadline it is repaired");
}

#[test]
fn new_work_during_a_soak_restarts_the_soak() {
    let phases = vec![phase("pilot", 1, 600), phase("expansion", 2, 0)];
    let namespaces = vec![ns("canary", 0), ns("shop", 1)];
    let mut o = obs(phases, namespaces, vec![done(fresh("canary", "web"), 900), fresh("canary", "new")]);
    o.progress = Progress { phase: 0, soak_started: Some(t(500)), rerun: None };
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["canary/Deployment/new"]);
    assert_eq!(p.progress, Progress { phase: 0, soak_started: None, rerun: None }, "the soak is reset");
    // The new work has passed its gates at 1100: the soak starts there, in full.
    o.workloads[1] = done(fresh("canary", "new"), 1000);
    o.progress = p.progress;
    o.now = t(1100);
    let p = plan(&o);
    assert_eq!(p.state, RolloutPhase::Soaking);
    assert_eq!(p.progress, Progress { phase: 0, soak_started: Some(t(1100)), rerun: None });
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
}

#[test]
fn leaving_work_does_not_restart_a_soak() {
    let mut o = obs(
        vec![phase("pilot", 1, 600), phase("expansion", 2, 0)],
        vec![ns("canary", 0)],
        vec![done(fresh("canary", "web"), 100), leaving("old", "a")],
    );
    o.progress = Progress { phase: 0, soak_started: Some(t(500)), rerun: None };
    let p = plan(&o);
    assert_eq!(restarted(&p), vec!["old/Deployment/a"]);
    assert_eq!(p.progress.soak_started, Some(t(500)));
}
