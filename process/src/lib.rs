//! How both Tracelight binaries (`tracelight` and `tracelight-agent`) start a long-running
//! process: the allocator's options and the log subscriber. Shared so the two cannot drift.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod logging;
