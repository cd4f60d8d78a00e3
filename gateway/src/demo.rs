//! `scopegate demo`: placeholder until the demo lands.

/// Arguments of `scopegate demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs the demo.
pub fn run(_: DemoArgs) -> anyhow::Result<i32> {
    anyhow::bail!("scopegate demo is not built yet")
}
