//! HTTP/2 over cleartext with prior knowledge (h2c, RFC 9113 §3.3) for `portlab serve`: a
//! connection whose first 24 bytes are the client preface is served by the `h2` crate, every
//! stream answered with the same body as HTTP/1.1. `--delay` applies per stream; `--close` and
//! `--close-after N` end the connection with a graceful GOAWAY (after the first / the N-th
//! stream); `--fault` and `--chunked` are HTTP/1.1 only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net::add;
use crate::server::Shared;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_STREAMS: u32 = 1024;

/// Reads into `buf` until it holds the whole preface (`true`) or differs from it (`false`,
/// HTTP/1.1 — the bytes stay in `buf` for its parser). EOF before either is `false`.
pub(crate) async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
}

/// Serves one h2c connection whose first bytes (`read`) were already read.
pub(crate) async fn serve(stream: TcpStream, read: BytesMut, shared: Arc<Shared>) {
    let io = Prefixed {
        prefix: read.freeze(),
        inner: stream,
    };
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    let config = &shared.config;
    let limit = if config.keep_alive {
        config.close_after
    } else {
        Some(1)
    };
    let mut streams = 0u64;
    let mut closing = false;
    while let Some(next) = conn.accept().await {
        let Ok((request, respond)) = next else { break };
        streams += 1;
        tokio::spawn(answer(request, respond, shared.clone(), streams));
        if !closing && limit.is_some_and(|n| streams >= n) {
            // GOAWAY: streams so far complete, the client opens a new connection for more.
            conn.graceful_shutdown();
            closing = true;
            add(&shared.counters.closed_by_server, 1);
        }
    }
}

/// Answers one stream: drains the request body, then sends the fixed body.
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: Arc<Shared>,
    stream_no: u64,
) {
    let counters = &shared.counters;
    add(&counters.requests, 1);
    let head_only = request.method() == http::Method::HEAD;
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        add(&counters.request_body_bytes, chunk.len() as u64);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(range) = &shared.config.delay {
        tokio::time::sleep(shared.dice.delay(range, 0, stream_no)).await;
    }
    let payload = shared.responses.body.clone();
    let Ok(head) = http::Response::builder()
        .status(200)
        .header("server", "portlab")
        .header("content-type", "text/html")
        .header("content-length", payload.len())
        .body(())
    else {
        return;
    };
    let end = head_only || payload.is_empty();
    let Ok(mut send) = respond.send_response(head, end) else {
        return;
    };
    add(&counters.responses, 1);
    if !end {
        add(&counters.response_bytes, payload.len() as u64);
        let _ = send.send_data(payload, true);
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
