//! [`Sandbox`]: a throw-away network namespace with its own port-pool sysctls, anchored by a
//! child process (`portlab __sandbox-anchor`, see [`crate::anchor`]). Commands made with
//! [`Sandbox::command`] join it with setns(2) before exec. Dropping the sandbox kills every
//! process it started and the anchor; the kernel frees the namespace with its last process.
//! Nothing is written to the host: no `ip netns` name, no host sysctl.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::anchor::{AnchorEvent, Ready, Sample, ANCHOR_SUBCOMMAND};
use crate::procs::Guarded;
use crate::sandbox_config::{Isolation, SandboxConfig};
use crate::text::one_line;
use crate::LabError;

/// How long the anchor may take to set the namespace up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A live sandbox. See the module documentation.
#[derive(Debug)]
pub struct Sandbox {
    // Field order matters for drop: children first (they are owned by callers and dropped
    // before us), then the anchor.
    anchor: Option<Guarded>,
    user_ns: Option<OwnedFd>,
    net_ns: OwnedFd,
    ready: Ready,
}

impl Sandbox {
    /// Starts an anchor (`exe __sandbox-anchor …`) and waits until its namespace is ready.
    ///
    /// # Errors
    /// [`LabError::Sandbox`] with the anchor's one-sentence reason when no namespace can be
    /// made (not root and no user namespaces); [`LabError::Spawn`], [`LabError::Timeout`],
    /// [`LabError::Interrupted`].
    pub fn create(exe: &Path, config: &SandboxConfig) -> Result<Sandbox, LabError> {
        let (low, high) = config.port_range;
        let mut cmd = Command::new(exe);
        cmd.arg(ANCHOR_SUBCOMMAND)
            .arg("--range")
            .arg(format!("{low}-{high}"))
            .arg("--tw-reuse")
            .arg(config.tw_reuse.to_string())
            .arg("--sample-ms")
            .arg(config.sample_interval_ms.to_string());
        for (name, value) in &config.sysctls {
            cmd.arg("--sysctl").arg(format!("{name}={value}"));
        }
        let lab_pid = std::process::id();
        // SAFETY: the hook only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || child_hardening(lab_pid));
        }
        let anchor = Guarded::spawn("sandbox", &mut cmd)?;
        let first = anchor.next_line(READY_TIMEOUT)?;
        let ready = match first.as_deref().map(serde_json::from_str::<AnchorEvent>) {
            Some(Ok(AnchorEvent::Ready(ready))) => ready,
            Some(Ok(AnchorEvent::Error(err))) => {
                return Err(LabError::Sandbox(err));
            }
            _ => {
                let stderr = anchor.kill_and_stderr();
                return Err(LabError::Protocol {
                    what: "sandbox".to_string(),
                    detail: format!(
                        "unexpected first line {first:?}; stderr: {}",
                        one_line(&stderr)
                    ),
                });
            }
        };
        let pid = anchor.pid();
        let open = |kind: &str| -> Result<OwnedFd, LabError> {
            let path = format!("/proc/{pid}/ns/{kind}");
            File::open(&path)
                .map(OwnedFd::from)
                .map_err(|source| LabError::Io {
                    what: format!("opening {path}"),
                    source,
                })
        };
        let net_ns = open("net")?;
        let user_ns = match ready.isolation {
            Isolation::NetworkNamespace => None,
            Isolation::UserAndNetworkNamespace => Some(open("user")?),
        };
        Ok(Sandbox {
            anchor: Some(anchor),
            user_ns,
            net_ns,
            ready,
        })
    }

    /// How the namespace was made and the sysctls read back inside it.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The kernel counters of the sandbox's namespace (`/proc/<anchor>/net/netstat` and
    /// `snmp` show the namespace of that process); `None` when they cannot be read.
    pub fn counters(&self) -> Option<portlab_sockets::Counters> {
        let pid = self.anchor_pid()?;
        portlab_sockets::Counters::read_from(
            Path::new(&format!("/proc/{pid}/net/netstat")),
            Path::new(&format!("/proc/{pid}/net/snmp")),
        )
        .ok()
    }

    /// The anchor's PID (its namespaces are `/proc/<pid>/ns/*`).
    pub fn anchor_pid(&self) -> Option<i32> {
        self.anchor.as_ref().map(Guarded::pid)
    }

    /// A command that runs `program` inside the sandbox: between fork and exec it joins the
    /// sandbox's user namespace (when there is one) and network namespace, asks for SIGKILL
    /// when the lab dies (PR_SET_PDEATHSIG) and leaves the terminal's process group, so Ctrl-C
    /// reaches only the lab, which then stops everything in order.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let user_fd = self.user_ns.as_ref().map(AsRawFd::as_raw_fd);
        let net_fd = self.net_ns.as_raw_fd();
        let lab_pid = std::process::id();
        // SAFETY: the hook only makes async-signal-safe syscalls on descriptors that stay open
        // while the Sandbox lives (the caller spawns while holding &self).
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = user_fd {
                    setns(fd, libc::CLONE_NEWUSER)?;
                }
                setns(net_fd, libc::CLONE_NEWNET)?;
                child_hardening(lab_pid)
            });
        }
        cmd
    }

    /// Stops the anchor and returns the samples it took since it was ready (one per
    /// `sample_interval_ms`, each stamped with CLOCK_MONOTONIC so callers can cut out a time
    /// window). Before stopping it waits (at most a second) for one sample taken after this
    /// call, so the last sample shows the socket table after every other process has exited —
    /// with the final TIME_WAIT entries in place.
    ///
    /// # Errors
    /// [`LabError::Interrupted`], [`LabError::Timeout`] when the anchor does not exit.
    pub fn finish(mut self) -> Result<Vec<Sample>, LabError> {
        let Some(mut anchor) = self.anchor.take() else {
            return Ok(Vec::new());
        };
        let called_at = crate::anchor::monotonic_ms();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut samples = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Some(line) = anchor.next_line(left).or_else(|e| match e {
                LabError::Timeout { .. } => Ok(None),
                other => Err(other),
            })?
            else {
                break;
            };
            if let Some(sample) = parse_sample(&line) {
                let after = sample.monotonic_ms > called_at;
                samples.push(sample);
                if after {
                    break;
                }
            }
        }
        anchor.close_stdin();
        let finished = anchor.finish(Duration::from_secs(10))?;
        samples.extend(finished.lines.iter().filter_map(|l| parse_sample(l)));
        Ok(samples)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    match serde_json::from_str::<AnchorEvent>(line) {
        Ok(AnchorEvent::Sample(s)) => Some(s),
        _ => None,
    }
}

/// The executable the lab runs inside sandboxes: `portlab` itself.
///
/// # Errors
/// [`LabError::Io`] when the running executable cannot be found.
pub fn current_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|source| LabError::Io {
        what: "finding the portlab executable".to_string(),
        source,
    })
}

fn setns(fd: i32, nstype: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setns on a namespace descriptor we hold open.
    if unsafe { libc::setns(fd, nstype) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: unblock every signal (the lab blocks SIGINT and SIGTERM for
/// its signal thread, and a blocked mask survives exec), die with the lab (PR_SET_PDEATHSIG)
/// and move to a process group of its own so the terminal's SIGINT goes to the lab only.
fn child_hardening(lab_pid: u32) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask/prctl/setpgid/getppid are async-signal-safe; the set is
    // a local initialised by sigemptyset.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != lab_pid {
            // The lab died between fork and prctl: do not outlive it.
            libc::_exit(1);
        }
        if libc::setpgid(0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
