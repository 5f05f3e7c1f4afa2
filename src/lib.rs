//! Tracelight: a Kubernetes operator that turns on distributed tracing for a cluster's
//! workloads without touching their code.
//!
//! Pure decisions (`api`, `inject`, `rollout`, `sampling`, `continuity`, and `decision`, what a
//! policy reconcile does) live apart from I/O (`webhook`, `controller`): the I/O parts call the
//! pure ones and decide nothing themselves. The agent sidecar is its own
//! binary (`agent/`); what the two exchange is the `tracelight_contract` crate.

#![forbid(unsafe_code)]

pub mod api;
pub mod baseline;
pub mod cli;
pub mod cluster_view;
pub mod continuity;
pub mod controller;
pub mod decision;
pub mod inject;
pub mod review;
pub mod rollout;
pub mod sampling;
pub mod telemetry;
pub mod webhook;
