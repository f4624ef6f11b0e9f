//! HTTP/2 connection slots (`-h2`, RFC 9113) on the `h2` crate. Each of a thread's `-c`
//! slots holds one connection (TLS with ALPN `h2`, or h2c with prior knowledge) and keeps up
//! to `-p` streams in flight on it: a request slot is taken from the thread's counter, then
//! its stream runs as its own task while the slot takes the next. Every request taken ends
//! exactly once, as a success, a classified failure (GOAWAY, RST_STREAM, flow control, or the
//! errno of a broken connection) or a cancellation at the deadline.

use std::future::poll_fn;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Semaphore;

use super::*;

/// Connection-level flow-control window we grant the server (the RFC 9113 default of
/// 65,535 bytes would stall responses larger than that shared by all streams).
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Stream-level window.
const STREAM_WINDOW: u32 = 1 << 20;

/// A slot's open HTTP/2 connection.
struct H2Conn {
    send: SendRequest<Bytes>,
    /// Set when the connection's driver ended (GOAWAY, error or EOF from the server).
    ended: Rc<Cell<bool>>,
    /// Streams started on it.
    used: u64,
    /// How long connecting and the handshake took, µs.
    connect_us: u64,
}

/// One connection slot in HTTP/2 mode: up to `-p` streams at once on one connection,
/// reconnecting when the connection ends.
pub(super) async fn h2_slot(w: Rc<Worker>) {
    let streams = w.plan.config.streams;
    let permits = Arc::new(Semaphore::new(streams));
    let mut conn: Option<H2Conn> = None;
    let mut own_next = 0u64;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(intended) = w.next_request(&mut own_next).await else {
            break;
        };
        let began = intended.unwrap_or_else(Instant::now);
        if conn.as_ref().is_some_and(|c| c.ended.get()) {
            conn = None;
            w.stats.borrow_mut().closed_by_server += 1;
        }
        if conn.is_none() {
            match w.h2_connect().await {
                Ok(c) => conn = Some(c),
                Err(Attempt::Failed(fail)) => {
                    w.record_failure(fail);
                    continue;
                }
                Err(_) => {
                    w.record_cancelled();
                    break;
                }
            }
        }
        let Some(c) = conn.as_mut() else { break };
        {
            let mut s = w.stats.borrow_mut();
            if c.used == 0 {
                s.requests_on_new_connection += 1;
            } else {
                s.requests_on_reused_connection += 1;
            }
        }
        c.used += 1;
        let task = H2Stream {
            w: w.clone(),
            send: c.send.clone(),
            ended: c.ended.clone(),
            began,
            connect_us: if c.used == 1 { c.connect_us } else { 0 },
        };
        tokio::task::spawn_local(async move {
            task.run().await;
            drop(permit);
        });
    }
    // Wait for the streams still in flight (each returns its permit when done).
    let _ = permits.acquire_many(streams as u32).await;
    if let Some(c) = conn {
        let mut s = w.stats.borrow_mut();
        if c.ended.get() {
            s.closed_by_server += 1;
        } else {
            s.closed_by_client += 1;
        }
    }
}

/// One request on a stream.
struct H2Stream {
    w: Rc<Worker>,
    send: SendRequest<Bytes>,
    ended: Rc<Cell<bool>>,
    began: Instant,
    connect_us: u64,
}

impl H2Stream {
    async fn run(self) {
        let w = &self.w;
        let (limit, is_deadline) = w.limit(w.plan.config.request_timeout);
        let record = w.records_tx.is_some();
        let mut timing = Timing {
            connect_us: self.connect_us,
            sent_at: record.then(Instant::now),
            ..Timing::default()
        };
        let stalled = Cell::new(false);
        let result = timeout_at(
            limit,
            exchange(
                self.send.clone(),
                w,
                &stalled,
                record.then_some(&mut timing),
            ),
        )
        .await;
        match result {
            Err(_) if is_deadline => w.record_cancelled(),
            Err(_) => w.record_failure(Fail {
                class: if stalled.get() {
                    ErrorClass::FlowControl
                } else {
                    ErrorClass::ResponseTimeout
                },
                phase: if stalled.get() {
                    Phase::Write
                } else {
                    Phase::Read
                },
            }),
            Ok(Err((err, phase))) => {
                if !err.is_reset() {
                    // GOAWAY or a broken connection: no new streams on it.
                    self.ended.set(true);
                }
                w.record_failure(Fail {
                    class: classify(&err),
                    phase,
                });
            }
            Ok(Ok(resp)) => {
                let done_at = Instant::now();
                w.record_ok(self.began, resp, done_at, false);
                w.record_request(self.began, &resp, done_at, &timing);
            }
        }
    }
}

