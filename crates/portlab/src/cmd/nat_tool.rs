//! The hidden `portlab __nat-tool`: the helpers `reproduce --nat` runs inside its sandbox — a
//! conntrack watcher and a UDP echo server and client (see portlab_lab::nat_tools).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// Flags of `portlab __nat-tool` (set by portlab-lab, not by users).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Print a JSON conntrack sample every interval until stdin closes.
    Watch {
        /// Milliseconds between samples.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
    /// Echo UDP datagrams until killed.
    UdpEcho {
        /// Address to bind.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run one-shot UDP request/reply flows, each from a new source port; print a JSON report.
    UdpFlows {
        /// Destination.
        #[arg(long)]
        to: SocketAddr,
        /// Source address of the first flow; flow i uses port + i.
        #[arg(long)]
        source: SocketAddr,
        /// Number of flows.
        #[arg(short = 'n', long, default_value_t = 1)]
        flows: u64,
        /// How long each flow waits for its reply, ms.
        #[arg(long, default_value_t = 50)]
        wait_ms: u64,
    },
}

/// Runs `portlab __nat-tool`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.tool {
        Tool::Watch { interval_ms } => {
            portlab_lab::nat_tools::watch(
                Duration::from_millis(interval_ms.max(1)),
                std::io::stdin(),
                std::io::stdout().lock(),
            )
            .context("conntrack watcher")?;
        }
        Tool::UdpEcho { listen } => {
            portlab_lab::nat_tools::udp_echo(listen, std::io::stdout().lock())
                .with_context(|| format!("UDP echo on {listen}"))?;
        }
        Tool::UdpFlows {
            to,
            source,
            flows,
            wait_ms,
        } => {
            let report = portlab_lab::nat_tools::udp_flows(
                to,
                source,
                flows,
                Duration::from_millis(wait_ms),
            );
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
