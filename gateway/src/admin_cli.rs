//! `scopegate admin …`: placeholder until the admin CLI lands.

/// Arguments of `scopegate admin`.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {}

/// Runs an admin command.
pub fn run(_: AdminArgs) -> anyhow::Result<i32> {
    anyhow::bail!("scopegate admin is not built yet")
}
