//! Failover transparency (guarantee 2) over a real broker (tansu, sqlite
//! storage), the real SQLite store and two real `logstream host` processes:
//! the host leading the units is killed with kill -9 (20 times, while
//! 200,000 records flow over 3 partitions; `PIPELINE_KILLS`,
//! `PIPELINE_RECORDS`) and restarted as the passive; in the end every
//! output partition — of the default output topics and of `lc-alerts`, the
//! topic level-counter routes error records to by name — holds exactly what
//! `logstream run-local` computes over the same input partition (nothing
//! lost, nothing twice, same order), and the final checkpointed state
//! equals run-local's final state byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::etcd::EtcdCluster;
use common::hosts::Hosts;
use common::netns::{Link, Nodes};
use common::reliability::{Counts, Row};
use common::verify::{self, OutputRow};
use common::{logstream, plugin, run, stderr};
use logstream_host::pipeline::fenced::FencedProducer;
use logstream_host::pipeline::kafka;
use logstream_host::record::LogRecord;
use logstream_host::store::checkpoint;
use logstream_host::store::election::{read_leader, LeaderRecord};
use logstream_host::store::{deployment, transact, KvStore, RetryPolicy, SqliteStore};
use logstream_host::unit_id::UnitId;

const PARTITIONS: i32 = 3;
/// The processors every transparency scenario runs: name, component,
/// output topics (the first the default; level-counter routes the records
/// of level `error` to the second), config.
const PROCESSORS: [(&str, &str, &[&str], &str); 2] = [
    ("pt", "passthrough", &["pt-out"], ""),
    (
        "lc",
        "level_counter",
        &["lc-out", "lc-alerts"],
        "every=100,alerts=lc-alerts",
    ),
];
/// Input records, spread over the partitions (env `PIPELINE_RECORDS`).
const DEFAULT_RECORDS: u64 = 200_000;
/// kill -9 of the leading host while records flow (env `PIPELINE_KILLS`);
/// issue 6 asks for at least 20 in one run.
const DEFAULT_KILLS: usize = 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
/// Liveness bound on the whole run (not a performance assertion).
const RUN_BOUND: Duration = Duration::from_secs(300);

/// The tests of this file run one at a time: each runs a broker, two hosts
/// and a producer, and three such sets at once on a 2-core machine starved
/// the broker into 30 s request timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hosts of the real binary, checkpointing every 200 ms.
fn test_hosts(store_path: &Path, brokers: &str, dir: &Path) -> Hosts {
    test_hosts_on(format!("sqlite:{}", store_path.display()), brokers, dir)
}

fn test_hosts_on(store_url: String, brokers: &str, dir: &Path) -> Hosts {
    let mut hosts = Hosts::new(
        PathBuf::from(env!("CARGO_BIN_EXE_logstream")),
        store_url,
        brokers.to_string(),
        dir.to_path_buf(),
    );
    hosts.extra_args = vec!["--checkpoint-interval-ms".into(), "200".into()];
    hosts
}

fn units() -> Vec<String> {
    PROCESSORS
        .iter()
        .flat_map(|(p, ..)| (0..PARTITIONS).map(move |i| format!("{p}/{i}")))
        .collect()
}

/// pid of the process holding each unit's leader record.
fn leaders(store: &dyn KvStore) -> Vec<Option<u32>> {
    leader_records(store)
        .into_iter()
        .map(|record| {
            record
                .filter(|r| !r.released)
                .and_then(|r| logstream_host::probe::pid_of(&r.holder))
        })
        .collect()
}

/// Each unit's leader record, in `units()` order.
fn leader_records(store: &dyn KvStore) -> Vec<Option<LeaderRecord>> {
    units()
        .iter()
        .map(|unit| transact(store, &RetryPolicy::default(), |txn| read_leader(txn, unit)).unwrap())
        .collect()
}

fn wait_until(what: &str, deadline: Instant, mut condition: impl FnMut() -> bool) {
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_partition(brokers: &str, topic: &str, partition: i32) -> Vec<LogRecord> {
    verify::read_partition(brokers, topic, partition, RUN_BOUND)
}

/// run-local over one partition's records: the outputs by topic and the
/// final state.
fn expected(
    dir: &Path,
    component: &Path,
    processor: &str,
    config: &str,
    outputs: &[&str],
    records: &[LogRecord],
    partition: i32,
) -> (BTreeMap<String, Vec<OutputRow>>, Vec<u8>) {
    verify::run_local_routed(
        Path::new(env!("CARGO_BIN_EXE_logstream")),
        component,
        config,
        outputs,
        records,
        dir,
        &format!("{processor}-{partition}"),
    )
}

/// Output partition contents as rows, in topic order.
fn actual(brokers: &str, topic: &str, unit: &str, partition: i32) -> Vec<OutputRow> {
    verify::output_rows(read_partition(brokers, topic, partition), unit)
}

/// What a scenario can disrupt.
struct Faults<'a> {
    hosts: &'a mut Hosts,
    store: &'a dyn KvStore,
    /// The SQLite file, when the scenario runs on SQLite.
    store_path: Option<&'a Path>,
    /// The etcd cluster, when the scenario runs on etcd.
    etcd: Option<&'a mut EtcdCluster>,
    /// The simulated machines, when each host runs on one (host `a` on
    /// node 1, `b` on node 2).
    nodes: Option<&'a Nodes>,
    broker: &'a mut Broker,
}

/// The node host `id` runs on, in scenarios on nodes.
fn node_of(id: &str) -> u32 {
    match id {
        "a" => 1,
        "b" => 2,
        other => panic!("no node for host {other}"),
    }
}

