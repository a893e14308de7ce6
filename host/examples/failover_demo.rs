//! The failover demo behind `scripts/demo.sh`: a real Kafka-compatible
//! broker (tansu, `sqlite://` storage), two `logstream host` processes on
//! the embedded SQLite store, and `level-counter` deployed over a 3-partition
//! topic, routing error lines to a second topic as alerts. A stream of realistic log lines is produced at a steady rate with
//! a progress bar; part-way through, the active host is killed with kill -9
//! (and restarted as the passive). At the end it prints a report: records in
//! and out, the failover time of each unit, and the check that every output
//! partition and final state equal an uninterrupted run (`run-local`):
//! nothing lost, nothing duplicated.
//!
//! Run: `scripts/demo.sh` (it builds and installs what this needs), or
//! `cargo run --release -p logstream-host --example failover_demo` after
//! `scripts/build-plugins.sh` and `cargo build --release -p logstream-host`.
//! Env: `RECORDS` (default 200,000), `RATE` (records/s, default 20,000),
//! `KILL_AT` (percent of the stream, default 40), `LOGSTREAM_BIN`, `TANSU`.
//!
//! The `--nodes` variant (`scripts/demo.sh --nodes`, or `DEMO_NODES=1`) runs
//! each host on a simulated machine of its own: a network namespace with
//! separate links to the store and to the broker (`scripts/netns.sh`; host
//! `a` on node 1, `b` on node 2), the store a three-member etcd cluster on
//! the store bridge, tansu on the broker bridge. At `KILL_AT` nobody is
//! killed: every link of the active's machine is cut until the other host
//! leads every unit, and [`HEAL_AFTER`] more; then the links are healed and
//! the old active, never restarted, rejoins as the passive. Failover times
//! count from the cut; the check is the same. It needs root (network
//! namespaces) and `etcd` (`ETCD`, else on PATH), and says so in one sentence
//! and exits non-zero without them.

#[path = "../tests/common/broker.rs"]
mod broker;
// Shared with the tests, which use more of it than the demo.
#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/hosts.rs"]
mod hosts;
#[path = "../tests/common/tls.rs"]
mod tls;
// Shared with the tests, which use more of it than the demo.
#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;
// Shared with the tests, which use more of it than the demo.
#[allow(dead_code)]
#[path = "../tests/common/verify.rs"]
mod verify;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd::EtcdCluster;
use hosts::Hosts;
use indicatif::{ProgressBar, ProgressStyle};
use logstream_host::pipeline::kafka::{
    self, is_fence_record, Outgoing, OutputProducer, PartitionReader,
};
use logstream_host::probe::{pid_of, unix_micros};
use logstream_host::sample_logs::SampleLogs;
use logstream_host::store::checkpoint;
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, KvStore, RetryPolicy, SqliteStore};
use netns::{Link, Nodes, Skip};

const PARTITIONS: i32 = 3;
const PROCESSOR: &str = "levels";
const INPUT_TOPIC: &str = "logs";
/// The topic level-counter routes error lines to.
const ALERTS_TOPIC: &str = "levels-alerts";
/// level-counter emits a summary every this many records of a partition,
/// and forwards every error line to the alerts topic.
const CONFIG: &str = "every=100,alerts=levels-alerts";
/// Bound on each wait of the demo (hosts leading, checkpoints catching up).
const WAIT_BOUND: Duration = Duration::from_secs(300);
/// Records produced between flushes (and rate checks).
const PRODUCE_CHUNK: u64 = 500;
/// `--nodes`: how long the active's machine stays cut off after the other
/// host leads every unit.
const HEAL_AFTER: Duration = Duration::from_secs(2);
/// `--nodes`: members of the etcd cluster (a quorum survives one loss).
const ETCD_MEMBERS: usize = 3;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `target/release/logstream`, next to this example's directory.
fn logstream_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LOGSTREAM_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the demo knows its path");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("logstream"))
        .expect("the demo runs from target/<profile>/examples")
}

fn component() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/level_counter.wasm")
}

fn units() -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| format!("{PROCESSOR}/{p}"))
        .collect()
}

/// (epoch, pid) of each unit's leader.
fn leaders(store: &dyn KvStore) -> Vec<Option<(u64, u32)>> {
    units()
        .iter()
        .map(|unit| {
            transact(store, &RetryPolicy::default(), |txn| read_leader(txn, unit))
                .ok()
                .flatten()
                .filter(|r| !r.released)
                .and_then(|r| Some((r.epoch, pid_of(&r.holder)?)))
        })
        .collect()
}

