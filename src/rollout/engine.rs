//! The rollout engine: `Observation -> Plan`, a pure function.
//!
//! Phases run in order. Namespaces of phases up to the current one are active (the webhook
//! injects there). Within the active phases, workloads whose pods lack the current injection are
//! restarted in batches of the phase's size; a restart passes its gate when the workload has
//! rolled out, every pod carries the current hash and is ready, and (when agents report) spans
//! arrive. A failing restart is rolled back and the rollout stops as Degraded until the user
//! clears the exclusion. After the current phase's last batch the policy soaks, then the next
//! phase starts. Namespaces that left the policy have their injected workloads restarted without
//! injection, through the same batches.
//!
//! Decisions that are easy to get wrong, and why:
//!
//! - **Degraded stops forward progress only.** While a workload waits for the user, no
//!   workload is restarted *for injection*, but workloads leaving the policy (namespace label
//!   removed, selector narrowed, policy deleted) are still restarted without injection, in
//!   batches: leaving removes what the policy did, and a broken rollout is no reason to keep it.
//! - **Pause freezes restarts.** A paused policy requests no restart at all, leaving included:
//!   pausing is how a user says "touch nothing now". Rollbacks still happen (they undo a restart
//!   that failed; pausing must not keep a crash-looping workload broken), and time passes (a
//!   soak that ends while paused is over when the policy resumes). Deleting a policy ends its
//!   rollout, pause included: the controller plans its departure as unpaused.
//! - **Missed pods are repaired as soon as they are seen.** A restart whose workload has rolled
//!   out with every pod ready, where some pods carry the current injection and pods created
//!   since the restart lack it, is repaired at once: those pods were created while the webhook
//!   was unreachable. Old pods not yet replaced are older than the restart and are not taken
//!   for missed ones. When no pod of the restart got injected at all, the webhook may not be
//!   injecting in that namespace, and restarting again would change nothing: the health deadline
//!   paces that retry (as it does for pods missed after an earlier restart).
//! - **New work restarts the soak.** A soak measures how long the phase has run unchanged: when
//!   a restart of an active phase is needed or in flight (a new agent version, a workload
//!   cleared for retry), the soak starts again once that work has passed its gates.
//! - **A re-rollout goes phase by phase, like the first one.** When workloads of phases already
//!   rolled out need a restart again (an operator upgrade ships a new agent image, a language
//!   image changes), the earliest such phase goes first (the pilot) and each phase soaks before
//!   the next phase's restarts start ([`Rerun`]). A later phase never starts while an earlier
//!   one has a restart in flight. Namespaces stay active throughout: only restarts are paced.
//! - **Ready means Complete.** The status layer reports condition `Ready` only for
//!   [`RolloutPhase::Complete`]; every other state carries its reason.

use super::model::*;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeSet;
use std::time::Duration;

/// Where one workload stands.
#[derive(Debug, PartialEq)]
enum Standing {
    /// Nothing to do (current, scaled to zero, or not ours to inject).
    Done,
    /// Needs a restart for this reason.
    Needs(RestartReason),
    /// Restart requested; waiting for its gate until the deadline.
    InFlight { deadline: Timestamp },
    /// Restart failed: roll back.
    Failed(String),
    /// Rolled back earlier; waits for the user.
    Excluded,
}

pub fn plan(obs: &Observation) -> Plan {
    let phases = phases_or_default(&obs.phases);
    let mut progress = obs.progress.clone();
    progress.phase = progress.phase.min(phases.len() - 1);
    // A workload whose pods already lost injection may still be rolling (a StatefulSet deletes
    // its old pod before creating the new one): leaving is over only once those restarts settle.
    let leaving_restart = |w: &WorkloadObservation| w.restart.as_ref().is_some_and(|r| r.hash.is_empty());
    if obs.namespaces.is_empty() && obs.workloads.iter().all(|w| !is_leaving(obs, w) && !leaving_restart(w)) {
        return idle(RolloutPhase::Pending, progress, "no namespace is governed by this policy");
    }
    // Advancing through finished phases happens within one reconcile (bounded by the count).
    for _ in 0..=phases.len() {
        let step = plan_at(obs, &phases, &progress);
        match step {
            Step::Advance(next) => progress = next,
            Step::Done(plan) => return plan,
        }
    }
    unreachable!("each advance moves to a later phase")
}