/// Where a scenario runs: its store, and whether each host runs on a
/// simulated machine of its own (a network namespace whose links to the
/// store and to the broker can be cut; the store and the broker then
/// listen on the nodes' bridges).
struct Setup {
    store: StoreKind,
    nodes: Option<Nodes>,
    /// Components deployed instead of a [`PROCESSORS`] entry's (by its
    /// component name): a processor written in another language.
    instead: Vec<(&'static str, PathBuf)>,
}

impl Setup {
    /// A scenario on the store of `kind`, hosts on this machine.
    fn on(store: StoreKind) -> Setup {
        Setup {
            store,
            nodes: None,
            instead: Vec::new(),
        }
    }

    /// The component deployed for processor component `file`.
    fn component(&self, file: &str) -> PathBuf {
        self.instead
            .iter()
            .find(|(name, _)| *name == file)
            .map_or_else(|| plugin(file), |(_, path)| path.clone())
    }
}

/// The coordination store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// The embedded default: a file in the test directory.
    Sqlite,
    /// A three-member etcd cluster of the scenario's own.
    Etcd,
    /// The same, secured as in production: TLS with client certificates
    /// and password authentication (every security option of the store
    /// URL).
    EtcdSecure,
}

/// A scenario's store: its URL for the hosts, a handle for the test.
struct ScenarioStore {
    url: String,
    handle: Box<dyn KvStore>,
    sqlite_path: Option<PathBuf>,
    etcd: Option<EtcdCluster>,
}

impl ScenarioStore {
    fn new(kind: StoreKind, dir: &Path, ip: &str) -> ScenarioStore {
        match kind {
            StoreKind::Sqlite => {
                let path = dir.join("store.db");
                ScenarioStore {
                    url: format!("sqlite:{}", path.display()),
                    handle: Box::new(SqliteStore::open(&path).unwrap()),
                    sqlite_path: Some(path),
                    etcd: None,
                }
            }
            StoreKind::Etcd | StoreKind::EtcdSecure => {
                let cluster = if kind == StoreKind::Etcd {
                    EtcdCluster::start_on(ip, 3)
                } else {
                    EtcdCluster::start_secure_on(ip, 3)
                };
                let url = cluster.url();
                ScenarioStore {
                    handle: EtcdCluster::open(&url),
                    url,
                    sqlite_path: None,
                    etcd: Some(cluster),
                }
            }
        }
    }
}

/// What a scenario injected, for the reliability table.
struct Injected {
    what: String,
    times: usize,
    /// Whether every unit must have changed leader by the end.
    fails_over: bool,
}

/// Outputs lost or duplicated over a scenario, against run-local.
#[derive(Default)]
struct Tally {
    outputs: Counts,
    states_differ: usize,
}

impl Tally {
    fn add(&mut self, want: &[OutputRow], got: &[OutputRow]) {
        self.outputs.add(Counts::of(want, got));
    }

    /// One row of docs/reliability.md, written before the test asserts so
    /// a failing scenario is reported too (scripts/reliability-table.sh
    /// assembles the rows).
    fn write(&self, scenario: &str, injected: &Injected) {
        let clean = self.outputs.clean() && self.states_differ == 0;
        let outcome = if clean {
            "outputs and final states identical to an uninterrupted run".to_string()
        } else {
            format!(
                "DIFFERS: {} unexpected outputs, {} final states differ",
                self.outputs.unexpected, self.states_differ
            )
        };
        Row {
            scenario,
            injected: &injected.what,
            times: injected.times,
            outcome: &outcome,
            lost: self.outputs.lost,
            out_of: self.outputs.out_of,
            duplicated: self.outputs.duplicated,
        }
        .write();
    }
}

