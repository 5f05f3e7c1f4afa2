//! The whole rollout ahead, phase by phase and batch by batch (`tracelight preview`). The engine
//! decides one step at a time; this lays every step out from the same observation, assuming
//! each batch passes its gates.

use super::model::{Observation, PhaseSettings, RestartReason, WorkloadId, WorkloadObservation};

/// One phase of the preview.
#[derive(Clone, Debug, PartialEq)]
pub struct PhasePreview {
    pub settings: PhaseSettings,
    pub namespaces: Vec<String>,
    /// Workloads to restart, in restart order, grouped by batch.
    pub batches: Vec<Vec<(WorkloadId, RestartReason)>>,
}

/// What a rollout would do from the observed state.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Preview {
    pub phases: Vec<PhasePreview>,
    /// Workloads of namespaces the policy left, restarted without injection.
    pub leaving: Vec<WorkloadId>,
    /// Workloads whose pods already carry the current injection.
    pub current: usize,
    /// Workloads rolled back earlier (excluded until the user clears the exclusion).
    pub excluded: Vec<WorkloadId>,
    /// Workloads the injector would not touch (opted out, not selected, scaled to zero).
    pub left_alone: usize,
}

impl Preview {
    /// Restarts the whole rollout would request.
    pub fn restarts(&self) -> usize {
        self.phases.iter().flat_map(|p| &p.batches).map(Vec::len).sum::<usize>() + self.leaving.len()
    }
}

/// Where one workload stands before any restart of this rollout.
enum Need {
    Restart(RestartReason),
    Current,
    Excluded,
    LeftAlone,
}

fn need(w: &WorkloadObservation, repair_missed: bool) -> Need {
    if w.excluded.is_some() {
        return Need::Excluded;
    }
    if w.desired_hash.is_none() || w.pods.total == 0 {
        return Need::LeftAlone;
    }
    match w.pods {
        p if p.outdated > 0 => Need::Restart(RestartReason::Inject),
        p if p.missed > 0 && p.current == 0 => Need::Restart(RestartReason::Inject),
        p if p.missed > 0 && repair_missed => Need::Restart(RestartReason::Repair),
        _ => Need::Current,
    }
}

