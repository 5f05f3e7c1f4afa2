//! Phased rollout (pure): from what the controller observed to what it should do next.
//! See [`engine`] for the rules; the controller carries the [`model::Plan`] out.

pub mod coverage;
pub mod engine;
pub mod model;
pub mod observe;
pub mod pod;
pub mod preview;
pub mod workload;

pub use engine::plan;
pub use model::*;

#[cfg(test)]
pub(crate) mod tests;