/// The transparency scenario: two hosts, passthrough and level-counter on
/// three partitions, `records` produced while `disrupt` does its worst to the
/// hosts; then every output partition and final state must equal an
/// uninterrupted run. Returns the test directory (host logs) for more checks.
fn transparency_run(
    scenario: &str,
    records: u64,
    disrupt: impl FnOnce(&mut Faults<'_>) -> Injected,
) -> tempfile::TempDir {
    transparency_run_on(StoreKind::Sqlite, scenario, records, disrupt)
}

/// [`transparency_run`] on the store of `kind`.
fn transparency_run_on(
    kind: StoreKind,
    scenario: &str,
    records: u64,
    disrupt: impl FnOnce(&mut Faults<'_>) -> Injected,
) -> tempfile::TempDir {
    transparency_run_then(Setup::on(kind), scenario, records, disrupt, |_, _| {})
}

/// [`transparency_run_on`], then `inspect` the broker's topics and the
/// store before they stop.
fn transparency_run_then(
    setup: Setup,
    scenario: &str,
    records: u64,
    disrupt: impl FnOnce(&mut Faults<'_>) -> Injected,
    inspect: impl FnOnce(&str, &dyn KvStore),
) -> tempfile::TempDir {
    let deadline = Instant::now() + RUN_BOUND;
    let (store_ip, broker_ip) = match &setup.nodes {
        Some(nodes) => (nodes.store_ip().to_string(), nodes.broker_ip().to_string()),
        None => ("127.0.0.1".to_string(), "127.0.0.1".to_string()),
    };
    let mut broker = Broker::start_on(&broker_ip);
    // LOGSTREAM_KEEP_TEST_DIR=1 keeps the store and the host logs for a look
    // after a failure.
    let dir = tempfile::Builder::new()
        .prefix("pipeline-failover-")
        .disable_cleanup(std::env::var_os("LOGSTREAM_KEEP_TEST_DIR").is_some())
        .tempdir()
        .unwrap();
    eprintln!("test directory: {}", dir.path().display());
    let mut scenario_store = ScenarioStore::new(setup.store, dir.path(), &store_ip);
    let store_url = scenario_store.url.clone();
    let mut topics = vec![("logs", PARTITIONS)];
    topics.extend(
        PROCESSORS
            .iter()
            .flat_map(|(_, _, outputs, _)| outputs.iter().map(|t| (*t, PARTITIONS))),
    );
    kafka::ensure_topics(&broker.address, &topics).unwrap();
    for (name, file, outputs, config) in PROCESSORS {
        let mut deploy = logstream();
        deploy.arg("deploy").arg(setup.component(file)).args([
            "--name", name, "--input", "logs", "--config", config, "--store", &store_url,
        ]);
        for topic in outputs {
            deploy.args(["--output", topic]);
        }
        let out = run(&mut deploy);
        assert!(out.status.success(), "deploy {name}: {}", stderr(&out));
    }
    let mut hosts = test_hosts_on(store_url, &broker.address, dir.path());
    if let Some(nodes) = &setup.nodes {
        let launch = nodes.launcher();
        hosts.launcher = Some(Box::new(move |id, binary| {
            launch(node_of(id), binary.as_os_str())
        }));
    }
    let store: &dyn KvStore = &*scenario_store.handle;
    hosts.start("a");
    let a = hosts.pid_of("a");
    wait_until("host a to lead every unit", deadline, || {
        leaders(store).iter().all(|l| *l == Some(a))
    });
    hosts.start("b");

    let producer = {
        let brokers = broker.address.clone();
        std::thread::spawn(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_logstream"))
                .args([
                    "gen-logs",
                    "--count",
                    &records.to_string(),
                    "--partitions",
                    &PARTITIONS.to_string(),
                ])
                .args(["--topic", "logs", "--brokers", &brokers])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        })
    };

    let injected = disrupt(&mut Faults {
        hosts: &mut hosts,
        store,
        store_path: scenario_store.sqlite_path.as_deref(),
        etcd: scenario_store.etcd.as_mut(),
        nodes: setup.nodes.as_ref(),
        broker: &mut broker,
    });
    producer.join().unwrap();

    // Wait until every unit has checkpointed past the end of its partition.
    let highs: Vec<i64> = (0..PARTITIONS)
        .map(|p| kafka::watermarks(&broker.address, "logs", p).unwrap().1)
        .collect();
    wait_until("every unit to checkpoint the whole input", deadline, || {
        units().iter().all(|unit| {
            let partition: i32 = unit.rsplit('/').next().unwrap().parse().unwrap();
            // A store still recovering from the fault (etcd members just
            // restarted) may not answer yet: not yet, rather than a failure.
            match checkpoint::read_current_meta(store, unit) {
                Ok(meta) => {
                    meta.and_then(|m| m.offsets.get(&partition).copied())
                        == Some(highs[partition as usize])
                }
                Err(error) => {
                    eprintln!("reading {unit}'s checkpoint: {error}; trying again");
                    false
                }
            }
        })
    });
    hosts.stop_all();

    // Every unit really failed over (its epoch moved past the first leader's).
    for (unit, record) in units()
        .into_iter()
        .zip(leader_records(store))
        .filter(|_| injected.fails_over)
    {
        let record = record.unwrap();
        assert!(
            record.epoch > 1,
            "{unit} never failed over (epoch {})",
            record.epoch
        );
    }
    let suppressed: usize = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| {
                    l.split(" outputs to suppress")
                        .next()?
                        .rsplit('(')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    eprintln!("outputs suppressed on takeovers: {suppressed}");

    // Compare everything first, so the reliability row covers every unit
    // even when one differs; then assert.
    let mut tally = Tally::default();
    let mut compared = Vec::new();
    for partition in 0..PARTITIONS {
        let input = read_partition(&broker.address, "logs", partition);
        assert_eq!(input.len() as i64, highs[partition as usize]);
        for (processor, file, outputs, config) in PROCESSORS {
            let unit = format!("{processor}/{partition}");
            let (mut by_topic, want_state) = expected(
                dir.path(),
                &setup.component(file),
                file,
                config,
                outputs,
                &input,
                partition,
            );
            let state = checkpoint::read_current(store, &unit)
                .unwrap()
                .unwrap()
                .state;
            tally.states_differ += usize::from(state != want_state);
            for topic in outputs {
                let want = by_topic.remove(*topic).unwrap_or_default();
                let got = actual(&broker.address, topic, &unit, partition);
                tally.add(&want, &got);
                let what = format!("{unit} on {topic}");
                compared.push((what, want, got, want_state.clone(), state.clone()));
            }
        }
    }
    tally.write(scenario, &injected);
    for (unit, want, got, want_state, state) in compared {
        assert_eq!(
            got.len(),
            want.len(),
            "{unit}: {} outputs, expected {}",
            got.len(),
            want.len()
        );
        assert!(
            got == want,
            "{unit}: outputs differ from an uninterrupted run"
        );
        assert!(
            state == want_state,
            "{unit}: final state differs from an uninterrupted run"
        );
    }
    inspect(&broker.address, store);
    drop(hosts);
    dir
}

/// The running host that leads the most units.
fn busiest_host(hosts: &Hosts, store: &dyn KvStore) -> String {
    let current = leaders(store);
    ["a", "b"]
        .iter()
        .filter(|id| hosts.children.contains_key(**id))
        .max_by_key(|id| {
            current
                .iter()
                .filter(|l| **l == Some(hosts.pid_of(id)))
                .count()
        })
        .unwrap()
        .to_string()
}

#[test]
fn outputs_and_state_survive_kill_9_failovers_exactly_once() {
    let records: u64 = env_or("PIPELINE_RECORDS", DEFAULT_RECORDS);
    kill_loop(
        Setup::on(StoreKind::Sqlite),
        "kill -9 of the active in a loop",
        records,
        env_or("PIPELINE_KILLS", DEFAULT_KILLS),
        "",
    );
}

/// The kill -9 loop on a three-member etcd cluster: the store hosts on
/// separate machines share, with optimistic transactions (conflicts SQLite's
/// writer lock never shows), secured as production clusters are (TLS with
/// client certificates, password authentication), so every option of the
/// `etcd:` URL is on a failover path.
#[test]
fn on_etcd_outputs_and_state_survive_kill_9_failovers_exactly_once() {
    // Fewer records than on SQLite: three etcd members, the broker, two
    // hosts and the producer share 2 cores, and 200,000 records at full
    // speed starved the broker past the producer's 30 s delivery bound.
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    kill_loop(
        Setup::on(StoreKind::EtcdSecure),
        "kill -9 of the active in a loop, on etcd",
        records,
        env_or("PIPELINE_KILLS", DEFAULT_KILLS),
        ", on a three-member etcd cluster with TLS client certificates and password authentication",
    );
}

/// The kill -9 loop with the level-counter written in Python
/// (`plugins/sdk-python`, componentize-py: CPython inside the component)
/// deployed as `lc`, and the redactor written in JavaScript
/// (`plugins/sdk-js`, componentize-js: SpiderMonkey inside) deployed as
/// `pt`: the Python SDK's JSON snapshots restore on the other host to the
/// same state, and the outputs and final states equal an uninterrupted run
/// of the same components (which the SDKs' tests show equal to their Rust
/// twins').
#[test]
fn python_and_javascript_processors_survive_kill_9_failovers_exactly_once() {
    // These components process several times slower than the Rust ones:
    // fewer records and kills keep the run near the others' length.
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let setup = Setup {
        instead: vec![
            ("level_counter", common::python_plugin("level_counter")),
            ("passthrough", common::js_plugin("redactor")),
        ],
        ..Setup::on(StoreKind::Sqlite)
    };
    kill_loop(
        setup,
        "kill -9 of the active in a loop, Python and JavaScript processors",
        records,
        8,
        ", with `lc` the Python level-counter (componentize-py) and `pt` the JavaScript redactor (componentize-js)",
    );
}

/// `records` records; kill -9 of the host leading most units, `kills`
/// times at varied points (a fixed-seed jitter of 300-1100 ms between
/// kills), each restarted as the passive. `on` completes the row's
/// description.
fn kill_loop(setup: Setup, scenario: &str, records: u64, kills: usize, on: &str) {
    let _exclusive = exclusive();
    let run = |faults: &mut Faults<'_>| {
        let mut jitter = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..kills {
            jitter ^= jitter << 13;
            jitter ^= jitter >> 7;
            jitter ^= jitter << 17;
            std::thread::sleep(Duration::from_millis(300 + jitter % 800));
            let victim = busiest_host(faults.hosts, faults.store);
            faults.hosts.kill9(&victim);
            faults.hosts.start(&victim);
        }
        Injected {
            what: format!("kill -9 of the host leading most units, restarted as the passive{on}; {records} records; every topic compared, lc-alerts (routed to by name) included"),
            times: kills,
            fails_over: true,
        }
    };
    transparency_run_then(setup, scenario, records, run, |_, _| {});
}

/// One etcd member of three killed (quorum kept) and restarted: the hosts
/// keep working through the other two; nothing is lost or duplicated.
#[test]
fn on_etcd_one_member_killed_loses_nothing() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let rounds = 3;
    transparency_run_on(
        StoreKind::Etcd,
        "one etcd member of three killed",
        records,
        |faults| {
            let etcd = faults.etcd.as_mut().unwrap();
            for member in 0..rounds {
                std::thread::sleep(Duration::from_millis(600));
                etcd.kill(member);
                std::thread::sleep(Duration::from_millis(1_500));
                etcd.restart(member);
            }
            Injected {
                what: format!("kill -9 of one etcd member of three for 1.5 s (quorum kept), each member in turn; {records} records"),
                times: rounds,
                fails_over: false,
            }
        },
    );
}

/// Two etcd members of three killed for six leases (no quorum): every
/// leader stops acting within its lease — no output is created after the
/// quorum was lost plus the lease — and the pipeline resumes exactly once
/// when the members return.
#[test]
fn on_etcd_losing_quorum_quiets_every_leader_within_its_lease_and_recovers() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let lease_ms = logstream_host::store::election::DEFAULT_LEASE.as_millis() as i64;
    let quorum_lost = std::cell::Cell::new(None);
    let setup = Setup::on(StoreKind::Etcd);
    transparency_run_then(
        setup,
        "etcd quorum lost, longer than the lease",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            wait_for_outputs_flowing(&faults.broker.address);
            let etcd = faults.etcd.as_mut().unwrap();
            let lost = unix_ms();
            etcd.kill(1);
            etcd.kill(2);
            std::thread::sleep(Duration::from_millis(3_000));
            let back = unix_ms();
            etcd.restart(1);
            etcd.restart(2);
            quorum_lost.set(Some((lost, back)));
            Injected {
                what: format!("kill -9 of two etcd members of three for 3 s (6 leases, no quorum), then restarted; no output created from the loss + lease until they returned; {records} records"),
                times: 1,
                fails_over: false,
            }
        },
        |brokers, _| {
            assert_quiet(
                brokers,
                quorum_lost.get().unwrap(),
                lease_ms,
                "the quorum was lost",
            )
        },
    );
}

