//! [`Sandbox`] on the real kernel: its own sysctls with the host's untouched, loopback up,
//! socket samples that see TIME_WAIT made inside it, every process gone when it drops, and the
//! user-namespace path as an unprivileged user.
//!
//! This test binary doubles as the sandbox anchor (`<test> __sandbox-anchor …` runs
//! `portlab_lab::anchor::run`), so it needs no `portlab` binary; hence `harness = false` and a
//! small runner that speaks enough of libtest's interface for `cargo test` and nextest
//! (`--list --format terse`, `--exact NAME`).

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use portlab_lab::procs::Guarded;
use portlab_lab::{Isolation, Sandbox, SandboxConfig, ANCHOR_SUBCOMMAND};

const UNPRIVILEGED_MODE: &str = "__unprivileged-sandbox";
const NOBODY: u32 = 65534;

fn config() -> SandboxConfig {
    SandboxConfig {
        port_range: (41000, 41099),
        tw_reuse: 0,
        sample_interval_ms: 10,
        sysctls: Vec::new(),
    }
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("test executable")
}

fn host_sysctls() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).expect("read host sysctl");
    (
        read("/proc/sys/net/ipv4/ip_local_port_range"),
        read("/proc/sys/net/ipv4/tcp_tw_reuse"),
    )
}

