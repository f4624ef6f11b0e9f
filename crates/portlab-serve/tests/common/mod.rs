//! Test helpers: start the server and proxies in-process on 127.0.0.1:0 (or [::1]:0), a small
//! HTTP/1.1 client that reads one response at a time, and waiting on conditions with a
//! deadline (never sleeping as synchronisation).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use portlab_serve::{
    bind_listener, HttpProxy, HttpProxyConfig, HttpProxyStats, Server, ServerConfig, ServerStats,
    TcpProxy, TcpProxyConfig, TcpProxyStats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Binds `addr` (port 0) for a test.
pub fn listener(addr: &str) -> TcpListener {
    let std_listener = bind_listener(addr.parse().expect("test address"), 1024).expect("bind");
    TcpListener::from_std(std_listener).expect("register listener")
}

/// A running in-process service: its address, a handle for live stats, a shutdown trigger and
/// the task that returns the final stats.
pub struct Running<H, S> {
    pub addr: SocketAddr,
    pub handle: H,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<S>,
}

impl<H, S> Running<H, S> {
    /// Triggers shutdown and returns the final stats.
    pub async fn stop(mut self) -> S {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("service stops within 10 s")
            .expect("service task")
    }
}

fn start<H, S, F>(
    bind: &str,
    handle: H,
    run: impl FnOnce(H, TcpListener, oneshot::Receiver<()>) -> F,
) -> Running<H, S>
where
    H: Clone,
    S: Send + 'static,
    F: Future<Output = S> + Send + 'static,
{
    let listener = listener(bind);
    let addr = listener.local_addr().expect("local_addr");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(handle.clone(), listener, stopped));
    Running {
        addr,
        handle,
        stop: Some(stop),
        task,
    }
}

/// Starts a [`Server`] on `bind`.
pub fn start_server(bind: &str, config: ServerConfig) -> Running<Server, ServerStats> {
    let server = Server::new(config).expect("valid server config");
    start(bind, server, |s, l, stop| async move {
        s.run(l, async {
            let _ = stop.await;
        })
        .await
    })
}

/// Starts a [`TcpProxy`] on `bind`.
pub fn start_tcp_proxy(bind: &str, config: TcpProxyConfig) -> Running<TcpProxy, TcpProxyStats> {
    start(bind, TcpProxy::new(config), |p, l, stop| async move {
        p.run(l, async {
            let _ = stop.await;
        })
        .await
    })
}

/// Starts an [`HttpProxy`] on `bind`.
pub fn start_http_proxy(bind: &str, config: HttpProxyConfig) -> Running<HttpProxy, HttpProxyStats> {
    let proxy = HttpProxy::new(config).expect("valid proxy config");
    start(bind, proxy, |p, l, stop| async move {
        p.run(l, async {
            let _ = stop.await;
        })
        .await
    })
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why reading a response failed.
#[derive(Debug)]
pub enum ReadError {
    /// Clean EOF before any byte of a response.
    Eof,
    /// EOF in the middle of a response.
    Truncated,
    /// Bytes that are not HTTP.
    Garbage,
    /// An I/O error (reset: `ErrorKind::ConnectionReset`).
    Io(std::io::Error),
}

/// A minimal HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.expect("connect")
    }

    /// Connects, or the connect's error: a forwarder that resets a connection at once (its
    /// upstream is down) can do so before connect() has returned here, which then fails with
    /// `ConnectionReset`.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// True when a new connection to `addr` is dropped (reset or closed) instead of answered,
    /// after a `GET` when `request`: the reset may already reach the connect or the write.
    pub async fn is_dropped(addr: SocketAddr, request: bool) -> bool {
        let mut client = match Client::try_connect(addr).await {
            Ok(client) => client,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        if request && client.try_get("/", "").await.is_err() {
            return true;
        }
        client.is_closed().await
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send request");
    }

    /// Sends `GET path` with extra header lines (each ending in \r\n).
    pub async fn get(&mut self, path: &str, extra: &str) {
        self.try_get(path, extra).await.expect("send request");
    }

    /// [`Client::get`], or the write's error (the peer may already have reset the connection).
    pub async fn try_get(&mut self, path: &str, extra: &str) -> std::io::Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
        self.stream.write_all(req.as_bytes()).await
    }

    /// Reads one response (for a request that was not HEAD).
    pub async fn read_response(&mut self) -> Result<Response, ReadError> {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (resp.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ReadError::Garbage),
            }
            if self.fill().await? == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Eof
                } else {
                    ReadError::Truncated
                });
            }
        };
        self.buf.drain(..head_len);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            self.read_chunked().await?
        } else if let Some(len) = get("content-length") {
            let len: usize = len.trim().parse().map_err(|_| ReadError::Garbage)?;
            self.read_exact_body(len).await?
        } else if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else {
            self.read_to_eof().await?
        };
        Ok(Response {
            status,
            headers,
            body,
            chunked,
        })
    }

    async fn fill(&mut self) -> Result<usize, ReadError> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).await.map_err(ReadError::Io)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_exact_body(&mut self, len: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(ReadError::Truncated);
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..pos].to_vec();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Truncated);
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| ReadError::Garbage)?;
            if size == 0 {
                // Trailers up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_body(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(ReadError::Garbage);
            }
        }
    }

    async fn read_to_eof(&mut self) -> Result<Vec<u8>, ReadError> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// True when the peer closed the connection (EOF or reset) with nothing more to read.
    pub async fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.fill().await, Ok(0) | Err(_))
    }
}

/// One `GET` on a fresh connection with `Connection: close`.
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<Response, ReadError> {
    let mut client = Client::connect(addr).await;
    client.get(path, "Connection: close\r\n").await;
    client.read_response().await
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// True when ::1 can be bound here (IPv6 loopback may be disabled in a container).
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// An address nothing listens on: bind port 0, read the port, close the listener.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
