//! Offline commands: `crd` and `inject`.

pub mod crd;
pub mod inject;
