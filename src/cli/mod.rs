//! Commands besides the operator and the agent: `crd` and `inject` (offline), `preview`,
//! `verify` and `graph` (read the cluster, change nothing).

pub mod baseline;
pub mod crd;
pub mod graph;
pub mod inject;
pub mod preview;
pub mod verify;

use crate::api::TracingPolicy;
use anyhow::Context as _;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// Every TracingPolicy in the cluster, for the read-only commands; an error when `name` is
/// given and no policy has it (a typo must not print an empty, passing verdict).
pub async fn list_policies(client: &Client, name: Option<&str>) -> anyhow::Result<Vec<TracingPolicy>> {
    let policies = Api::<TracingPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing TracingPolicies")?
        .items;
    if let Some(name) = name {
        anyhow::ensure!(policies.iter().any(|p| p.name_any() == name), "TracingPolicy {name} not found");
    }
    Ok(policies)
}
