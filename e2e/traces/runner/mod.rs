//! The pod runner: runs a pod exactly as the real API server stored it (after the Tracelight
//! webhook injected it) on this host, because the e2e cluster's kwok nodes run nothing.
//!
//! - each container is a process (images map to host programs and files: [`images`]);
//! - env as the kubelet builds it: downward API, ConfigMap/Secret references, `$(VAR)`
//!   expansion in env, command and args ([`env`], [`expand`]);
//! - volumes written to the pod's directory (emptyDir, configMap, secret, projected with
//!   service-account tokens from the TokenRequest API: [`token`]), re-synced on demand like the
//!   kubelet's volume sync, and container paths mapped to them in command, args and env values
//!   ([`paths`]);
//! - init containers in order: the language copiers really run their `cp` against the mapped
//!   image content; the agent, a native sidecar, starts first and must pass its startup probe
//!   before the next container starts ([`pod`]);
//! - one network namespace per pod, so every pod has its own loopback for its agent, with
//!   Service names in the pod's hosts file; `hostNetwork` pods share their node's ([`net`]).
//!
//! Not emulated, on purpose: users, read-only mounts, resource limits, restarts, other volume
//! types (hostPath, PVCs, ...), exec and gRPC probes, Service link env variables. Anything the
//! runner cannot do faithfully is an error.

pub mod env;
pub mod expand;
pub mod forward;
pub mod images;
pub mod net;
pub mod paths;
pub mod pod;
pub mod probe;
pub mod token;
