//! Controllers (I/O).

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run(_args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
