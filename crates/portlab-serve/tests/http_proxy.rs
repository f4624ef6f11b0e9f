//! The pooling HTTP reverse proxy on real loopback sockets: framing both ways, large bodies,
//! 502/504, resets, client aborts, and the fix itself (5,000 `Connection: close` clients over
//! at most `--pool` upstream connections).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{closed_port, get_once, listener, start_http_proxy, start_server, wait_until, Client};
use portlab_serve::{
    DelayRange, FaultSpec, HttpProxyConfig, ServerConfig, UpstreamErrorClass, HELLO_BODY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn forwards_content_length_and_adds_via() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 4));
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..5 {
        client.get("/hello.html", "").await;
        let resp = client.read_response().await.expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, HELLO_BODY);
        assert_eq!(resp.header("via"), Some("1.1 portlab"));
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    let stats = proxy.stop().await;
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.responses, 5);
    assert_eq!(stats.upstream_connections_opened, 1);
    assert_eq!(stats.upstream_reuses, 4);
    server.stop().await;
}

/// An upstream that answers each request with its own head as the body, so the test can see
/// exactly what the proxy sent.
fn spawn_head_echo() -> SocketAddr {
    let l = listener("127.0.0.1:0");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let resp =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len());
                        if s.write_all(resp.as_bytes()).await.is_err()
                            || s.write_all(&head).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(spawn_head_echo(), 2));
    let mut client = Client::connect(proxy.addr).await;
    client
        .get("/x?y=1", "Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nX-Kept: yes\r\nTE: trailers\r\n")
        .await;
    let resp = client.read_response().await.expect("response");
    let sent = String::from_utf8(resp.body).expect("utf8");
    assert!(sent.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{sent}");
    assert!(sent.contains("X-Kept: yes\r\n"), "{sent}");
    assert!(sent.contains("Via: 1.1 portlab\r\n"), "{sent}");
    for hop in ["Connection:", "Keep-Alive:", "X-Secret:", "TE:"] {
        assert!(!sent.contains(hop), "{hop} forwarded: {sent}");
    }
    // HTTP/1.0 requests without Host get one (HTTP/1.1 upstreams require it).
    let mut client = Client::connect(proxy.addr).await;
    client.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let resp = client.read_response().await.expect("response");
    assert!(String::from_utf8_lossy(&resp.body).contains("Host: 127.0.0.1:"));
    assert_eq!(resp.header("connection"), Some("close"));
    proxy.stop().await;
}

#[tokio::test]
async fn forwards_chunked_responses() {
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            chunked: true,
            ..ServerConfig::default()
        },
    );
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        client.get("/", "").await;
        let resp = client.read_response().await.expect("response");
        assert!(resp.chunked);
        assert_eq!(resp.body, HELLO_BODY);
    }
    let stats = proxy.stop().await;
    assert_eq!(
        stats.upstream_connections_opened, 1,
        "chunked responses keep the upstream reusable"
    );
    server.stop().await;
}

#[tokio::test]
async fn close_delimited_upstream_body_is_rechunked() {
    let l = listener("127.0.0.1:0");
    let upstream = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
                .await;
        }
    });
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(upstream, 2));
    let mut client = Client::connect(proxy.addr).await;
    client.get("/", "").await;
    let resp = client.read_response().await.expect("response");
    assert!(resp.chunked, "an HTTP/1.1 client gets the body chunked");
    assert_eq!(resp.body, b"until close");
    client.get("/", "").await;
    assert_eq!(
        client.read_response().await.expect("second").body,
        b"until close"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn ten_megabyte_bodies_both_ways() {
    const SIZE: usize = 10 * 1024 * 1024;
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            body_size: Some(SIZE),
            ..ServerConfig::default()
        },
    );
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    // Upload 10 MB with Content-Length, then 10 MB chunked; each answer is 10 MB. The
    // upstream answers only after the whole body, so writing first and reading after is safe.
    let mut client = Client::connect(proxy.addr).await;
    let body = vec![b'x'; SIZE];
    client
        .send(format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes())
        .await;
    client.send(&body).await;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.read_response())
        .await
        .expect("in time");
    assert_eq!(resp.expect("first response").body.len(), SIZE);
    client
        .send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for piece in body.chunks(1 << 20) {
        client
            .send(format!("{:x}\r\n", piece.len()).as_bytes())
            .await;
        client.send(piece).await;
        client.send(b"\r\n").await;
    }
    client.send(b"0\r\n\r\n").await;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.read_response())
        .await
        .expect("in time");
    assert_eq!(
        resp.expect("second response").body,
        HELLO_BODY
            .iter()
            .copied()
            .cycle()
            .take(SIZE)
            .collect::<Vec<_>>()
    );
    let stats = proxy.stop().await;
    assert_eq!(stats.request_body_bytes, 2 * SIZE as u64);
    assert_eq!(stats.response_body_bytes, 2 * SIZE as u64);
    assert_eq!(stats.responses, 2);
    let server_stats = server.stop().await;
    assert_eq!(server_stats.request_body_bytes, 2 * SIZE as u64);
}

