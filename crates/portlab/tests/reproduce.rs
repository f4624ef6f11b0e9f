//! `portlab reproduce` end to end, on the real kernel: a short ladder must reproduce the
//! exhaustion (AddrNotAvailable) and show every fix at 0 failures; the host's sysctls, named
//! namespaces and processes must be the same afterwards — also after a SIGINT mid-run; as an
//! unprivileged user it must work through a user namespace, and fail with exit code 2 and one
//! sentence where user namespaces are disabled.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portlab_testkit::wait_until;
use serde_json::Value;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");
const NOBODY: u32 = 65534;

/// What of the host a run must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    port_range: String,
    tw_reuse: String,
    named_netns: String,
}

fn host_state() -> HostState {
    let read = |p: &str| std::fs::read_to_string(p).expect("read host sysctl");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    HostState {
        port_range: read("/proc/sys/net/ipv4/ip_local_port_range"),
        tw_reuse: read("/proc/sys/net/ipv4/tcp_tw_reuse"),
        named_netns: String::from_utf8_lossy(&netns.stdout)
            .lines()
            // portlab reproduce never names a namespace; the testkit's (`pl-…`, `plload-…`) of
            // tests running at the same time come and go.
            .filter(|l| !l.starts_with("pl"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// PIDs of processes that carry `marker` in their environment: everything a run started
/// inherits it, so after the run there must be none.
fn processes_with(marker: &str) -> Vec<u32> {
    let needle = format!("PORTLAB_TEST_MARK={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

fn marker(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn reproduce(marker: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(PORTLAB);
    cmd.arg("reproduce")
        .args(args)
        .env("PORTLAB_TEST_MARK", marker)
        .stdin(Stdio::null());
    cmd
}

fn assert_no_leftovers(marker: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(marker).is_empty()),
        "processes of the run survived it: {:?}",
        processes_with(marker)
    );
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Checks what the issue asks of a run: failures on the incident step(s) with AddrNotAvailable
/// dominant, none on any fix step, and the report's own verdict.
fn assert_reproduced_and_fixed(report: &Value) {
    let steps = report["steps"].as_array().expect("steps");
    let incidents: Vec<&Value> = steps.iter().filter(|s| s["fix"].is_null()).collect();
    let fixes: Vec<&Value> = steps.iter().filter(|s| !s["fix"].is_null()).collect();
    // keep-alive, pooling proxy, source IPs, and HTTP/2 when the target is portlab serve.
    assert!(
        !incidents.is_empty() && (3..=4).contains(&fixes.len()),
        "{steps:#?}"
    );
    for s in &incidents {
        assert!(
            s["failed"].as_u64().expect("failed") > 0,
            "no failure: {s:#}"
        );
        assert_eq!(s["dominant_error"]["class"], "AddrNotAvailable", "{s:#}");
        // The pool of 1,000 ports filled: TIME_WAIT in the busiest pool came close to it.
        let peak = s["peak_pool"]["time_wait"].as_u64().expect("peak");
        assert!(peak >= 900, "peak TIME_WAIT {peak}: {s:#}");
    }
    for s in &fixes {
        assert_eq!(s["failed"], 0, "a fix step failed: {s:#}");
        assert_eq!(s["succeeded"], s["requests"], "{s:#}");
    }
    let pooled = fixes
        .iter()
        .find(|s| s["fix"] == "pooling_proxy")
        .expect("pooling proxy step");
    let upstream = pooled["upstream"]["connections_opened"]
        .as_u64()
        .expect("upstream");
    assert!(
        upstream <= 8,
        "pool of 8 opened {upstream} upstream connections"
    );
    assert_eq!(report["verdict"]["incident_reproduced"], true);
    assert_eq!(report["verdict"]["fixes_hold"], true);
}

#[test]
fn short_ladder_reproduces_the_incident_and_every_fix_holds() {
    let mark = marker("ladder");
    let before = host_state();
    let started = Instant::now();
    let output = reproduce(&mark, &["--ladder", "50", "-n", "2000", "--json"])
        .output()
        .expect("run portlab reproduce");
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_reproduced_and_fixed(&report);
    let steps = report["steps"].as_array().expect("steps");
    let h2 = steps
        .iter()
        .find(|s| s["fix"] == "http2")
        .expect("an HTTP/2 fix step");
    assert_eq!(h2["client_connections_opened"], 1, "{h2:#}");
    assert_eq!(report["settings"]["isolation"], "network_namespace");
    assert_eq!(report["settings"]["tw_reuse"], 0);
    // 2,000 requests against 1,000 ports with nothing reused: half of them fail, as predicted.
    let first = &report["steps"][0];
    let measured = first["failure_fraction"].as_f64().expect("fraction");
    let predicted = first["predicted_failure_fraction"]
        .as_f64()
        .expect("predicted");
    assert!((measured - 0.5).abs() < 0.02, "measured {measured}");
    assert!((predicted - measured).abs() < 0.05, "predicted {predicted}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(host_state(), before, "the host changed");
    assert_no_leftovers(&mark);
}

#[test]
fn many_clients_exhaust_only_the_forwarders_upstream_leg() {
    let mark = marker("clients");
    let output = reproduce(
        &mark,
        &[
            "--ladder",
            "50",
            "-n",
            "2000",
            "--client-ips",
            "3",
            "--json",
        ],
    )
    .output()
    .expect("run portlab reproduce");
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    let incident = &report["steps"][0];
    let failed = incident["failed"].as_u64().expect("failed");
    // 2,000 requests, one 1,000-port upstream pool: about 1,000 fail, none of them at the
    // clients' own connect() (3 pools of 1,000 ports have room).
    assert!((900..=1100).contains(&failed), "{incident:#}");
    let upstream_failed = incident["upstream"]["connect_failures"]["addr_not_available"]
        .as_u64()
        .expect("upstream EADDRNOTAVAIL");
    assert_eq!(upstream_failed, failed, "{incident:#}");
    assert_ne!(incident["dominant_error"]["class"], "AddrNotAvailable");
    assert_eq!(incident["peak_pool"]["leg"], "upstream");
    let summary = report["diagnosis"]["summary"].as_str().expect("summary");
    assert!(
        summary.contains("the forwarder ran out of ephemeral ports"),
        "{summary}"
    );
    // With the clients still dropping, the pooling proxy holds: 8 upstream connections.
    let pooled = &report["steps"][2];
    assert_eq!(pooled["fix"], "pooling_proxy");
    assert_eq!(pooled["policy"], "drop");
    assert_eq!(pooled["failed"], 0, "{pooled:#}");
    assert_no_leftovers(&mark);
}

#[test]
fn nginx_as_the_target_server_in_every_sandbox() {
    let dir = std::env::temp_dir().join(format!("portlab-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; \
         fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         server {{ listen 127.0.0.1:8080; location / {{ return 200 \"hello\\n\"; }} }} }}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mark = marker("nginx");
    let target_cmd = format!("nginx -c {}", conf_path.display());
    let output = reproduce(
        &mark,
        &[
            "--ladder",
            "50",
            "-n",
            "2000",
            "--json",
            "--target",
            "http://127.0.0.1:8080/hello.html",
            "--target-cmd",
            &target_cmd,
        ],
    )
    .output()
    .expect("run portlab reproduce");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_of(&output);
    assert_reproduced_and_fixed(&report);
    assert_no_leftovers(&mark);
    // nginx rewrites its environment (so the marker cannot find it), but its master's title
    // names our config file: no master may outlive the run (its workers exit with it).
    let needle = conf_path.display().to_string();
    let masters = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(5), || masters().is_empty()),
        "nginx survived: {:?}",
        masters()
    );
}

#[test]
fn a_target_that_dies_fails_the_run_cleanly() {
    let mark = marker("deadtarget");
    let before = host_state();
    let output = reproduce(
        &mark,
        &[
            "--ladder",
            "50",
            "-n",
            "100",
            "--target",
            "http://127.0.0.1:8080/",
            "--target-cmd",
            "exit 3",
        ],
    )
    .output()
    .expect("run portlab reproduce");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("exited before"), "{stderr}");
    assert_eq!(host_state(), before, "the host changed");
    assert_no_leftovers(&mark);
}

#[test]
fn text_report_has_the_table_the_diagnosis_and_the_story() {
    let mark = marker("text");
    let output = reproduce(&mark, &["--ladder", "20", "-n", "1500", "--no-fixes"])
        .output()
        .expect("run portlab reproduce");
    let text = String::from_utf8_lossy(&output.stdout);
    // Only incident steps, so the verdict is "reproduced" and fixes trivially hold.
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "peak TIME_WAIT / pool",
        "incident c=20",
        "AddrNotAvailable",
        "Diagnosis of the worst step, 1: incident c=20",
        "Ephemeral-port exhaustion",
        "In the sandbox",
        "What happened",
        "EADDRNOTAVAIL",
        "incident reproduced",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_no_leftovers(&mark);
}

#[test]
fn sigint_mid_run_stops_every_process_and_leaves_the_host_alone() {
    let mark = marker("sigint");
    let before = host_state();
    let mut child = reproduce(&mark, &["--ladder", "100,100", "-n", "5000", "--progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portlab reproduce");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no 'started' line within 30 s; stderr so far: {seen:?}")
        });
        let started = line.contains("step 1/") && line.contains("started");
        seen.push(line);
        if started {
            break;
        }
    }
    // The step has begun: its sandbox, server and proxy are being started or running.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("send SIGINT");
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "stderr: {seen:?}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "no interruption message: {rest:?}"
    );
    assert_no_leftovers(&mark);
    assert_eq!(host_state(), before, "the host changed");
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("portlab did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Drops to uid/gid 65534 (nobody) before exec.
fn as_nobody(cmd: &mut Command) {
    // std drops supplementary groups (setgroups(0)) when root sets a uid.
    cmd.uid(NOBODY).gid(NOBODY);
}

#[test]
fn unprivileged_user_gets_a_user_namespace_sandbox_where_the_host_allows_it() {
    let exe = ExeCopy::world_readable("userns");
    let probe = {
        let mut cmd = Command::new("unshare");
        cmd.args(["-Urn", "true"]);
        as_nobody(&mut cmd);
        cmd.status().expect("run unshare")
    };
    let mark = marker("nobody");
    let before = host_state();
    let cmd = reproduce(&mark, &["--ladder", "50", "-n", "2000", "--json"]);
    let mut cmd = exe.command(cmd);
    as_nobody(&mut cmd);
    let output = cmd.output().expect("run portlab reproduce as nobody");
    if probe.success() {
        // This host allows unprivileged user namespaces: the sandbox must use one.
        assert!(
            output.status.success(),
            "exit {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let report = json_of(&output);
        assert_eq!(
            report["settings"]["isolation"],
            "user_and_network_namespace"
        );
        assert_reproduced_and_fixed(&report);
    } else {
        // It does not: the one-sentence refusal applies.
        assert_refused_in_one_sentence(&output);
    }
    assert_eq!(host_state(), before, "the host changed");
    assert_no_leftovers(&mark);
}

/// A copy of the portlab binary that any user can run: the build directory may sit under a
/// home that nobody cannot enter. Deleted on drop.
struct ExeCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl ExeCopy {
    fn world_readable(tag: &str) -> ExeCopy {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("portlab-exe-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let exe = dir.join("portlab");
        std::fs::copy(PORTLAB, &exe).expect("copy portlab");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ExeCopy { dir, exe }
    }

    /// `cmd` with the copy as its program (same arguments and environment).
    fn command(&self, cmd: Command) -> Command {
        let mut copy = Command::new(&self.exe);
        copy.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            if let Some(value) = value {
                copy.env(key, value);
            }
        }
        copy.stdin(Stdio::null());
        copy
    }
}

impl Drop for ExeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_refused_in_one_sentence(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    let line = lines[0];
    assert!(line.contains("user namespace"), "{line}");
    assert!(line.contains("sudo"), "{line}");
    assert!(line.contains("user.max_user_namespaces"), "{line}");
}

#[test]
fn unprivileged_user_without_user_namespaces_fails_with_one_sentence() {
    let mark = marker("nouserns");
    let before = host_state();
    let exe = ExeCopy::world_readable("nouserns");
    let mut cmd = exe.command(reproduce(&mark, &["--ladder", "50", "-n", "100"]));
    without_user_namespaces_as_nobody(&mut cmd);
    let output = cmd.output().expect("run portlab reproduce");
    assert_refused_in_one_sentence(&output);
    assert_eq!(host_state(), before, "the host changed");
    assert_no_leftovers(&mark);
}

/// Runs `cmd` as nobody inside a user namespace (made by the test, as root) whose
/// `user.max_user_namespaces` is 0: there, like on a host with user namespaces disabled,
/// unshare(CLONE_NEWUSER) fails with ENOSPC. The host's own limit is not touched.
///
/// The child unshares, tells us its PID over a pipe, waits until we (root outside) have written
/// its uid/gid maps (0 and 65534 mapped to themselves), sets the limit, drops to nobody, execs.
fn without_user_namespaces_as_nobody(cmd: &mut Command) {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (to_parent_r, to_parent_w) = nix::unistd::pipe2(cloexec).expect("pipe");
    let (to_child_r, to_child_w) = nix::unistd::pipe2(cloexec).expect("pipe");
    let helper = std::thread::spawn(move || {
        let mut pid_bytes = [0u8; 4];
        let mut reader = std::fs::File::from(to_parent_r);
        reader.read_exact(&mut pid_bytes).expect("child pid");
        let pid = u32::from_ne_bytes(pid_bytes);
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), "0 0 1\n65534 65534 1\n")
                .expect("write id map");
        }
        nix::unistd::write(&to_child_w, b"g").expect("release child");
    });
    let (w, r) = (to_parent_w, to_child_r);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        use std::os::fd::AsRawFd;
        let (w, r) = (w.as_raw_fd(), r.as_raw_fd());
        cmd.pre_exec(move || {
            let fail = || std::io::Error::last_os_error();
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(fail());
            }
            let pid = libc::getpid() as u32;
            if libc::write(w, pid.to_ne_bytes().as_ptr().cast(), 4) != 4 {
                return Err(fail());
            }
            let mut go = 0u8;
            if libc::read(r, (&mut go as *mut u8).cast(), 1) != 1 {
                return Err(fail());
            }
            let path = c"/proc/sys/user/max_user_namespaces";
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(fail());
            }
            libc::close(fd);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                return Err(fail());
            }
            Ok(())
        });
    }
    // The helper finishes once the child has been released; the fds move into it and the
    // closure, so keep them alive until the command is spawned by the caller.
    std::mem::forget(w);
    std::mem::forget(r);
    std::thread::spawn(move || helper.join());
}

