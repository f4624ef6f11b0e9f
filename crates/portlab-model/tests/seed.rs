//! The seed notes' folk numbers must come out of the presets with `tcp_tw_reuse = 0` and the
//! seed's assumptions (one pool, client closes, connections of negligible length).

use portlab_model::{capacity, CapacityQuery, ConnectionPolicy, Os, OsProfile, TwReuse};

fn seed_query() -> CapacityQuery {
    CapacityQuery {
        source_ips: 1,
        destinations: 1,
        loopback: false,
        policy: ConnectionPolicy::ClientCloses,
        churn: None,
    }
}

fn refined_and_folk(os: Os) -> (f64, f64) {
    let mut p = OsProfile::preset(os);
    p.tw_reuse = TwReuse::Off;
    let c = capacity(&p, &seed_query());
    let refined = c.sustainable_total_per_sec.unwrap_or(f64::NAN);
    (refined, c.folk.rate_per_sec)
}

#[test]
fn linux_28232_ports_over_60_s_is_470_5_per_sec() {
    let (refined, folk) = refined_and_folk(Os::Linux);
    assert!((folk - 28_232.0 / 60.0).abs() < 1e-9, "{folk}");
    assert!((folk - 470.53).abs() < 0.01, "{folk}");
    assert!((refined - folk).abs() < 1e-9, "{refined} vs {folk}");
}

#[test]
fn windows_legacy_3976_ports_over_240_s_is_16_6_per_sec() {
    let (refined, folk) = refined_and_folk(Os::WindowsLegacy);
    assert!((folk - 3_976.0 / 240.0).abs() < 1e-9, "{folk}");
    assert!((folk - 16.57).abs() < 0.01, "{folk}");
    assert!((refined - folk).abs() < 1e-9);
}

#[test]
fn refined_answer_departs_from_folk_with_two_destinations_and_reuse() {
    let p = OsProfile::preset(Os::Linux);
    let mut q = seed_query();
    q.destinations = 2;
    q.loopback = true; // tcp_tw_reuse = 2 applies
    let c = capacity(&p, &q);
    // 2 pools x 28,232 ports / 1 s reuse delay.
    let refined = c.sustainable_total_per_sec.unwrap_or(f64::NAN);
    assert!((refined - 56_464.0).abs() < 1e-6, "{refined}");
    let codes: Vec<_> = c.differences.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["pools", "tw-reuse"]);
}
