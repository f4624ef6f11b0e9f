//! What `portlab load` adds for distributed runs: `--segment I/N` (or `--segments N` with
//! `JOB_COMPLETION_INDEX` from a Kubernetes Indexed Job) to take this agent's exact share of
//! the load, `--start-at` to start at a common wall-clock time, and the agent's identity in
//! the JSON report (`agent`), which `portlab merge` reads.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime};

use portlab_load::{LoadConfig, Plan, Segment};
use serde::{Deserialize, Serialize};

use crate::exit;

/// The environment variable Kubernetes sets to a pod's index in an Indexed Job.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Furthest in the future `--start-at` may lie (a guard against a wrong date).
const MAX_START_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Flags for running one agent of many (kept apart from hey's flags).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Distributed runs (many agents; see portlab merge)")]
pub struct AgentArgs {
    /// Run segment I of N (0-based, as Kubernetes numbers Indexed Job pods): this agent takes
    /// its exact share of -n, -c and --rate (the N shares add up to the whole; -q stays per
    /// connection, -z stays as given).
    #[arg(long = "segment", value_name = "I/N", value_parser = parse_segment, conflicts_with = "segments")]
    pub segment: Option<Segment>,
    /// Run one of N segments, the index taken from $JOB_COMPLETION_INDEX (set by a Kubernetes
    /// Indexed Job).
    #[arg(long = "segments", value_name = "N")]
    pub segments: Option<u32>,
    /// Wait until this wall-clock time before starting (RFC 3339, e.g. 2026-12-01T10:00:00Z or
    /// …+01:00), so the agents' per-second timelines line up. A time already passed starts at
    /// once (the report says how late).
    #[arg(long = "start-at", value_name = "RFC3339", value_parser = parse_start_at)]
    pub start_at: Option<jiff::Timestamp>,
}

fn parse_segment(text: &str) -> Result<Segment, String> {
    Segment::parse(text).map_err(|e| e.to_string())
}

fn parse_start_at(text: &str) -> Result<jiff::Timestamp, String> {
    text.trim().parse::<jiff::Timestamp>().map_err(|e| {
        format!("bad --start-at {text:?}: use RFC 3339 with a UTC offset, e.g. 2026-12-01T10:00:00Z ({e})")
    })
}

/// Who ran a report: what `portlab merge` names agents by. Part of the JSON report (`agent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// Host name (a pod's name in Kubernetes), from /proc/sys/kernel/hostname.
    pub hostname: String,
    /// Local addresses connections left from: the `--source-ip` list, or the one the kernel's
    /// route to the target picks.
    pub source_ips: Vec<IpAddr>,
    /// `--segment` / `--segments` of this agent, if any.
    pub segment: Option<Segment>,
    /// `--start-at` as given (RFC 3339, normalised to UTC), if any.
    pub start_at: Option<String>,
    /// How long after `--start-at` the run began, ms (the wait's own jitter, or a late start).
    pub start_late_ms: Option<f64>,
}

impl AgentArgs {
    /// This agent's segment: `--segment`, or `--segments` with the index from the environment.
    ///
    /// # Errors
    /// A usage error when `--segments` lacks a valid `JOB_COMPLETION_INDEX`.
    pub fn segment(&self) -> anyhow::Result<Option<Segment>> {
        if let Some(s) = self.segment {
            return Ok(Some(s));
        }
        let Some(count) = self.segments else {
            return Ok(None);
        };
        let raw = std::env::var(INDEX_ENV).map_err(|_| {
            exit::usage(format!(
                "--segments {count} needs {INDEX_ENV} in the environment (a Kubernetes Indexed Job sets it); elsewhere use --segment I/{count}"
            ))
        })?;
        let index: u32 = raw
            .trim()
            .parse()
            .map_err(|_| exit::usage(format!("{INDEX_ENV}={raw:?} is not a number")))?;
        Segment::new(index, count)
            .map(Some)
            .map_err(|e| exit::usage(format!("{e} ({INDEX_ENV}={index}, --segments {count})")))
    }

