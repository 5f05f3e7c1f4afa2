//! Commands besides the operator and the agent: `crd` and `inject` (offline), `preview`
//! (reads the cluster, changes nothing).

pub mod crd;
pub mod inject;
pub mod preview;