enum Step {
    Advance(Progress),
    Done(Plan),
}

/// How often restarts in flight are looked at when nothing else wakes the controller.
pub const HEALTH_POLL: Duration = Duration::from_secs(5);

/// Health deadline of the single phase a policy without phases gets.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(600);

pub(crate) fn phases_or_default(phases: &[PhaseSettings]) -> Vec<PhaseSettings> {
    if phases.is_empty() {
        vec![PhaseSettings {
            name: "default".into(),
            batch_size: 1,
            soak: Duration::ZERO,
            health_deadline: DEFAULT_HEALTH_DEADLINE,
        }]
    } else {
        phases.to_vec()
    }
}

fn idle(state: RolloutPhase, progress: Progress, message: &str) -> Plan {
    Plan {
        state,
        active_namespaces: Vec::new(),
        restarts: Vec::new(),
        rollbacks: Vec::new(),
        in_flight: Vec::new(),
        progress,
        message: message.to_string(),
        requeue_after: None,
    }
}

fn phase_of(obs: &Observation, w: &WorkloadObservation) -> Option<usize> {
    obs.namespaces.iter().find(|n| n.name == w.id.namespace).map(|n| n.phase)
}

/// Injected pods in a namespace the policy no longer governs.
fn is_leaving(obs: &Observation, w: &WorkloadObservation) -> bool {
    phase_of(obs, w).is_none() && w.pods.current + w.pods.outdated > 0
}

