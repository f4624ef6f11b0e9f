//! The TCP forwarder on real loopback sockets: every address-family pair, half-close, 10 MB
//! both ways, upstream down, upstream resets, client disconnects, --source-ip — each on both
//! engines (`uring::…`, `tokio_engine::…`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{closed_port, get_once, listener, start_server, start_tcp_proxy, wait_until, Client};
use portlab_load::EngineChoice;
use portlab_serve::{ServerConfig, TcpProxyConfig, UpstreamErrorClass, HELLO_BODY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A forwarder config for `upstream` on `engine`.
fn config(engine: EngineChoice, upstream: SocketAddr) -> TcpProxyConfig {
    let mut config = TcpProxyConfig::new(upstream);
    config.engine = engine;
    config
}

async fn through_proxy(engine: EngineChoice, proxy_bind: &str, server_bind: &str) {
    let server = start_server(server_bind, ServerConfig::default());
    let proxy = start_tcp_proxy(proxy_bind, config(engine, server.addr));
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        client.get("/hello.html", "").await;
        assert_eq!(
            client.read_response().await.expect("response").body,
            HELLO_BODY
        );
    }
    drop(client);
    let handle = proxy.handle.clone();
    wait_until("relay finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert!(
        stats.engine == engine.name() || stats.engine_fallback.is_some(),
        "{stats:?}"
    );
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(
        stats.upstream_connects, 1,
        "one upstream connection per client connection"
    );
    let server_stats = server.stop().await;
    assert_eq!(server_stats.requests, 3);
    assert_eq!(stats.bytes_upstream_to_client, server_stats.response_bytes);
}

async fn forwards_v4_to_v4(engine: EngineChoice) {
    through_proxy(engine, "127.0.0.1:0", "127.0.0.1:0").await;
}

async fn forwards_v4_to_v6(engine: EngineChoice) {
    if common::ipv6_available() {
        through_proxy(engine, "127.0.0.1:0", "[::1]:0").await;
    }
}

async fn forwards_v6_to_v4(engine: EngineChoice) {
    if common::ipv6_available() {
        through_proxy(engine, "[::1]:0", "127.0.0.1:0").await;
    }
}

async fn forwards_v6_to_v6(engine: EngineChoice) {
    if common::ipv6_available() {
        through_proxy(engine, "[::1]:0", "[::1]:0").await;
    }
}

async fn one_upstream_connection_per_client_connection(engine: EngineChoice) {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, server.addr));
    for _ in 0..20 {
        assert_eq!(
            get_once(proxy.addr, "/").await.expect("response").status,
            200
        );
    }
    let handle = proxy.handle.clone();
    wait_until("relays finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    assert_eq!(proxy.stop().await.upstream_connects, 20);
    assert_eq!(
        server.stop().await.connections_accepted,
        20,
        "the portproxy cost: one port each"
    );
}

/// An upstream that reads until EOF, then answers `got N` and closes: only works if the
/// client's FIN reaches it while the other direction stays open.
fn spawn_count_then_answer() -> (SocketAddr, JoinHandle<()>) {
    let l = listener("127.0.0.1:0");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut total = 0usize;
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(format!("got {total}").as_bytes())
            .await
            .expect("answer");
        s.shutdown().await.expect("shutdown");
    });
    (addr, task)
}

async fn half_close_is_propagated_both_ways(engine: EngineChoice) {
    let (upstream, task) = spawn_count_then_answer();
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, upstream));
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client.write_all(&[7u8; 1000]).await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, client.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(answer, "got 1000");
    task.await.expect("upstream task");
    let handle = proxy.handle.clone();
    wait_until("relay finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(stats.bytes_client_to_upstream, 1000);
    assert_eq!(stats.bytes_upstream_to_client, 8);
    assert!(stats.relay_errors.is_empty(), "{:?}", stats.relay_errors);
}

/// An upstream that echoes every byte back until EOF.
fn spawn_echo() -> SocketAddr {
    let l = listener("127.0.0.1:0");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn ten_megabytes_both_ways(engine: EngineChoice) {
    const SIZE: usize = 10 * 1024 * 1024;
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, spawn_echo()));
    let client = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut r, mut w) = client.into_split();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write 10 MB");
        w.shutdown().await.expect("half-close");
    });
    let mut echoed = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut echoed))
        .await
        .expect("in time")
        .expect("read");
    writer.await.expect("writer");
    assert!(
        echoed == expected,
        "echoed bytes differ (len {})",
        echoed.len()
    );
    let handle = proxy.handle.clone();
    wait_until("relay finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(stats.bytes_client_to_upstream, SIZE as u64);
    assert_eq!(stats.bytes_upstream_to_client, SIZE as u64);
}

