//! Child processes the lab starts. Each is registered by PID while it may still be running, so
//! that [`interrupt`] (called from a SIGINT/SIGTERM handler thread) can kill them all, and each
//! is killed and reaped when its [`Guarded`] handle drops — on success, error and panic alike.
//!
//! A PID stays in the registry until just before the child is reaped: until then the PID cannot
//! be recycled (an unreaped child is a zombie), so a kill from the registry never hits a stranger.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LabError;

static REGISTRY: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn registry() -> MutexGuard<'static, BTreeSet<i32>> {
    // A panic while holding this lock leaves the set consistent (inserts and removes are
    // single operations), so a poisoned lock is still usable.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops the run: marks it interrupted and kills (SIGKILL) every child process the lab started
/// that is still registered. Meant for a signal-handling thread; safe to call more than once.
/// The running ladder then returns [`LabError::Interrupted`] and its guards reap the children.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for &pid in registry().iter() {
        kill_tree(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Sends `signal` to a registered child and to its process group: the lab's children lead
/// groups of their own (see `Sandbox::command`), so this reaches what they started too (a
/// shell's server, nginx's workers). Called only for children not yet reaped, whose PID (and
/// so group ID) cannot have been reused.
fn kill_tree(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// PIDs of the lab's children that are registered right now (for tests and diagnostics).
pub fn live_children() -> Vec<i32> {
    registry().iter().copied().collect()
}

/// A running child process with its stdout read line by line on a thread and its stderr
/// collected on another. Killed (SIGKILL) and reaped on drop unless already reaped.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    child: Option<Child>,
    pid: i32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Guarded {
    /// Spawns `cmd` with stdin, stdout and stderr piped, and registers it. `name` names the
    /// process in errors ("serve", "proxy", "load", "sandbox").
    ///
    /// # Errors
    /// [`LabError::Interrupted`] after [`interrupt`]; [`LabError::Spawn`] when the spawn fails
    /// (including an error returned by a `pre_exec` hook, such as setns refused).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Guarded, LabError> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Hold the registry lock across spawn so an interrupt either comes before (and we do
        // not spawn) or after (and finds the PID registered).
        let mut reg = registry();
        if interrupted() {
            return Err(LabError::Interrupted);
        }
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            what: name.to_string(),
            source,
        })?;
        let pid = child.id() as i32;
        reg.insert(pid);
        drop(reg);
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                text
            })
        });
        Ok(Guarded {
            name: name.to_string(),
            child: Some(child),
            pid,
            stdin,
            lines,
            stderr,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Closes the child's stdin (the sandbox anchor exits on end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the next line of stdout. `Ok(None)`: stdout closed.
    ///
    /// # Errors
    /// [`LabError::Interrupted`] after [`interrupt`]; [`LabError::Timeout`] past the deadline.
    pub fn next_line(&self, timeout: Duration) -> Result<Option<String>, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Wake up now and then to notice an interrupt even if the child hangs on.
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match self.lines.recv_timeout(slice) {
                Ok(line) => return Ok(Some(line)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    if interrupted() {
                        return Err(LabError::Interrupted);
                    }
                    if Instant::now() >= deadline {
                        return Err(LabError::Timeout {
                            what: format!("output from {}", self.name),
                            secs: timeout.as_secs_f64(),
                        });
                    }
                }
            }
        }
    }

    /// Sends `signal` to the child and its process group if it has not been reaped yet.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let reg = registry();
        if reg.contains(&self.pid) {
            kill_tree(self.pid, signal);
        }
    }

    /// Reads stdout to its end (up to `timeout`), then reaps the child. Returns the remaining
    /// stdout lines, the exit status and the whole stderr.
    ///
    /// # Errors
    /// [`LabError::Interrupted`], [`LabError::Timeout`] (the child is then killed on drop),
    /// [`LabError::Io`] from waiting.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished, LabError> {
        let mut lines = Vec::new();
        while let Some(line) = self.next_line(timeout)? {
            lines.push(line);
        }
        let status = self.reap()?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Finished {
            lines,
            status,
            stderr,
        })
    }

    /// Blocks until the child exits (stdout closed is not enough: a child may close it early),
    /// unregisters it, then reaps it.
    fn reap(&mut self) -> Result<ExitStatus, LabError> {
        let Some(mut child) = self.child.take() else {
            return Err(LabError::Io {
                what: format!("waiting for {}", self.name),
                source: io::Error::other("already reaped"),
            });
        };
        wait_exited_no_reap(self.pid);
        registry().remove(&self.pid);
        child.wait().map_err(|source| LabError::Io {
            what: format!("waiting for {}", self.name),
            source,
        })
    }

    /// The stderr collected so far is only available after exit; this kills the child and
    /// returns it, for error messages.
    pub fn kill_and_stderr(mut self) -> String {
        self.kill_and_reap();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.stdin = None;
            {
                let mut reg = registry();
                kill_tree(self.pid, nix::sys::signal::Signal::SIGKILL);
                reg.remove(&self.pid);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// What a child left behind after it exited.
#[derive(Debug)]
pub struct Finished {
    /// Stdout lines not read before.
    pub lines: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stderr.
    pub stderr: String,
}

/// waitid(P_PID, pid, WEXITED | WNOWAIT): returns once the child has exited, leaving it a
/// zombie so its PID is not recycled before we unregister it.
fn wait_exited_no_reap(pid: i32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child with a valid pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}
