//! Commands besides the operator and the agent: `crd` and `inject` (offline), `preview`,
//! `verify` and `graph` (read the cluster, change nothing).

pub mod baseline;
pub mod crd;
pub mod graph;
pub mod inject;
pub mod preview;
pub mod verify;