async fn upstream_down_counts_connect_failure_by_class(engine: EngineChoice) {
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, closed_port()));
    assert!(
        Client::is_dropped(proxy.addr, true).await,
        "the client must lose its connection"
    );
    let stats = proxy.stop().await;
    assert_eq!(stats.upstream_connects, 0);
    assert_eq!(
        stats
            .upstream_connect_failures
            .get(&UpstreamErrorClass::ConnectionRefused),
        Some(&1)
    );
}

async fn upstream_reset_reaches_the_client(engine: EngineChoice) {
    let faults = portlab_serve::FaultSpec::parse("reset=1").expect("spec");
    let server = start_server(
        "127.0.0.1:0",
        ServerConfig {
            faults,
            ..ServerConfig::default()
        },
    );
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, server.addr));
    let mut client = Client::connect(proxy.addr).await;
    client.get("/", "").await;
    match client.read_response().await {
        Err(common::ReadError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected a reset, got {other:?}"),
    }
    let handle = proxy.handle.clone();
    wait_until("relay finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(
        stats.relay_errors.get(&UpstreamErrorClass::ConnectionReset),
        Some(&1)
    );
    server.stop().await;
}

async fn client_disconnect_mid_request_releases_both_legs(engine: EngineChoice) {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, server.addr));
    let mut client = Client::connect(proxy.addr).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\npartial")
        .await;
    let (proxy_handle, server_handle) = (proxy.handle.clone(), server.handle.clone());
    wait_until("upstream leg open", WAIT, || {
        server_handle.stats().connections_active == 1
    })
    .await;
    socket2::SockRef::from(&client.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(client);
    wait_until("proxy released", WAIT, || {
        proxy_handle.stats().connections_active == 0
    })
    .await;
    wait_until("server released", WAIT, || {
        server_handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(stats.relay_errors.values().sum::<u64>(), 1, "{stats:?}");
    assert_eq!(server.stop().await.responses, 0);
}

/// An upstream whose accept queue is full (listen backlog 0, one connection queued, never
/// accepted): the kernel drops further SYNs, so a connect to it hangs until its timeout.
fn spawn_full_backlog() -> (std::net::TcpListener, std::net::TcpStream) {
    let l = portlab_serve::bind_listener("127.0.0.1:0".parse().expect("addr"), 0).expect("bind");
    let filler = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("filler");
    (l, filler)
}

async fn connect_timeout_is_classified(engine: EngineChoice) {
    let (upstream, _filler) = spawn_full_backlog();
    let mut config = config(engine, upstream.local_addr().expect("addr"));
    config.connect_timeout = Duration::from_millis(300);
    let proxy = start_tcp_proxy("127.0.0.1:0", config);
    let started = tokio::time::Instant::now();
    assert!(Client::is_dropped(proxy.addr, true).await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "dropped only at the connect timeout"
    );
    let stats = proxy.stop().await;
    assert_eq!(
        stats.upstream_connect_failures,
        [(UpstreamErrorClass::ConnectTimeout, 1)].into(),
        "{stats:?}"
    );
    assert_eq!(stats.upstream_connects, 0);
}

async fn stop_closes_open_connections(engine: EngineChoice) {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, server.addr));
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(proxy.addr).await;
        client.get("/hello.html", "").await;
        assert_eq!(client.read_response().await.expect("response").status, 200);
        clients.push(client);
    }
    let handle = proxy.handle.clone();
    assert_eq!(handle.stats().connections_active, 5);
    let stats = proxy.stop().await;
    assert_eq!(stats.connections_active, 0, "{stats:?}");
    assert_eq!(stats.connections_accepted, 5);
    for mut client in clients {
        let closed = tokio::time::timeout(WAIT, client.is_closed()).await;
        assert_eq!(
            closed.ok(),
            Some(true),
            "each client sees its connection end"
        );
    }
    server.stop().await;
}