/// Who was killed (or cut off), when (Unix ms), and who led each unit just
/// before.
type Kill = (String, i64, Vec<Option<(u64, u32)>>);

/// Whether to run the `--nodes` variant (the argument, or `DEMO_NODES=1`).
fn nodes_requested() -> bool {
    std::env::args().skip(1).any(|arg| arg == "--nodes")
        || std::env::var("DEMO_NODES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `--nodes`: the simulated machines and the etcd cluster on their store
/// bridge. The cluster stops before the networks go down.
struct Machines {
    etcd: EtcdCluster,
    nodes: Nodes,
}

impl Machines {
    /// Two nodes and an etcd cluster, or the one sentence saying why not.
    fn up() -> Result<Machines, String> {
        let etcd = etcd::etcd_binary();
        let found = Command::new(&etcd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(error) = found {
            return Err(format!(
                "demo --nodes needs etcd on PATH or in ETCD (scripts/install-deps.sh --test installs Debian's etcd-server), and {} cannot run: {error}",
                etcd.display()
            ));
        }
        let nodes = Nodes::up(2).map_err(|Skip(reason)| {
            format!("demo --nodes needs root and iproute2 for network namespaces: {reason}")
        })?;
        let etcd = EtcdCluster::start_on(&nodes.store_ip().to_string(), ETCD_MEMBERS);
        Ok(Machines { etcd, nodes })
    }
}

/// The node host `id` runs on with `--nodes`.
fn node_of(id: &str) -> u32 {
    match id {
        "a" => 1,
        "b" => 2,
        other => panic!("no node for host {other}"),
    }
}

/// The host other than `id`.
fn other_host(id: &str) -> &'static str {
    if id == "a" {
        "b"
    } else {
        "a"
    }
}

/// `--nodes`: the active's machine cut off (every link) until the other
/// host leads every unit and [`HEAL_AFTER`] more, then healed. Advanced by
/// [`Isolation::step`] from the progress loop, so the bar keeps moving.
struct Isolation {
    node: u32,
    /// The host that takes over, and its PID.
    survivor: &'static str,
    survivor_pid: u32,
    cut_at: Instant,
    /// From the cut until the survivor led every unit.
    replaced_after: Option<Duration>,
    /// From the cut until the links were healed.
    healed_after: Option<Duration>,
}

impl Isolation {
    /// Cut every link of host `victim`'s machine; returns once they are down.
    fn cut(nodes: &Nodes, hosts: &Hosts, victim: &str) -> Isolation {
        let (node, survivor) = (node_of(victim), other_host(victim));
        nodes.cut(node, Link::All);
        Isolation {
            node,
            survivor,
            survivor_pid: hosts.pid_of(survivor),
            cut_at: Instant::now(),
            replaced_after: None,
            healed_after: None,
        }
    }

    /// Note when the survivor leads every unit; heal [`HEAL_AFTER`] later.
    /// True when it healed just now.
    fn step(&mut self, store: &dyn KvStore, nodes: &Nodes) -> bool {
        if self.healed_after.is_some() {
            return false;
        }
        let Some(replaced_after) = self.replaced_after else {
            let survivor = self.survivor_pid;
            if leaders(store)
                .iter()
                .all(|l| l.is_some_and(|(_, pid)| pid == survivor))
            {
                self.replaced_after = Some(self.cut_at.elapsed());
            }
            return false;
        };
        if self.cut_at.elapsed() < replaced_after + HEAL_AFTER {
            return false;
        }
        nodes.heal(self.node, Link::All);
        self.healed_after = Some(self.cut_at.elapsed());
        true
    }

    /// Step until healed (the stream may end first).
    fn finish(&mut self, store: &dyn KvStore, nodes: &Nodes) -> Result<(), String> {
        let what = format!("host {} to lead every unit (and the heal)", self.survivor);
        wait_until(&what, || {
            self.step(store, nodes);
            self.healed_after.is_some()
        })
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT_BOUND;
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {WAIT_BOUND:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The hosts' takeover log lines after the first claims (epoch > 1).
fn takeover_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut after_first_claim = false;
        for line in text.lines() {
            // `… INFO unit{unit=NAME}: TARGET: MESSAGE FIELDS`
            let Some((_, rest)) = line.split_once("unit{unit=") else {
                continue;
            };
            let Some((unit, rest)) = rest.split_once("}: ") else {
                continue;
            };
            let message = rest.split_once(": ").map_or(rest, |(_, m)| m);
            if message.starts_with("taking over at epoch") {
                after_first_claim = !message.starts_with("taking over at epoch 1 ");
            }
            if after_first_claim
                && (message.contains("takeover phase")
                    || message.starts_with("taking over at epoch"))
            {
                // The structured copy of the epoch adds nothing here.
                let message = message.split(" epoch=").next().unwrap_or(message);
                lines.push(format!("unit {unit}: {message}"));
            }
        }
    }
    lines
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let records: u64 = env_or("RECORDS", 200_000);
    let rate: u64 = env_or("RATE", 20_000).max(1);
    let kill_at: u64 = env_or("KILL_AT", 40).min(95);
    let binary = logstream_binary();
    if !binary.exists() || !component().exists() {
        return Err(format!(
            "{} or {} is missing: run scripts/demo.sh, which builds them",
            binary.display(),
            component().display()
        ));
    }

    let machines = if nodes_requested() {
        Some(Machines::up()?)
    } else {
        None
    };
    let broker = match &machines {
        Some(m) => broker::Broker::start_on(&m.nodes.broker_ip().to_string()),
        None => broker::Broker::start(),
    };
    println!("broker: tansu on {} (sqlite storage)", broker.address);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_path = dir.path().join("store.db");
    let store_url = match &machines {
        Some(m) => m.etcd.url(),
        None => format!("sqlite:{}", store_path.display()),
    };
    kafka::ensure_topics(
        &broker.address,
        &[
            (INPUT_TOPIC, PARTITIONS),
            (PROCESSOR, PARTITIONS),
            (ALERTS_TOPIC, PARTITIONS),
        ],
    )
    .map_err(|e| format!("{e:#}"))?;
    let deployed = Command::new(&binary)
        .arg("deploy")
        .arg(component())
        .args([
            "--name",
            PROCESSOR,
            "--input",
            INPUT_TOPIC,
            "--output",
            PROCESSOR,
            "--output",
            ALERTS_TOPIC,
        ])
        .args(["--config", CONFIG, "--store", &store_url])
        .env("LOGSTREAM_CACHE_DIR", dir.path().join("cache"))
        .status()
        .map_err(|e| e.to_string())?;
    if !deployed.success() {
        return Err("deploying level-counter failed".into());
    }
    let store: Box<dyn KvStore> = match &machines {
        Some(_) => EtcdCluster::open(&store_url),
        None => Box::new(SqliteStore::open(&store_path).map_err(|e| e.to_string())?),
    };
    let store = &*store;
    let mut hosts = Hosts::new(
        binary.clone(),
        store_url.clone(),
        broker.address.clone(),
        dir.path().to_path_buf(),
    );
    if let Some(m) = &machines {
        let launch = m.nodes.launcher();
        hosts.launcher = Some(Box::new(move |id, binary| {
            launch(node_of(id), binary.as_os_str())
        }));
        println!(
            "machines: host a on node 1, b on node 2 (network namespaces, each with a link to the store at {} and one to the broker at {}); store: a {ETCD_MEMBERS}-member etcd cluster",
            m.nodes.store_ip(),
            m.nodes.broker_ip()
        );
    }
    hosts.start("a");
    let a = hosts.pid_of("a");
    wait_until("host a to lead every unit", || {
        leaders(store)
            .iter()
            .all(|l| l.is_some_and(|(_, pid)| pid == a))
    })?;
    hosts.start("b");
    println!("hosts: a (active for {PARTITIONS} units) and b (passive), store {store_url}");

    // Produce at a steady rate on a thread; the main thread kills (or cuts
    // off) the active part-way through.
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (brokers, produced) = (broker.address.clone(), produced.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let producer =
                OutputProducer::open_streaming(&brokers).map_err(|e| format!("{e:#}"))?;
            let started = Instant::now();
            for (n, record) in SampleLogs::new(7, PARTITIONS)
                .take(records as usize)
                .enumerate()
            {
                producer
                    .send(&Outgoing {
                        topic: INPUT_TOPIC,
                        partition: record.partition,
                        key: None,
                        value: &record.value,
                        headers: &[],
                        id: None,
                    })
                    .map_err(|e| format!("{e:#}"))?;
                let sent = n as u64 + 1;
                if sent.is_multiple_of(PRODUCE_CHUNK) || sent == records {
                    producer.flush().map_err(|e| format!("{e:#}"))?;
                    produced.store(sent, Ordering::Relaxed);
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                }
            }
            Ok(())
        })
    };
    let bar = ProgressBar::new(records);
    bar.set_style(
        ProgressStyle::with_template("producing {bar:40} {pos}/{len} log lines ({per_sec}) {msg}")
            .expect("a valid template"),
    );
    let kill_point = records * kill_at / 100;
    let mut killed: Option<Kill> = None;
    let mut isolation: Option<Isolation> = None;
    while !producer.is_finished() {
        let done = produced.load(Ordering::Relaxed);
        bar.set_position(done);
        if killed.is_none() && done >= kill_point {
            let before = leaders(store);
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for (_, pid) in before.iter().flatten() {
                *counts.entry(*pid).or_default() += 1;
            }
            let busiest = counts.iter().max_by_key(|(_, n)| **n).map(|(pid, _)| *pid);
            if let Some(id) = busiest.and_then(|pid| hosts.id_of_pid(pid)) {
                let at_ms = match &machines {
                    Some(m) => {
                        isolation = Some(Isolation::cut(&m.nodes, &hosts, &id));
                        bar.set_message(format!(
                            "(cut every link of host {id}'s machine, node {})",
                            node_of(&id)
                        ));
                        // Once the links are down: outputs the old active
                        // sent while netns.sh ran are not the new active's.
                        (unix_micros() / 1000) as i64
                    }
                    None => {
                        let at_ms = (unix_micros() / 1000) as i64;
                        hosts.kill9(&id);
                        bar.set_message(format!("(killed host {id} with kill -9)"));
                        at_ms
                    }
                };
                killed = Some((id, at_ms, before));
            }
        }
        if let (Some(m), Some(cut)) = (&machines, &mut isolation) {
            if cut.step(store, &m.nodes) {
                bar.set_message(format!(
                    "(host {} leads every unit; healed node {})",
                    cut.survivor, cut.node
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    producer
        .join()
        .map_err(|_| "the producer panicked".to_string())??;
    bar.set_position(records);
    bar.finish();
    let (victim, killed_at_ms, before) = killed.ok_or("the stream ended before the kill point")?;
    match (&machines, &mut isolation) {
        // The healed host was never stopped: it rejoins as the passive.
        (Some(m), Some(cut)) => cut.finish(store, &m.nodes)?,
        // The killed host comes back, as the passive.
        _ => hosts.start(&victim),
    }

    let highs: Vec<i64> = (0..PARTITIONS)
        .map(|p| kafka::watermarks(&broker.address, INPUT_TOPIC, p).map(|w| w.1))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e:#}"))?;
    println!("waiting for the active to checkpoint the whole stream...");
    wait_until("every unit to checkpoint the whole input", || {
        units()
            .iter()
            .zip(&highs)
            .enumerate()
            .all(|(p, (unit, high))| {
                checkpoint::read_current_meta(store, unit)
                    .ok()
                    .flatten()
                    .and_then(|m| m.offsets.get(&(p as i32)).copied())
                    == Some(*high)
            })
    })?;
    let after = leaders(store);
    let event = if machines.is_some() { "cut" } else { "kill" };

    // Failover time per unit the victim led: from the kill (or the cut) to
    // the first output the new active produced (its CreateTime, same machine
    // clock: namespaces share it).
    let mut failovers = Vec::new();
    for (p, unit) in units().iter().enumerate() {
        let Some((epoch_before, _)) = before[p] else {
            continue;
        };
        let new_epoch = after[p].map_or(epoch_before, |(e, _)| e);
        if new_epoch == epoch_before {
            continue;
        }
        let reader = PartitionReader::open(&broker.address, PROCESSOR, p as i32, Some(0))
            .map_err(|e| format!("{e:#}"))?;
        let mut first_ms = None;
        let deadline = Instant::now() + WAIT_BOUND;
        while first_ms.is_none() && Instant::now() < deadline {
            let batch = reader
                .poll_batch(10_000, 64 << 20, Duration::from_millis(200), Duration::ZERO)
                .map_err(|e| format!("{e:#}"))?;
            if batch.is_empty() {
                break;
            }
            first_ms = batch
                .iter()
                .find(|r| r.timestamp_ms > killed_at_ms && !is_fence_record(r))
                .map(|r| r.timestamp_ms - killed_at_ms);
        }
        failovers.push((unit.clone(), epoch_before, new_epoch, first_ms));
    }

    // The check: every output partition and final state equal run-local's
    // uninterrupted run over the same input partition.
    println!("checking against an uninterrupted run (logstream run-local)...");
    let mut ok = true;
    let (mut total_in, mut lost, mut duplicated) = (0usize, 0usize, 0usize);
    let mut total_out: BTreeMap<&str, usize> = BTreeMap::new();
    let mut states_equal = true;
    for (p, unit) in units().iter().enumerate() {
        let input = verify::read_partition(&broker.address, INPUT_TOPIC, p as i32, WAIT_BOUND);
        let (mut by_topic, want_state) = verify::run_local_routed(
            &binary,
            &component(),
            CONFIG,
            &[PROCESSOR, ALERTS_TOPIC],
            &input,
            dir.path(),
            &format!("levels-{p}"),
        );
        total_in += input.len();
        for topic in [PROCESSOR, ALERTS_TOPIC] {
            let want = by_topic.remove(topic).unwrap_or_default();
            let got = verify::output_rows(
                verify::read_partition(&broker.address, topic, p as i32, WAIT_BOUND),
                unit,
            );
            *total_out.entry(topic).or_default() += got.len();
            let got_set: HashSet<_> = got.iter().collect();
            lost += want.iter().filter(|row| !got_set.contains(row)).count();
            duplicated += got.len() - got_set.len();
            if got != want {
                ok = false;
            }
        }
        let state = checkpoint::read_current(store, unit)
            .map_err(|e| e.to_string())?
            .map(|c| c.state);
        if state.as_deref() != Some(&want_state[..]) {
            states_equal = false;
            ok = false;
        }
    }
    // `--nodes`: the old active is still the process it was before the cut.
    let rejoined = isolation.as_ref().map(|_| {
        let pid = hosts.pid_of(&victim);
        let running = hosts
            .children
            .get_mut(&victim)
            .is_some_and(|child| child.try_wait().ok().flatten().is_none());
        let leads = after.iter().flatten().filter(|(_, p)| *p == pid).count();
        (running, leads)
    });
    hosts.stop_all();

    println!();
    println!("LogStream failover demo");
    println!("  records in:   {total_in} log lines over {PARTITIONS} partitions, ~{rate}/s");
    println!(
        "  records out:  {} level-counter summaries to {PROCESSOR}, {} error lines routed to {ALERTS_TOPIC} ({CONFIG})",
        total_out.get(PROCESSOR).copied().unwrap_or(0),
        total_out.get(ALERTS_TOPIC).copied().unwrap_or(0),
    );
    match &isolation {
        Some(cut) => println!(
            "  failover:     every link of host {victim}'s machine (node {}) cut at {kill_at} % of the stream; host {} led every unit {} ms after the cut; healed {} ms after it",
            cut.node,
            cut.survivor,
            cut.replaced_after.unwrap_or_default().as_millis(),
            cut.healed_after.unwrap_or_default().as_millis(),
        ),
        None => println!(
            "  failover:     host {victim} killed with kill -9 at {kill_at} % of the stream"
        ),
    }
    for (unit, from, to, first_ms) in &failovers {
        match first_ms {
            Some(ms) => println!(
                "                {unit}: epoch {from} -> {to}, first output of the new active {ms} ms after the {event}"
            ),
            None => println!("                {unit}: epoch {from} -> {to}"),
        }
    }
    if let Some((running, leads)) = rejoined {
        println!(
            "  rejoined:     host {victim}, not restarted ({}), leads {leads} of {PARTITIONS} units at the end{}",
            if running { "still running" } else { "EXITED" },
            if leads == 0 { " (the passive)" } else { "" },
        );
    }
    println!(
        "  check:        outputs identical to an uninterrupted run: {} ({lost} lost, {duplicated} duplicated); final states identical: {}",
        if ok { "yes" } else { "NO" },
        if states_equal { "yes" } else { "NO" },
    );
    println!("  takeover, from the new active's log:");
    for line in takeover_lines(dir.path()) {
        println!("    {line}");
    }
    Ok(ok)
}
