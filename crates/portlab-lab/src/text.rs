//! Small text helpers shared by the lab's modules: numbers and shares as the stories print
//! them, and a child's stderr folded onto one line.

/// `5000` → `5,000` (thousands separated by commas).
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = String::from(&digits[..first.min(digits.len())]);
    for chunk in digits.as_bytes()[first.min(digits.len())..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
    }
    out
}

/// A share as a percentage with one decimal (`76.4 %`), or `0 %`.
pub(crate) fn percent(fraction: f64) -> String {
    if fraction == 0.0 {
        "0 %".to_string()
    } else {
        format!("{:.1} %", fraction * 100.0)
    }
}

/// A child's stderr on one line (the CLI reports an error on one line).
pub(crate) fn one_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(5000), "5,000");
        assert_eq!(group_thousands(1234567), "1,234,567");
    }

    #[test]
    fn percent_has_one_decimal() {
        assert_eq!(percent(0.0), "0 %");
        assert_eq!(percent(0.76), "76.0 %");
        assert_eq!(percent(0.1234), "12.3 %");
    }

    #[test]
    fn stderr_folds_onto_one_line() {
        assert_eq!(one_line("  a\n\n b \n"), "a / b");
        assert_eq!(one_line(""), "");
    }
}
