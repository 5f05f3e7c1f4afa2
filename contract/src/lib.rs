//! What the Tracelight operator and its agent exchange, and nothing else: the agent's config
//! file (written by the operator into a per-namespace ConfigMap), the agent's report (pushed to
//! the operator), the enums and value types both sides read, and the contract's version.
//!
//! No Kubernetes types live here, so the agent links none of them.
//!
//! # Skew rules (see [`config`] and [`report`])
//!
//! Operator and agents of different versions run side by side during every upgrade, in both
//! directions. Each side therefore reads what it does not know without failing:
//!
//! - an agent ignores config fields it does not know (and logs them once);
//! - the operator ignores report fields it does not know, and fills in defaults for missing ones;
//! - a change to the config is additive within one config file: a new field is optional and the
//!   agent of the previous contract version runs correctly without it; an existing field never
//!   changes meaning, never becomes required, and an enum never gains a value the previous
//!   agent would be handed. A change that cannot follow these rules gets a new file
//!   ([`config::ConfigFile`]) that the operator writes beside the old one.
//!
//! The serialized config and report of every released contract version are kept as fixtures
//! (`contract/fixtures/`) and read back by the tests of both sides.

#![forbid(unsafe_code)]

pub mod collector;
pub mod config;
pub mod probe;
pub mod ratio;
pub mod red;
pub mod report;
pub mod sampling;

pub use collector::{CollectorProtocol, Compression};
pub use config::{AgentConfig, ConfigFile};
pub use ratio::{Ratio, RatioError};
pub use report::AgentReport;

/// The contract version this build speaks. Version 1 is Tracelight 0.1.0 (one binary, a strict
/// config parser); version 2 added the versioned, skew-tolerant config file and the agent's
/// version and contract in its report; version 3 added sampling rules, `keepErrors` and local
/// caps to the config (within `config.v2.yaml`); per-rule counters, the RED summary and the
/// agent's own CPU and memory to the report; and probe traces (probe settings in the config,
/// probe spans in the report; see [`probe`]).
pub const CONTRACT_VERSION: u32 = 3;

/// The version of this build (operator and agent are released together).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
