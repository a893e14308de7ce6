//! The operator commands (`processors`, `undeploy`, `status`, `step-down`,
//! `state export`) run as the real binary against a SQLite store in a
//! temporary directory; step-down and a live status also against a real
//! broker (tansu) and two real `logstream host` processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::hosts::Hosts;
use common::{logstream, plugin, run, stderr, stdout};
use logstream_host::pipeline::kafka;
use logstream_host::store::{registry, SqliteStore};
use serde_json::Value;

/// Liveness bound of each wait on the hosts (not a performance assertion).
const WAIT_BOUND: Duration = Duration::from_secs(120);

fn store_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("store.db").display())
}

fn logstream_on(store: &str, args: &[&str]) -> Output {
    run(logstream().args(args).args(["--store", store]))
}

fn deploy_passthrough(store: &str) {
    let out = try_deploy_passthrough(store);
    assert!(out.status.success(), "deploy: {}", stderr(&out));
}

/// `logstream deploy` of passthrough (`pt`: logs -> pt-out), as it ended.
fn try_deploy_passthrough(store: &str) -> Output {
    run(logstream().arg("deploy").arg(plugin("passthrough")).args([
        "--name", "pt", "--input", "logs", "--output", "pt-out", "--store", store,
    ]))
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(out)))
}

/// A failed command: exit 1, one line on stderr containing `message`.
fn assert_refused(out: &Output, message: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(message), "stderr {err:?} lacks {message:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
}

