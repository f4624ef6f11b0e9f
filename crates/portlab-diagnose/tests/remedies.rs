//! Every Linux remedy that names a sysctl names one the kernel has, and the folklore keys
//! portlab corrects are really gone — checked against the running kernel in a throw-away
//! network namespace.

use portlab_diagnose::remedies::{self, Os};
use portlab_testkit::NetNs;

fn sysctl_keys(commands: impl Iterator<Item = String>) -> Vec<String> {
    commands
        .filter_map(|c| {
            let rest = c.strip_prefix("sysctl -w ")?;
            Some(rest.split('=').next()?.trim().to_string())
        })
        .collect()
}

#[test]
fn every_linux_sysctl_remedy_names_a_real_key() {
    let ns = NetNs::new("remedies").expect("create netns (needs root)");
    let all = remedies::port_exhaustion()
        .into_iter()
        .chain(remedies::listen_queue())
        .chain(remedies::fd_limit())
        .chain(remedies::server_side());
    let linux: Vec<_> = all.filter(|r| r.os == Os::Linux).collect();
    let keys = sysctl_keys(linux.iter().filter_map(|r| r.command.clone()));
    assert!(keys.len() >= 5, "{keys:?}");
    for key in keys {
        let out = ns
            .command("sysctl")
            .args(["-n", &key])
            .output()
            .expect("sysctl runs");
        assert!(
            out.status.success(),
            "sysctl -n {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Applying a Linux remedy inside the namespace works (and leaves the host alone).
    for command in linux.iter().filter_map(|r| r.command.as_deref()) {
        if let Some(assignment) = command.strip_prefix("sysctl -w ") {
            let assignment = assignment.replace('"', "");
            ns.sysctl(
                assignment.split('=').next().expect("key"),
                assignment.split_once('=').expect("value").1,
            )
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        }
    }
}

#[test]
fn corrected_folklore_matches_the_kernel() {
    let ns = NetNs::new("folklore").expect("create netns (needs root)");
    let recycle = ns
        .command("sysctl")
        .args(["-n", "net.ipv4.tcp_tw_recycle"])
        .output()
        .expect("runs");
    assert!(
        !recycle.status.success(),
        "tcp_tw_recycle was removed in Linux 4.12"
    );
    let text: String = remedies::corrections().iter().map(|c| c.truth).collect();
    assert!(text.contains("removed in Linux 4.12"));
    assert!(text.contains("FIN_WAIT_2"));
}