fn output_in(sandbox: &Sandbox, argv: &[&str]) -> String {
    let (program, rest) = argv.split_first().expect("argv");
    let out = sandbox
        .command(program)
        .args(rest)
        .output()
        .expect("run in sandbox");
    assert!(out.status.success(), "{argv:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sandbox_sets_its_own_sysctls_and_leaves_the_host_alone() {
    let before = host_sysctls();
    let sandbox = Sandbox::create(&exe(), &config()).expect("sandbox");
    assert_eq!(sandbox.ready().isolation, Isolation::NetworkNamespace);
    assert_eq!(sandbox.ready().port_range, (41000, 41099));
    assert_eq!(sandbox.ready().tw_reuse, 0);
    let inside = output_in(
        &sandbox,
        &[
            "cat",
            "/proc/sys/net/ipv4/ip_local_port_range",
            "/proc/sys/net/ipv4/tcp_tw_reuse",
        ],
    );
    assert_eq!(inside, "41000\t41099\n0\n");
    assert_eq!(host_sysctls(), before, "the host's sysctls changed");
    drop(sandbox);
    assert_eq!(host_sysctls(), before, "the host's sysctls changed");
}

fn sandbox_has_only_loopback_and_it_is_up() {
    let sandbox = Sandbox::create(&exe(), &config()).expect("sandbox");
    let links = output_in(&sandbox, &["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains(",UP"), "{links}");
    let addrs = output_in(&sandbox, &["ip", "-o", "-4", "addr", "show", "dev", "lo"]);
    assert!(addrs.contains("127.0.0.1/8"), "{addrs}");
}

/// Waits up to 10 s until this thread's network namespace holds `n` TIME_WAIT sockets
/// (`/proc/thread-self/net/tcp`, state 06).
fn wait_for_time_wait(n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
        let time_wait = table
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(3) == Some("06"))
            .count();
        if time_wait >= n {
            return;
        }
        std::thread::yield_now();
    }
}

fn samples_see_time_wait_made_inside_the_sandbox() {
    const CLOSED_BY_CLIENT: usize = 30;
    let sandbox = Sandbox::create(&exe(), &config()).expect("sandbox");
    let anchor = sandbox.anchor_pid().expect("anchor");
    // A thread that joined the sandbox's network namespace makes the sockets.
    let server = std::thread::spawn(move || -> std::io::Result<std::net::SocketAddr> {
        let ns = File::open(format!("/proc/{anchor}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listener = TcpListener::bind("127.0.0.1:8080")?;
        let addr = listener.local_addr()?;
        for _ in 0..CLOSED_BY_CLIENT {
            let client = TcpStream::connect(addr)?;
            let (mut server_side, _) = listener.accept()?;
            drop(client); // the client closes first: its side goes to TIME_WAIT
            let mut buf = [0u8; 1];
            let _ = server_side.read(&mut buf)?; // read the FIN, then close
        }
        // The server's FIN reaches the client sockets in softirq context, which a loaded
        // machine defers: wait (with a deadline) until all of them are in TIME_WAIT.
        wait_for_time_wait(CLOSED_BY_CLIENT);
        Ok(addr)
    })
    .join()
    .expect("socket thread")
    .expect("sockets in the sandbox");
    let samples = sandbox.finish().expect("samples");
    let last = samples.last().expect("at least the final sample");
    let pool = last
        .pools
        .iter()
        .find(|p| p.destination == server)
        .unwrap_or_else(|| panic!("no pool towards {server}: {last:?}"));
    assert_eq!(pool.time_wait, CLOSED_BY_CLIENT as u64, "{last:?}");
    assert_eq!(pool.used, CLOSED_BY_CLIENT as u64, "{last:?}");
    // Samples are stamped with the shared monotonic clock, in order.
    assert!(samples
        .windows(2)
        .all(|w| w[0].monotonic_ms <= w[1].monotonic_ms));
}

fn dropping_the_sandbox_stops_every_process() {
    let sandbox = Sandbox::create(&exe(), &config()).expect("sandbox");
    let anchor = sandbox.anchor_pid().expect("anchor");
    let mut sleep = sandbox.command("sleep");
    sleep.arg("300");
    let child = Guarded::spawn("sleep", &mut sleep).expect("spawn sleep");
    let pid = child.pid();
    assert!(portlab_lab::procs::live_children().contains(&pid));
    // The child runs in the sandbox's namespace, not the host's.
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/net")).expect("ns link");
    assert_eq!(ns(pid), ns(anchor));
    assert_ne!(ns(pid), ns(std::process::id() as i32));
    drop(child);
    drop(sandbox);
    for p in [pid, anchor] {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} survived"
        );
    }
    let left = portlab_lab::procs::live_children();
    assert!(!left.contains(&pid) && !left.contains(&anchor), "{left:?}");
}

fn unprivileged_user_gets_a_user_namespace_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // A copy nobody can run: the build directory may sit under a home nobody cannot enter.
    let dir = std::env::temp_dir().join(format!("portlab-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("sandbox-test");
    std::fs::copy(exe(), &copy).expect("copy the test binary");
    for path in [&dir, &copy] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // std drops supplementary groups (setgroups(0)) when root sets a uid.
    let out = Command::new(&copy)
        .arg(UNPRIVILEGED_MODE)
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("run as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "UserAndNetworkNamespace 41000\t41099 0");
}

/// Runs as nobody: makes a sandbox and reports how, with the range read inside it.
fn unprivileged_mode() -> ExitCode {
    let sandbox = match Sandbox::create(&exe(), &config()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let range = output_in(&sandbox, &["cat", "/proc/sys/net/ipv4/ip_local_port_range"]);
    println!(
        "{:?} {} {}",
        sandbox.ready().isolation,
        range.trim(),
        sandbox.ready().tw_reuse
    );
    ExitCode::SUCCESS
}

/// `__sandbox-anchor --range L-H --tw-reuse N --sample-ms M`, as the portlab binary has it.
fn anchor_mode(args: &[String]) -> ExitCode {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let range = value("--range");
    let (low, high) = range.split_once('-').unwrap_or(("0", "0"));
    let config = SandboxConfig {
        port_range: (low.parse().unwrap_or(0), high.parse().unwrap_or(0)),
        tw_reuse: value("--tw-reuse").parse().unwrap_or(0),
        sample_interval_ms: value("--sample-ms").parse().unwrap_or(20),
        sysctls: Vec::new(),
    };
    match portlab_lab::anchor::run(&config, std::io::stdin(), std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "sandbox_sets_its_own_sysctls_and_leaves_the_host_alone",
        sandbox_sets_its_own_sysctls_and_leaves_the_host_alone,
    ),
    (
        "sandbox_has_only_loopback_and_it_is_up",
        sandbox_has_only_loopback_and_it_is_up,
    ),
    (
        "samples_see_time_wait_made_inside_the_sandbox",
        samples_see_time_wait_made_inside_the_sandbox,
    ),
    (
        "dropping_the_sandbox_stops_every_process",
        dropping_the_sandbox_stops_every_process,
    ),
    (
        "unprivileged_user_gets_a_user_namespace_sandbox",
        unprivileged_user_gets_a_user_namespace_sandbox,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(ANCHOR_SUBCOMMAND) => return anchor_mode(&args),
        Some(UNPRIVILEGED_MODE) => return unprivileged_mode(),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        // libtest's terse listing, which nextest reads.
        if !args.iter().any(|a| a == "--ignored") {
            for (name, _) in TESTS {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected = TESTS.iter().filter(|(name, _)| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            })
    });
    let mut failed = 0;
    let mut ran = 0;
    for (name, test) in selected {
        ran += 1;
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        ran - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
