//! Capacity is explicit (issue 14): a host runs at most `--max-units`
//! units and never contends for the others' leases, reports them as
//! waiting, and a host with room leads them; a deploy that fits on no
//! registered host says so. Real binary, real broker, SQLite store.

mod common;

use common::admin::{admin_address, get};
use common::reliability::Counts;
use common::stderr;
use common::verify;
use common::world::{
    deploy, exclusive, run_local, wait_for_checkpoint, wait_until, World, RUN_BOUND,
};
use logstream_host::pipeline::kafka;
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, RetryPolicy, SqliteStore};

fn leader_holder(store: &SqliteStore, unit: &str) -> Option<String> {
    transact(store, &RetryPolicy::default(), |txn| read_leader(txn, unit))
        .unwrap()
        .filter(|r| !r.released)
        .map(|r| r.holder)
}

#[test]
fn a_host_at_capacity_leaves_the_units_beyond_it_to_a_host_with_room() {
    let _exclusive = exclusive();
    let world = World::new("capacity-");
    let url = world.deploy_passthrough("s", 3, 3);
    kafka::ensure_topics(&world.broker.address, &[("more", 2)]).unwrap();
    let mut hosts = world.hosts("s");
    hosts.extra_args.extend(["--max-units".into(), "2".into()]);
    hosts.start("a");
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    let admin = admin_address(&hosts.dir, "a", RUN_BOUND);
    wait_until("a to run pt/0 and pt/1 and wait with pt/2", || {
        let (code, body) = get(admin, "/readyz").unwrap();
        code == 503
            && body.contains(
                "at capacity: 1 units cannot run on this host (max_units 2, running 2): pt/2",
            )
    });
    let (_, metrics) = get(admin, "/metrics").unwrap();
    assert!(metrics.contains("logstream_units_waiting 1"), "{metrics}");
    assert!(metrics.contains("logstream_max_units 2"), "{metrics}");
    world.produce("logs", 3_000, 3);
    wait_for_checkpoint(&store, "pt/0", 0, 1_000);
    wait_for_checkpoint(&store, "pt/1", 1, 1_000);
    // a never contends for pt/2.
    assert_eq!(leader_holder(&store, "pt/2"), None);

    // A deploy that fits on no registered host says so (and still deploys).
    let out = deploy(
        "passthrough",
        &[
            "--name",
            "more",
            "--input",
            "more",
            "--output",
            "pt-out",
            "--store",
            &url,
            "--brokers",
            &world.broker.address,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("more than any registered host has room for (a: 0 of 2 free)"),
        "{warning}"
    );

    // A host with room leads what a cannot run.
    hosts.extra_args.truncate(hosts.extra_args.len() - 2);
    hosts.start("b");
    let b = hosts.pid_of("b");
    wait_for_checkpoint(&store, "pt/2", 2, 1_000);
    let holder = leader_holder(&store, "pt/2").unwrap();
    assert_eq!(logstream_host::probe::pid_of(&holder), Some(b));
    hosts.stop_all();
    let mut counts = Counts::default();
    for partition in 0..3 {
        let (want, _) = run_local(
            world.dir.path(),
            "passthrough",
            "",
            &world.read("logs", partition),
        );
        let got = verify::output_rows(world.read("pt-out", partition), &format!("pt/{partition}"));
        counts.add(Counts::of(&want, &got));
        assert_eq!(got, want, "pt/{partition}");
    }
    counts.write_row(
        "host at capacity",
        "a host with --max-units 2 and a processor of 3 units; a second host with room started later",
        1,
        "the first ran 2 units, never contended for the third and reported it waiting (/readyz, /status, logstream_units_waiting); the second led it; outputs identical to an uninterrupted run",
    );
}
