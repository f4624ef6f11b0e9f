//! The target server on real loopback sockets: basics and every flag that changes behaviour.

mod common;

use std::time::{Duration, Instant};

use common::{get_once, start_server, wait_until, Client, ReadError};
use portlab_serve::{DelayRange, FaultSpec, ServerConfig, HELLO_BODY};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn serves_any_path_with_keep_alive() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    for path in ["/hello.html", "/", "/any/other?path=1"] {
        client.get(path, "").await;
        let resp = client.read_response().await.expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, HELLO_BODY);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    let stats = server.stop().await;
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.responses, 3);
    assert_eq!(stats.connections_active, 0);
}

#[tokio::test]
async fn serves_on_ipv6_loopback() {
    if !common::ipv6_available() {
        eprintln!("skipping: ::1 not available");
        return;
    }
    let server = start_server("[::1]:0", ServerConfig::default());
    let resp = get_once(server.addr, "/hello.html")
        .await
        .expect("response");
    assert_eq!(resp.body, HELLO_BODY);
    server.stop().await;
}

#[tokio::test]
async fn body_size_sets_the_body_length() {
    let config = ServerConfig {
        body_size: Some(5000),
        ..ServerConfig::default()
    };
    let server = start_server("127.0.0.1:0", config);
    let resp = get_once(server.addr, "/").await.expect("response");
    assert_eq!(resp.body.len(), 5000);
    assert_eq!(resp.header("content-length"), Some("5000"));
    assert!(resp.body.starts_with(&HELLO_BODY[..20]));
    server.stop().await;
}

#[tokio::test]
async fn head_requests_get_no_body() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    client
        .send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    // The HEAD answer carries Content-Length but no body, so the GET's response follows at once.
    let mut raw = Vec::new();
    while raw.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 || !raw.ends_with(b"</html>\n") {
        let mut chunk = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut client.stream, &mut chunk)
            .await
            .expect("read");
        assert!(n > 0, "server closed early");
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2);
    assert_eq!(text.matches("<!DOCTYPE html>").count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn close_after_closes_after_n_requests() {
    let config = ServerConfig {
        close_after: Some(2),
        ..ServerConfig::default()
    };
    let server = start_server("127.0.0.1:0", config);
    let mut client = Client::connect(server.addr).await;
    client.get("/", "").await;
    assert_eq!(
        client
            .read_response()
            .await
            .expect("first")
            .header("connection"),
        Some("keep-alive")
    );
    client.get("/", "").await;
    assert_eq!(
        client
            .read_response()
            .await
            .expect("second")
            .header("connection"),
        Some("close")
    );
    assert!(
        client.is_closed().await,
        "server must close after 2 requests"
    );
    let stats = server.stop().await;
    assert_eq!(stats.closed_by_server, 1);
}

#[tokio::test]
async fn close_flag_answers_connection_close() {
    let config = ServerConfig {
        keep_alive: false,
        ..ServerConfig::default()
    };
    let server = start_server("127.0.0.1:0", config);
    let mut client = Client::connect(server.addr).await;
    client.get("/", "").await;
    assert_eq!(
        client
            .read_response()
            .await
            .expect("response")
            .header("connection"),
        Some("close")
    );
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn client_close_and_http10_are_honoured() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    client.send(b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.read_response().await.expect("response").status, 200);
    assert!(
        client.is_closed().await,
        "HTTP/1.0 without keep-alive closes"
    );

    let mut client = Client::connect(server.addr).await;
    client
        .send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(
        client
            .read_response()
            .await
            .expect("response")
            .header("connection"),
        Some("keep-alive")
    );
    client.get("/", "Connection: close\r\n").await;
    assert_eq!(
        client
            .read_response()
            .await
            .expect("response")
            .header("connection"),
        Some("close")
    );
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn delay_holds_each_response() {
    let delay = Some(DelayRange {
        min_ms: 150,
        max_ms: 150,
    });
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            delay,
            ..ServerConfig::default()
        },
    );
    let started = Instant::now();
    let resp = get_once(server.addr, "/").await.expect("response");
    assert_eq!(resp.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "took {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn chunked_flag_sends_chunked_bodies() {
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            chunked: true,
            ..ServerConfig::default()
        },
    );
    let mut client = Client::connect(server.addr).await;
    for _ in 0..2 {
        client.get("/", "").await;
        let resp = client.read_response().await.expect("response");
        assert!(resp.chunked);
        assert_eq!(resp.body, HELLO_BODY);
    }
    server.stop().await;
}

