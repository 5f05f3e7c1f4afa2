//! What the rollout engine sees and what it decides. Plain data: the controller fills
//! [`Observation`] from the API (policy status, workload templates, pod metadata, agent reports)
//! and carries out [`Plan`].

use k8s_openapi::jiff::Timestamp;
use std::fmt;

/// A workload kind the rollout restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// Identity of a workload; the derived order (namespace, kind, name) is the restart order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind.as_str(), self.name)
    }
}

/// A restart the operator requested, read back from the workload's pod-template annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartMark {
    /// Manifest hash the restart was for ("" for a restart that removes injection).
    pub hash: String,
    pub at: Timestamp,
}

/// Pod counts of one workload (from pod metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodCounts {
    pub total: u32,
    /// Injected with the desired manifest hash.
    pub current: u32,
    /// Injected with another hash.
    pub outdated: u32,
    /// Not injected although they should be.
    pub missed: u32,
    pub ready: u32,
}

/// Health of a workload's newest pods, compared with before its restart.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Healthy,
    /// Crash-looping or restarting since the restart: the reason, for the Event and the status.
    Failing(String),
}

/// One workload in a governed (or formerly governed) namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadObservation {
    pub id: WorkloadId,
    /// Manifest hash its pods should carry; `None` when the injector would not inject it
    /// (opted out, no eligible container): such workloads are left alone.
    pub desired_hash: Option<String>,
    pub pods: PodCounts,
    /// Creation time of the newest pod that missed injection (`None` when none did): compared
    /// with the last restart, it tells pods the webhook missed from old pods not replaced yet.
    pub newest_missed: Option<Timestamp>,
    /// The last restart the operator requested, if any.
    pub restart: Option<RestartMark>,
    /// The workload controller has finished rolling out its current template.
    pub rolled_out: bool,
    pub health: Health,
    /// Whether its agents report spans; `None` when no report is available (no gate).
    pub reporting: Option<bool>,
    /// Set when the operator rolled it back: the reason. Cleared by the user to retry.
    pub excluded: Option<String>,
}

/// One namespace with its rollout phase already resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceObservation {
    pub name: String,
    /// Index of the phase it belongs to.
    pub phase: usize,
}

/// A phase's pacing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSettings {
    pub name: String,
    pub batch_size: u32,
    pub soak: std::time::Duration,
    pub health_deadline: std::time::Duration,
}

/// Rollout progress as recorded in the policy status (so a restarted operator continues).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Index of the phase being rolled out.
    pub phase: usize,
    /// When the current phase's last batch finished (its soak started).
    pub soak_started: Option<Timestamp>,
    /// A re-rollout of phases already rolled out (a new agent image after an operator upgrade, a
    /// changed language image) in progress: it goes phase by phase, each soaking before the
    /// next one's restarts start.
    pub rerun: Option<Rerun>,
}

/// The earlier phase a re-rollout is working on (or soaking after).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rerun {
    pub phase: usize,
    /// When its last restart passed its gate (its soak started); none while it has work.
    pub soak_started: Option<Timestamp>,
}

/// Everything the engine decides from.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub phases: Vec<PhaseSettings>,
    /// Governed namespaces.
    pub namespaces: Vec<NamespaceObservation>,
    /// Workloads of governed namespaces, and injected workloads of namespaces that left.
    pub workloads: Vec<WorkloadObservation>,
    pub progress: Progress,
    pub paused: bool,
    pub repair_missed: bool,
    pub now: Timestamp,
}

/// Why a workload is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// Not injected yet, or injected with an older manifest.
    Inject,
    /// Pods missed injection (created while the webhook was down).
    Repair,
    /// Its namespace left the policy: restart without injection.
    Leave,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub workload: WorkloadId,
    pub reason: RestartReason,
    /// Hash to record in the restart mark ("" when leaving).
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub workload: WorkloadId,
    pub reason: String,
}

/// Overall state, mirrored into `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    Pending,
    Progressing,
    Soaking,
    Paused,
    Degraded,
    Complete,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub state: RolloutPhase,
    /// Namespaces whose agent config must exist and which the webhook may inject (phases up to
    /// the current one), sorted.
    pub active_namespaces: Vec<String>,
    /// Workload restarts to request now (never more than the batch allows).
    pub restarts: Vec<Restart>,
    /// Workloads to roll back (exclude from injection and restart).
    pub rollbacks: Vec<Rollback>,
    /// Restarts in flight after this plan (requested and not yet passed their gates).
    pub in_flight: Vec<WorkloadId>,
    /// Progress to record in the status.
    pub progress: Progress,
    /// A one-line explanation for the `Progressing` condition and the logs.
    pub message: String,
    /// When to look again even if nothing changes (soak end, health deadline).
    pub requeue_after: Option<std::time::Duration>,
}
