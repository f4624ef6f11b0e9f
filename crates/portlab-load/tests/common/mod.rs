//! Test servers on 127.0.0.1:0 whose behaviour each test chooses, and a helper to run the
//! engine against them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use portlab_load::{ConnectionPolicy, EngineChoice, LoadConfig, LoadReport};

/// What the server does with one request on a connection. Returns `false` to close the
/// connection afterwards.
pub type Handler = dyn Fn(&mut TcpStream, u64) -> bool + Send + Sync + 'static;

/// A threaded server; stops accepting when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Requests read so far (over all connections).
    pub requests: Arc<AtomicU64>,
}

impl TestServer {
    /// Starts a server; `handler(stream, request_index)` answers each request after its head
    /// was read.
    pub fn start(handler: impl Fn(&mut TcpStream, u64) -> bool + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let handler = handler.clone();
                let requests = requests2.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    while read_request_head(&mut stream) {
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        if !handler(&mut stream, n) {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            stop,
            accept: Some(accept),
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting and closes the listening socket (later connects are refused).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes accept(). In a namespace whose ports are exhausted the wake-up connect fails
        // too (EADDRNOTAVAIL): the accept thread is then left blocked, not joined.
        let woke = TcpStream::connect(self.addr).is_ok();
        if let Some(h) = self.accept.take() {
            if woke {
                let _ = h.join();
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request head (until CRLFCRLF); `false` on EOF or error.
pub fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut seen = [0u8; 4];
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) => {
                seen.rotate_left(1);
                seen[3] = byte[0];
                if &seen == b"\r\n\r\n" {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// Writes a 200 response with a 5-byte Content-Length body.
pub fn ok(stream: &mut TcpStream) -> bool {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .is_ok()
}

/// Closes with RST (SO_LINGER 0).
pub fn reset(stream: &mut TcpStream) -> bool {
    let sock = socket2::SockRef::from(&*stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(std::net::Shutdown::Read);
    false
}

thread_local! {
    /// The engine the current test runs on (set by [`per_engine!`]); unset: the default
    /// (`PORTLAB_ENGINE`, else auto).
    static ENGINE: std::cell::Cell<Option<EngineChoice>> = const { std::cell::Cell::new(None) };
}

/// Runs `test` with [`config`] choosing `engine`.
pub fn with_engine(engine: EngineChoice, test: impl FnOnce()) {
    ENGINE.with(|e| e.set(Some(engine)));
    test();
}

/// The engine [`config`] puts in its configurations.
pub fn engine() -> EngineChoice {
    ENGINE
        .with(|e| e.get())
        .unwrap_or_else(|| LoadConfig::default().engine)
}

/// Turns each listed `fn name()` into two tests, `name::tokio` and `name::uring`, so that the
/// accounting and fault tests check both engines in every `cargo nextest run`.
#[macro_export]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn tokio() {
                    $crate::common::with_engine(portlab_load::EngineChoice::Tokio, super::$name);
                }
                #[test]
                fn uring() {
                    $crate::common::with_engine(portlab_load::EngineChoice::Uring, super::$name);
                }
            }
        )*
    };
}

/// A configuration against `url` with small defaults for tests, on the test's engine.
pub fn config(
    url: &str,
    requests: u64,
    concurrency: usize,
    policy: ConnectionPolicy,
) -> LoadConfig {
    LoadConfig {
        url: url.to_string(),
        requests,
        concurrency,
        policy,
        threads: 2,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        engine: engine(),
        ..LoadConfig::default()
    }
}

/// Validates and runs; checks that a plain-HTTP/1.1 plan ran on the engine asked for.
pub fn run(config: LoadConfig) -> LoadReport {
    let plan = config.validate().expect("valid config");
    let report = portlab_load::run(&plan, &mut |_| {}).expect("engine runs");
    assert_ran_on(&plan, &report);
    report
}

/// The engine named in the report is the one the plan asked for (io_uring plans it can run).
pub fn assert_ran_on(plan: &portlab_load::Plan, report: &LoadReport) {
    let plain_h1 = !plan.target.tls && !plan.config.http2 && plan.target.proxy.is_none();
    match plan.config.engine {
        EngineChoice::Tokio => assert_eq!(report.settings.engine, "tokio"),
        EngineChoice::Uring if plain_h1 => assert_eq!(report.settings.engine, "uring"),
        _ => {}
    }
}

/// Count of final failures of one class name.
pub fn errors_of(report: &LoadReport, class: &str) -> u64 {
    report
        .errors
        .iter()
        .filter(|e| e.class.name() == class)
        .map(|e| e.count)
        .sum()
}

/// Checks the accounting identity and that error counts add up to `failed`.
pub fn assert_accounted(report: &LoadReport, requests: u64) {
    let s = &report.summary;
    assert_eq!(
        s.succeeded + s.failed + s.short_circuited + s.cancelled_at_deadline,
        requests,
        "{s:?}"
    );
    assert_eq!(s.requests, requests);
    let by_class: u64 = report.errors.iter().map(|e| e.count).sum();
    assert_eq!(by_class, s.failed, "errors by class must add up to failed");
    let by_status: u64 = report.status_codes.values().sum();
    assert_eq!(
        by_status, s.succeeded,
        "status codes must add up to succeeded"
    );
    let timeline_ok: u64 = report.timeline.iter().map(|t| t.succeeded).sum();
    let timeline_failed: u64 = report.timeline.iter().map(|t| t.failed).sum();
    assert_eq!(
        (timeline_ok, timeline_failed),
        (s.succeeded, s.failed),
        "timeline must add up"
    );
}
