//! The model's prediction beside each measured step: `portlab simulate --json` (the
//! discrete-event simulator of the port allocator) when the binary has it, otherwise the
//! closed-form estimate [`closed_form_failure_fraction`].

use std::process::{Command, Stdio};

use serde::Serialize;

use crate::scenario::{Path, Policy, Scenario};

/// Linux's TIME_WAIT length (TCP_TIMEWAIT_LEN in include/net/tcp.h, compiled in).
pub(crate) const TIME_WAIT_SECS: f64 = 60.0;

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionSource {
    /// `portlab simulate` (portlab-model's simulator).
    Simulate,
    /// [`closed_form_failure_fraction`].
    ClosedForm,
}

/// A predicted failure fraction for one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// Predicted share of requests that fail, 0–1.
    pub failure_fraction: f64,
    /// Which model made it.
    pub source: PredictionSource,
}

/// Closed-form estimate of the share of requests that fail with EADDRNOTAVAIL on the load
/// tester's leg, for a run shorter than TIME_WAIT.
///
/// - `drop` (client closes first): every request takes a port that then sits in TIME_WAIT on
///   the client. One pool (source IP × destination) holds `pool_ports`; with `tcp_tw_reuse` 1
///   or 2 (the sandbox is all loopback) a port is free again after `tw_reuse_delay_secs`, and
///   without it after 60 s. Requests beyond `pools × pool_ports × turnovers` fail.
/// - `close`: the server closes first, TIME_WAIT lands on the server's side (its listening
///   port, not an ephemeral one): nothing fails.
/// - `keep-alive`: `concurrency` connections, which fail only if they exceed the pools.
///
/// Behind a forwarder the upstream leg churns exactly like the client leg, so it fills at the
/// same time; the client leg, one hop earlier, sees the EADDRNOTAVAIL.
pub fn closed_form_failure_fraction(
    policy: Policy,
    requests: u64,
    concurrency: usize,
    pools: usize,
    pool_ports: u64,
    tw_reuse: u8,
    elapsed_secs: f64,
) -> f64 {
    if requests == 0 {
        return 0.0;
    }
    let capacity = (pools.max(1) as f64) * pool_ports as f64;
    let needed = match policy {
        Policy::Close => return 0.0,
        Policy::KeepAlive => concurrency as f64,
        Policy::Drop => requests as f64,
    };
    let block_secs = if tw_reuse == 0 { TIME_WAIT_SECS } else { 1.0 };
    let turnovers = match policy {
        Policy::Drop => 1.0 + (elapsed_secs.max(0.0) / block_secs).floor(),
        _ => 1.0,
    };
    let failed = (needed - capacity * turnovers).max(0.0);
    let failed_requests = match policy {
        // A connection that cannot be opened fails every request it would have carried.
        Policy::KeepAlive => failed / concurrency.max(1) as f64 * requests as f64,
        _ => failed,
    };
    (failed_requests / requests as f64).clamp(0.0, 1.0)
}

/// Predicts steps, asking `portlab simulate` while it answers and remembering when it does not.
#[derive(Debug)]
pub(crate) struct Predictor {
    exe: std::path::PathBuf,
    simulate_works: Option<bool>,
}

impl Predictor {
    pub(crate) fn new(exe: &std::path::Path) -> Self {
        Predictor {
            exe: exe.to_path_buf(),
            simulate_works: None,
        }
    }

