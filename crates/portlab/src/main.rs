//! `portlab` — find, explain, predict and reproduce TCP ephemeral-port exhaustion.
//!
//! This binary is thin: it parses arguments (clap), calls the library crates and renders
//! their plain-data reports as text or JSON. Each subcommand lives in `cmd/<name>.rs` with an
//! `Args` struct and a `run(args) -> anyhow::Result<ExitCode>` function.
//!
//! Exit codes: 0 success, 1 a run that failed (or found failures where the command says so),
//! 2 a usage error (bad flag, bad value) — see [`exit::UsageError`].

mod cmd;
mod exit;
#[allow(dead_code)] // used by load, simulate and reproduce as they land
mod plot;
mod render;
mod style;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Find, explain, predict and reproduce TCP ephemeral-port exhaustion.
#[derive(Debug, Parser)]
#[command(name = "portlab", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this host's ephemeral-port pool: settings, sockets by state, usage per destination,
    /// headroom and kernel counters.
    Ports(cmd::ports::Args),
    /// Reproduce the seed incident in a sandbox: load tester → port forwarder → server at
    /// rising concurrency, then the fixes; a table, the diagnosis and the story (the main job).
    Reproduce(cmd::reproduce::Args),
    /// Internal: the process that holds a `reproduce` sandbox's namespaces.
    #[command(name = "__sandbox-anchor", hide = true)]
    SandboxAnchor(cmd::reproduce::AnchorArgs),
    /// Diagnose this host without generating load: settings, pool usage, counters, findings
    /// and remedies.
    Doctor(cmd::doctor::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return exit::clap_error(err),
    };
    let result = match cli.command {
        Command::Ports(args) => cmd::ports::run(args),
        Command::Reproduce(args) => cmd::reproduce::run(args),
        Command::SandboxAnchor(args) => cmd::reproduce::run_anchor(args),
        Command::Doctor(args) => cmd::doctor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => exit::report_error(&err),
    }
}
