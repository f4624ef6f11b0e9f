//! HTTP/1.1 correctness against local servers: chunked and Content-Length bodies, HEAD, 1xx
//! interim responses, `Connection: close` from the server, and what each connection policy
//! does with the connection.

mod common;

use std::io::Write;

use common::*;

per_engine!(
    chunked_bodies_keep_the_connection,
    head_responses_have_no_body,
    interim_responses_are_skipped,
    server_connection_close_is_honoured,
    close_delimited_bodies_are_read_to_eof,
    policies_decide_who_closes,
    statuses_above_399_are_responses_not_failures,
    large_bodies_stream_through_the_read_buffer
);
use portlab_load::ConnectionPolicy;

fn chunked_bodies_keep_the_connection() {
    let server = TestServer::start(|s, _| {
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
            .is_ok()
    });
    let report = run(config(&server.url(), 300, 3, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 300);
    assert_eq!(report.summary.succeeded, 300);
    assert_eq!(report.summary.body_bytes, 300 * 7);
    assert_eq!(
        report.connections.opened, 3,
        "chunked responses must not break keep-alive"
    );
}

fn head_responses_have_no_body() {
    // Content-Length announces 1000 bytes but a HEAD response carries none (RFC 9110 §9.3.2).
    let server = TestServer::start(|s, _| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            .is_ok()
    });
    let mut cfg = config(&server.url(), 200, 2, ConnectionPolicy::KeepAlive);
    cfg.method = "HEAD".to_string();
    let report = run(cfg);
    assert_accounted(&report, 200);
    assert_eq!(report.summary.succeeded, 200);
    assert_eq!(report.summary.body_bytes, 0);
    assert_eq!(report.connections.opened, 2);
}

fn interim_responses_are_skipped() {
    let server = TestServer::start(|s, _| {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
            .is_ok()
    });
    let report = run(config(&server.url(), 100, 2, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 100);
    assert_eq!(report.status_codes.get(&202), Some(&100));
    assert_eq!(report.status_codes.len(), 1);
}

fn server_connection_close_is_honoured() {
    // The server answers with Connection: close and closes; the client must reconnect each time.
    let server = TestServer::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
        false
    });
    let report = run(config(&server.url(), 200, 4, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 200);
    assert_eq!(report.summary.succeeded, 200, "{:?}", report.errors);
    assert_eq!(report.connections.opened, 200);
    assert_eq!(report.connections.closed_by_server, 200);
    assert_eq!(report.connections.requests_on_reused, 0);
}

fn close_delimited_bodies_are_read_to_eof() {
    let server = TestServer::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nbody until close");
        false
    });
    let report = run(config(&server.url(), 100, 2, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 100);
    assert_eq!(report.summary.succeeded, 100);
    assert_eq!(report.summary.body_bytes, 100 * 16);
}

fn policies_decide_who_closes() {
    let server = TestServer::start(|s, _| ok(s));
    let keep = run(config(&server.url(), 400, 4, ConnectionPolicy::KeepAlive));
    assert_eq!(keep.connections.opened, 4);
    assert!(keep.connections.reuse_ratio > 0.98);

    let drop = run(config(
        &server.url(),
        400,
        4,
        ConnectionPolicy::ClientCloses,
    ));
    assert_accounted(&drop, 400);
    assert_eq!(drop.connections.opened, 400);
    assert_eq!(drop.connections.closed_by_client, 400);

    // `close` sends Connection: close; this server ignores it and keeps the connection open,
    // so the client waits for a FIN that never comes until the timeout — use a server that
    // honours it instead.
    let honouring = TestServer::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
        false
    });
    let close = run(config(
        &honouring.url(),
        400,
        4,
        ConnectionPolicy::ServerCloses,
    ));
    assert_accounted(&close, 400);
    assert_eq!(close.summary.succeeded, 400);
    assert_eq!(close.connections.closed_by_server, 400);
}

fn statuses_above_399_are_responses_not_failures() {
    let server = TestServer::start(|s, n| {
        let resp: &[u8] = if n % 2 == 0 {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        };
        s.write_all(resp).is_ok()
    });
    let mut cfg = config(&server.url(), 100, 1, ConnectionPolicy::KeepAlive);
    cfg.threads = 1;
    let report = run(cfg);
    assert_accounted(&report, 100);
    assert_eq!(report.status_codes.get(&503), Some(&50));
    assert_eq!(report.summary.non_success_status, 50);
}

fn large_bodies_stream_through_the_read_buffer() {
    // 1 MiB per response, 64 times the read buffer, half of them chunked.
    let body = vec![b'x'; 1 << 20];
    let server = TestServer::start(move |s, n| {
        if n % 2 == 0 {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).is_ok() && s.write_all(&body).is_ok()
        } else {
            let head = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).is_ok()
                && s.write_all(&body).is_ok()
                && s.write_all(b"\r\n0\r\n\r\n").is_ok()
        }
    });
    let mut cfg = config(&server.url(), 20, 1, ConnectionPolicy::KeepAlive);
    cfg.threads = 1;
    let report = run(cfg);
    assert_accounted(&report, 20);
    assert_eq!(report.summary.succeeded, 20, "{:?}", report.errors);
    assert_eq!(report.summary.body_bytes, 20 << 20);
    assert_eq!(report.connections.opened, 1);
}