    /// The prediction for `s`: the worse of its legs — the load tester's, and behind the
    /// forwarder its upstream leg (one source IP; it closes first when the client does, the
    /// server closes first on `Connection: close`, and it keeps a connection per kept-alive
    /// client connection). A request fails if either leg has no port; the legs churn alike, so
    /// the worse one sets the failure share. `elapsed_secs` (measured) matters only with
    /// TIME_WAIT reuse on, for the closed form.
    pub(crate) fn predict(
        &mut self,
        s: &Scenario,
        range: (u16, u16),
        pool_ports: u64,
        tw_reuse: u8,
        elapsed_secs: f64,
    ) -> Prediction {
        let mut legs = vec![(s.policy, s.source_ips.len().max(1))];
        if s.path == Path::Forwarder {
            legs.push((s.policy, 1));
        }
        legs.dedup();
        if self.simulate_works != Some(false) {
            let simulated: Option<Vec<f64>> = legs
                .iter()
                .map(|&(policy, pools)| {
                    self.simulate(s, range, tw_reuse, policy, pools, elapsed_secs)
                })
                .collect();
            match simulated {
                Some(fractions) => {
                    self.simulate_works = Some(true);
                    return Prediction {
                        failure_fraction: fractions.into_iter().fold(0.0, f64::max),
                        source: PredictionSource::Simulate,
                    };
                }
                None => self.simulate_works = Some(false),
            }
        }
        let failure_fraction = legs
            .iter()
            .map(|&(policy, pools)| {
                closed_form_failure_fraction(
                    policy,
                    s.requests,
                    s.concurrency,
                    pools,
                    pool_ports,
                    tw_reuse,
                    elapsed_secs,
                )
            })
            .fold(0.0, f64::max);
        Prediction {
            failure_fraction,
            source: PredictionSource::ClosedForm,
        }
    }

    /// `portlab simulate --json` for one leg; `None` when the command is missing or its output
    /// lacks `simulation.failure_fraction`. The simulated workers are paced like the measured
    /// ones: each request, answered or failed, takes the mean wall time a worker spent per
    /// request (elapsed × concurrency ÷ requests), so a simulated run lasts as long as the real
    /// one — which decides how many TIME_WAIT ports come free again when reuse is on.
    fn simulate(
        &self,
        s: &Scenario,
        range: (u16, u16),
        tw_reuse: u8,
        policy: Policy,
        pools: usize,
        elapsed_secs: f64,
    ) -> Option<f64> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("simulate");
        let per_request_us =
            (elapsed_secs * 1e6 * s.concurrency as f64 / s.requests.max(1) as f64).round() as u64;
        if per_request_us > 0 {
            cmd.arg("--latency")
                .arg(format!("{per_request_us}us"))
                .arg("--failed-connect-us")
                .arg(per_request_us.to_string());
        }
        let output = cmd
            .args(["--os", "linux", "--loopback"])
            .arg("--range")
            .arg(format!("{}-{}", range.0, range.1))
            .arg("--tw-reuse")
            .arg(tw_reuse.to_string())
            .arg("-c")
            .arg(s.concurrency.to_string())
            .arg("--connection")
            .arg(policy.cli_name())
            .arg("--source-ips")
            .arg(pools.to_string())
            .arg("-n")
            .arg(s.requests.to_string())
            .arg("--json")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        value
            .pointer("/simulation/failure_fraction")
            .and_then(serde_json::Value::as_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_fails_every_request_beyond_the_pool() {
        // 5,000 requests, one pool of 1,000 ports, no reuse, a 2 s run: 4,000 fail.
        let f = closed_form_failure_fraction(Policy::Drop, 5000, 50, 1, 1000, 0, 2.0);
        assert!((f - 0.8).abs() < 1e-9, "{f}");
        // Six pools hold all of them.
        assert_eq!(
            closed_form_failure_fraction(Policy::Drop, 5000, 50, 6, 1000, 0, 2.0),
            0.0
        );
    }

    #[test]
    fn reuse_after_one_second_turns_the_pool_over() {
        // tcp_tw_reuse 1: a 2.5 s run turns 1,000 ports over 3 times.
        let f = closed_form_failure_fraction(Policy::Drop, 5000, 50, 1, 1000, 1, 2.5);
        assert!((f - 0.4).abs() < 1e-9, "{f}");
    }

    #[test]
    fn close_and_keep_alive_do_not_exhaust() {
        assert_eq!(
            closed_form_failure_fraction(Policy::Close, 5000, 100, 1, 1000, 0, 1.0),
            0.0
        );
        assert_eq!(
            closed_form_failure_fraction(Policy::KeepAlive, 5000, 100, 1, 1000, 0, 1.0),
            0.0
        );
    }
}