#[tokio::test]
async fn request_bodies_are_read_and_pipelining_works() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    client
        .send(
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
              POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
    for _ in 0..3 {
        assert_eq!(client.read_response().await.expect("response").status, 200);
    }
    let stats = server.stop().await;
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.request_body_bytes, 12);
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    client.send(b"NOT HTTP AT ALL\x00\r\n\r\n").await;
    assert_eq!(client.read_response().await.expect("response").status, 400);
    let mut client = Client::connect(server.addr).await;
    client
        .send(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        .await;
    assert_eq!(client.read_response().await.expect("response").status, 400);
    let stats = server.stop().await;
    assert_eq!(stats.bad_requests, 2);
}

/// What a client observed for one request on a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Reset,
    Garbage,
    Truncated,
}

async fn outcomes(
    seed: u64,
    faults: FaultSpec,
    n: usize,
) -> (Vec<Outcome>, portlab_serve::ServerStats) {
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            faults,
            seed,
            ..ServerConfig::default()
        },
    );
    let mut seen = Vec::new();
    for _ in 0..n {
        let outcome = match get_once(server.addr, "/").await {
            Ok(resp) if resp.body == HELLO_BODY => Outcome::Ok,
            Ok(_) => Outcome::Truncated,
            Err(ReadError::Garbage) => Outcome::Garbage,
            Err(ReadError::Truncated) => Outcome::Truncated,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Outcome::Reset
            }
            Err(ReadError::Eof) => Outcome::Reset,
            Err(other) => panic!("unexpected {other:?}"),
        };
        seen.push(outcome);
    }
    (seen, server.stop().await)
}

#[tokio::test]
async fn faults_are_deterministic_by_seed() {
    let faults = FaultSpec::parse("reset=0.2,garbage=0.2,close-mid-body=0.2").expect("spec");
    let (first, stats) = outcomes(7, faults, 60).await;
    let (again, _) = outcomes(7, faults, 60).await;
    let (other, _) = outcomes(8, faults, 60).await;
    assert_eq!(first, again, "same seed, same faults");
    assert_ne!(first, other, "another seed, other faults");
    let count = |o| first.iter().filter(|&&x| x == o).count() as u64;
    assert_eq!(count(Outcome::Reset), stats.faults.reset);
    assert_eq!(count(Outcome::Garbage), stats.faults.garbage);
    assert_eq!(count(Outcome::Truncated), stats.faults.close_mid_body);
    assert_eq!(count(Outcome::Ok), stats.responses);
    for kind in [
        Outcome::Ok,
        Outcome::Reset,
        Outcome::Garbage,
        Outcome::Truncated,
    ] {
        assert!(count(kind) > 0, "{kind:?} never happened in 60 draws");
    }
}

#[tokio::test]
async fn stall_fault_never_answers() {
    let faults = FaultSpec::parse("stall=1").expect("spec");
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            faults,
            ..ServerConfig::default()
        },
    );
    let mut client = Client::connect(server.addr).await;
    client.get("/", "").await;
    let waited = tokio::time::timeout(Duration::from_millis(300), client.read_response()).await;
    assert!(waited.is_err(), "a stalled request must not be answered");
    let handle = server.handle.clone();
    wait_until("stall counted", WAIT, || handle.stats().faults.stall == 1).await;
    drop(client);
    wait_until("stalled connection released", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn max_conns_limits_concurrent_connections() {
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            max_conns: Some(2),
            ..ServerConfig::default()
        },
    );
    let mut a = Client::connect(server.addr).await;
    let mut b = Client::connect(server.addr).await;
    for c in [&mut a, &mut b] {
        c.get("/", "").await;
        assert_eq!(c.read_response().await.expect("served").status, 200);
    }
    // The third connection completes in the kernel backlog but is not served while two are open.
    let mut c = Client::connect(server.addr).await;
    c.get("/", "").await;
    let early = tokio::time::timeout(Duration::from_millis(300), c.read_response()).await;
    assert!(
        early.is_err(),
        "third connection served despite --max-conns 2"
    );
    assert_eq!(server.handle.stats().connections_accepted, 2);
    drop(a);
    let resp = tokio::time::timeout(WAIT, c.read_response())
        .await
        .expect("served once a slot frees");
    assert_eq!(resp.expect("response").status, 200);
    let stats = server.stop().await;
    assert_eq!(stats.connections_accepted, 3);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut client = Client::connect(server.addr).await;
    client.get("/", "").await;
    client.read_response().await.expect("response");
    let stats = server.stop().await;
    assert_eq!(stats.connections_active, 0);
    assert!(
        client.is_closed().await,
        "shutdown must close open connections"
    );
}

#[test]
fn backlog_reaches_listen() {
    // A listener's Send-Q in `ss -lnt` is its accept backlog (inet_diag idiag_wqueue =
    // sk_max_ack_backlog, net/ipv4/tcp_diag.c).
    let listener =
        portlab_serve::bind_listener("127.0.0.1:0".parse().expect("addr"), 7).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(send_q.get(2), Some(&"7"), "ss output: {text}");
}
