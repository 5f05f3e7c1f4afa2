//! How both Tracelight binaries (`tracelight` and `tracelight-agent`) start a long-running
//! process: the allocator's options, the log subscriber, the shutdown signals and the `/metrics`
//! answer. Shared so the two cannot drift.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod logging;
pub mod metrics;
pub mod signal;
