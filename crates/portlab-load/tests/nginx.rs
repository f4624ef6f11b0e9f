//! Against a real nginx (Debian package `nginx`, started by the test on 127.0.0.1:<free port>):
//! the engine's success count equals the number of lines in nginx's access log, for each
//! connection policy; over TLS with ALPN h2 (`-h2`); and through tinyproxy (Debian
//! `tinyproxy`), a real HTTP proxy, with CONNECT tunnels (`-x`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use portlab_load::{ConnectionPolicy, EngineChoice, LoadConfig, LoadReport, Side};

/// nginx in the foreground (single process) with a temporary prefix; killed by PID on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// nginx with TLS (ALPN h2 or http/1.1) on its port, using a self-signed P-256
    /// certificate made by openssl.
    fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let ssl = if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let ok = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl (Debian package `openssl`)");
            assert!(ok.success(), "openssl req failed");
            format!(
                " ssl http2; ssl_certificate {}; ssl_certificate_key {}",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let conf = format!(
            "worker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
               fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}{ssl}; location / {{ return 200 \"hello\\n\"; }} }}\n}}\n",
            d = dir.path().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-g")
            // One process: killing it by PID leaves no orphaned worker behind.
            .arg("daemon off; master_process off;")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx (Debian package `nginx`)");
        let nginx = Self { child, port, dir };
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        nginx
    }

    fn access_log_lines(&self) -> u64 {
        let path = self.dir.path().join("access.log");
        std::fs::read_to_string(path).map_or(0, |s| s.lines().count() as u64)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| Path::exists(p))
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "condition not met within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn success_count_equals_nginx_access_log_tokio() {
    success_count_equals_nginx_access_log(EngineChoice::Tokio);
}

#[test]
fn success_count_equals_nginx_access_log_uring() {
    success_count_equals_nginx_access_log(EngineChoice::Uring);
}

fn success_count_equals_nginx_access_log(engine: EngineChoice) {
    let nginx = Nginx::start();
    // The readiness probe above made one connection without a request: nothing is logged.
    let mut expected = 0;
    for (policy, n, c) in [
        (ConnectionPolicy::KeepAlive, 5000, 20),
        (ConnectionPolicy::ServerCloses, 1000, 10),
        (ConnectionPolicy::ClientCloses, 1000, 10),
    ] {
        let config = LoadConfig {
            url: format!("http://127.0.0.1:{}/", nginx.port),
            requests: n,
            concurrency: c,
            policy,
            engine,
            ..LoadConfig::default()
        };
        let plan = config.validate().expect("valid");
        let report = portlab_load::run(&plan, &mut |_| {}).expect("run");
        assert_eq!(report.settings.engine, engine.name());
        assert_eq!(
            report.summary.succeeded, n,
            "{policy:?}: {:?}",
            report.errors
        );
        assert_eq!(report.status_codes.get(&200), Some(&n));
        expected += n;
        // nginx writes the log line after sending the response: wait for it to catch up.
        wait_until(Duration::from_secs(10), || {
            nginx.access_log_lines() >= expected
        });
        assert_eq!(nginx.access_log_lines(), expected, "{policy:?}");
    }
}

#[test]
fn https_with_insecure_succeeds_and_unverifiable_certificate_is_a_tls_failure() {
    let nginx = Nginx::start_tls();
    let url = format!("https://127.0.0.1:{}/", nginx.port);
    let run = |insecure: bool, policy: ConnectionPolicy| {
        let config = LoadConfig {
            url: url.clone(),
            requests: 200,
            concurrency: 4,
            policy,
            insecure,
            ..LoadConfig::default()
        };
        portlab_load::run(&config.validate().expect("valid"), &mut |_| {}).expect("run")
    };
    let keep = run(true, ConnectionPolicy::KeepAlive);
    assert_eq!(keep.summary.succeeded, 200, "{:?}", keep.errors);
    assert_eq!(keep.connections.opened, 4);
    let drop = run(true, ConnectionPolicy::ClientCloses);
    assert_eq!(drop.summary.succeeded, 200, "{:?}", drop.errors);
    assert_eq!(drop.connections.opened, 200);

    // Self-signed: verification fails, each request counted once as a Tls failure at connect.
    let verified = run(false, ConnectionPolicy::KeepAlive);
    assert_eq!(verified.summary.failed, 200);
    assert_eq!(verified.errors.len(), 1, "{:?}", verified.errors);
    assert_eq!(verified.errors[0].class.name(), "Tls");
    assert_eq!(verified.errors[0].by_phase.values().sum::<u64>(), 200);
    wait_until(Duration::from_secs(10), || nginx.access_log_lines() >= 400);
    assert_eq!(nginx.access_log_lines(), 400);
}

/// tinyproxy in the foreground on a free port; `allow_connect_to`: the only port CONNECT may
/// reach (`ConnectPort`), or any. Killed by PID on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start(allow_connect_to: Option<u16>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 100\nLogLevel Critical\n"
        );
        if let Some(p) = allow_connect_to {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf).expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tinyproxy (Debian package `tinyproxy`)");
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_via(url: &str, proxy: Option<String>, http2: bool, n: u64) -> LoadReport {
    let config = LoadConfig {
        url: url.to_string(),
        requests: n,
        concurrency: 2,
        streams: if http2 { 5 } else { 1 },
        insecure: true,
        proxy,
        http2,
        ..LoadConfig::default()
    };
    portlab_load::run(&config.validate().expect("valid"), &mut |_| {}).expect("run")
}