#[test]
fn processors_status_undeploy_and_export_on_a_store_without_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_url(dir.path());

    // A mistyped store is refused, not created.
    let missing = dir.path().join("nope.db");
    let out = run(logstream()
        .args(["processors", "--store"])
        .arg(format!("sqlite:{}", missing.display())));
    assert_refused(&out, "there is no store at");
    assert!(!missing.exists());

    deploy_passthrough(&store);

    let listed = json_of(&logstream_on(&store, &["processors", "--json"]));
    assert_eq!(listed["version"], 1);
    let processors = listed["processors"].as_array().unwrap();
    assert_eq!(processors.len(), 1);
    let pt = &processors[0];
    assert_eq!(pt["name"], "pt");
    assert_eq!(pt["version"], 1);
    assert_eq!(pt["input_topic"], "logs");
    assert_eq!(pt["output_topic"], "pt-out");
    assert_eq!(pt["config"], "");
    let sha = pt["module_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    let text = logstream_on(&store, &["processors"]);
    assert!(stdout(&text).contains(&sha[..12]) && !stdout(&text).contains(sha));

    let status = json_of(&logstream_on(&store, &["status", "--json"]));
    assert_eq!(status["version"], 1);
    assert_eq!(status["processors"][0]["name"], "pt");
    assert_eq!(status["processors"][0]["units"], Value::Array(vec![]));
    assert_eq!(status["hosts"], Value::Array(vec![]));
    assert_eq!(status["warnings"], Value::Array(vec![]));
    assert!(logstream_on(&store, &["status"]).status.success());
    // An unreachable broker: lag unknown, a warning, still exit 0.
    let unreachable = json_of(&logstream_on(
        &store,
        &["status", "--json", "--brokers", "127.0.0.1:1"],
    ));
    assert_eq!(unreachable["warnings"].as_array().map(Vec::len), Some(1));
    assert!(unreachable["warnings"][0]
        .as_str()
        .unwrap()
        .starts_with("lag unknown"));

    assert_refused(
        &logstream_on(&store, &["state", "export", "pt"]),
        "unit pt/0 has no checkpoint yet",
    );
    assert_refused(
        &logstream_on(&store, &["state", "export", "nope", "--partition", "2"]),
        "no processor named nope is deployed",
    );
    assert_refused(
        &logstream_on(&store, &["step-down", "--processor", "nope"]),
        "no processor named nope is deployed",
    );
    assert_refused(
        &logstream_on(&store, &["step-down", "--host", "ghost"]),
        "no host named ghost is registered",
    );
    // Nothing leads yet: nothing to ask, and that is not an error.
    let out = logstream_on(&store, &["step-down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no unit was asked"));

    // An unknown name changes nothing.
    let db = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let version_before = registry::registry_version(&db).unwrap();
    assert_refused(
        &logstream_on(&store, &["undeploy", "nope"]),
        "no processor named nope is deployed",
    );
    assert_eq!(registry::registry_version(&db).unwrap(), version_before);
    assert_eq!(registry::list_specs(&db).unwrap().len(), 1);

    let out = logstream_on(&store, &["undeploy", "pt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(registry::registry_version(&db).unwrap() > version_before);
    let listed = json_of(&logstream_on(&store, &["processors", "--json"]));
    assert_eq!(listed["processors"], Value::Array(vec![]));
    assert_refused(
        &logstream_on(&store, &["undeploy", "pt"]),
        "no processor named pt is deployed",
    );
}

/// Two hosts of the real binary with a long lease: a host that stepped down
/// does not claim its own release back for a lease, which leaves the other
/// host ample time.
fn test_hosts(dir: &Path, store: &str, brokers: &str) -> Hosts {
    let mut hosts = Hosts::new(
        PathBuf::from(env!("CARGO_BIN_EXE_logstream")),
        store.to_string(),
        brokers.to_string(),
        dir.to_path_buf(),
    );
    hosts.extra_args = [
        "--checkpoint-interval-ms",
        "200",
        "--lease-ms",
        "3000",
        "--heartbeat-ms",
        "100",
        "--margin-ms",
        "200",
    ]
    .map(String::from)
    .to_vec();
    hosts
}

/// Poll `status --json` until `condition` holds; returns that status.
fn status_until(store: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        let status = json_of(&logstream_on(store, &["status", "--json"]));
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unit_pt0(status: &Value) -> &Value {
    let units = status["processors"][0]["units"].as_array();
    units
        .and_then(|u| u.iter().find(|u| u["unit"] == "pt/0"))
        .unwrap_or(&Value::Null)
}

fn leader_host(status: &Value) -> Option<String> {
    let leader = &unit_pt0(status)["leader"];
    (leader["released"] == false)
        .then(|| leader["host_id"].as_str().map(str::to_string))
        .flatten()
}

#[test]
fn step_down_hands_pt0_to_the_other_host_and_status_shows_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store_url(dir.path());
    kafka::ensure_topics(&broker.address, &[("logs", 1), ("pt-out", 1)]).unwrap();
    deploy_passthrough(&store);
    let out = run(logstream()
        .args(["gen-logs", "--count", "200", "--partitions", "1"])
        .args(["--topic", "logs", "--brokers", &broker.address]));
    assert!(out.status.success(), "gen-logs: {}", stderr(&out));

    let mut hosts = test_hosts(dir.path(), &store, &broker.address);
    hosts.start("a");
    let status = status_until(
        &store,
        "host a to lead pt/0 and checkpoint the input",
        |s| {
            leader_host(s).as_deref() == Some("a")
                && unit_pt0(s)["checkpoint"]["next_offset"] == 200
        },
    );
    let first_epoch = unit_pt0(&status)["leader"]["epoch"].as_u64().unwrap();
    let a = status["hosts"].as_array().unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["host_id"], "a");
    assert_eq!(a[0]["leads"], serde_json::json!(["pt/0"]));

    // The lag against the broker: everything is checkpointed.
    let with_lag = json_of(&logstream_on(
        &store,
        &["status", "--json", "--brokers", &broker.address],
    ));
    assert_eq!(unit_pt0(&with_lag)["lag"], 0, "{with_lag:#}");
    assert_eq!(with_lag["warnings"], Value::Array(vec![]));

    // The exported state is the checkpoint's.
    let exported: PathBuf = dir.path().join("pt0.state");
    let out = logstream_on(
        &store,
        &["state", "export", "pt", "--out", exported.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let size = std::fs::metadata(&exported).unwrap().len();
    let ckpt = &unit_pt0(&with_lag)["checkpoint"];
    // Nothing more flows, so the generation exported is the one listed.
    assert_eq!(ckpt["size_bytes"].as_u64(), Some(size), "{with_lag:#}");

    // A redeploy is checked against the current state: the same module
    // restores it; a module that cannot is refused and nothing changes.
    deploy_passthrough(&store);
    let before = json_of(&logstream_on(&store, &["processors", "--json"]));
    let out = run(logstream()
        .arg("deploy")
        .arg(plugin("level_counter"))
        .args([
            "--name", "pt", "--input", "logs", "--output", "pt-out", "--store", &store,
        ]));
    assert_refused(&out, "refuses the state of pt/0");
    assert_eq!(
        json_of(&logstream_on(&store, &["processors", "--json"])),
        before
    );

    hosts.start("b");
    status_until(&store, "host b to register", |s| {
        s["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["host_id"] == "b"))
    });

    // b's unit may still be starting when a releases; then a claims its
    // release back after the lease and the request is made again.
    let mut handed_over = false;
    for _ in 0..3 {
        let out = logstream_on(
            &store,
            &[
                "step-down",
                "--processor",
                "pt",
                "--host",
                "a",
                "--wait",
                "--wait-ms",
                "20000",
            ],
        );
        if out.status.success() {
            assert!(
                stdout(&out).contains("asked pt/0 to step down"),
                "{}",
                stdout(&out)
            );
            assert!(
                stdout(&out).contains("pt/0: now led by host b"),
                "{}",
                stdout(&out)
            );
            handed_over = true;
            break;
        }
        assert!(
            stderr(&out).contains("no other host took over pt/0"),
            "{}",
            stderr(&out)
        );
    }
    assert!(handed_over, "pt/0 was never handed over to b");

    let status = json_of(&logstream_on(&store, &["status", "--json"]));
    assert_eq!(leader_host(&status).as_deref(), Some("b"), "{status:#}");
    let leader = &unit_pt0(&status)["leader"];
    assert!(
        leader["epoch"].as_u64().unwrap() > first_epoch,
        "{status:#}"
    );
    assert_eq!(leader["step_down_requested"], false);
    let hosts_now = status["hosts"].as_array().unwrap();
    let b = hosts_now.iter().find(|h| h["host_id"] == "b").unwrap();
    assert_eq!(b["leads"], serde_json::json!(["pt/0"]));
    let a = hosts_now.iter().find(|h| h["host_id"] == "a").unwrap();
    assert_eq!(a["leads"], serde_json::json!([]));
    // The handover checkpointed: b resumed at the end of the input.
    assert_eq!(unit_pt0(&status)["checkpoint"]["next_offset"], 200);
    drop(hosts);
    // It went the graceful way (final checkpoint, release), not a lease expiry.
    let log_a = std::fs::read_to_string(dir.path().join("host-a-1.log")).unwrap();
    assert!(
        log_a.contains("stepping down from epoch") && log_a.contains("on request"),
        "host a's log:\n{log_a}"
    );
}

/// A SQLite store on a network filesystem is refused with one sentence
/// naming it and the distributed stores, and nothing is written there. The
/// network filesystem is a FUSE mount (`bindfs`, which
/// `scripts/install-deps.sh --test` installs) of a local directory; where
/// FUSE or bindfs is missing the test says it is skipped (and fails when
/// `CI` is set).
#[test]
fn a_sqlite_store_on_a_network_filesystem_is_refused() {
    let source = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("bindfs")
        .arg(source.path())
        .arg(mount.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            let reason = format!("cannot mount a FUSE filesystem with bindfs: {other:?}");
            assert!(std::env::var_os("CI").is_none(), "{reason}");
            eprintln!("skipped: {reason}");
            return;
        }
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("fusermount")
                .arg("-u")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.path());
    let store = format!("sqlite:{}", mount.path().join("store.db").display());
    let deploy = try_deploy_passthrough(&store);
    let host = logstream_on(&store, &["host", "--host-id", "a"]);
    for out in [deploy, host] {
        assert_refused(&out, "is on a network filesystem (fuse)");
        assert!(stderr(&out).contains("etcd"), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_dir(source.path()).unwrap().count(),
        0,
        "nothing written on the network filesystem"
    );
}