/// Every output partition of the transparency processors.
fn output_partitions() -> impl Iterator<Item = (&'static str, i32)> {
    PROCESSORS
        .iter()
        .flat_map(|(_, _, outputs, _)| outputs.iter().copied())
        .flat_map(|topic| (0..PARTITIONS).map(move |partition| (topic, partition)))
}

/// Outputs on every processor's topics, summed over partitions (their high
/// watermarks).
fn outputs_so_far(brokers: &str) -> i64 {
    output_partitions()
        .map(|(topic, partition)| kafka::watermarks(brokers, topic, partition).unwrap().1)
        .sum()
}

/// Wait until outputs are being acknowledged right now, so that a fault
/// injected next cuts a running pipeline (a loaded machine may still be
/// starting the record generator or the units): a scenario that checks
/// nothing is produced during an outage needs output just before it.
fn wait_for_outputs_flowing(brokers: &str) {
    const SAMPLE: Duration = Duration::from_millis(100);
    let mut last = outputs_so_far(brokers);
    wait_until("outputs to flow", Instant::now() + RUN_BOUND, || {
        std::thread::sleep(SAMPLE);
        let now = outputs_so_far(brokers);
        let grew = now > last;
        last = now;
        grew
    });
}

/// No output created from `lost` + the lease until `back` (wall clock, ms):
/// nobody may act then. `what` names the event at `lost`.
///
/// The quiet counts only if the pipeline was running into the fault and
/// out of it: outputs were created in a span as long as the quiet window
/// just before `lost` (an active that kept acting would have created some
/// in the window too) and after `back`. A fixed short span would not do: on
/// a loaded machine one batch's produce-and-acknowledge cycle can outlast
/// half a second.
fn assert_quiet(brokers: &str, (lost, back): (i64, i64), lease_ms: i64, what: &str) {
    // Outputs carry their creation time by the host's clock; this machine's
    // one clock serves both, so only the lease and a scheduling allowance
    // separate the loss from the last output allowed.
    const ALLOWANCE_MS: i64 = 100;
    let quiet_from = lost + lease_ms + ALLOWANCE_MS;
    let just_before = lost - (back - quiet_from)..lost;
    let mut late = Vec::new();
    let (mut before, mut after, mut newest_before) = (0, 0, i64::MIN);
    for (topic, partition) in output_partitions() {
        for record in read_partition(brokers, topic, partition) {
            let at = record.timestamp_ms;
            before += usize::from(just_before.contains(&at));
            after += usize::from(at >= back);
            if at < lost {
                newest_before = newest_before.max(at);
            }
            if (quiet_from..back).contains(&at) {
                late.push((topic.to_string(), partition, at - lost));
            }
        }
    }
    eprintln!(
        "outputs in the {} ms before {what}: {before}, the newest {} ms before it; after the window: {after}",
        just_before.end - just_before.start,
        lost - newest_before
    );
    assert!(
        before > 0 && after > 0,
        "the pipeline was not running across the outage ({before} outputs just before, {after} after), so its quiet proves nothing"
    );
    assert!(
        late.is_empty(),
        "outputs created after {what}, later than the lease (ms after it): {:?}",
        &late[..late.len().min(10)]
    );
}