/// Lays out every phase's batches from `obs` (its progress and restart marks are ignored: the
/// preview shows the rollout as it would run from the observed pods).
pub fn preview(obs: &Observation) -> Preview {
    let phases = super::engine::phases_or_default(&obs.phases);
    let mut out = Preview::default();
    let mut per_phase: Vec<Vec<(WorkloadId, RestartReason)>> = vec![Vec::new(); phases.len()];
    let mut workloads: Vec<&WorkloadObservation> = obs.workloads.iter().collect();
    workloads.sort_by(|a, b| a.id.cmp(&b.id));
    for w in workloads {
        let phase = obs.namespaces.iter().find(|n| n.name == w.id.namespace).map(|n| n.phase.min(phases.len() - 1));
        let Some(phase) = phase else {
            if w.pods.current + w.pods.outdated > 0 {
                out.leaving.push(w.id.clone());
            }
            continue;
        };
        match need(w, obs.repair_missed) {
            Need::Restart(reason) => per_phase[phase].push((w.id.clone(), reason)),
            Need::Current => out.current += 1,
            Need::Excluded => out.excluded.push(w.id.clone()),
            Need::LeftAlone => out.left_alone += 1,
        }
    }
    let last = phases.len() - 1;
    for (index, (settings, restarts)) in phases.into_iter().zip(per_phase).enumerate() {
        let mut namespaces: Vec<String> =
            obs.namespaces.iter().filter(|n| n.phase.min(last) == index).map(|n| n.name.clone()).collect();
        namespaces.sort();
        let size = settings.batch_size.max(1) as usize;
        let batches = restarts.chunks(size).map(<[_]>::to_vec).collect();
        out.phases.push(PhasePreview { settings, namespaces, batches });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{NamespaceObservation, PodCounts, Progress, WorkloadKind};
    use k8s_openapi::jiff::Timestamp;
    use std::time::Duration;

    fn workload(namespace: &str, name: &str, pods: PodCounts) -> WorkloadObservation {
        WorkloadObservation {
            id: WorkloadId { namespace: namespace.into(), kind: WorkloadKind::Deployment, name: name.into() },
            desired_hash: Some("h".into()),
            pods,
            newest_missed: None,
            restart: None,
            rolled_out: true,
            health: Default::default(),
            reporting: None,
            excluded: None,
        }
    }

    fn phase(name: &str, batch: u32) -> PhaseSettings {
        PhaseSettings {
            name: name.into(),
            batch_size: batch,
            soak: Duration::from_secs(5),
            health_deadline: Duration::from_secs(60),
        }
    }

    const UNINJECTED: PodCounts = PodCounts { total: 1, current: 0, outdated: 0, missed: 1, ready: 1 };

    #[test]
    fn phases_are_laid_out_in_batches_in_restart_order() {
        let mut excluded = workload("b", "broken", UNINJECTED);
        excluded.excluded = Some("crash loop".into());
        let mut opted_out = workload("b", "opted-out", UNINJECTED);
        opted_out.desired_hash = None;
        let obs = Observation {
            phases: vec![phase("pilot", 1), phase("expansion", 2)],
            namespaces: vec![
                NamespaceObservation { name: "a".into(), phase: 0 },
                NamespaceObservation { name: "b".into(), phase: 1 },
            ],
            workloads: vec![
                workload("b", "e3", UNINJECTED),
                workload("a", "p2", UNINJECTED),
                workload("b", "e1", PodCounts { total: 1, outdated: 1, ready: 1, ..Default::default() }),
                workload("a", "p1", UNINJECTED),
                workload("b", "e2", UNINJECTED),
                workload("b", "done", PodCounts { total: 1, current: 1, ready: 1, ..Default::default() }),
                excluded,
                opted_out,
                workload("gone", "web", PodCounts { total: 1, outdated: 1, ready: 1, ..Default::default() }),
            ],
            progress: Progress::default(),
            paused: false,
            repair_missed: true,
            now: Timestamp::UNIX_EPOCH,
        };
        let p = preview(&obs);
        let names = |phase: &PhasePreview| -> Vec<Vec<String>> {
            phase.batches.iter().map(|b| b.iter().map(|(id, _)| id.name.clone()).collect()).collect()
        };
        assert_eq!(p.phases.len(), 2);
        assert_eq!(p.phases[0].namespaces, vec!["a"]);
        assert_eq!(names(&p.phases[0]), vec![vec!["p1"], vec!["p2"]], "pilot: batches of 1");
        assert_eq!(names(&p.phases[1]), vec![vec!["e1", "e2"], vec!["e3"]], "expansion: batches of 2");
        assert_eq!(p.phases[1].batches[0][0].1, RestartReason::Inject, "outdated pods are re-injected");
        assert_eq!(p.leaving.len(), 1);
        assert_eq!((p.current, p.excluded.len(), p.left_alone), (1, 1, 1));
        assert_eq!(p.restarts(), 6);
    }

    #[test]
    fn without_phases_everything_is_one_default_phase() {
        let obs = Observation {
            phases: vec![],
            namespaces: vec![NamespaceObservation { name: "a".into(), phase: 0 }],
            workloads: vec![workload("a", "x", UNINJECTED)],
            progress: Progress::default(),
            paused: false,
            repair_missed: false,
            now: Timestamp::UNIX_EPOCH,
        };
        let p = preview(&obs);
        assert_eq!(p.phases.len(), 1);
        assert_eq!(p.phases[0].settings.name, "default");
        assert_eq!(p.phases[0].namespaces, vec!["a"]);
        assert_eq!(p.restarts(), 1);
    }
}
