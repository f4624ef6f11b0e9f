//! The library as a poller (the exporter) uses it: start a [`Tracer`] filtered to this process,
//! make real connects on loopback, and watch cumulative snapshots catch up. Needs root.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use portlab_testkit::wait_until;
use portlab_trace::{Filter, Route, Tracer};

#[test]
fn snapshots_count_this_process_connects_cumulatively_bpf() {
    counts_this_process(Route::Bpf);
}

#[test]
fn snapshots_count_this_process_connects_cumulatively_perf() {
    counts_this_process(Route::Perf);
}

fn counts_this_process(route: Route) {
    let tracer = Tracer::start(Filter {
        pid: Some(std::process::id()),
        route,
        ..Filter::default()
    })
    .expect("attach (needs root; the BPF route needs clang at build time)");
    assert_eq!(tracer.route(), route);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open: SocketAddr = listener.local_addr().expect("addr");
    let closed: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    for _ in 0..3 {
        let client = TcpStream::connect(open).expect("connect");
        drop(listener.accept().expect("accept"));
        drop(client);
    }
    assert!(TcpStream::connect(closed).is_err());

    let seen = wait_until(Duration::from_secs(5), || {
        let s = tracer.snapshot();
        s.flow(std::process::id(), open)
            .is_some_and(|f| f.successes == 3)
            && s.flow(std::process::id(), closed)
                .is_some_and(|f| f.failures_with(libc::ECONNREFUSED) == 1)
    });
    assert!(seen, "{:#?}", tracer.snapshot().flows);
    let last = tracer.stop();
    assert_eq!(last.route, route);
    assert_eq!(last.lost_events, 0);
    let d = last.destinations();
    let to_open = d.iter().find(|x| x.destination == open).expect("open dest");
    assert_eq!((to_open.attempts, to_open.successes), (3, 3));
    let to_closed = d
        .iter()
        .find(|x| x.destination == closed)
        .expect("closed dest");
    assert_eq!(to_closed.failures[0].errno_name, "ECONNREFUSED");
    assert!(
        last.flows.iter().all(|f| f.pid == std::process::id()),
        "--pid filter"
    );
}
