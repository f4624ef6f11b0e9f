//! Real ephemeral-port exhaustion on the upstream leg, in a network namespace made by the test
//! with a 10-port `ip_local_port_range` (sysctls set inside the namespace only):
//! - the TCP forwarder (portproxy) runs out after 10 held connections and counts the failure
//!   as `addr_not_available`;
//! - the HTTP proxy with `pool = 4` serves 24 held client connections over at most 4 upstream
//!   connections — the fix.
//!
//! Clients reach the proxy on three loopback addresses so that the client leg (10 ports per
//! destination 4-tuple) has room for 30 connections while the upstream leg has 10.

mod common;

use portlab_testkit::NetNs;
use std::net::SocketAddr;

use std::time::Duration;

use common::{listener, Client};
use portlab_serve::{
    HttpProxy, HttpProxyConfig, Server, ServerConfig, TcpProxy, TcpProxyConfig, UpstreamErrorClass,
};

/// A namespace of the test's own with a 10-port ephemeral range and no TIME_WAIT reuse.
fn pool_namespace() -> NetNs {
    let ns = NetNs::new("serve").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns
}

/// Runs `body` on a thread that entered the namespace, on its own tokio runtime.
fn run_in<F: std::future::Future<Output = ()>>(
    ns: &NetNs,
    body: impl FnOnce() -> F + Send + 'static,
) {
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(body());
    })
    .expect("enter the namespace");
}

/// Listens on all addresses (only this namespace's loopback exists) at a fixed port outside
/// the shrunken ephemeral range: port 0 would take one of its 10 ports. Fixed ports cannot
/// collide here, the namespace is this test's own.
fn listen_any(port: u16) -> tokio::net::TcpListener {
    listener(&format!("0.0.0.0:{port}"))
}

fn client_addr(i: usize, port: u16) -> SocketAddr {
    let ip = ["127.0.0.1", "127.0.0.2", "127.0.0.3"][i % 3];
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// The target server on port 8080 of the namespace (outside the shrunken range), running until
/// the returned sender fires: (server, its address, stop, task).
fn spawn_server() -> (
    Server,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<portlab_serve::ServerStats>,
) {
    let server = Server::new(ServerConfig::default()).expect("server");
    let server_listener = listen_any(8080);
    let server_addr = SocketAddr::new(
        "127.0.0.1".parse().expect("ip"),
        server_listener.local_addr().expect("addr").port(),
    );
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .run(server_listener, async {
                    let _ = server_stopped.await;
                })
                .await
        }
    });
    (server, server_addr, stop_server, server_task)
}

#[test]
fn tcp_forwarder_upstream_leg_runs_out_of_ports() {
    let ns = pool_namespace();
    run_in(&ns, || async {
        let (_server, server_addr, stop_server, server_task) = spawn_server();
        let proxy = TcpProxy::new(TcpProxyConfig::new(server_addr));
        let proxy_listener = listen_any(8081);
        let port = proxy_listener.local_addr().expect("addr").port();
        let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy_task = tokio::spawn({
            let proxy = proxy.clone();
            async move {
                proxy
                    .run(proxy_listener, async {
                        let _ = proxy_stopped.await;
                    })
                    .await
            }
        });

        let mut held = Vec::new();
        let mut served = 0;
        for i in 0..12 {
            // A client past the range may be reset before its connect() returns.
            let Ok(mut client) = Client::try_connect(client_addr(i, port)).await else {
                continue;
            };
            if client.try_get("/", "").await.is_err() {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(5), client.read_response()).await {
                Ok(Ok(resp)) if resp.status == 200 => served += 1,
                Ok(_) => {}
                Err(_) => panic!("client {i} got no answer and no close"),
            }
            held.push(client);
        }
        assert_eq!(
            served, 10,
            "exactly the 10 ports of the range serve held connections"
        );
        let stats = proxy.stats();
        assert_eq!(stats.upstream_connects, 10);
        assert_eq!(
            stats
                .upstream_connect_failures
                .get(&UpstreamErrorClass::AddrNotAvailable),
            Some(&2),
            "{stats:?}"
        );
        drop(held);
        let _ = stop_proxy.send(());
        let _ = stop_server.send(());
        proxy_task.await.expect("proxy");
        server_task.await.expect("server");
    });
}

#[test]
fn http_proxy_pool_needs_no_more_ports_than_pool() {
    let ns = pool_namespace();
    run_in(&ns, || async {
        let (server, server_addr, stop_server, server_task) = spawn_server();
        let proxy = HttpProxy::new(HttpProxyConfig::new(server_addr, 4)).expect("proxy");
        let proxy_listener = listen_any(8081);
        let port = proxy_listener.local_addr().expect("addr").port();
        let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy_task = tokio::spawn({
            let proxy = proxy.clone();
            async move {
                proxy
                    .run(proxy_listener, async {
                        let _ = proxy_stopped.await;
                    })
                    .await
            }
        });

        let mut held = Vec::new();
        for i in 0..24 {
            let mut client = Client::connect(client_addr(i, port)).await;
            client.get("/", "").await;
            let resp = tokio::time::timeout(Duration::from_secs(5), client.read_response()).await;
            assert_eq!(
                resp.expect("in time").expect("response").status,
                200,
                "client {i}"
            );
            held.push(client);
        }
        let stats = proxy.stats();
        assert_eq!(stats.client_connections, 24);
        assert!(stats.upstream_connections_opened <= 4, "{stats:?}");
        assert!(stats.upstream_connect_failures.is_empty(), "{stats:?}");
        assert!(server.stats().connections_accepted <= 4);
        drop(held);
        let _ = stop_proxy.send(());
        let _ = stop_server.send(());
        proxy_task.await.expect("proxy");
        server_task.await.expect("server");
    });
}