fn plan_at(obs: &Observation, phases: &[PhaseSettings], progress: &Progress) -> Step {
    let p = progress.phase;
    let active: BTreeSet<String> = obs.namespaces.iter().filter(|n| n.phase <= p).map(|n| n.name.clone()).collect();

    // Stand every relevant workload: those of active namespaces, and those leaving.
    let mut standings: Vec<(&WorkloadObservation, Option<usize>, Standing)> = obs
        .workloads
        .iter()
        .filter_map(|w| match phase_of(obs, w) {
            Some(ph) if ph <= p => Some((w, Some(ph), standing(obs, w, &phases[ph]))),
            Some(_) => None,
            None if is_leaving(obs, w) || w.restart.as_ref().is_some_and(|r| r.hash.is_empty()) => {
                Some((w, None, leaving_standing(obs, w, &phases[p])))
            }
            None => None,
        })
        .collect();
    standings.sort_by(|a, b| a.0.id.cmp(&b.0.id));

    let rollbacks: Vec<Rollback> = standings
        .iter()
        .filter_map(|(w, _, s)| match s {
            Standing::Failed(reason) => Some(Rollback { workload: w.id.clone(), reason: reason.clone() }),
            _ => None,
        })
        .collect();
    let excluded: Vec<String> = standings
        .iter()
        .filter(|(_, _, s)| *s == Standing::Excluded)
        .map(|(w, _, _)| match &w.excluded {
            Some(reason) => format!("{} ({reason})", w.id),
            None => w.id.to_string(),
        })
        .collect();
    let in_flight: Vec<WorkloadId> = standings
        .iter()
        .filter(|(_, _, s)| matches!(s, Standing::InFlight { .. }))
        .map(|(w, _, _)| w.id.clone())
        .collect();
    // Pods do not wake the controller: a restart in flight is looked at again at least every
    // HEALTH_POLL, so a crash loop is caught soon, not at the health deadline.
    let requeue_after = earliest_deadline(&standings, obs.now).map(|d| d.min(HEALTH_POLL));
    let mut base = Plan {
        state: RolloutPhase::Progressing,
        active_namespaces: active.iter().cloned().collect(),
        restarts: Vec::new(),
        rollbacks,
        in_flight: in_flight.clone(),
        progress: progress.clone(),
        message: String::new(),
        requeue_after,
    };

    // Workloads that need a restart, earliest phase first; leaving ones have no phase.
    let needing: Vec<(&WorkloadObservation, Option<usize>, RestartReason)> = standings
        .iter()
        .filter_map(|(w, ph, s)| match s {
            Standing::Needs(reason) => Some((*w, *ph, *reason)),
            _ => None,
        })
        .collect();
    // Work of an active phase (not leaving) restarts the soak once it has passed its gates.
    let phase_work = standings.iter().any(|(_, ph, s)| {
        ph.is_some() && matches!(s, Standing::Needs(_) | Standing::InFlight { .. } | Standing::Failed(_))
    });
    if phase_work {
        base.progress.soak_started = None;
    }

    if obs.paused || !base.rollbacks.is_empty() || !excluded.is_empty() {
        return Step::Done(held(obs, &phases[p], base, &excluded, &needing));
    }

    // The earliest phase with work (waiting or in flight) goes first: a new agent version
    // re-runs the pilot first, and the next phase waits for its soak.
    let earliest_work = standings
        .iter()
        .filter(|(_, _, s)| matches!(s, Standing::Needs(_) | Standing::InFlight { .. }))
        .filter_map(|(_, ph, _)| *ph)
        .min();
    let (rerun, wave) = rerun_wave(progress.rerun, earliest_work, p, phases, obs.now);
    base.progress.rerun = rerun;
    let working_phase = match wave {
        Wave::Work(phase) => phase,
        Wave::Soak { soaking, next, remaining } => {
            // Leaving workloads are not paced by phases.
            let restarts = leaving_restarts(&phases[p], &in_flight, &needing);
            let mut in_flight = in_flight;
            in_flight.extend(restarts.iter().map(|r| r.workload.clone()));
            let message = format!(
                "phase {:?} soaking after its re-rollout, {}s left; then phase {:?}",
                phases[soaking].name,
                remaining.as_secs(),
                phases[next].name
            );
            let requeue_after = Some(base.requeue_after.map_or(remaining, |r| r.min(remaining)));
            return Step::Done(Plan {
                state: RolloutPhase::Soaking,
                restarts,
                in_flight,
                message,
                requeue_after,
                ..base
            });
        }
    };
    let batch = working_phase.map_or(phases[p].batch_size, |ph| phases[ph].batch_size) as usize;
    let capacity = batch.saturating_sub(in_flight.len());
    let restarts: Vec<Restart> = needing
        .iter()
        // Leaving workloads (no phase) go with any batch; phase work goes earliest phase first.
        .filter(|(_, ph, _)| ph.is_none() || *ph == working_phase)
        .take(capacity)
        .map(|(w, _, reason)| restart(w, *reason))
        .collect();

    if !needing.is_empty() || !in_flight.is_empty() {
        let mut in_flight = in_flight;
        in_flight.extend(restarts.iter().map(|r| r.workload.clone()));
        let message = format!(
            "phase {:?}: {} restarting, {} waiting (batch size {batch})",
            phases[working_phase.unwrap_or(p)].name,
            in_flight.len(),
            needing.len() - restarts.len()
        );
        return Step::Done(Plan { restarts, in_flight, message, ..base });
    }

    // Every active workload is done: soak, then advance.
    let phase = &phases[p];
    let phase_has_namespaces = obs.namespaces.iter().any(|n| n.phase == p);
    let soak_started = progress.soak_started.unwrap_or(obs.now);
    let soak_ends = add(soak_started, phase.soak);
    let last = p + 1 == phases.len();
    if phase_has_namespaces && !phase.soak.is_zero() && obs.now < soak_ends {
        let mut progress = progress.clone();
        progress.soak_started = Some(soak_started);
        let remaining = duration_between(obs.now, soak_ends);
        let message = format!("phase {:?} soaking, {}s left", phase.name, remaining.as_secs());
        return Step::Done(Plan {
            state: RolloutPhase::Soaking,
            progress,
            message,
            requeue_after: Some(remaining),
            ..base
        });
    }
    if last {
        let mut progress = progress.clone();
        progress.soak_started = Some(soak_started);
        let message = format!("all {} phase(s) rolled out", phases.len());
        return Step::Done(Plan { state: RolloutPhase::Complete, progress, message, ..base });
    }
    Step::Advance(Progress { phase: p + 1, soak_started: None, rerun: None })
}