#[tokio::test]
async fn upstream_down_gives_502_with_reason() {
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(closed_port(), 2));
    let resp = get_once(proxy.addr, "/").await.expect("response");
    assert_eq!(resp.status, 502);
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(body.contains("ECONNREFUSED"), "{body}");
    let stats = proxy.stop().await;
    assert_eq!(stats.bad_gateway, 1);
    assert_eq!(
        stats
            .upstream_connect_failures
            .get(&UpstreamErrorClass::ConnectionRefused),
        Some(&1)
    );
    assert_eq!(stats.upstream_connections_active, 0);
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let delay = Some(DelayRange {
        min_ms: 3000,
        max_ms: 3000,
    });
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            delay,
            ..ServerConfig::default()
        },
    );
    let mut config = HttpProxyConfig::new(server.addr, 2);
    config.upstream_timeout = Duration::from_millis(200);
    let proxy = start_http_proxy("127.0.0.1:0", config);
    let started = std::time::Instant::now();
    let resp = get_once(proxy.addr, "/").await.expect("response");
    assert_eq!(resp.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "504 must come at the timeout"
    );
    let stats = proxy.stop().await;
    assert_eq!(stats.gateway_timeout, 1);
    server.stop().await;
}

#[tokio::test]
async fn upstream_reset_gives_502() {
    let faults = FaultSpec::parse("reset=1").expect("spec");
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            faults,
            ..ServerConfig::default()
        },
    );
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    let resp = get_once(proxy.addr, "/").await.expect("response");
    assert_eq!(resp.status, 502);
    let stats = proxy.stop().await;
    assert_eq!(stats.bad_gateway, 1);
    assert_eq!(server.stop().await.faults.reset, 1);
}

#[tokio::test]
async fn upstream_cut_mid_body_closes_the_client() {
    let faults = FaultSpec::parse("close-mid-body=1").expect("spec");
    let config = ServerConfig {
        faults,
        body_size: Some(100_000),
        ..ServerConfig::default()
    };
    let server = start_server("127.0.0.1:0", config);
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    match get_once(proxy.addr, "/").await {
        Err(common::ReadError::Truncated) => {}
        other => panic!("expected a truncated response, got {other:?}"),
    }
    let stats = proxy.stop().await;
    assert_eq!(stats.upstream_aborts, 1);
    assert_eq!(
        stats.upstream_connections_active, 0,
        "a cut upstream connection is not pooled"
    );
    server.stop().await;
}

#[tokio::test]
async fn stale_pooled_connection_is_retried() {
    // The server closes after each response; the proxy's pooled connection goes stale and
    // the next request must still succeed.
    let config = ServerConfig {
        close_after: Some(1),
        ..ServerConfig::default()
    };
    let server = start_server("127.0.0.1:0", config);
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 1));
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..10 {
        client.get("/", "").await;
        assert_eq!(client.read_response().await.expect("response").status, 200);
    }
    let stats = proxy.stop().await;
    assert_eq!(stats.responses, 10);
    assert_eq!(stats.bad_gateway, 0);
    server.stop().await;
}

#[tokio::test]
async fn silently_closed_pooled_connection_is_retried() {
    // An upstream that answers one request per connection as if keep-alive (no
    // `Connection: close`) and then closes: every pooled connection is stale when reused, either
    // caught by the idle probe or, if its FIN has not arrived yet, by the retry.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = upstream.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        for _ in 0..20 {
            let Ok((mut conn, _)) = upstream.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    });
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(addr, 1));
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..5 {
        client.get("/", "").await;
        assert_eq!(client.read_response().await.expect("response").status, 200);
    }
    let stats = proxy.stop().await;
    assert_eq!(stats.responses, 5);
    assert_eq!(
        stats.bad_gateway, 0,
        "a stale connection is retried, not a 502"
    );
    assert_eq!(
        stats.upstream_connections_opened, 5,
        "one upstream connection per request"
    );
    server.abort();
}

