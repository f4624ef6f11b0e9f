//! Rendering shared by several commands: the "Diagnosis" section (findings, evidence,
//! remedies, folklore corrections) and number formatting.

use portlab_diagnose::{Finding, Os, Severity};

use crate::style::Painter;

/// 28232 → "28,232".
pub fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate with sensible precision: 470.5, 28,232, 0.25.
pub fn fmt_rate(rate: f64) -> String {
    if rate >= 1000.0 {
        fmt_int(rate.round() as u64)
    } else if rate >= 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.2}")
    }
}

/// Appends the "Diagnosis" section. Remedies for any OS and for Linux (where portlab runs)
/// are shown with effect and caveat; those for Windows and macOS as one line each.
pub fn push_findings(s: &mut String, findings: &[Finding], p: Painter) {
    s.push_str(&format!("\n{}\n", p.heading("Diagnosis")));
    for finding in findings {
        let label = match finding.severity {
            Severity::Critical => p.bad("CRITICAL"),
            Severity::Warning => p.warn("WARNING"),
            Severity::Info => p.good("OK"),
        };
        s.push_str(&format!(
            "  {label}  {}\n",
            p.heading(finding.cause.title())
        ));
        s.push_str(&format!("    {}\n", finding.summary));
        if !finding.evidence.is_empty() {
            s.push_str(&format!("    {}\n", p.dim("evidence:")));
            for line in &finding.evidence {
                s.push_str(&format!("      - {line}\n"));
            }
        }
        push_remedies(s, finding, p);
        if !finding.corrections.is_empty() {
            s.push_str(&format!("    {}\n", p.dim("not remedies (folklore):")));
            for c in &finding.corrections {
                s.push_str(&format!("      - \"{}\": {}\n", c.claim, c.truth));
            }
        }
    }
}

fn push_remedies(s: &mut String, finding: &Finding, p: Painter) {
    if finding.remedies.is_empty() {
        return;
    }
    s.push_str(&format!("    {}\n", p.dim("remedies:")));
    let mut n = 0;
    for r in finding
        .remedies
        .iter()
        .filter(|r| matches!(r.os, Os::Any | Os::Linux))
    {
        n += 1;
        s.push_str(&format!("      {n}. [{}] {}\n", r.os.name(), r.action));
        if let Some(command) = &r.command {
            s.push_str(&format!("         $ {command}\n"));
        }
        s.push_str(&format!(
            "         {} {}\n",
            r.effect,
            p.dim(&format!("Caveat: {}", r.caveat))
        ));
    }
    for r in finding
        .remedies
        .iter()
        .filter(|r| matches!(r.os, Os::Windows | Os::Macos))
    {
        n += 1;
        let command = r.command.as_deref().unwrap_or("");
        s.push_str(&format!(
            "      {n}. [{}] {}: {command}\n",
            r.os.name(),
            r.action
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_reading() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(28_232), "28,232");
        assert_eq!(fmt_int(1_000_000), "1,000,000");
        assert_eq!(fmt_rate(470.533), "470.5");
        assert_eq!(fmt_rate(28_232.0), "28,232");
    }
}