/// What a re-rollout lets happen now.
#[derive(Debug, PartialEq)]
enum Wave {
    /// Restarts may start in this phase (none: no phase work).
    Work(Option<usize>),
    /// Phase `soaking` finished its re-rollout and soaks before phase `next` may start.
    Soak { soaking: usize, next: usize, remaining: Duration },
}

/// Paces work in phases already rolled out: `earliest_work` is the earliest phase with a restart
/// waiting or in flight, `current` the phase the rollout has reached. Returns the re-rollout
/// state to record and what it allows.
fn rerun_wave(
    rerun: Option<Rerun>,
    earliest_work: Option<usize>,
    current: usize,
    phases: &[PhaseSettings],
    now: Timestamp,
) -> (Option<Rerun>, Wave) {
    let Some(earliest) = earliest_work else {
        // Nothing left to restart: the current phase's own soak follows (it was reset by the work).
        return (None, Wave::Work(None));
    };
    if let Some(r) = rerun.filter(|r| r.phase < earliest) {
        // The re-rollout's phase has no work left: it soaks before later phases start.
        let soak_started = r.soak_started.unwrap_or(now);
        let ends = add(soak_started, phases[r.phase].soak);
        if now < ends {
            let soaking = Rerun { phase: r.phase, soak_started: Some(soak_started) };
            return (
                Some(soaking),
                Wave::Soak { soaking: r.phase, next: earliest, remaining: duration_between(now, ends) },
            );
        }
    }
    let rerun = (earliest < current).then_some(Rerun { phase: earliest, soak_started: None });
    (rerun, Wave::Work(Some(earliest)))
}

/// The plan of a rollout that does not move forward: paused (no restart at all) or waiting for
/// the user after a rollback (only workloads leaving the policy are restarted, in batches).
fn held(
    obs: &Observation,
    phase: &PhaseSettings,
    base: Plan,
    excluded: &[String],
    needing: &[(&WorkloadObservation, Option<usize>, RestartReason)],
) -> Plan {
    let restarts = if obs.paused { Vec::new() } else { leaving_restarts(phase, &base.in_flight, needing) };
    let mut in_flight = base.in_flight.clone();
    in_flight.extend(restarts.iter().map(|r| r.workload.clone()));
    let leaving = needing.iter().filter(|(_, ph, _)| ph.is_none()).count();
    let mut message = if let Some(r) = base.rollbacks.first() {
        format!("rolled back {}: {}; waiting for the exclusion to be cleared", r.workload, r.reason)
    } else if !excluded.is_empty() {
        // The condition must say which workloads wait for the user, and how to retry them.
        format!(
            "excluded after a failed rollout: {}; remove the label tracelight.io/inject=false from a pod \
             template to retry",
            excluded.join(", ")
        )
    } else {
        format!("paused in phase {:?}", phase.name)
    };
    if obs.paused && leaving > 0 {
        message.push_str(&format!("; {leaving} workload(s) wait to restart without injection"));
    } else if !restarts.is_empty() {
        message.push_str(&format!("; {} workload(s) restarting without injection", restarts.len()));
    }
    let state =
        if base.rollbacks.is_empty() && excluded.is_empty() { RolloutPhase::Paused } else { RolloutPhase::Degraded };
    Plan { state, restarts, in_flight, message, ..base }
}

/// Restarts of workloads leaving the policy (no phase), as many as `phase`'s batch has room for.
fn leaving_restarts(
    phase: &PhaseSettings,
    in_flight: &[WorkloadId],
    needing: &[(&WorkloadObservation, Option<usize>, RestartReason)],
) -> Vec<Restart> {
    let capacity = (phase.batch_size as usize).saturating_sub(in_flight.len());
    needing.iter().filter(|(_, ph, _)| ph.is_none()).take(capacity).map(|(w, _, r)| restart(w, *r)).collect()
}

