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

/// How much of each finding the text shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything: remedies for every OS with effect and caveat (`portlab doctor`).
    Full,
    /// Evidence, and for the top finding the Linux and any-OS remedies as one line each and
    /// the folklore corrections (`load`, `reproduce`); the rest is in `--json`.
    Compact,
    /// Everything, every remedy given in full (`analyze`, whose findings carry only the
    /// remedies of the captured OS).
    AllInFull,
}

/// Greedy word wrap at `width` columns.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Appends `text` wrapped at 100 columns, the first line after `first`, the rest aligned
/// under it.
fn push_wrapped(s: &mut String, indent: usize, first: &str, text: &str) {
    let width = 100usize
        .saturating_sub(indent + first.chars().count())
        .max(40);
    for (i, line) in wrap(text, width).iter().enumerate() {
        let lead = if i == 0 {
            first.to_string()
        } else {
            " ".repeat(first.chars().count())
        };
        s.push_str(&format!("{}{lead}{line}\n", " ".repeat(indent)));
    }
}

/// Appends a "Diagnosis" section headed `title`: findings, most severe first, with evidence,
/// remedies and folklore corrections as `detail` says.
pub fn push_findings(
    s: &mut String,
    title: &str,
    findings: &[Finding],
    detail: Detail,
    p: Painter,
) {
    s.push_str(&format!("\n{}\n", p.heading(title)));
    for (n, finding) in findings.iter().enumerate() {
        let label = match finding.severity {
            Severity::Critical => p.bad("CRITICAL"),
            Severity::Warning => p.warn("WARNING"),
            Severity::Info => p.good("OK"),
        };
        s.push_str(&format!(
            "  {label}  {}\n",
            p.heading(finding.cause.title())
        ));
        push_wrapped(s, 4, "", &finding.summary);
        for line in &finding.evidence {
            push_wrapped(s, 4, "- ", line);
        }
        if detail != Detail::Compact || n == 0 {
            push_remedies(s, finding, detail, p);
            if !finding.corrections.is_empty() {
                s.push_str(&format!("    {}\n", p.dim("not remedies (folklore):")));
                for c in &finding.corrections {
                    push_wrapped(s, 4, "- ", &format!("\"{}\": {}", c.claim, c.truth));
                }
            }
        }
    }
}

fn push_remedies(s: &mut String, finding: &Finding, detail: Detail, p: Painter) {
    if finding.remedies.is_empty() {
        return;
    }
    let heading = match detail {
        Detail::Full | Detail::AllInFull => "remedies:",
        Detail::Compact => "remedies (Linux and any OS; every OS, effects and caveats in --json):",
    };
    s.push_str(&format!("    {}\n", p.dim(heading)));
    let mut n = 0;
    for r in finding
        .remedies
        .iter()
        .filter(|r| detail == Detail::AllInFull || matches!(r.os, Os::Any | Os::Linux))
    {
        n += 1;
        let number = format!("{n}. ");
        match (detail, &r.command) {
            (Detail::Compact, Some(command)) => {
                push_wrapped(s, 4, &number, &format!("{}: {command}", r.action));
            }
            (Detail::Compact, None) => push_wrapped(s, 4, &number, &r.action),
            (Detail::Full | Detail::AllInFull, command) => {
                push_wrapped(s, 4, &number, &format!("[{}] {}", r.os.name(), r.action));
                if let Some(command) = command {
                    s.push_str(&format!("       $ {command}\n"));
                }
                push_wrapped(s, 7, "", &format!("{} Caveat: {}", r.effect, r.caveat));
            }
        }
    }
    if detail == Detail::Full {
        for r in finding
            .remedies
            .iter()
            .filter(|r| matches!(r.os, Os::Windows | Os::Macos))
        {
            n += 1;
            let command = r.command.as_deref().unwrap_or("");
            push_wrapped(
                s,
                4,
                &format!("{n}. "),
                &format!("[{}] {}: {command}", r.os.name(), r.action),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_word_boundaries() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("", 10), Vec::<String>::new());
        assert_eq!(
            wrap("averyveryverylongword x", 5),
            vec!["averyveryverylongword", "x"]
        );
    }

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
