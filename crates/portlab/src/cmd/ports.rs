//! `portlab ports`: the ephemeral-port pool of this host.

use std::process::ExitCode;

/// Flags of `portlab ports`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `portlab ports`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ports: under construction")
}
