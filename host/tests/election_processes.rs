//! The election across real processes on one SQLite store: kill -9 of the
//! leader, over and over, and a leader paused past its lease (a zombie).
//! A checker over the fenced writes the probes made verifies guarantee 1.

mod common;

use common::probes::{wait_until, Cluster};
use logstream_host::probe::{check_probe_log, read_probe_log};

/// Short timings keep the test quick; the validation rules still hold.
const TIMING: [u64; 3] = [300, 50, 60];
const KILLS: usize = 20;

#[test]
fn killing_the_leader_twenty_times_never_breaks_fencing() {
    let mut cluster = Cluster::new(TIMING);
    for host in ["a", "b", "c"] {
        cluster.start(host);
    }
    let store = cluster.store();
    let mut epochs = Vec::new();
    let mut last_epoch = 0;
    for round in 0..=KILLS {
        let (record, host) = cluster.wait_for_leader_above(last_epoch);
        epochs.push(record.epoch);
        last_epoch = record.epoch;
        // Let the leader make some fenced writes, then kill it mid-stride.
        wait_until("a fenced write of the new leader", || {
            read_probe_log(&store, "probe")
                .unwrap()
                .iter()
                .any(|e| e.epoch == record.epoch)
        });
        if round < KILLS {
            cluster.kill9(&host);
            cluster.start(&host);
        }
    }
    cluster.stop();

    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "epochs not strictly increasing: {epochs:?}"
    );
    let log = read_probe_log(&cluster.store(), "probe").unwrap();
    let report =
        check_probe_log(&log).unwrap_or_else(|v| panic!("fencing violated:\n{}", v.join("\n")));
    assert!(
        report.epochs.len() > KILLS,
        "only {} epochs wrote",
        report.epochs.len()
    );
    for epoch in &epochs {
        assert!(
            report.epochs.contains_key(epoch),
            "leader of epoch {epoch} never wrote"
        );
    }
}

#[test]
fn a_paused_leader_is_fenced_when_it_resumes_and_becomes_passive() {
    let mut cluster = Cluster::new(TIMING);
    cluster.start("a");
    let (first, zombie) = cluster.wait_for_leader_above(0);
    cluster.start("b");
    cluster.signal(&zombie, "-STOP");
    let (second, successor) = cluster.wait_for_leader_above(first.epoch);
    assert_ne!(successor, zombie);
    let store = cluster.store();
    wait_until("a write of the successor", || {
        read_probe_log(&store, "probe")
            .unwrap()
            .iter()
            .any(|e| e.epoch == second.epoch)
    });
    cluster.signal(&zombie, "-CONT");
    wait_until("the zombie to say it was fenced", || {
        cluster.probe(&zombie).output().contains("fenced")
    });
    wait_until("the zombie to become passive", || {
        let out = cluster.probe(&zombie).output();
        out.contains("becoming passive") || out.contains("now passive")
    });
    cluster.stop();

    let output = cluster.probe(&zombie).output();
    assert!(
        output.contains(&format!("the write of epoch {} is fenced off", first.epoch))
            || output.contains(&format!("fenced by epoch {}", second.epoch)),
        "{output}"
    );
    let log = read_probe_log(&cluster.store(), "probe").unwrap();
    check_probe_log(&log).unwrap_or_else(|v| panic!("fencing violated:\n{}", v.join("\n")));
    // Nothing of the old epoch was accepted after the successor's first write.
    let first_new = log.iter().position(|e| e.epoch == second.epoch).unwrap();
    assert!(log[first_new..].iter().all(|e| e.epoch >= second.epoch));
}
