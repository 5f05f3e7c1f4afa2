//! The cluster suite's chart installation and cleanup (`e2e/tests/suite/setup.rs`), shared
//! rather than copied: this module gives `setup.rs` the parent it expects (the constants and the
//! [`Suite`] state of `e2e/tests/suite/shared.rs`), without compiling the suite's own steps.

#[allow(dead_code)]
#[path = "../tests/suite/setup.rs"]
pub mod setup;

#[allow(dead_code)]
#[path = "../tests/suite/shared.rs"]
mod shared;

pub use shared::*;
