//! What a TracingPolicy reconcile does, decided as pure functions of the cached state: no
//! `kube::Client`, no I/O, nothing from `crate::controller` (the controller calls these, never
//! the other way round).
//!
//! - [`intent`]: [`decide`], from the cached state to the [`ReconcileIntent`] the controller
//!   carries out in order, and the second pure step after failed writes
//!   ([`ReconcileIntent::after_writes`]); a deleted policy's [`decide_departure`];
//! - [`governance`]: which namespaces a policy governs, the step in each, stale agent objects,
//!   pod counts;
//! - [`status`]: the status that results (phase, conditions, coverage);
//! - [`workloads`]: the rollout engine's view of the workloads (observation from cache
//!   snapshots, coverage), the restarts to request, a deleted policy's departure, and the
//!   memo of restarts requested;
//! - [`agent_objects`]: the agent ConfigMap and Secret written into governed namespaces, as values;
//! - [`continuity`]: trace continuity in the status;
//! - [`after_rollout`]: the baseline, the review and the regression rule.

pub mod after_rollout;
pub mod agent_objects;
pub mod continuity;
pub mod governance;
pub mod intent;
pub mod status;
pub mod workloads;

pub use intent::{
    cleaned_up_note, decide, decide_departure, decide_invalid_spec, AgentObjects, DepartureIntent, InvalidSpecIntent,
    PolicyEvent, ReconcileInputs, ReconcileIntent, SourceSecrets, MIN_REQUEUE, REQUEUE_AFTER, RETRY_AFTER,
};