#[test]
fn https_through_a_connect_proxy_and_http2_over_alpn() {
    let nginx = Nginx::start_tls();
    let url = format!("https://127.0.0.1:{}/", nginx.port);
    // HTTP/2 negotiated by ALPN: 2 connections carry 5 streams each.
    let h2 = run_via(&url, None, true, 300);
    assert_eq!(h2.summary.succeeded, 300, "{:?}", h2.errors);
    assert_eq!(h2.settings.http_version, "2");
    assert_eq!(h2.connections.opened, 2);
    let proxy = Tinyproxy::start(None);
    let via = Some(format!("http://127.0.0.1:{}", proxy.port));
    for http2 in [false, true] {
        let r = run_via(&url, via.clone(), http2, 100);
        assert_eq!(r.summary.succeeded, 100, "h2 {http2}: {:?}", r.errors);
        let p = r.proxy.as_ref().expect("proxy section");
        assert!(p.tunnel);
        assert_eq!(r.target.connected_to.port(), proxy.port);
        assert_eq!(r.connections.opened, 2, "one tunnel per connection");
    }
    wait_until(Duration::from_secs(10), || nginx.access_log_lines() >= 500);
    assert_eq!(nginx.access_log_lines(), 500);
}

#[test]
fn proxy_failures_are_classified_on_the_proxys_side() {
    let nginx = Nginx::start_tls();
    let url = format!("https://127.0.0.1:{}/", nginx.port);
    // CONNECT only to port 1: tinyproxy refuses the tunnel to nginx with 403.
    let strict = Tinyproxy::start(Some(1));
    let r = run_via(&url, Some(format!("127.0.0.1:{}", strict.port)), false, 20);
    assert_eq!(r.summary.failed, 20);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].class.name(), "ProxyRefused");
    assert_eq!(r.errors[0].side, Side::Proxy);
    let refused = &r.proxy.as_ref().expect("proxy").refused_by_status;
    assert_eq!(refused.values().sum::<u64>(), 20);
    assert!(refused.keys().all(|&code| code == 403), "{refused:?}");
    // Nothing listens where the proxy should be: refused by the proxy's host, proxy side.
    let down = format!("127.0.0.1:{}", free_port());
    let r = run_via(&url, Some(down), false, 10);
    assert_eq!(r.summary.failed, 10);
    assert_eq!(r.errors[0].class.name(), "ConnectionRefused");
    assert_eq!(r.errors[0].side, Side::Proxy);
    assert_eq!(nginx.access_log_lines(), 0, "nothing reached the target");
}
