//! `tracelight inject`: offline injection of manifests (placeholder until the injector lands).

#[derive(clap::Args, Debug)]
pub struct InjectArgs {}

pub fn run(_args: &InjectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
