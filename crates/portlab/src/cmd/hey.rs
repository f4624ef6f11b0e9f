//! hey's spellings for `portlab load`, normalised before clap parses.
//!
//! hey parses its flags with Go's `flag` package, where a long name takes one dash or two
//! (`-disable-keepalive` = `--disable-keepalive`), a value follows as the next word or after
//! `=`, and a boolean may be written `-h2=true`/`-h2=false` (pkg.go.dev/flag, "Command line flag
//! syntax"). clap reads `-disable-keepalive` as `-d isable-keepalive` (a request body!), `-h2`
//! as help and `-cpus 1` as `-c pus`. [`normalise`] rewrites the words after `load` so that:
//!
//! - `-NAME[=V]`, where `NAME` (two or more characters) is a long flag of `portlab load`, becomes
//!   `--NAME[=V]` — this covers every hey long flag (`-h2`, `-host`, `-cpus`,
//!   `-disable-keepalive`, `-disable-compression`, `-disable-redirects`) and our own;
//! - `--X[=V]` for a one-letter short flag becomes `-X[=V]` (Go accepts `--n 10`);
//! - `-B=true` / `-B=false` on a boolean flag becomes `-B` / nothing;
//! - any other single-dash word whose second character is a letter (`-disable-foo`, `-json`,
//!   `-dfoo`) is refused with exit 2 naming it, because Go would refuse it too and clap would
//!   silently read it as a short flag with a value. Short flags with a value attached
//!   (`-n10`, `-z10s`, `-c=5`) stay as clap reads them.
//!
//! Words that are the value of a flag (`-d -x`, `-H -host`) and everything after `--` are left
//! alone.

use std::ffi::OsString;

/// Rewrites `argv` (program name first) when its subcommand is `load`; other commands pass
/// through unchanged.
///
/// # Errors
/// One line naming a single-dash word that is neither a flag of `portlab load` nor a short
/// flag with its value attached, or a boolean given a value other than `true`/`false`.
pub fn normalise(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("load") {
        return Ok(argv);
    }
    let command = <crate::cmd::load::Args as clap::Args>::augment_args(clap::Command::new("load"));
    let flags = Flags::of(&command);
    let mut out = Vec::with_capacity(argv.len());
    let mut words = argv.into_iter();
    out.extend(words.by_ref().take(2));
    let mut expect_value = false;
    while let Some(word) = words.next() {
        let Some(text) = word.to_str() else {
            out.push(word);
            expect_value = false;
            continue;
        };
        if expect_value {
            expect_value = false;
            out.push(word);
            continue;
        }
        if text == "--" {
            out.push(word);
            out.extend(words);
            break;
        }
        let rewritten = flags.rewrite(text)?;
        expect_value = rewritten.as_ref().is_some_and(|w| flags.awaits_value(w));
        out.extend(rewritten.map(OsString::from));
    }
    Ok(out)
}

/// What the normaliser needs to know of each flag.
struct Flags {
    /// (long name, takes a value).
    longs: Vec<(String, bool)>,
    /// (short letter, takes a value).
    shorts: Vec<(char, bool)>,
}

impl Flags {
    fn of(command: &clap::Command) -> Self {
        let mut longs = Vec::new();
        let mut shorts = Vec::new();
        for arg in command.get_arguments() {
            let takes = arg.get_action().takes_values();
            if let Some(all) = arg.get_long_and_visible_aliases() {
                longs.extend(all.into_iter().map(|l| (l.to_string(), takes)));
            }
            if let Some(all) = arg.get_short_and_visible_aliases() {
                shorts.extend(all.into_iter().map(|s| (s, takes)));
            }
        }
        // clap's own --help / -h.
        longs.push(("help".to_string(), false));
        shorts.push(('h', false));
        Self { longs, shorts }
    }

    fn long(&self, name: &str) -> Option<bool> {
        self.longs.iter().find(|(l, _)| l == name).map(|&(_, t)| t)
    }

    fn short(&self, c: char) -> Option<bool> {
        self.shorts.iter().find(|(s, _)| *s == c).map(|&(_, t)| t)
    }