    /// Narrows `config` to this agent's share.
    ///
    /// # Errors
    /// A usage error when the totals cannot be split.
    pub fn apply(&self, config: &mut LoadConfig) -> anyhow::Result<Option<Segment>> {
        let segment = self.segment()?;
        if let Some(s) = segment {
            s.apply(config).map_err(|e| exit::usage(e.to_string()))?;
        }
        Ok(segment)
    }

    /// Checks `--start-at` before anything starts.
    ///
    /// # Errors
    /// A usage error when it lies more than a day ahead.
    pub fn check_start(&self) -> anyhow::Result<()> {
        if let Some(at) = self.start_at {
            let target = SystemTime::from(at);
            if target
                .duration_since(SystemTime::now())
                .is_ok_and(|d| d > MAX_START_DELAY)
            {
                return Err(exit::usage(format!(
                    "--start-at {at} is more than a day ahead; check the date"
                )));
            }
        }
        Ok(())
    }

    /// Waits until `--start-at` (if given); returns how late the start is, ms.
    pub fn wait_for_start(&self, announce: bool) -> Option<f64> {
        let at = SystemTime::from(self.start_at?);
        if announce {
            if let Ok(wait) = at.duration_since(SystemTime::now()) {
                eprintln!(
                    "portlab: waiting {:.1} s for --start-at {}",
                    wait.as_secs_f64(),
                    self.start_at?
                );
            }
        }
        // Sleeping until a wall-clock time is this flag's purpose; re-check the clock so a
        // clock step (NTP) cannot make the wait overshoot by more than one second.
        while let Ok(left) = at.duration_since(SystemTime::now()) {
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
        let late = SystemTime::now()
            .duration_since(at)
            .unwrap_or(Duration::ZERO);
        Some(late.as_secs_f64() * 1000.0)
    }

    /// The identity for the report.
    pub fn identity(
        &self,
        plan: &Plan,
        segment: Option<Segment>,
        late_ms: Option<f64>,
    ) -> AgentIdentity {
        AgentIdentity {
            hostname: hostname(),
            source_ips: source_ips(plan),
            segment,
            start_at: self.start_at.map(|t| t.to_string()),
            start_late_ms: late_ms,
        }
    }
}

/// The agent line under the text report's "Target:" section (only for a segment or a
/// `--start-at`, which a plain run has neither of).
pub fn push_text(s: &mut String, a: &AgentIdentity) {
    if a.segment.is_none() && a.start_at.is_none() {
        return;
    }
    let ips: Vec<String> = a.source_ips.iter().map(ToString::to_string).collect();
    let segment = a
        .segment
        .map_or_else(String::new, |seg| format!("segment {seg} of the load, "));
    s.push_str(&format!(
        "  {segment}agent {} ({})",
        a.hostname,
        ips.join(", ")
    ));
    if let (Some(at), Some(late)) = (&a.start_at, a.start_late_ms) {
        s.push_str(&format!(", started {late:.1} ms after --start-at {at}"));
    }
    s.push('\n');
}

/// The host name (the pod name in Kubernetes).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `--source-ip` if given, else the address the kernel's route to the target picks: a UDP
/// socket's connect() chooses it without sending anything.
fn source_ips(plan: &Plan) -> Vec<IpAddr> {
    if !plan.config.source_ips.is_empty() {
        return plan.config.source_ips.clone();
    }
    route_source(plan.target.addr).into_iter().collect()
}

fn route_source(target: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_takes_offsets_and_refuses_local_times() {
        let utc = parse_start_at("2026-12-01T10:00:00Z").expect("utc");
        let plus_one = parse_start_at("2026-12-01T11:00:00+01:00").expect("offset");
        assert_eq!(utc, plus_one);
        assert!(parse_start_at("2026-12-01 10:00").is_err());
        assert!(parse_start_at("tomorrow").is_err());
    }

    #[test]
    fn the_route_picks_loopback_for_loopback() {
        let ip = route_source("127.0.0.1:9".parse().unwrap());
        assert_eq!(ip, Some("127.0.0.1".parse().unwrap()));
    }
}
