//! Who a socket belongs to: process names, network namespaces and cgroups read once per
//! process from /proc (cached), and the [`Scope`] that selects which processes are counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What portlab knows of a process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcInfo {
    /// `comm` (up to 15 bytes), e.g. `java`.
    pub comm: String,
    /// Inode of its network namespace (`/proc/PID/ns/net`).
    pub netns: Option<u64>,
    /// Its cgroup v2 path (`0::/system.slice/x.service` → `/system.slice/x.service`).
    pub cgroup: Option<String>,
}

/// Cached lookups of [`ProcInfo`] by pid.
#[derive(Debug)]
pub struct ProcLookup {
    cache: HashMap<u32, Option<ProcInfo>>,
    live: bool,
}

/// Cached processes beyond this are forgotten (pids are reused).
const MAX_CACHED: usize = 65_536;

impl ProcLookup {
    /// Reads /proc.
    pub fn live() -> Self {
        ProcLookup {
            cache: HashMap::new(),
            live: true,
        }
    }

    /// Knows only what is inserted (tests).
    pub fn fixed() -> Self {
        ProcLookup {
            cache: HashMap::new(),
            live: false,
        }
    }

    /// Records `info` for `pid`.
    pub fn insert(&mut self, pid: u32, info: ProcInfo) {
        self.cache.insert(pid, Some(info));
    }

    /// A new name for `pid` (exec): namespaces and cgroup are read again on next use.
    pub fn set_comm(&mut self, pid: u32, comm: String) {
        if self.live {
            let mut info = read_proc(pid).unwrap_or_default();
            info.comm = comm;
            self.cache.insert(pid, Some(info));
        } else if let Some(Some(info)) = self.cache.get_mut(&pid) {
            info.comm = comm;
        }
    }

    /// The process, or None when it is gone (and was never seen).
    pub fn get(&mut self, pid: u32) -> Option<&ProcInfo> {
        if !self.cache.contains_key(&pid) {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            let info = if self.live { read_proc(pid) } else { None };
            self.cache.insert(pid, info);
        }
        self.cache.get(&pid).and_then(Option::as_ref)
    }
}

fn read_proc(pid: u32) -> Option<ProcInfo> {
    let dir = format!("/proc/{pid}");
    let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
    Some(ProcInfo {
        comm: comm.trim_end().to_string(),
        netns: std::fs::metadata(format!("{dir}/ns/net"))
            .ok()
            .map(|m| m.ino()),
        cgroup: std::fs::read_to_string(format!("{dir}/cgroup"))
            .ok()
            .and_then(|t| cgroup_v2_path(&t)),
    })
}

/// The cgroup v2 path from the text of /proc/PID/cgroup (the `0::` line).
pub fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// Which connects are counted. Built once from the caller's filter ([`crate::Filter`]).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only connects to this destination.
    pub dest: Option<SocketAddr>,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only processes in this network namespace (inode).
    pub netns: Option<u64>,
    /// Only processes in this cgroup (v2 path below the mount) or below it.
    pub cgroup: Option<String>,
}

impl Scope {
    /// Whether deciding needs the process's /proc entry.
    pub fn needs_proc(&self) -> bool {
        self.netns.is_some() || self.cgroup.is_some()
    }

    /// Whether `info` passes the namespace and cgroup conditions.
    pub fn matches(&self, info: &ProcInfo) -> bool {
        if let Some(ns) = self.netns {
            if info.netns != Some(ns) {
                return false;
            }
        }
        if let Some(want) = &self.cgroup {
            let Some(have) = &info.cgroup else {
                return false;
            };
            let want = want.trim_end_matches('/');
            if !(have == want || want.is_empty() || have.starts_with(&format!("{want}/"))) {
                return false;
            }
        }
        true
    }
}

/// The inode of a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
///
/// # Errors
/// The path cannot be read.
pub fn netns_inode(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

/// A cgroup given as a directory under the cgroup v2 mount (`/sys/fs/cgroup/a/b`, or
/// `/sys/fs/cgroup/unified/a/b` on hybrid hosts) or as a path relative to it (`/a/b`), turned
/// into the path /proc/PID/cgroup names it by.
///
/// # Errors
/// No cgroup v2 mount, or neither form names an existing cgroup directory.
pub fn cgroup_relative(path: &Path) -> Result<String, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("reading /proc/self/mounts: {e}"))?;
    let mount = cgroup2_mount(&mounts)
        .ok_or_else(|| "no cgroup v2 (cgroup2) file system is mounted".to_string())?;
    let text = path.to_string_lossy();
    let rel = text
        .strip_prefix(mount.as_str())
        .unwrap_or(&text)
        .to_string();
    let rel = if rel.starts_with('/') {
        rel
    } else {
        format!("/{rel}")
    };
    let dir = format!("{}{rel}", mount.trim_end_matches('/'));
    if Path::new(&dir).is_dir() {
        Ok(rel.trim_end_matches('/').to_string())
    } else {
        Err(format!(
            "no cgroup directory {dir} (cgroup v2 is mounted on {mount})"
        ))
    }
}

/// The mount point of the cgroup2 file system in the text of /proc/self/mounts.
pub fn cgroup2_mount(mounts: &str) -> Option<String> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| dir.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_points() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"),
            Some("/sys/fs/cgroup".into())
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0"), None);
    }

    #[test]
    fn cgroup_lines() {
        assert_eq!(
            cgroup_v2_path("0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_v2_path("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn scope_matches_cgroup_subtrees_and_namespaces() {
        let info = ProcInfo {
            comm: "x".into(),
            netns: Some(7),
            cgroup: Some("/app/worker".into()),
        };
        let s = |cg: &str, ns: Option<u64>| Scope {
            cgroup: Some(cg.into()),
            netns: ns,
            ..Scope::default()
        };
        assert!(s("/app", None).matches(&info));
        assert!(s("/app/worker/", Some(7)).matches(&info));
        assert!(!s("/ap", None).matches(&info));
        assert!(!s("/app", Some(8)).matches(&info));
    }

    #[test]
    fn this_process_is_found() {
        let mut p = ProcLookup::live();
        let me = std::process::id();
        let info = p.get(me).cloned().unwrap();
        assert!(!info.comm.is_empty());
        assert_eq!(info.netns, netns_inode(Path::new("/proc/self/ns/net")).ok());
    }
}