/// The must-hold for `--hypotheses`: some mechanism fails nothing at c=10 and more
/// than 5 % at c=50, and every measured share is within 5 points of its prediction; the host
/// is left as it was.
#[test]
fn hypotheses_reproduce_the_seeds_pattern_as_predicted() {
    let mark = marker("hypotheses");
    let before = host_state();
    let output = reproduce(&mark, &["--hypotheses", "--ladder", "10,50", "--json"])
        .output()
        .expect("run portlab reproduce --hypotheses");
    let report = json_of(&output);
    let mechanisms = report["mechanisms"].as_array().expect("mechanisms");
    assert_eq!(mechanisms.len(), 5, "{report:#}");
    for m in mechanisms {
        for s in m["steps"].as_array().expect("steps") {
            let measured = s["failure_fraction"].as_f64().expect("measured");
            let predicted = s["predicted_failure_fraction"].as_f64().expect("predicted");
            assert!(
                (measured - predicted).abs() <= 0.05,
                "{}: measured {measured}, predicted {predicted}: {s:#}",
                m["label"]
            );
        }
    }
    let rate = &mechanisms[0];
    assert_eq!(rate["mechanism"], "rate_limited_exhaustion");
    assert_eq!(rate["steps"][0]["failed"], 0, "{rate:#}");
    assert!(rate["steps"][1]["failure_fraction"].as_f64().expect("f") > 0.05);
    assert_eq!(rate["dominant_error"], "AddrNotAvailable");
    assert_eq!(rate["matches_seed_pattern"], true);
    // The backlog overflow at c=50 shows as dropped SYNs and slow connects, not failures.
    let backlog = &mechanisms[1];
    assert!(
        backlog["steps"][1]["listen_overflows"]
            .as_u64()
            .expect("lo")
            > 0
    );
    assert!(backlog["steps"][1]["slow_connects"].as_u64().expect("slow") > 0);
    let upstream = &mechanisms[3];
    assert_eq!(
        upstream["dominant_error"], "ConnectionReset",
        "{upstream:#}"
    );
    // The remedy steps count every request once, and the breaker spares the pool.
    let remedies = report["remedies"].as_array().expect("remedies");
    assert_eq!(remedies.len(), 4);
    let n = |s: &Value, k: &str| s[k].as_u64().expect(k);
    for s in remedies {
        assert_eq!(
            n(s, "requests"),
            n(s, "succeeded") + n(s, "failed") + n(s, "short_circuited"),
            "{s:#}"
        );
    }
    let (none, long_backoff, breaker) = (&remedies[0], &remedies[2], &remedies[3]);
    assert!(
        n(long_backoff, "failed") < n(none, "failed"),
        "{remedies:#?}"
    );
    assert!(n(breaker, "short_circuited") > 0, "{breaker:#}");
    assert!(
        n(breaker, "pool_failures") < n(none, "pool_failures"),
        "{remedies:#?}"
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(host_state(), before, "the host changed");
    assert_no_leftovers(&mark);
}