/// Scenarios on simulated machines: each host in a network namespace of
/// its own, reaching the etcd cluster and the broker over two links the
/// test cuts (`scripts/netns.sh`). They need root; elsewhere they say they
/// are skipped (and fail instead when `CI` is set).
fn on_nodes() -> Option<Setup> {
    Some(Setup {
        nodes: Some(common::netns::up_or_skip(2)?),
        ..Setup::on(StoreKind::Etcd)
    })
}

/// Wait until host `id` has started the units of every processor (its
/// newest log says so): a passive that is still loading a module would
/// make a failover measure its start-up.
fn wait_for_units_started(hosts: &Hosts, id: &str) {
    wait_until(
        &format!("host {id} to start every processor's units"),
        Instant::now() + RUN_BOUND,
        || {
            common::admin::newest_log(&hosts.dir, id)
                .and_then(|log| std::fs::read_to_string(log).ok())
                .is_some_and(|text| text.matches(" units started of ").count() >= PROCESSORS.len())
        },
    );
}

/// The host other than `id`.
fn other_host(id: &str) -> &'static str {
    if id == "a" {
        "b"
    } else {
        "a"
    }
}

/// Cut `link` of the machine of the host leading most units (once the
/// passive has started every unit) until the passive leads every unit, keep
/// it cut `then` longer, heal it, and check for two seconds (four leases)
/// that the old active, rejoined as the passive, takes nothing back.
/// Returns the time from the cut until the passive led every unit.
fn cut_until_the_passive_leads(faults: &mut Faults<'_>, link: Link, then: Duration) -> Duration {
    let victim = busiest_host(faults.hosts, faults.store);
    wait_for_units_started(faults.hosts, other_host(&victim));
    let survivor = faults.hosts.pid_of(other_host(&victim));
    let nodes = faults.nodes.unwrap();
    let cut_at = Instant::now();
    nodes.cut(node_of(&victim), link);
    wait_until("the passive to lead every unit", cut_at + RUN_BOUND, || {
        leaders(faults.store).iter().all(|l| *l == Some(survivor))
    });
    let replaced_after = cut_at.elapsed();
    std::thread::sleep(then);
    nodes.heal(node_of(&victim), link);
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(2) {
        let now = leaders(faults.store);
        if !now.iter().all(|l| *l == Some(survivor)) {
            // Say why: a unit the old active took back, or one the survivor
            // gave up (its log's failures and releases).
            let survivor_log = common::admin::newest_log(&faults.hosts.dir, other_host(&victim))
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            let reasons: Vec<&str> = survivor_log
                .lines()
                .filter(|l| {
                    [
                        "unit failed",
                        "stepped down",
                        "yield",
                        "releas",
                        "fenced at epoch",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            panic!(
                "after the heal not every unit is led by the survivor (pid {survivor}): {now:?}; the survivor's failures and releases:\n{}",
                reasons.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    replaced_after
}

/// The active's machine loses every link: the passive takes every unit
/// over within the lease (plus detection and takeover); when the links
/// return, the old active rejoins as the passive — it takes nothing back.
#[test]
fn on_nodes_an_isolated_active_is_replaced_and_rejoins_as_the_passive() {
    let _exclusive = exclusive();
    let Some(setup) = on_nodes() else { return };
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let mut replaced_after = Duration::ZERO;
    transparency_run_then(
        setup,
        "the active's machine isolated (every link cut)",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            replaced_after = cut_until_the_passive_leads(faults, Link::All, Duration::from_secs(1));
            Injected {
                what: format!("every link of the machine of the host leading most units cut (network namespaces, etcd store) until the other led every unit, 1 s more, then restored; {records} records"),
                times: 1,
                fails_over: true,
            }
        },
        |_, _| {},
    );
    eprintln!("every unit led by the passive {replaced_after:?} after the cut");
}

/// The active's machine loses the store but still reaches the broker: it
/// must stop producing within its lease. The passive is paused meanwhile
/// (SIGSTOP), so no output at all may be created from the cut plus the
/// lease until it resumes; then it takes over.
#[test]
fn on_nodes_an_active_cut_from_the_store_stops_acting_within_its_lease() {
    let _exclusive = exclusive();
    let Some(setup) = on_nodes() else { return };
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let lease_ms = logstream_host::store::election::DEFAULT_LEASE.as_millis() as i64;
    let window = std::cell::Cell::new(None);
    transparency_run_then(
        setup,
        "the active's machine cut from the store only",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            let victim = busiest_host(faults.hosts, faults.store);
            wait_for_units_started(faults.hosts, other_host(&victim));
            let passive = faults.hosts.pid_of(other_host(&victim));
            let nodes = faults.nodes.unwrap();
            wait_for_outputs_flowing(&faults.broker.address);
            signal(passive, "-STOP");
            let cut = unix_ms();
            nodes.cut(node_of(&victim), Link::Store);
            std::thread::sleep(Duration::from_millis(3_000));
            let resumed = unix_ms();
            signal(passive, "-CONT");
            window.set(Some((cut, resumed)));
            wait_until(
                "the passive to lead every unit",
                Instant::now() + RUN_BOUND,
                || leaders(faults.store).iter().all(|l| *l == Some(passive)),
            );
            nodes.heal(node_of(&victim), Link::Store);
            Injected {
                what: format!("the store link of the machine of the host leading most units cut (it still reaches the broker; the passive paused for 3 s so nobody may act), then restored; no output created from the cut + lease until the passive resumed; {records} records"),
                times: 1,
                fails_over: true,
            }
        },
        |brokers, _| {
            assert_quiet(
                brokers,
                window.get().unwrap(),
                lease_ms,
                "the active was cut from the store",
            )
        },
    );
}

/// The active's machine loses the broker but still reaches the store: it
/// would keep its leases and make no progress. It publishes that its
/// brokers are unreachable, and after `HANDOVER_AFTER` yields every unit to
/// the passive, which reaches them; when the link returns it takes nothing
/// back.
#[test]
fn on_nodes_an_active_cut_from_the_broker_hands_over_to_a_passive_that_reaches_it() {
    let _exclusive = exclusive();
    let Some(setup) = on_nodes() else { return };
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let mut handed_over_after = Duration::ZERO;
    transparency_run_then(
        setup,
        "the active's machine cut from the broker only",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            handed_over_after = cut_until_the_passive_leads(faults, Link::Broker, Duration::ZERO);
            Injected {
                what: format!("the broker link of the machine of the host leading most units cut (it still reaches the store) until the other led every unit, then restored; {records} records"),
                times: 1,
                fails_over: true,
            }
        },
        |_, _| {},
    );
    eprintln!("every unit handed over {handed_over_after:?} after the broker link was cut");
    // A liveness bound, not a performance figure: the bound of the
    // handover (3 s unreachable) plus detection, the release round and the
    // takeovers on a loaded 2-core machine.
    assert!(
        handed_over_after < Duration::from_secs(10),
        "the handover took {handed_over_after:?}"
    );
}

/// Every host loses the broker at once (both machines' broker links cut
/// for 6 s): nobody could make progress, so nobody hands over — no epoch
/// moves — and the pipeline resumes exactly once when the links return.
#[test]
fn on_nodes_the_broker_cut_from_every_host_moves_no_lease() {
    let _exclusive = exclusive();
    let Some(setup) = on_nodes() else { return };
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    transparency_run_then(
        setup,
        "the broker cut from every host",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            let nodes = faults.nodes.unwrap();
            // The leader records: a host that yielded would have released its
            // leases (same epoch, released), one that took over bumped it.
            let before = leader_records(faults.store);
            nodes.cut(1, Link::Broker);
            nodes.cut(2, Link::Broker);
            std::thread::sleep(Duration::from_secs(6));
            let during = leader_records(faults.store);
            nodes.heal(1, Link::Broker);
            nodes.heal(2, Link::Broker);
            assert_eq!(
                before, during,
                "leases moved while no host reached the broker"
            );
            Injected {
                what: format!("the broker links of both machines cut for 6 s (twice the handover bound), then restored; no lease moved; {records} records"),
                times: 1,
                fails_over: false,
            }
        },
        |_, _| {},
    );
}

/// Links of the busiest host's machine flap: down and up for 150-750 ms
/// each, for 30 s (`FLAP_SECONDS`). Nothing is lost or duplicated, and
/// leadership changes at most once per flap.
#[test]
fn on_nodes_flapping_links_lose_nothing_and_churn_boundedly() {
    let _exclusive = exclusive();
    let Some(setup) = on_nodes() else { return };
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let seconds: u64 = env_or("FLAP_SECONDS", 30);
    let flaps = std::cell::Cell::new(0usize);
    transparency_run_then(
        setup,
        "flapping links of the active's machine",
        records,
        |faults| {
            let nodes = faults.nodes.unwrap();
            let started = Instant::now();
            let mut jitter = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                jitter ^= jitter << 13;
                jitter ^= jitter >> 7;
                jitter ^= jitter << 17;
                Duration::from_millis(150 + jitter % 600)
            };
            while started.elapsed() < Duration::from_secs(seconds) {
                let node = node_of(&busiest_host(faults.hosts, faults.store));
                nodes.cut(node, Link::All);
                std::thread::sleep(next());
                nodes.heal(node, Link::All);
                std::thread::sleep(next());
                flaps.set(flaps.get() + 1);
            }
            Injected {
                what: format!("every link of the busiest host's machine down then up, 150-750 ms each, for {seconds} s ({} flaps); {records} records", flaps.get()),
                times: flaps.get(),
                fails_over: false,
            }
        },
        |_, store| {
            let epochs: Vec<u64> = leader_records(store)
                .into_iter()
                .map(|record| record.map_or(0, |r| r.epoch))
                .collect();
            eprintln!("epochs after {} flaps: {epochs:?}", flaps.get());
            // One claim at the start, then at most one change of leader per
            // flap (and one more for a release at the end).
            let bound = flaps.get() as u64 + 2;
            assert!(
                epochs.iter().all(|e| *e <= bound),
                "leadership churned more than once per flap: epochs {epochs:?} after {} flaps",
                flaps.get()
            );
        },
    );
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_leader_paused_past_its_lease_is_fenced_and_nothing_is_duplicated() {
    let _exclusive = exclusive();
    let records: u64 = env_or("PIPELINE_RECORDS", DEFAULT_RECORDS);
    let mut paused_host = String::new();
    let dir = transparency_run("SIGSTOP of the active past its lease", records, |faults| {
        let (hosts, store) = (&mut *faults.hosts, faults.store);
        std::thread::sleep(Duration::from_millis(500));
        let zombie = busiest_host(hosts, store);
        let zombie_pid = hosts.pid_of(&zombie);
        signal(zombie_pid, "-STOP");
        wait_until(
            "the other host to take every unit over",
            Instant::now() + RUN_BOUND,
            || {
                leaders(store)
                    .iter()
                    .all(|l| l.is_some() && *l != Some(zombie_pid))
            },
        );
        signal(zombie_pid, "-CONT");
        paused_host = zombie;
        Injected {
            what: format!("SIGSTOP of the host leading most units until the other leads every unit, then SIGCONT; {records} records; every topic compared, lc-alerts (routed to by name) included"),
            times: 1,
            fails_over: true,
        }
    });
    let logs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_string();
            name.starts_with(&format!("host-{paused_host}-"))
                .then(|| std::fs::read_to_string(&path).ok())?
        })
        .collect();
    assert!(
        logs.contains("fenced at epoch") || logs.contains("no longer) the acting leader"),
        "the resumed host did not report losing its leadership"
    );
    // Whether the zombie had a batch in flight when it was paused is up to
    // timing; when it had, the broker refused it (the successor fenced its
    // producer epoch) and the outputs above show no duplicate.
    eprintln!(
        "zombie batches refused by the broker: {}",
        logs.matches("the broker refused our outputs").count()
    );
}