#[tokio::test]
async fn client_disconnect_mid_request_is_counted_and_upstream_dropped() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    let mut client = Client::connect(proxy.addr).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nonly a little")
        .await;
    let (p, s) = (proxy.handle.clone(), server.handle.clone());
    wait_until("upstream leg open", WAIT, || {
        s.stats().connections_active == 1
    })
    .await;
    drop(client);
    wait_until("client abort counted", WAIT, || {
        p.stats().client_aborts == 1
    })
    .await;
    wait_until("upstream connection dropped", WAIT, || {
        s.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(stats.responses, 0);
    assert_eq!(stats.upstream_connections_active, 0);
    server.stop().await;
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_proxy() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 2));
    let mut client = Client::connect(proxy.addr).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = client.read_response().await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    client.send(b"body").await;
    assert_eq!(client.read_response().await.expect("final").status, 200);
    proxy.stop().await;
    assert_eq!(server.stop().await.request_body_bytes, 4);
}

/// The fix: 5,000 requests, each on its own client connection with `Connection: close`,
/// travel over at most `pool` upstream connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_close_requests_use_at_most_pool_upstream_connections() {
    const POOL: usize = 8;
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 100;
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, POOL));
    let addr = proxy.addr;
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let ok = Arc::clone(&ok);
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_CLIENT {
                let resp = get_once(addr, "/hello.html").await.expect("response");
                assert_eq!(resp.header("connection"), Some("close"));
                if resp.status == 200 && resp.body == HELLO_BODY {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert_eq!(
        ok.load(std::sync::atomic::Ordering::Relaxed),
        CLIENTS * PER_CLIENT
    );
    let live = proxy.handle.stats();
    assert!(live.upstream_connections_active <= POOL as u64);
    let stats = proxy.stop().await;
    assert_eq!(stats.client_connections, 5000);
    assert_eq!(stats.requests, 5000);
    assert!(
        stats.upstream_connections_opened <= POOL as u64,
        "{stats:?}"
    );
    assert!(stats.upstream_connections_peak <= POOL as u64, "{stats:?}");
    assert!(stats.upstream_reuses >= 5000 - POOL as u64, "{stats:?}");
    // The upstream side of the socket table: the server accepted at most POOL connections.
    let server_stats = server.stop().await;
    assert!(
        server_stats.connections_accepted <= POOL as u64,
        "{server_stats:?}"
    );
    assert_eq!(server_stats.requests, 5000);
}

#[tokio::test]
async fn silent_clients_are_closed_after_the_idle_timeout() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut config = HttpProxyConfig::new(server.addr, 2);
    config.client_idle_timeout = Duration::from_millis(200);
    let proxy = start_http_proxy("127.0.0.1:0", config);
    let mut client = Client::connect(proxy.addr).await;
    client.get("/", "").await;
    assert_eq!(client.read_response().await.expect("response").status, 200);
    let started = std::time::Instant::now();
    assert!(
        client.is_closed().await,
        "an idle keep-alive client is closed"
    );
    // The proxy started its clock just before our response left; allow for that.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let stats = proxy.stop().await;
    assert_eq!(stats.client_timeouts, 1);
    server.stop().await;
}

/// The proxy's circuit breaker toward a dead upstream: after `min` failed attempts (502) it
/// opens and answers 503 without touching the pool, so the upstream sees no further connect;
/// once the open interval is over, one probe goes through and, failing, reopens it. Every
/// request is answered once: requests = 502s + 503s.
#[tokio::test]
async fn breaker_answers_503_without_connecting_while_open() {
    let mut config = HttpProxyConfig::new(closed_port(), 2);
    config.circuit_breaker = Some(
        portlab_load::BreakerConfig::parse("ratio=0.5,window=10s,min=5,open=200ms,probes=1")
            .expect("spec"),
    );
    let proxy = start_http_proxy("127.0.0.1:0", config);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get_once(proxy.addr, "/").await.expect("response").status);
    }
    assert_eq!(&statuses[..5], &[502; 5]);
    assert!(statuses[5..].iter().all(|&s| s == 503), "{statuses:?}");
    let before_probe = proxy.handle.stats();
    let connects =
        |s: &portlab_serve::HttpProxyStats| -> u64 { s.upstream_connect_failures.values().sum() };
    assert_eq!(connects(&before_probe), 5);
    // After the open interval: one probe reaches the (still dead) upstream and reopens.
    let mut probed = false;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline && !probed {
        tokio::time::sleep(Duration::from_millis(50)).await;
        probed = get_once(proxy.addr, "/").await.expect("response").status == 502;
    }
    assert!(probed, "no probe after the open interval");
    let stats = proxy.stop().await;
    assert_eq!(stats.requests, stats.bad_gateway + stats.short_circuited);
    assert_eq!(connects(&stats), 6);
    let b = stats.circuit_breaker.expect("breaker counters");
    assert_eq!((b.opened, b.probes, b.closed), (2, 1, 0));
    assert_eq!(b.short_circuited, stats.short_circuited);
}
