//! No file descriptor leaks: 100,000 connections through the in-process TCP forwarder and
//! 10,000 through the HTTP proxy leave /proc/self/fd as it was. One test in its own binary, so
//! no other test opens descriptors meanwhile.
//!
//! Every request says `Connection: close`, so the server closes first and TIME_WAIT lands on
//! the server's side, not on the client's ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{get_once, open_fds, start_http_proxy, start_server, start_tcp_proxy, wait_until};
use portlab_serve::{HttpProxyConfig, ServerConfig, TcpProxyConfig};

/// Connections through the TCP forwarder (override with PORTLAB_FD_TEST_CONNS).
const TCP_CONNECTIONS: usize = 100_000;
/// Connections through the HTTP proxy.
const HTTP_CONNECTIONS: usize = 10_000;
const PARALLEL: usize = 64;

async fn hammer(addr: SocketAddr, total: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        let (next, ok) = (Arc::clone(&next), Arc::clone(&ok));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if matches!(get_once(addr, "/").await, Ok(r) if r.status == 200) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    ok.load(Ordering::Relaxed)
}

fn total(default: usize) -> usize {
    std::env::var("PORTLAB_FD_TEST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fd_leak_after_many_proxied_connections() {
    let server = start_server("127.0.0.1:0", ServerConfig::default());
    let tcp = start_tcp_proxy("127.0.0.1:0", TcpProxyConfig::new(server.addr));
    let http = start_http_proxy("127.0.0.1:0", HttpProxyConfig::new(server.addr, 8));
    // One connection first: the forwarder's io_uring engine opens its ring and its stop
    // eventfd when it starts, which is after start_tcp_proxy returns.
    assert_eq!(get_once(tcp.addr, "/").await.expect("warm-up").status, 200);
    let (s, t) = (server.handle.clone(), tcp.handle.clone());
    wait_until("warm-up closed", Duration::from_secs(20), || {
        t.stats().connections_active == 0 && s.stats().connections_active == 0
    })
    .await;
    let before = open_fds();

    let tcp_total = total(TCP_CONNECTIONS);
    assert_eq!(hammer(tcp.addr, tcp_total).await, tcp_total);
    let http_total = tcp_total.min(HTTP_CONNECTIONS);
    assert_eq!(hammer(http.addr, http_total).await, http_total);

    let (s, t, h) = (
        server.handle.clone(),
        tcp.handle.clone(),
        http.handle.clone(),
    );
    let settle = Duration::from_secs(20);
    wait_until("forwarder idle", settle, || {
        t.stats().connections_active == 0
    })
    .await;
    wait_until("http proxy idle", settle, || {
        h.stats().client_connections_active == 0
    })
    .await;
    // The HTTP proxy keeps its pooled upstream connections open (≤ 8): they are not leaks.
    let pooled = h.stats().upstream_connections_active as usize;
    wait_until("server idle", settle, || {
        s.stats().connections_active as usize == pooled
    })
    .await;
    // The forwarder keeps empty splice pipes for the next connections (≤ 64, two fds each).
    let pipes = t.stats().relay_pipes_idle as usize;
    assert!(pipes <= 64, "{pipes} idle pipes");
    let after = open_fds();
    assert_eq!(
        after,
        before + 2 * pooled + 2 * pipes,
        "fds before {before}, after {after}, pooled {pooled}, idle pipes {pipes}"
    );

    let tcp_stats = tcp.stop().await;
    assert_eq!(tcp_stats.connections_accepted, tcp_total as u64 + 1);
    let http_stats = http.stop().await;
    assert_eq!(http_stats.client_connections, http_total as u64);
    server.stop().await;
    let engine_fds = if tcp_stats.engine == "uring" { 2 } else { 0 };
    assert_eq!(
        open_fds(),
        before - 3 - engine_fds,
        "only the three listeners (and the forwarder's ring and eventfd) are gone after shutdown"
    );
}
