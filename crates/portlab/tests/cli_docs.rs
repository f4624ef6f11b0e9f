//! `portlab completions SHELL` and `portlab man`: generated from the parser's command tree;
//! the bash script passes `bash -n` and the man page renders with `man -l` (Debian `man-db`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

fn portlab(args: &[&str]) -> Output {
    Command::new(PORTLAB)
        .args(args)
        .output()
        .expect("run portlab")
}

/// Runs `program args` with `input` on stdin.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (see .ci/run)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn bash_completions_parse_and_know_the_load_flags() {
    let out = portlab(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let check = pipe("bash", &["-n"], &out.stdout);
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let script = String::from_utf8(out.stdout).expect("utf-8");
    for word in [
        "--disable-keepalive",
        "--h2",
        "--connection",
        "completions",
        "man",
    ] {
        assert!(
            script.contains(word),
            "{word} missing from the bash completions"
        );
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = portlab(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(!out.stdout.is_empty(), "{shell}");
    }
    assert_eq!(portlab(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_renders_with_man_l() {
    let out = portlab(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.starts_with(b".ie"), "roff");
    let man = pipe("man", &["-l", "-"], &out.stdout);
    // Bold and underline come as overstrikes (`X\bX`, `_\bX`) when stdout is not a terminal.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&man.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        man.status.success(),
        "man -l: {}",
        String::from_utf8_lossy(&man.stderr)
    );
    // Justified lines stretch the spaces between words: compare with single spaces.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "PORTLAB LOAD",
        "PORTLAB SERVE",
        "disable-keepalive",
        "Exit status",
    ] {
        assert!(text.contains(needle), "{needle} missing from the man page");
    }
    assert!(!text.contains("sandbox-anchor"), "hidden commands stay out");
}
