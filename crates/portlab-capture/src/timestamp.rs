//! Timestamp lines between snapshots: what `date` (macOS, Linux), `ECHO %date% %time%` (cmd,
//! any locale's day order) and PowerShell `Get-Date` print. Only the time differences matter
//! (growth rate, time to full), so a local time without a zone is fine; a line must be short
//! and hold a `HH:MM:SS` time to count.

/// Seconds since 1970-01-01 of a timestamp line (local time read as UTC), or `None`.
pub fn parse(line: &str) -> Option<f64> {
    let t = line.trim();
    if t.len() > 64
        || t.len() < 8
        || t.split_whitespace().count() > 7
        || t.contains(['[', '"', '='])
    {
        return None;
    }
    let (time_at, secs_of_day) = find_time(t)?;
    let date_part = format!("{} {}", &t[..time_at.0], &t[time_at.1..]);
    let days = find_date(&date_part).unwrap_or(0);
    let pm = {
        let lower = t.to_ascii_lowercase();
        if lower.contains(" pm") {
            Some(true)
        } else if lower.contains(" am") {
            Some(false)
        } else {
            None
        }
    };
    let mut secs = secs_of_day;
    if let Some(pm) = pm {
        let hour = (secs / 3600.0) as u32;
        if pm && hour < 12 {
            secs += 12.0 * 3600.0;
        } else if !pm && hour == 12 {
            secs -= 12.0 * 3600.0;
        }
    }
    Some(days as f64 * 86_400.0 + secs)
}

/// Finds `H:MM:SS[.,frac]`; returns its byte span and the seconds of the day.
fn find_time(t: &str) -> Option<((usize, usize), f64)> {
    let b = t.as_bytes();
    for start in 0..b.len() {
        if !b[start].is_ascii_digit() || (start > 0 && b[start - 1].is_ascii_digit()) {
            continue;
        }
        let mut i = start;
        let mut fields = [0u32; 3];
        let mut ok = true;
        for (n, field) in fields.iter_mut().enumerate() {
            let from = i;
            while i < b.len() && b[i].is_ascii_digit() && i - from < 2 {
                i += 1;
            }
            if i == from {
                ok = false;
                break;
            }
            *field = t[from..i].parse().ok()?;
            if n < 2 {
                if i >= b.len() || b[i] != b':' {
                    ok = false;
                    break;
                }
                i += 1;
            }
        }
        if !ok || fields[0] > 23 || fields[1] > 59 || fields[2] > 60 {
            continue;
        }
        let mut frac = 0.0;
        if i + 1 < b.len() && (b[i] == b'.' || b[i] == b',') && b[i + 1].is_ascii_digit() {
            let from = i + 1;
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = format!("0.{}", &t[from..i]).parse().unwrap_or(0.0);
        }
        let secs = f64::from(fields[0] * 3600 + fields[1] * 60 + fields[2]) + frac;
        return Some(((start, i), secs));
    }
    None
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days since 1970-01-01 of the date in the rest of the line: `2026-12-01`, `01.12.2026`,
/// `12/01/2026` (US order; a first field over 12 means day first), or `Dec 1 … 2026`.
fn find_date(t: &str) -> Option<i64> {
    let lower = t.to_ascii_lowercase();
    let numbers: Vec<(u32, char)> = split_numbers(&lower);
    let year_pos = numbers.iter().position(|(n, _)| *n >= 1970 && *n <= 9999)?;
    let year = numbers[year_pos].0;
    if let Some(month) = MONTHS.iter().position(|m| lower.contains(m)) {
        let day = numbers.iter().find(|(n, _)| (1..=31).contains(n))?.0;
        return Some(days_from_civil(year, month as u32 + 1, day));
    }
    let (a, b) = if year_pos == 0 {
        (numbers.get(1)?, numbers.get(2)?)
    } else if year_pos >= 2 {
        (&numbers[year_pos - 2], &numbers[year_pos - 1])
    } else {
        return None;
    };
    // Year first (ISO) or US month/day/year keep the order; day.month.year swaps it.
    let (month, day) = if year_pos == 0 || (a.1 == '/' && a.0 <= 12) {
        (a.0, b.0)
    } else {
        (b.0, a.0)
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Numbers in the text with the separator that follows each.
fn split_numbers(t: &str) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap_or(0);
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d);
                chars.next();
            }
            let sep = chars.peek().copied().unwrap_or(' ');
            out.push((n, sep));
        }
    }
    out
}

/// Howard Hinnant's days-from-civil.
fn days_from_civil(y: u32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_of_date_echo_and_get_date() {
        let base = parse("2026-12-01 10:15:30").expect("iso");
        assert_eq!(parse("2026-12-01T10:16:00Z").map(|s| s - base), Some(30.0));
        assert_eq!(
            parse("Tue Dec  1 10:16:00 CET 2026").map(|s| s - base),
            Some(30.0)
        );
        assert_eq!(
            parse("Tue 12/01/2026 10:16:00.12").map(|s| (s - base).round()),
            Some(30.0)
        );
        assert_eq!(
            parse("01.12.2026 10:16:00,55").map(|s| (s - base).round()),
            Some(31.0)
        );
        assert_eq!(
            parse("Tuesday, December 1, 2026 10:16:00 AM").map(|s| s - base),
            Some(30.0)
        );
        assert_eq!(
            parse("  TCP    0.0.0.0:135   0.0.0.0:0   LISTENING   1712"),
            None
        );
        assert_eq!(parse("Requests/sec: 1234"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