/// An upstream that answers `bulk\n` with [`STALL_BYTES`] and `ping\n` with `pong`, then
/// closes; one task per connection.
fn spawn_bulk_or_pong() -> SocketAddr {
    let l = listener("127.0.0.1:0");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut word = [0u8; 5];
                if s.read_exact(&mut word).await.is_err() {
                    return;
                }
                let answer = if &word == b"bulk\n" {
                    vec![b'x'; STALL_BYTES]
                } else {
                    b"pong".to_vec()
                };
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// More than loopback's socket buffers hold on both legs (autotuned up to a few MiB each).
const STALL_BYTES: usize = 32 << 20;

async fn a_stalled_bulk_receiver_does_not_stall_other_connections(engine: EngineChoice) {
    let proxy = start_tcp_proxy("127.0.0.1:0", config(engine, spawn_bulk_or_pong()));
    let mut bulk = TcpStream::connect(proxy.addr).await.expect("connect");
    bulk.write_all(b"bulk\n").await.expect("ask");
    // The bulk transfer is under way (past the copy buffer: spliced) and its reader is asleep.
    let handle = proxy.handle.clone();
    wait_until("bulk transfer started", WAIT, || {
        handle.stats().bytes_upstream_to_client > 1 << 20
    })
    .await;
    let mut ping = TcpStream::connect(proxy.addr).await.expect("connect");
    ping.write_all(b"ping\n").await.expect("ping");
    let mut pong = String::new();
    tokio::time::timeout(WAIT, ping.read_to_string(&mut pong))
        .await
        .expect("a second connection is served while the first one's reader sleeps")
        .expect("read");
    assert_eq!(pong, "pong");
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = tokio::time::timeout(WAIT, bulk.read(&mut buf))
            .await
            .expect("bulk in time")
            .expect("read");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        got += n;
    }
    assert_eq!(got, STALL_BYTES);
    drop((bulk, ping)); // each client's FIN ends its other direction
    wait_until("relays finished", WAIT, || {
        handle.stats().connections_active == 0
    })
    .await;
    let stats = proxy.stop().await;
    assert_eq!(stats.bytes_upstream_to_client, STALL_BYTES as u64 + 4);
    assert!(stats.relay_errors.is_empty(), "{stats:?}");
}

async fn source_ip_sets_the_upstream_leg_address(engine: EngineChoice) {
    let l = listener("127.0.0.1:0");
    let upstream = l.local_addr().expect("addr");
    let mut config = config(engine, upstream);
    config.source_ip = Some("127.0.0.2".parse().expect("ip"));
    let proxy = start_tcp_proxy("127.0.0.1:0", config);
    let _client = TcpStream::connect(proxy.addr).await.expect("connect");
    let (_, peer) = tokio::time::timeout(WAIT, l.accept())
        .await
        .expect("in time")
        .expect("accept");
    assert_eq!(peer.ip().to_string(), "127.0.0.2");
    proxy.stop().await;
}

async fn non_local_source_ip_is_classified(engine: EngineChoice) {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let mut config = config(engine, server.addr);
    config.source_ip = Some("192.0.2.1".parse().expect("ip")); // TEST-NET-1, never local
    let proxy = start_tcp_proxy("127.0.0.1:0", config);
    assert!(Client::is_dropped(proxy.addr, false).await);
    let stats = proxy.stop().await;
    assert_eq!(
        stats
            .upstream_connect_failures
            .get(&UpstreamErrorClass::AddrNotAvailable),
        Some(&1)
    );
    server.stop().await;
}

/// Each test above, once per engine.
macro_rules! on_each_engine {
    ($($name:ident),* $(,)?) => {
        mod uring {
            use portlab_load::EngineChoice;
            $(#[tokio::test]
            async fn $name() {
                super::$name(EngineChoice::Uring).await;
            })*
        }
        mod tokio_engine {
            use portlab_load::EngineChoice;
            $(#[tokio::test]
            async fn $name() {
                super::$name(EngineChoice::Tokio).await;
            })*
        }
    };
}

on_each_engine!(
    a_stalled_bulk_receiver_does_not_stall_other_connections,
    connect_timeout_is_classified,
    stop_closes_open_connections,
    forwards_v4_to_v4,
    forwards_v4_to_v6,
    forwards_v6_to_v4,
    forwards_v6_to_v6,
    one_upstream_connection_per_client_connection,
    half_close_is_propagated_both_ways,
    ten_megabytes_both_ways,
    upstream_down_counts_connect_failure_by_class,
    upstream_reset_reaches_the_client,
    client_disconnect_mid_request_releases_both_legs,
    source_ip_sets_the_upstream_leg_address,
    non_local_source_ip_is_classified,
);
