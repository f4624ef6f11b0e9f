//! `portlab` — find, explain, predict and reproduce TCP ephemeral-port exhaustion.
//!
//! This binary is thin: it parses arguments (clap), calls the library crates and renders
//! their plain-data reports as text or JSON. Each subcommand lives in `cmd/<name>.rs` with an
//! `Args` struct and a `run(args) -> anyhow::Result<ExitCode>` function.
//!
//! Exit codes: 0 success, 1 a run that failed (or found failures where the command says so),
//! 2 a usage error (bad flag, bad value) — see [`exit::UsageError`].

mod cmd;
mod duration;
mod exit;
mod netns;
mod plot;
mod render;
mod serving;
mod style;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Find, explain, predict and reproduce TCP ephemeral-port exhaustion.
#[derive(Debug, Parser)]
#[command(name = "portlab", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reproduce the seed incident in a sandbox: load tester → port forwarder → server at
    /// rising concurrency, then the fixes; a table, the diagnosis and the story (the main job).
    Reproduce(cmd::reproduce::Args),
    /// Load a URL with hey's flags, counting and classifying every failure (errno →
    /// class, connection stats, per-second timeline).
    Load(Box<cmd::load::Args>),
    /// Show this host's ephemeral-port pool: settings, sockets by state, usage per destination,
    /// headroom and kernel counters.
    Ports(cmd::ports::Args),
    /// Diagnose this host without generating load: settings, pool usage, counters, findings
    /// and remedies.
    Doctor(cmd::doctor::Args),
    /// Capacity arithmetic for an OS profile: ports per pool, sustainable connections/s, time
    /// to exhaustion and failure fraction for a churn, beside the folk formula ports/TIME_WAIT.
    Model(cmd::model::Args),
    /// Simulate a workload against an OS's port allocator (deterministic, seeded): per-second
    /// timeline, totals, first failure; text, JSON or an SVG plot.
    Simulate(cmd::simulate::Args),
    /// Run the HTTP/1.1 (and h2c) target: any path answers with a small fixed body; keep-alive
    /// knobs, delays and seeded fault injection.
    Serve(cmd::serve::Args),
    /// Run a TCP port forwarder (portproxy equivalent) or, with --mode http, a reverse proxy
    /// with an upstream connection pool.
    Proxy(cmd::proxy::Args),
    /// Serve per-destination port-pool metrics for Prometheus (/metrics): utilisation per
    /// (source IP, destination) pool, settings and kernel counters.
    Exporter(cmd::exporter::Args),
    /// Merge the `load --json` reports of many agents (e.g. `load --segment I/N` on a
    /// Kubernetes Indexed Job) into one report: exact sums, merged histograms, the diagnosis.
    Merge(cmd::merge::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::docs::CompletionsArgs),
    /// Print the man page portlab(1) in roff (`portlab man | man -l -`).
    Man(cmd::docs::ManArgs),
    /// Read text captured on a Windows, macOS or Linux host (netstat, Get-NetTCPConnection,
    /// netsh, ss, load-tester errors): the pool report and the diagnosis for that OS.
    Analyze(cmd::analyze::Args),
    /// Trace every connect() on this host from kernel tracepoints: outcomes per process and
    /// destination, errnos, failed port-search time, TIME_WAIT entries; then the diagnosis.
    Trace(cmd::trace::Args),
    /// Internal: the process that holds a `reproduce` sandbox's namespaces.
    #[command(name = "__sandbox-anchor", hide = true)]
    SandboxAnchor(cmd::reproduce::AnchorArgs),
    /// Internal: the conntrack watcher and UDP tools `reproduce --nat` runs in its sandbox.
    #[command(name = "__nat-tool", hide = true)]
    NatTool(cmd::nat_tool::Args),
}

fn main() -> ExitCode {
    // hey's single-dash long flags (`-disable-keepalive`, `-h2`) before clap sees them.
    let argv = match cmd::hey::normalise(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(msg) => return exit::report_error(&exit::usage(msg)),
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(err) => return exit::clap_error(err),
    };
    let result = match cli.command {
        Command::Ports(args) => cmd::ports::run(args),
        Command::Reproduce(args) => cmd::reproduce::run(args),
        Command::SandboxAnchor(args) => cmd::reproduce::run_anchor(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Load(args) => cmd::load::run(*args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Model(args) => cmd::model::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Exporter(args) => cmd::exporter::run(args),
        Command::NatTool(args) => cmd::nat_tool::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Completions(args) => cmd::docs::completions(&args, Cli::command()),
        Command::Man(args) => cmd::docs::man(&args, Cli::command()),
        Command::Analyze(args) => cmd::analyze::run(args),
        Command::Trace(args) => cmd::trace::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => exit::report_error(&err),
    }
}