/// A zombie's refused batch, made deterministic: the test fences every
/// unit's producer epoch from outside, as a successor's takeover would,
/// while the leaders keep their leases. Each leader's next flush is refused
/// by the broker; it drops the batch, goes passive, takes over again (its
/// lease is still valid) and replays it. Nothing may be lost or duplicated.
#[test]
fn outputs_refused_after_a_fence_are_replayed_exactly_once() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let rounds = 3;
    let dir = transparency_run(
        "producer epochs fenced under the leaders",
        records,
        |faults| {
            let deployment = deployment::read(faults.store).unwrap().unwrap();
            for _ in 0..rounds {
                std::thread::sleep(Duration::from_millis(400));
                for unit in units() {
                    let id = UnitId::parse_name(&unit)
                        .unwrap()
                        .transactional_id(&deployment, 0);
                    let mut rival = FencedProducer::open(&faults.broker.address, &id).unwrap();
                    rival.fence().unwrap();
                }
            }
            Injected {
                what: format!("every unit's Kafka producer epoch fenced from outside while its leader keeps the lease, {rounds} times; {records} records"),
                times: rounds,
                fails_over: false,
            }
        },
    );
    let refused: usize = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .map(|log| log.matches("the broker refused our outputs").count())
        .sum();
    eprintln!("batches refused by the broker: {refused}");
    assert!(
        refused >= 1,
        "no leader reported a batch refused after its producer was fenced"
    );
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let _exclusive = exclusive();
    let deadline = Instant::now() + RUN_BOUND;
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    kafka::ensure_topics(&broker.address, &[("mb-in", 1), ("mb-out", 1)]).unwrap();
    let store_url = format!("sqlite:{}", store_path.display());
    let out = run(logstream().arg("deploy").arg(plugin("misbehave")).args([
        "--name", "mb", "--input", "mb-in", "--output", "mb-out", "--store", &store_url,
    ]));
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let mut hosts = test_hosts(&store_path, &broker.address, dir.path());
    hosts.start("a");

    let values = ["a", "trap", "open-file /etc/hostname", "b"];
    common::broker::produce_values(&broker.address, "mb-in", 0, &values);

    let store = SqliteStore::open(&store_path).unwrap();
    wait_until("the unit to checkpoint past every record", deadline, || {
        checkpoint::read_current_meta(&store, "mb/0")
            .unwrap()
            .and_then(|m| m.offsets.get(&0).copied())
            == Some(values.len() as i64)
    });
    hosts.stop_all();

    let dead: Vec<(String, String)> = read_partition(&broker.address, "mb.dlq", 0)
        .into_iter()
        .map(|r| {
            let error = r
                .headers
                .iter()
                .find(|h| h.key == "logstream-error")
                .expect("a dead letter says why");
            (
                String::from_utf8(r.value).unwrap(),
                String::from_utf8(error.value.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "trap");
    assert!(
        dead[0].1.starts_with("failed: the processor trapped"),
        "{}",
        dead[0].1
    );
    assert!(
        dead[0].1.contains("poison record at offset 1"),
        "{}",
        dead[0].1
    );
    assert_eq!(dead[1].0, "open-file /etc/hostname");
    assert!(
        dead[1].1.starts_with("rejected: open-file"),
        "{}",
        dead[1].1
    );

    let outputs: Vec<String> = read_partition(&broker.address, "mb-out", 0)
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect();
    // The trap's effects were discarded; the rejected record was counted.
    assert_eq!(outputs, ["n=1:a", "n=3:b"]);
}

/// Records of the reliability scenarios below (`RELIABILITY_RECORDS`).
const DEFAULT_RELIABILITY_RECORDS: u64 = 60_000;

#[test]
fn both_hosts_killed_then_restarted_resume_from_the_last_checkpoint() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    transparency_run("both hosts killed, then restarted", records, |faults| {
        std::thread::sleep(Duration::from_millis(800));
        faults.hosts.kill9("a");
        faults.hosts.kill9("b");
        std::thread::sleep(Duration::from_millis(300));
        faults.hosts.start("a");
        faults.hosts.start("b");
        Injected {
            what: format!(
                "kill -9 of both hosts mid-stream, both restarted 300 ms later; {records} records"
            ),
            times: 1,
            fails_over: true,
        }
    });
}

#[test]
fn the_store_unavailable_shorter_than_the_lease_loses_nothing() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    transparency_run(
        "store unavailable, shorter than the lease",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            for _ in 0..3 {
                common::lock_store(faults.store_path.unwrap(), Duration::from_millis(200));
                std::thread::sleep(Duration::from_millis(300));
            }
            Injected {
            what: format!("the SQLite store's write lock held by another process for 200 ms (lease 500 ms), 3 times; {records} records"),
            times: 3,
            fails_over: false,
        }
        },
    );
}

