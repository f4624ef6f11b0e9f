//! `portlab load` as a user runs it: bad input gives one line and exit 2; `--json` prints one
//! object that follows docs/load-report.schema.json; the text report has hey's sections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "common/schema.rs"]
mod schema;
use schema::check;

fn portlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portlab"))
        .args(args)
        .output()
        .expect("run portlab")
}

/// A keep-alive server answering every request with 200 and a 5-byte body.
fn hello_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    format!("http://{addr}/")
}

fn serve(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .is_err()
            {
                return;
            }
        }
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let url = "http://127.0.0.1:9/";
    let cases: &[&[&str]] = &[
        &["load", "not a url"],
        &["load", "ftp://127.0.0.1/"],
        &["load", "-H", "NoColonHere", url],
        &["load", "-H", "Bad Name: x", url],
        &["load", "-c", "0", url],
        &["load", "-n", "5", "-c", "10", url],
        &["load", "-z", "abc", url],
        &["load", "http://no-such-host.invalid/"],
        &["load", "--connection", "sometimes", url],
        &["load", "--batch-wait", "1s", url],
        &["load", "--batch-wait", "soon", url],
    ];
    for args in cases {
        let out = portlab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("portlab: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn text_report_has_the_sections_and_nothing_else_on_stdout() {
    let url = hello_server();
    let out = portlab(&["load", "-n", "300", "-c", "3", &url]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for section in [
        "Summary:",
        "Latency distribution:",
        "Status code distribution:",
        "Connections:",
        "[200]\t300 responses",
    ] {
        assert!(text.contains(section), "missing {section:?} in\n{text}");
    }
    assert!(
        text.contains("300 requests: 300 succeeded, 0 failed"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn failures_give_exit_1_and_classes_in_text() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = portlab(&[
        "load",
        "-n",
        "20",
        "-c",
        "2",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.contains("[20]\tConnectionRefused (ECONNREFUSED"),
        "{text}"
    );
}

#[test]
fn json_report_follows_the_documented_schema() {
    let url = hello_server();
    let out = portlab(&["load", "-n", "200", "-c", "4", "--json", &url]);
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["summary"]["succeeded"], 200);
    assert_eq!(report["status_codes"]["200"], 200);
    assert!(report["latency"]["hdr_histogram"]
        .as_str()
        .is_some_and(|s| s.starts_with("HIST")));
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/load-report.schema.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).expect("schema file"))
            .expect("schema is JSON");
    check(&schema, &schema, &report, "$");
}
