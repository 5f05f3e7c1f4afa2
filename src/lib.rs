//! Tracelight: a Kubernetes operator that turns on distributed tracing for a cluster's
//! workloads without touching their code.
//!
//! Pure decisions (`api`, `inject`) live apart from I/O (`webhook`, `controller`): the I/O parts
//! call the pure ones and decide nothing themselves.

pub mod agent;
pub mod allocator;
pub mod api;
pub mod cli;
pub mod controller;
pub mod inject;
pub mod rollout;
pub mod telemetry;
pub mod webhook;