/// Sends the request (body paced by the peer's flow-control window) and reads the response.
async fn exchange(
    send: SendRequest<Bytes>,
    w: &Worker,
    stalled: &Cell<bool>,
    mut timing: Option<&mut Timing>,
) -> Result<Response, (h2::Error, Phase)> {
    let Some(template) = w.plan.h2.as_ref() else {
        return Err((h2::Error::from(h2::Reason::INTERNAL_ERROR), Phase::Write));
    };
    let mut send = send.ready().await.map_err(|e| (e, Phase::Write))?;
    let mut request = http::Request::new(());
    *request.method_mut() = template.method.clone();
    *request.uri_mut() = template.uri.clone();
    *request.headers_mut() = template.headers.clone();
    let body_empty = template.body.is_empty();
    let (response, mut stream) = send
        .send_request(request, body_empty)
        .map_err(|e| (e, Phase::Write))?;
    let mut body = template.body.clone();
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        stalled.set(true);
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err((e, Phase::Write)),
            None => return Err((h2::Error::from(h2::Reason::STREAM_CLOSED), Phase::Write)),
        };
        stalled.set(false);
        if granted == 0 {
            continue;
        }
        let chunk = body.split_to(granted.min(body.len()));
        stream
            .send_data(chunk, body.is_empty())
            .map_err(|e| (e, Phase::Write))?;
    }
    if let Some(t) = timing.as_deref_mut() {
        t.wrote_at = Some(Instant::now());
    }
    let response = response.await.map_err(|e| (e, Phase::Read))?;
    if let Some(t) = timing {
        t.first_byte_at = Some(Instant::now());
    }
    let status = response.status().as_u16();
    let mut recv = response.into_body();
    let mut body_bytes = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| (e, Phase::Read))?;
        body_bytes += chunk.len() as u64;
        // Give the window back at once: we discard the body.
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    Ok(Response {
        status,
        reusable: true,
        body_bytes,
    })
}

/// The class of an HTTP/2 failure.
fn classify(err: &h2::Error) -> ErrorClass {
    if let Some(io) = err.get_io() {
        return ErrorClass::from_io(io);
    }
    match err.reason() {
        Some(h2::Reason::FLOW_CONTROL_ERROR) => ErrorClass::FlowControl,
        _ if err.is_go_away() => ErrorClass::GoAway,
        _ if err.is_reset() => ErrorClass::StreamReset,
        _ => ErrorClass::Protocol,
    }
}

impl Worker {
    /// Opens a connection ([`Worker::connect`]: TCP, tunnel, TLS with ALPN h2) and runs the
    /// HTTP/2 handshake; the connection's driver runs as its own task.
    async fn h2_connect(&self) -> Result<H2Conn, Attempt> {
        let began = Instant::now();
        let conn = self.connect().await?;
        let ended = Rc::new(Cell::new(false));
        let protocol = || {
            Attempt::Failed(Fail {
                class: ErrorClass::Protocol,
                phase: Phase::Connect,
            })
        };
        let send = match conn {
            Conn::Plain(s) => {
                // Frames of many streams share the connection: send each write at once.
                let _ = s.set_nodelay(true);
                handshake(s, ended.clone()).await
            }
            Conn::Tls(s) => {
                // ALPN must have chosen h2 (RFC 9113 §3.2); anything else cannot carry it.
                if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(protocol());
                }
                handshake(*s, ended.clone()).await
            }
        };
        match send {
            Ok(send) => Ok(H2Conn {
                send,
                ended,
                used: 0,
                connect_us: began.elapsed().as_micros() as u64,
            }),
            Err(e) => Err(Attempt::Failed(Fail {
                class: classify(&e),
                phase: Phase::Connect,
            })),
        }
    }
}

async fn handshake<T>(io: T, ended: Rc<Cell<bool>>) -> Result<SendRequest<Bytes>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(io)
        .await?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
        ended.set(true);
    });
    Ok(send)
}