    /// The word clap should see instead of `word` (`None`: drop it).
    fn rewrite(&self, word: &str) -> Result<Option<String>, String> {
        let (dashes, body) = if let Some(b) = word.strip_prefix("--") {
            (2, b)
        } else if let Some(b) = word.strip_prefix('-') {
            (1, b)
        } else {
            return Ok(Some(word.to_string()));
        };
        if body.is_empty() {
            return Ok(Some(word.to_string())); // "-": a positional (stdin) as clap sees it
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let mut chars = name.chars();
        let first = chars.next();
        let one_letter = chars.next().is_none();
        if one_letter {
            let c = first.unwrap_or('-');
            return match (self.short(c), value) {
                (Some(false), Some(v)) => bool_value(&format!("-{c}"), v, || format!("-{c}")),
                (Some(_), _) if dashes == 2 => Ok(Some(format!("-{body}"))),
                _ => Ok(Some(word.to_string())),
            };
        }
        match (self.long(name), value) {
            (Some(false), Some(v)) => bool_value(&format!("-{name}"), v, || format!("--{name}")),
            (Some(_), _) => Ok(Some(format!("--{body}"))),
            (None, _) if dashes == 2 => Ok(Some(word.to_string())), // clap names it
            (None, _) => {
                // A short flag with its value attached (`-n10`, `-z10s`) stays; a word
                // (`-disable-foo`) would be misread as `-d isable-foo`.
                let second = name.chars().nth(1).unwrap_or('0');
                if second.is_ascii_alphabetic() {
                    Err(format!(
                        "unknown flag -{name}: portlab load takes hey's flags (-n -c -q -z -o -m \
                         -H -t -A -d -D -T -U -a -x -h2 -host -cpus -disable-keepalive \
                         -disable-compression -disable-redirects) and its own --long flags; \
                         see portlab load --help"
                    ))
                } else {
                    Ok(Some(word.to_string()))
                }
            }
        }
    }

    /// Whether the next word is this (rewritten) flag's value.
    fn awaits_value(&self, word: &str) -> bool {
        if word.contains('=') {
            return false;
        }
        if let Some(long) = word.strip_prefix("--") {
            return self.long(long).unwrap_or(false);
        }
        match word
            .strip_prefix('-')
            .map(|b| b.chars().collect::<Vec<_>>())
        {
            Some(cs) if cs.len() == 1 => self.short(cs[0]).unwrap_or(false),
            _ => false,
        }
    }
}

/// `-flag=true` → the flag, `-flag=false` → nothing (Go's boolean syntax).
fn bool_value(
    shown: &str,
    value: &str,
    flag: impl FnOnce() -> String,
) -> Result<Option<String>, String> {
    match value {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(Some(flag())),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(None),
        other => Err(format!(
            "{shown}={other}: a switch takes no value (or =true / =false)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(words: &[&str]) -> Result<Vec<String>, String> {
        let argv = ["portlab", "load"]
            .iter()
            .chain(words)
            .map(OsString::from)
            .collect();
        normalise(argv).map(|v| {
            v.into_iter()
                .skip(2)
                .map(|w| w.into_string().expect("utf-8"))
                .collect()
        })
    }

    #[test]
    fn hey_long_flags_get_two_dashes() {
        for (hey, ours) in [
            ("-disable-keepalive", "--disable-keepalive"),
            ("-disable-compression", "--disable-compression"),
            ("-disable-redirects", "--disable-redirects"),
            ("-h2", "--h2"),
            ("-host", "--host"),
            ("-cpus", "--cpus"),
            ("-json", "--json"),
        ] {
            assert_eq!(norm(&[hey]).expect(hey)[0], ours);
        }
        assert_eq!(
            norm(&["-host", "example.com", "-cpus=1"]).expect("ok"),
            ["--host", "example.com", "--cpus=1"]
        );
    }

    #[test]
    fn values_are_not_rewritten() {
        assert_eq!(
            norm(&["-d", "-host", "-H", "-h2: x"]).expect("ok"),
            ["-d", "-host", "-H", "-h2: x"]
        );
        assert_eq!(
            norm(&["--", "-disable-keepalive"]).expect("ok"),
            ["--", "-disable-keepalive"]
        );
    }

    #[test]
    fn go_boolean_and_double_dash_short_syntax() {
        assert_eq!(norm(&["-h2=true"]).expect("ok"), ["--h2"]);
        assert!(norm(&["-disable-keepalive=false"]).expect("ok").is_empty());
        assert_eq!(
            norm(&["--n", "10", "--c=2"]).expect("ok"),
            ["-n", "10", "-c=2"]
        );
        assert!(norm(&["-h2=maybe"]).is_err());
    }

    #[test]
    fn attached_short_values_stay_and_unknown_words_fail() {
        assert_eq!(
            norm(&["-n10", "-z10s", "-c=5"]).expect("ok"),
            ["-n10", "-z10s", "-c=5"]
        );
        for bad in ["-disable-foo", "-dfoo", "-rate-limit"] {
            let e = norm(&[bad]).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        // Other commands are not touched.
        let argv: Vec<OsString> = ["portlab", "serve", "-disable-foo"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(normalise(argv.clone()).expect("ok"), argv);
    }
}