#[test]
fn the_store_unavailable_longer_than_the_lease_quiets_the_leader_and_recovers() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    transparency_run(
        "store unavailable, longer than the lease",
        records,
        |faults| {
            std::thread::sleep(Duration::from_millis(800));
            for _ in 0..2 {
                common::lock_store(faults.store_path.unwrap(), Duration::from_millis(2_000));
                std::thread::sleep(Duration::from_millis(1_000));
            }
            Injected {
            what: format!("the SQLite store's write lock held by another process for 2 s (4 leases), twice; {records} records"),
            times: 2,
            fails_over: true,
        }
        },
    );
}

#[test]
fn a_broker_restart_mid_stream_pauses_and_resumes_the_pipeline() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    transparency_run("broker restart mid-stream", records, |faults| {
        std::thread::sleep(Duration::from_millis(800));
        faults.broker.restart();
        Injected {
            what: format!("tansu killed (SIGKILL) and restarted on the same port and sqlite storage; {records} records"),
            times: 1,
            fails_over: false,
        }
    });
}

/// Crash-only units: a unit whose worker panics while it leads releases its
/// lease (the passive takes over at once), is reported, and restarts after a
/// backoff. Host a is restarted with a fault-injection point that makes
/// `lc/0`'s worker panic whenever it leads there; then b, which leads
/// everything, is killed, so a takes every unit over and `lc/0` panics.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the failpoints feature (scripts/test.sh builds the tests with it)"
)]
fn a_unit_whose_worker_panics_releases_its_lease_and_restarts() {
    let _exclusive = exclusive();
    let records: u64 = env_or("RELIABILITY_RECORDS", DEFAULT_RELIABILITY_RECORDS);
    let lc0 = units().iter().position(|u| u == "lc/0").unwrap();
    let mut failures = None;
    transparency_run("worker panic while leading", records, |faults| {
        let (hosts, store) = (&mut *faults.hosts, faults.store);
        std::thread::sleep(Duration::from_millis(500));
        hosts.kill9("a");
        wait_until("b to lead every unit", Instant::now() + RUN_BOUND, || {
            let b = hosts.pid_of("b");
            leaders(store).iter().all(|l| *l == Some(b))
        });
        hosts.start_with("a", &[("FAILPOINTS", "unit-panic=return(lc/0)")]);
        let admin = common::admin::admin_address(&hosts.dir, "a", RUN_BOUND);
        hosts.kill9("b");
        // a takes lc/0 over, panics, releases; the restarted b takes it.
        let metric = || {
            let (_, text) = common::admin::get(admin, "/metrics").unwrap();
            common::admin::unit_sample(&text, "logstream_unit_failures_total", "lc", 0)
        };
        wait_until("lc/0 to fail on a", Instant::now() + RUN_BOUND, || {
            metric().is_some_and(|n| n >= 1.0)
        });
        hosts.start("b");
        wait_until("b to lead lc/0", Instant::now() + RUN_BOUND, || {
            leaders(store)[lc0] == Some(hosts.pid_of("b"))
        });
        let (_, status) = common::admin::get(admin, "/status").unwrap();
        failures = Some((metric().unwrap(), status));
        Injected {
            what: format!("the worker of lc/0 panics whenever it leads on host a (a fault-injection point), after b, which led every unit, is killed; b restarted; {records} records"),
            times: 1,
            fails_over: true,
        }
    });
    let (count, status) = failures.unwrap();
    assert!(count >= 1.0, "{count}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let lc0 = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "lc/0")
        .unwrap();
    assert!(lc0["failures"].as_u64().unwrap() >= 1, "{lc0}");
    let reason = lc0["last_failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("panicked"), "{reason}");
}
