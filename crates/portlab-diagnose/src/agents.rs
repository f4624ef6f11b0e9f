//! Findings of many load agents (a distributed run, `portlab merge`) combined into one
//! diagnosis: each agent is diagnosed on its own evidence — its pool is its own (source IP,
//! destination) pair, so summed counts would hide which one ran out — and the findings are
//! grouped by cause, naming the agents each cause was found on.

use crate::{Cause, Finding, Severity};

/// One agent's findings, with the label that names it (segment, host, source IP → target).
#[derive(Debug, Clone)]
pub struct AgentFindings {
    /// How the agent is named in the combined findings.
    pub agent: String,
    /// Its findings, as [`crate::diagnose`] returned them.
    pub findings: Vec<Finding>,
}

/// Agents whose evidence lines are listed in full under a combined finding; beyond it only
/// their number is (so a diagnosis of 1,000 agents stays readable).
pub const LISTED_AGENTS: usize = 8;

/// Combines per-agent findings: one finding per cause (healthy aside), as severe as its worst
/// agent, whose summary names the agents it was found on; the evidence is the worst agent's
/// lines and the first line of up to [`LISTED_AGENTS`]` - 1` others, each prefixed by its
/// label; the remedies are the worst agent's. When every combined finding is
/// informational, a healthy finding over all agents is added. Most severe first.
pub fn combine(agents: &[AgentFindings]) -> Vec<Finding> {
    let total = agents.len();
    let mut causes: Vec<Cause> = agents
        .iter()
        .flat_map(|a| a.findings.iter().map(|f| f.cause))
        .filter(|c| *c != Cause::Healthy)
        .collect();
    causes.sort();
    causes.dedup();
    let mut out: Vec<Finding> = causes
        .into_iter()
        .filter_map(|cause| combine_cause(agents, cause, total))
        .collect();
    if out.iter().all(|f| f.severity == Severity::Info) {
        if let Some(healthy) = combine_cause(agents, Cause::Healthy, total) {
            out.push(healthy);
        }
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cause.cmp(&b.cause)));
    out
}

fn combine_cause(agents: &[AgentFindings], cause: Cause, total: usize) -> Option<Finding> {
    let hits: Vec<(&str, &Finding)> = agents
        .iter()
        .filter_map(|a| {
            a.findings
                .iter()
                .find(|f| f.cause == cause)
                .map(|f| (a.agent.as_str(), f))
        })
        .collect();
    // The worst agent: highest severity, then the first in the given order.
    let (worst_agent, worst) = *hits
        .iter()
        .rev()
        .max_by_key(|(_, f)| f.severity)
        .or(hits.first())?;
    let summary = match hits.len() {
        1 if total == 1 => worst.summary.clone(),
        n if cause == Cause::Healthy && n == total => {
            format!(
                "All {total} agents healthy; {worst_agent}: {}",
                worst.summary
            )
        }
        1 => format!("On {worst_agent} (1 of {total} agents): {}", worst.summary),
        n if n == total => format!(
            "On all {total} agents; worst {worst_agent}: {}",
            worst.summary
        ),
        n => format!(
            "On {n} of {total} agents ({}); worst {worst_agent}: {}",
            names(&hits),
            worst.summary
        ),
    };
    let mut evidence = Vec::new();
    // The worst agent's lines in full, the first line of each other listed agent.
    evidence.extend(
        worst
            .evidence
            .iter()
            .map(|line| format!("{worst_agent}: {line}")),
    );
    for (agent, f) in hits
        .iter()
        .filter(|(a, _)| *a != worst_agent)
        .take(LISTED_AGENTS.saturating_sub(1))
    {
        evidence.extend(f.evidence.first().map(|line| format!("{agent}: {line}")));
    }
    if hits.len() > LISTED_AGENTS {
        evidence.push(format!(
            "… and {} more agents with this finding",
            hits.len() - LISTED_AGENTS
        ));
    }
    Some(Finding {
        cause,
        severity: worst.severity,
        summary,
        evidence,
        remedies: worst.remedies.clone(),
        corrections: worst.corrections.clone(),
    })
}

/// The first few agent labels, comma-separated.
fn names(hits: &[(&str, &Finding)]) -> String {
    let mut list: Vec<&str> = hits.iter().take(3).map(|(a, _)| *a).collect();
    if hits.len() > 3 {
        list.push("…");
    }
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(cause: Cause, severity: Severity, summary: &str) -> Finding {
        Finding {
            cause,
            severity,
            summary: summary.to_string(),
            evidence: vec![format!("{summary} line")],
            remedies: Vec::new(),
            corrections: Vec::new(),
        }
    }

    fn agent(name: &str, findings: Vec<Finding>) -> AgentFindings {
        AgentFindings {
            agent: name.to_string(),
            findings,
        }
    }

    #[test]
    fn one_exhausted_agent_is_named_and_the_healthy_are_not_reported_healthy() {
        let healthy = || vec![finding(Cause::Healthy, Severity::Info, "fine")];
        let agents = vec![
            agent("a0", healthy()),
            agent(
                "a1 10.0.0.2 → 10.0.9.1:80",
                vec![finding(
                    Cause::PortExhaustion,
                    Severity::Critical,
                    "ports ran out",
                )],
            ),
            agent("a2", healthy()),
        ];
        let out = combine(&agents);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].cause, Cause::PortExhaustion);
        assert_eq!(
            out[0].summary,
            "On a1 10.0.0.2 → 10.0.9.1:80 (1 of 3 agents): ports ran out"
        );
        assert_eq!(
            out[0].evidence,
            ["a1 10.0.0.2 → 10.0.9.1:80: ports ran out line"]
        );
    }

    #[test]
    fn all_healthy_gives_one_healthy_finding_and_the_worst_leads() {
        let agents: Vec<AgentFindings> = (0..20)
            .map(|i| {
                let sev = if i == 7 {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                agent(
                    &format!("a{i}"),
                    vec![finding(Cause::TimeWaitPressure, sev, &format!("tw {i}"))],
                )
            })
            .collect();
        let out = combine(&agents);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Warning);
        assert!(out[0]
            .summary
            .starts_with("On all 20 agents; worst a7: tw 7"));
        assert_eq!(out[0].evidence.len(), LISTED_AGENTS + 1);

        let fine = vec![agent(
            "a0",
            vec![finding(Cause::Healthy, Severity::Info, "fine")],
        )];
        let out = combine(&fine);
        assert_eq!(out[0].cause, Cause::Healthy);
        assert_eq!(out[0].summary, "fine");
    }
}
