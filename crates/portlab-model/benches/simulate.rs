//! Simulator speed in connection events per second (attempts plus connection ends).
//! Target: at least 10 million events/s, so an hour of a 30,000 conn/s workload simulates in
//! seconds. Run: `cargo bench -p portlab-model`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portlab_model::{simulate, ConnectionPolicy, Latency, Os, OsProfile, TwReuse, Workload};

fn cases() -> Vec<(&'static str, OsProfile, Workload)> {
    // tcp_tw_reuse=1 with a 100 ms delay sustains 282,320 conn/s per pool: these runs never
    // fail, so every counted event is a real connect or close.
    let mut reuse = OsProfile::preset(Os::Linux);
    reuse.tw_reuse = TwReuse::All;
    reuse.tw_reuse_delay = Duration::from_millis(100);
    let mut no_reuse = OsProfile::preset(Os::Linux);
    no_reuse.tw_reuse = TwReuse::Off;
    let exp_1ms = Latency::Exponential { mean_us: 1000 };
    let mut two_dst =
        Workload::closed(256, exp_1ms, ConnectionPolicy::ClientCloses).with_max_attempts(1_000_000);
    two_dst.destinations = 2;
    vec![
        (
            "closed c=100 drop tw_reuse=1",
            reuse.clone(),
            Workload::closed(100, exp_1ms, ConnectionPolicy::ClientCloses)
                .with_max_attempts(1_000_000),
        ),
        (
            "closed c=256 drop 2 destinations tw_reuse=1",
            reuse,
            two_dst,
        ),
        (
            "closed c=1000 keep-alive",
            no_reuse.clone(),
            Workload::closed(1000, exp_1ms, ConnectionPolicy::KeepAlive)
                .with_max_attempts(1_000_000),
        ),
        (
            "open 30k/s 10 s close",
            no_reuse.clone(),
            Workload::open(30_000.0, exp_1ms, ConnectionPolicy::ServerCloses)
                .with_duration(Duration::from_secs(10)),
        ),
        (
            // Every failure here is an arrival of its own (no bulk counting in open loop).
            "open 30k/s 60 s drop tw_reuse=0 (exhausts)",
            no_reuse,
            Workload::open(
                30_000.0,
                Latency::fixed(Duration::from_millis(2)),
                ConnectionPolicy::ClientCloses,
            )
            .with_duration(Duration::from_secs(60)),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    for (name, profile, workload) in cases() {
        let events = simulate(&profile, &workload, 1)
            .map(|r| r.events)
            .unwrap_or(0);
        group.throughput(Throughput::Elements(events));
        group.bench_function(name, |b| {
            b.iter(|| simulate(black_box(&profile), black_box(&workload), 1));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
