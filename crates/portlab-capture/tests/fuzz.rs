//! Property tests over generated inputs: no input makes a parser panic or hang, and the
//! counts hold together. Bounded: a few hundred cases of a few KiB each (well under a second
//! per property in a debug build).

use portlab_capture::{analyze, errors, read_capture, tables, timestamp, AnalyzeOptions};
use proptest::prelude::*;

/// Pieces of every format, so generated lines reach deep into the parsers.
const VOCAB: &[&str] = &[
    "TCP",
    "UDP",
    "tcp",
    "tcp4",
    "tcp6",
    "tcp46",
    "ESTAB",
    "TIME-WAIT",
    "LISTEN",
    "LISTENING",
    "TIME_WAIT",
    "ESTABLISHED",
    "BOUND",
    "ABHÖREN",
    "ABH™REN",
    "WARTEND",
    "IN",
    "ASCOLTO",
    "TimeWait",
    "Bound",
    "0",
    "1",
    "99",
    "10055",
    "65535",
    "65536",
    "4294967296",
    "-1",
    "0.0.0.0:0",
    "[::]:0",
    "*:*",
    "*.*",
    "127.0.0.1:8080",
    "10.0.0.1:50000",
    "[fe80::1%9]:1900",
    "[::1",
    "]:",
    "::1.631",
    "192.168.1.221.5486",
    "0100007F:1F90",
    "00000000:0000",
    "0A",
    "06",
    "0:",
    "1:",
    ":::22",
    "a:b",
    "api:1032",
    "users:((\"x\",pid=1,fd=3))",
    "pid=",
    "x:4242",
    "----------",
    "---",
    "Start",
    "Port",
    ":",
    "49152",
    "16384",
    "*",
    "\"LocalAddress\",\"LocalPort\",\"RemoteAddress\",\"RemotePort\",\"State\"",
    "\"10.0.0.5\",\"50001\",\"10.0.0.9\",\"80\",\"11\"",
    "{",
    "}",
    "[",
    "]",
    "[{",
    "\"LocalPort\":",
    "\"State\":",
    ",",
    "Error",
    "distribution:",
    "[4879]",
    "connectex:",
    "actively",
    "refused",
    "Socket",
    "errors:",
    "connect",
    "157,",
    "net.inet.tcp.msl:",
    "net.ipv4.ip_local_port_range",
    "=",
    "REG_DWORD",
    "0x1e",
    "TcpTimedWaitDelay",
    "12/01/2026",
    "10:00:00.12",
    "Tue",
    "Dec",
    "2026",
    "Id",
    "4231",
    "\t",
    "\r",
];

fn line() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCAB), 0..10).prop_map(|words| {
        let mut s = String::from("  ");
        s.push_str(&words.join(" "));
        s
    })
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..60).prop_map(|lines| lines.join("\r\n"))
}

fn check(bytes: &[u8]) {
    let Ok(capture) = read_capture("fuzz", bytes, None, None) else {
        return;
    };
    for t in &capture.tables {
        let by_state: u64 = portlab_capture::CapState::ALL
            .iter()
            .map(|s| t.count(*s))
            .sum();
        assert_eq!(
            by_state, t.rows,
            "every row is counted in exactly one state"
        );
        assert!(t.truncated_rows <= t.rows);
    }
    let analysis = analyze(vec![capture], &AnalyzeOptions::default()).expect("analyzes");
    for s in &analysis.snapshots {
        for p in &s.pools {
            assert!(p.time_wait <= p.in_use, "{p:?}");
            if p.scope == "host" {
                assert!(p.in_use <= p.size, "{p:?}");
            }
        }
    }
    if let Some(t) = &analysis.timeline {
        assert_eq!(t.points.len(), analysis.snapshots.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes);
    }

    #[test]
    fn format_shaped_text_never_panics_and_counts_hold(doc in document()) {
        check(doc.as_bytes());
        // The same text as UTF-16LE with a BOM and as CP850 bytes.
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in doc.encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        check(&utf16);
        let latin: Vec<u8> = doc.chars().map(|c| if c.is_ascii() { c as u8 } else { 0x99 }).collect();
        check(&latin);
    }

    #[test]
    fn row_parsers_never_panic(words in prop::collection::vec(prop::sample::select(VOCAB), 0..12), width in 0usize..30) {
        let _ = tables::windows_netstat(&words);
        let _ = tables::ss(&words);
        let _ = tables::linux_netstat(&words);
        let _ = tables::macos_netstat(&words, width);
        let _ = tables::proc_net_tcp(&words);
        let _ = tables::get_net_tcp_table(&words);
        let joined = words.join(" ");
        let _ = tables::split_csv(&joined);
    }

    #[test]
    fn free_text_never_panics(text in ".{0,300}") {
        let _ = timestamp::parse(&text);
        let _ = errors::classify(&text);
        let _ = errors::wrk_socket_errors(&text);
        let _ = errors::distribution_count(&text);
        check(text.as_bytes());
    }
}
