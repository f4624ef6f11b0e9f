//! portlab-serve — the three network parts portlab runs itself, so that a scenario reproduces
//! anywhere with nothing else installed:
//!
//! - [`Server`]: a small, fast HTTP/1.1 target (any path → a small fixed body, keep-alive
//!   knobs, response delays, seeded fault injection).
//! - [`TcpProxy`]: a TCP port forwarder, the equivalent of Windows `netsh interface portproxy`:
//!   one upstream connection per client connection, byte-transparent, half-close aware.
//! - [`HttpProxy`]: an HTTP/1.1 reverse proxy forwarding every request over a pool of at most
//!   `pool` kept-alive upstream connections — the architectural fix for port exhaustion
//!   behind a forwarder.
//!
//! Each takes a bound [`tokio::net::TcpListener`] and a shutdown future, runs until the future
//! completes, and returns a plain-data stats struct ([`ServerStats`], [`TcpProxyStats`],
//! [`HttpProxyStats`]) that derives `Serialize`; `stats()` gives a snapshot while running.
//! Upstream failures are counted by [`UpstreamErrorClass`] (from the errno), never by message.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use portlab_serve::{bind_listener, Server, ServerConfig};
//! let std_listener = bind_listener("127.0.0.1:0".parse()?, 1024)?;
//! let listener = tokio::net::TcpListener::from_std(std_listener)?;
//! let server = Server::new(ServerConfig::default())?;
//! let stats = server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! assert_eq!(stats.connections_active, 0);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod accept;
mod error_class;
mod fault;
mod h2c;
mod http;
mod http_proxy;
mod net;
mod pool;
mod server;
mod splice;
mod tcp_proxy;
mod uring_proxy;
mod watchdog;

pub use error_class::UpstreamErrorClass;
pub use fault::{DelayRange, Fault, FaultSpec, SpecError};
pub use http_proxy::{
    run_http_proxy, HttpProxy, HttpProxyConfig, HttpProxyConfigError, HttpProxyStats,
};
pub use net::{bind_listener, connect_upstream, BindError, DEFAULT_BACKLOG};
pub use server::{
    run_server, FaultCounts, Server, ServerConfig, ServerConfigError, ServerStats, HELLO_BODY,
    MAX_BODY_BYTES,
};
pub use tcp_proxy::{
    run_tcp_proxy, TcpProxy, TcpProxyConfig, TcpProxyStats, DEFAULT_BATCH_WAIT_US,
};