fn restart(w: &WorkloadObservation, reason: RestartReason) -> Restart {
    let hash = if reason == RestartReason::Leave { String::new() } else { w.desired_hash.clone().unwrap_or_default() };
    Restart { workload: w.id.clone(), reason, hash }
}

fn standing(obs: &Observation, w: &WorkloadObservation, phase: &PhaseSettings) -> Standing {
    if w.excluded.is_some() {
        return Standing::Excluded;
    }
    let Some(desired) = &w.desired_hash else {
        return Standing::Done;
    };
    if w.pods.total == 0 {
        return Standing::Done;
    }
    let needs_injection = w.pods.outdated > 0 || w.pods.missed > 0;
    match &w.restart {
        Some(mark) if &mark.hash == desired => {
            let deadline = add(mark.at, phase.health_deadline);
            if let Health::Failing(reason) = &w.health {
                return Standing::Failed(reason.clone());
            }
            let rolled = w.rolled_out && w.pods.ready == w.pods.total;
            let settled = rolled && !needs_injection;
            // Rolled out, the webhook injected some of the new pods and missed others created
            // since the restart (it was unreachable then): no need to wait for the deadline.
            // Creation times have whole seconds; one in the restart's own second is not taken
            // as later (it could be an old pod), so that rare case waits for the deadline.
            let missed_since_restart = rolled
                && w.pods.outdated == 0
                && w.pods.current > 0
                && w.newest_missed.is_some_and(|created| created >= mark.at);
            let repair_or_done =
                || if obs.repair_missed { Standing::Needs(RestartReason::Repair) } else { Standing::Done };
            match (settled, w.reporting, obs.now >= deadline) {
                (true, None | Some(true), _) => Standing::Done,
                // Silent past the deadline: an idle service is not a broken one; coverage reports it.
                (true, Some(false), true) => Standing::Done,
                (true, Some(false), false) => Standing::InFlight { deadline },
                (false, _, false) if missed_since_restart => repair_or_done(),
                (false, _, false) => Standing::InFlight { deadline },
                // Rolled out and healthy past the deadline, yet some pods lack injection.
                (false, _, true) if rolled => repair_or_done(),
                (false, _, true) => {
                    Standing::Failed(format!("not ready within {}s of its restart", phase.health_deadline.as_secs()))
                }
            }
        }
        _ if w.pods.outdated > 0 => Standing::Needs(RestartReason::Inject),
        _ if w.pods.missed > 0 && w.pods.current == 0 => Standing::Needs(RestartReason::Inject),
        _ if w.pods.missed > 0 && obs.repair_missed => Standing::Needs(RestartReason::Repair),
        _ => Standing::Done,
    }
}

fn leaving_standing(obs: &Observation, w: &WorkloadObservation, phase: &PhaseSettings) -> Standing {
    let injected = w.pods.current + w.pods.outdated;
    match &w.restart {
        Some(mark) if mark.hash.is_empty() => {
            let deadline = add(mark.at, phase.health_deadline);
            match (injected == 0 && w.rolled_out, obs.now >= deadline) {
                (true, _) => Standing::Done,
                (false, false) => Standing::InFlight { deadline },
                // Leaving never rolls back (there is nothing to go back to): try again.
                (false, true) => Standing::Needs(RestartReason::Leave),
            }
        }
        _ if injected > 0 => Standing::Needs(RestartReason::Leave),
        _ => Standing::Done,
    }
}

fn earliest_deadline(
    standings: &[(&WorkloadObservation, Option<usize>, Standing)],
    now: Timestamp,
) -> Option<Duration> {
    standings
        .iter()
        .filter_map(|(_, _, s)| match s {
            Standing::InFlight { deadline } => Some(duration_between(now, *deadline)),
            _ => None,
        })
        .min()
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn duration_between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}
