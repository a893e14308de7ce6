//! Hostile input (issue 6, design guarantees 5 and 6), against the real
//! `logstream` binary as separate processes, a real broker (tansu) and the
//! SQLite store:
//!
//! - guest faults inside a running host: `misbehave` traps, loops forever,
//!   allocates until its memory limit, or returns more than the output
//!   limit on some records, next to `passthrough` on the same partition; the
//!   host stays up and keeps serving, each bad record is dead-lettered with
//!   its reason after bounded retries, everything else (outputs, final
//!   states) equals `logstream run-local` over the same input;
//! - malformed modules on `logstream deploy` (random bytes, empty, a
//!   truncated component, a core module, a component of another world, one
//!   importing an interface the host does not provide): refused with one
//!   sentence naming the problem, non-zero exit, store unchanged;
//! - malformed records into a running host (non-UTF-8 values, empty values,
//!   no key, a thousand headers, a header value near the producer's record
//!   limit, forged `logstream-*` headers): nothing lost or duplicated
//!   against run-local, rejected records in the dead-letter topic;
//! - bad command lines and config files: one sentence on stderr, non-zero
//!   exit, the store untouched.
//!
//! Every scenario writes its rows of `docs/reliability.md`
//! (`scripts/reliability-table.sh`) before asserting. For the running-host
//! scenarios, "lost" and "duplicated" count outputs and dead letters of the
//! injected records against run-local; for the refused ones, store entries
//! changed or removed ("lost", out of the entries before) and entries added
//! ("duplicated").

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::hosts::Hosts;
use common::records::{self, DeadLetter, Emitted, LocalRun};
use common::reliability::{Counts, Row};
use common::{logstream, plugin, run, stderr, stdout};
use logstream_host::pipeline::kafka::{self, Outgoing, OutputProducer};
use logstream_host::pipeline::unit::ERROR_HEADER;
use logstream_host::record::LogRecord;
use logstream_host::store::checkpoint;
use logstream_host::store::registry::dead_letter_topic as dlq_topic;
use logstream_host::wasm::bindings::Header;
use logstream_host::wasm::supervisor::DEFAULT_MAX_ATTEMPTS_PER_RECORD;

/// Liveness bound of each running-host scenario (not a performance
/// assertion).
const SCENARIO_BOUND: Duration = Duration::from_secs(120);
/// Bound on a command that must be refused at once (a host that wrongly
/// accepted its arguments would run until killed).
const REFUSAL_BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const INPUT_TOPIC: &str = "logs";

/// The scenarios with a broker and a host run one at a time: two such sets
/// at once starve a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn logstream_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logstream"))
}

fn wait_until(what: &str, deadline: Instant, mut condition: impl FnMut() -> bool) {
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// A table cell: `|` would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

// ---------------------------------------------------------------------------
// The store, before and after.

/// Entries changed or removed, and entries added.
fn store_changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> (usize, usize) {
    let changed = before
        .iter()
        .filter(|(key, value)| after.get(*key) != Some(*value))
        .count();
    let added = after
        .keys()
        .filter(|key| !before.contains_key(*key))
        .count();
    (changed, added)
}

// ---------------------------------------------------------------------------
// Commands that must be refused.

/// Run a command that must end by itself within [`REFUSAL_BOUND`].
fn run_bounded(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the logstream binary starts");
    let deadline = Instant::now() + REFUSAL_BOUND;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after {REFUSAL_BOUND:?} (it accepted its input?): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(POLL);
    }
    child.wait_with_output().unwrap()
}

/// How a command was refused: its exit code and stderr.
struct Refusal {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

impl Refusal {
    fn of(output: &Output) -> Refusal {
        Refusal {
            code: output.status.code(),
            stderr: stderr(output),
            stdout: stdout(output),
        }
    }

    /// What is wrong with the refusal, if anything: it must exit non-zero
    /// (not by a signal), print nothing on stdout, and exactly one line on
    /// stderr, `error: …`, containing every needle.
    fn problems(&self, needles: &[&str]) -> Vec<String> {
        let mut problems = Vec::new();
        match self.code {
            Some(0) => problems.push("exit status 0".to_string()),
            None => problems.push("killed by a signal".to_string()),
            Some(_) => {}
        }
        let lines = self.stderr.trim_end().lines().count();
        if lines != 1 {
            problems.push(format!("{lines} lines on stderr"));
        }
        if !self.stderr.starts_with("error: ") {
            problems.push("stderr does not start with `error: `".to_string());
        }
        for needle in needles {
            if !self.stderr.contains(needle) {
                problems.push(format!("does not name {needle:?}"));
            }
        }
        if !self.stdout.is_empty() {
            problems.push("wrote to stdout".to_string());
        }
        problems
    }

    /// The sentence as the table shows it: temporary paths shortened.
    fn sentence(&self, dir: &Path) -> String {
        let line = self.stderr.trim_end().lines().next().unwrap_or("");
        line.strip_prefix("error: ")
            .unwrap_or(line)
            .replace(&format!("{}/", dir.display()), "")
            .replace(&format!("{}/", common::plugin_dir().display()), "")
    }
}

/// One refused-input row: outcome `refused: <sentence>` when the refusal
/// and the store hold, else `DIFFERS: …`. Returns the problems.
fn refusal_row(
    scenario: &str,
    injected: &str,
    times: usize,
    refusals: &[(Refusal, Vec<&str>)],
    store: (&BTreeMap<String, String>, &BTreeMap<String, String>),
    dir: &Path,
) -> Vec<String> {
    let mut problems: Vec<String> = refusals
        .iter()
        .flat_map(|(refusal, needles)| refusal.problems(needles))
        .collect();
    let (changed, added) = store_changes(store.0, store.1);
    if changed + added > 0 {
        problems.push(format!(
            "store: {changed} entries changed or removed, {added} added"
        ));
    }
    let outcome = if problems.is_empty() {
        format!("refused: {}", refusals[0].0.sentence(dir))
    } else {
        format!(
            "DIFFERS: {} (stderr: {})",
            problems.join("; "),
            refusals[0].0.sentence(dir)
        )
    };
    Row {
        scenario,
        injected: &cell(injected),
        times,
        outcome: &cell(&outcome),
        lost: changed,
        out_of: store.0.len(),
        duplicated: added,
    }
    .write();
    problems
}

fn deploy(file: &Path, name: &str, output: &str, config: &str, store_url: &str) -> Output {
    run(logstream().arg("deploy").arg(file).args([
        "--name",
        name,
        "--input",
        INPUT_TOPIC,
        "--output",
        output,
        "--config",
        config,
        "--store",
        store_url,
    ]))
}

// ---------------------------------------------------------------------------
// Running hosts.

/// One record to produce to the input topic.
#[derive(Clone)]
struct Input {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<Header>,
}

impl Input {
    fn keyed(key: &str, value: impl Into<Vec<u8>>) -> Input {
        Input {
            key: Some(key.as_bytes().to_vec()),
            value: value.into(),
            headers: Vec::new(),
        }
    }
}

fn header(key: &str, value: impl Into<Vec<u8>>) -> Header {
    Header {
        key: key.to_string(),
        value: value.into(),
    }
}

/// Produce `inputs` in order to partition 0 of the input topic.
fn produce(brokers: &str, inputs: &[Input]) {
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    for input in inputs {
        producer
            .send(&Outgoing {
                topic: INPUT_TOPIC,
                partition: 0,
                key: input.key.as_deref(),
                value: &input.value,
                headers: &input.headers,
                id: None,
            })
            .unwrap();
    }
    producer.flush().unwrap();
}

/// A broker, a store with processors deployed on a one-partition input
/// topic, and one `logstream host`.
struct Pipeline {
    broker: Broker,
    dir: tempfile::TempDir,
    store: logstream_host::store::SqliteStore,
    hosts: Hosts,
    /// (name, output topic) of each processor.
    processors: Vec<(String, String)>,
}

impl Pipeline {
    /// `processors`: (name, component file, output topic, config).
    fn start(processors: &[(&str, &str, &str, &str)], host_args: &[&str]) -> Pipeline {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("store.db");
        let store_url = format!("sqlite:{}", store_path.display());
        let mut topics = vec![(INPUT_TOPIC, 1)];
        topics.extend(processors.iter().map(|p| (p.2, 1)));
        kafka::ensure_topics(&broker.address, &topics).unwrap();
        for (name, file, output, config) in processors {
            let out = deploy(&plugin(file), name, output, config, &store_url);
            assert!(out.status.success(), "deploy {name}: {}", stderr(&out));
        }
        let mut hosts = Hosts::new(
            logstream_bin(),
            store_url,
            broker.address.clone(),
            dir.path().to_path_buf(),
        );
        hosts.extra_args = ["--checkpoint-interval-ms", "200"]
            .iter()
            .chain(host_args)
            .map(|s| s.to_string())
            .collect();
        hosts.start("a");
        Pipeline {
            broker,
            store: logstream_host::store::SqliteStore::open(&store_path).unwrap(),
            dir,
            hosts,
            processors: processors
                .iter()
                .map(|p| (p.0.to_string(), p.2.to_string()))
                .collect(),
        }
    }

    fn host_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host-a-1.log")).unwrap_or_default()
    }

    /// Whether host `a` is still running.
    fn host_alive(&mut self) -> bool {
        self.hosts
            .children
            .get_mut("a")
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Wait until every processor's unit checkpointed the whole input.
    fn wait_checkpointed(&self, deadline: Instant) -> i64 {
        let (_, high) = kafka::watermarks(&self.broker.address, INPUT_TOPIC, 0).unwrap();
        for (name, _) in &self.processors {
            let unit = format!("{name}/0");
            wait_until(
                &format!("{unit} to checkpoint offset {high}"),
                deadline,
                || {
                    checkpoint::read_current_meta(&self.store, &unit)
                        .unwrap()
                        .and_then(|m| m.offsets.get(&0).copied())
                        == Some(high)
                },
            );
        }
        high
    }

    /// The admin address the host logged (it listens on port 0).
    fn admin_address(&self, deadline: Instant) -> SocketAddr {
        const PREFIX: &str = "admin HTTP listening on http://";
        let mut address = None;
        wait_until("the host to log its admin address", deadline, || {
            let log = self.host_log();
            address = log.find(PREFIX).map(|at| {
                let rest = &log[at + PREFIX.len()..];
                rest.split_whitespace().next().unwrap().parse().unwrap()
            });
            address.is_some()
        });
        address.unwrap()
    }

    /// SIGTERM the host; its exit status, or `None` if it had to be killed.
    fn stop(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        let mut child: Child = self.hosts.children.remove("a")?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn read(&self, topic: &str) -> Vec<LogRecord> {
        common::verify::read_partition(&self.broker.address, topic, 0, SCENARIO_BOUND)
    }

    /// What processor `name` produced: outputs and dead letters.
    fn produced_by(&self, name: &str, output_topic: &str) -> Vec<Item> {
        let unit = format!("{name}/0");
        let outputs = records::emitted_by(&self.read(output_topic), &unit);
        let dead = records::dead_letters_of(&self.read(&dlq_topic(name)), &unit);
        items(name, outputs, dead)
    }

    fn state_of(&self, name: &str) -> Vec<u8> {
        checkpoint::read_current(&self.store, &format!("{name}/0"))
            .unwrap()
            .expect("a checkpoint")
            .state
    }
}

/// The input as read back, checked against what was produced (in order,
/// one producer, one partition): offsets for the produced list.
fn read_back_input(pipeline: &Pipeline, produced: &[Input]) -> Vec<LogRecord> {
    let input = pipeline.read(INPUT_TOPIC);
    assert_eq!(input.len(), produced.len(), "input records");
    for (record, sent) in input.iter().zip(produced) {
        assert_eq!(
            record.value, sent.value,
            "input at offset {}",
            record.offset
        );
        assert_eq!(record.key, sent.key, "key at offset {}", record.offset);
        assert_eq!(
            record.headers.len(),
            sent.headers.len(),
            "headers at offset {}",
            record.offset
        );
    }
    input
}

/// An output or a dead letter of one processor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Output(String, Emitted),
    DeadLetter(String, DeadLetter),
}

impl Item {
    fn offset(&self) -> i64 {
        match self {
            Item::Output(_, o) => o.offset,
            Item::DeadLetter(_, d) => d.offset,
        }
    }
}

fn items(processor: &str, outputs: Vec<Emitted>, dead: Vec<DeadLetter>) -> Vec<Item> {
    outputs
        .into_iter()
        .map(|o| Item::Output(processor.to_string(), o))
        .chain(
            dead.into_iter()
                .map(|d| Item::DeadLetter(processor.to_string(), d)),
        )
        .collect()
}

fn expected_items(processor: &str, run: &LocalRun) -> Vec<Item> {
    items(processor, run.outputs.clone(), run.dead_letters.clone())
}

/// Items lost, duplicated and unexpected among those of some input offsets.
fn counts_among(want: &[Item], got: &[Item], offsets: &HashSet<i64>) -> Counts {
    fn among<'a>(items: &'a [Item], offsets: &HashSet<i64>) -> Vec<&'a Item> {
        items
            .iter()
            .filter(|i| offsets.contains(&i.offset()))
            .collect()
    }
    Counts::of(&among(want, offsets), &among(got, offsets))
}

/// `GET path` over HTTP/1.0: the status code.
fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Attempts the host log reports per failed offset of `unit`
/// (`processor 'UNIT' failed on partition 0 offset O after N attempts`).
fn logged_attempts(log: &str, unit: &str) -> HashMap<i64, u32> {
    let marker = format!("processor '{unit}' failed on partition 0 offset ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            let (offset, rest) = rest.split_once(" after ")?;
            let attempts = rest.split_once(" attempts")?.0;
            Some((offset.parse().ok()?, attempts.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Guest faults inside a running host.

/// The host's limits in the guest-fault scenario, small so that the loop
/// and the bomb end quickly; run-local gets the same.
const FAULT_LIMITS: [&str; 6] = [
    "--call-timeout-ms",
    "1000",
    "--memory-limit-mib",
    "64",
    "--max-output-mib",
    "1",
];

/// (misbehave's command, scenario name, what the dead letter's reason says).
const GUEST_FAULTS: [(&str, &str, &str); 4] = [
    ("trap", "guest trap", "trapped"),
    ("loop", "guest endless loop", "time limit of 1s per call"),
    (
        "bomb",
        "guest memory bomb",
        "memory limit of 67108864 bytes exceeded",
    ),
    (
        "big-output",
        "guest oversized output",
        "more than the limit of 1048576 bytes",
    ),
];
/// Times each fault is injected.
const FAULT_REPEATS: usize = 2;

#[test]
fn guest_faults_inside_a_running_host() {
    let _one = exclusive();
    let deadline = Instant::now() + SCENARIO_BOUND;
    let mut pipeline = Pipeline::start(
        &[
            ("misbehave", "misbehave", "mb-out", ""),
            ("pt", "passthrough", "pt-out", ""),
        ],
        &FAULT_LIMITS,
    );
    // Normal records with every fault twice in between; then, once those
    // are through, more normal records: the host must still serve them.
    let mut produced = Vec::new();
    for round in 0..FAULT_REPEATS {
        for (command, _, _) in GUEST_FAULTS {
            for i in 0..5 {
                produced.push(Input::keyed("k", format!("before-{command}-{round}-{i}")));
            }
            produced.push(Input::keyed("k", command));
        }
    }
    produce(&pipeline.broker.address, &produced);
    pipeline.wait_checkpointed(deadline);
    let alive_after_faults = pipeline.host_alive();
    let admin = pipeline.admin_address(deadline);
    let health = http_status(admin, "/healthz");
    let second_wave: Vec<Input> = (0..20)
        .map(|i| Input::keyed("k", format!("after-{i}")))
        .collect();
    produce(&pipeline.broker.address, &second_wave);
    produced.extend(second_wave);
    pipeline.wait_checkpointed(deadline);
    let alive_at_end = pipeline.host_alive();
    let exit = pipeline.stop(deadline);

    let input = read_back_input(&pipeline, &produced);
    let dir = pipeline.dir.path().to_path_buf();
    let mb_run = records::run_local_exact(
        &logstream_bin(),
        &plugin("misbehave"),
        "",
        &FAULT_LIMITS,
        &input,
        &dir,
        "misbehave",
    );
    let pt_run = records::run_local_exact(
        &logstream_bin(),
        &plugin("passthrough"),
        "",
        &FAULT_LIMITS,
        &input,
        &dir,
        "pt",
    );
    let mut want = expected_items("misbehave", &mb_run);
    want.extend(expected_items("pt", &pt_run));
    let mut got = pipeline.produced_by("misbehave", "mb-out");
    got.extend(pipeline.produced_by("pt", "pt-out"));
    let mb_state_equal = pipeline.state_of("misbehave") == mb_run.state;
    let pt_state_equal = pipeline.state_of("pt") == pt_run.state;
    let attempts = logged_attempts(&pipeline.host_log(), "misbehave/0");

    // Everything the faults must not disturb, shared by every row.
    let fault_offsets: HashSet<i64> = input
        .iter()
        .filter(|r| GUEST_FAULTS.iter().any(|f| r.value == f.0.as_bytes()))
        .map(|r| r.offset)
        .collect();
    let normal_offsets: HashSet<i64> = input
        .iter()
        .map(|r| r.offset)
        .filter(|o| !fault_offsets.contains(o))
        .collect();
    let normal = counts_among(&want, &got, &normal_offsets);
    let mut shared_problems = Vec::new();
    if !alive_after_faults || !alive_at_end {
        shared_problems.push("the host process died".to_string());
    }
    if health != Some(200) {
        shared_problems.push(format!("/healthz answered {health:?}"));
    }
    if !normal.clean() {
        shared_problems.push(format!("outputs of normal records: {}", normal.describe()));
    }
    if !mb_state_equal || !pt_state_equal {
        shared_problems.push(format!(
            "final state equal to run-local: misbehave {mb_state_equal}, passthrough {pt_state_equal}"
        ));
    }
    if exit.is_none_or(|status| !status.success()) {
        shared_problems.push(format!("stopping with SIGTERM: exit {exit:?}"));
    }

    let mut all_problems = shared_problems.clone();
    for (command, scenario, says) in GUEST_FAULTS {
        let offsets: HashSet<i64> = input
            .iter()
            .filter(|r| r.value == command.as_bytes())
            .map(|r| r.offset)
            .collect();
        let tally = counts_among(&want, &got, &offsets);
        let dead: Vec<&DeadLetter> = got
            .iter()
            .filter_map(|item| match item {
                Item::DeadLetter(p, d) if p == "misbehave" && offsets.contains(&d.offset) => {
                    Some(d)
                }
                _ => None,
            })
            .collect();
        let tries: BTreeSet<Option<u32>> =
            offsets.iter().map(|o| attempts.get(o).copied()).collect();
        let mut problems = shared_problems.clone();
        if !tally.clean() {
            problems.push(format!("outputs and dead letters: {}", tally.describe()));
        }
        // Independently of run-local: every bad record is dead-lettered.
        if dead.len() != offsets.len() {
            problems.push(format!("{} of {} dead-lettered", dead.len(), offsets.len()));
        }
        if let Some(d) = dead
            .iter()
            .find(|d| !(d.reason.starts_with("failed: ") && d.reason.contains(says)))
        {
            problems.push(format!("dead letter reason {:?}", d.reason));
        }
        if tries != BTreeSet::from([Some(DEFAULT_MAX_ATTEMPTS_PER_RECORD)]) {
            problems.push(format!("attempts logged per record: {tries:?}"));
        }
        let outcome = if problems.is_empty() {
            format!(
                "host stayed up and served the next records; {} of {} dead-lettered with `{ERROR_HEADER}: failed: …{says}…` after {} attempts each; all other outputs and final states equal run-local",
                dead.len(),
                offsets.len(),
                DEFAULT_MAX_ATTEMPTS_PER_RECORD
            )
        } else {
            format!("DIFFERS: {}", problems.join("; "))
        };
        Row {
            scenario,
            injected: &format!(
                "misbehave runs `{command}` on {} of {} records, passthrough on the same partition; limits {}",
                offsets.len(),
                input.len(),
                FAULT_LIMITS.join(" ")
            ),
            times: offsets.len(),
            outcome: &cell(&outcome),
            lost: tally.lost,
            out_of: tally.out_of,
            duplicated: tally.duplicated,
        }
        .write();
        all_problems.extend(problems.into_iter().map(|p| format!("{scenario}: {p}")));
    }
    assert!(
        all_problems.is_empty(),
        "{all_problems:#?}\nhost log:\n{}",
        pipeline.host_log()
    );
}

// ---------------------------------------------------------------------------
// 2. Malformed modules on deploy.

#[test]
fn malformed_modules_are_refused_on_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let store_url = format!("sqlite:{}", store_path.display());
    // A store with something to damage: a deployed processor.
    let out = deploy(&plugin("passthrough"), "pt", "pt-out", "", &store_url);
    assert!(out.status.success(), "deploy: {}", stderr(&out));

    let passthrough = std::fs::read(plugin("passthrough")).unwrap();
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A real processor built against a WASI the host does not link: the
    // same bytes with one interface's version moved from 0.2.6 to 0.3.6
    // (same length, so the binary stays well-formed).
    let (from, to) = (
        b"wasi:cli/environment@0.2.6".as_slice(),
        b"wasi:cli/environment@0.3.6".as_slice(),
    );
    let renamed = replace_all(&passthrough, from, to);
    assert_ne!(renamed, passthrough, "passthrough imports {from:?}");

    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "deploy: random bytes",
            "4 KiB of pseudo-random bytes",
            noise,
            "not a WebAssembly file",
        ),
        (
            "deploy: empty file",
            "a file of 0 bytes",
            Vec::new(),
            "not a WebAssembly file",
        ),
        (
            "deploy: truncated component",
            "the first half of passthrough.wasm",
            passthrough[..passthrough.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "deploy: core module",
            "an empty core WebAssembly module",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "deploy: component of another world",
            "tests/components/other-world",
            std::fs::read(plugin("other_world")).unwrap(),
            "a component of another world",
        ),
        (
            "deploy: unprovided import",
            "passthrough importing wasi:cli/environment@0.3.6",
            renamed,
            "imports `wasi:cli/environment@0.3.6`, which the host does not provide",
        ),
    ];
    let mut all_problems = Vec::new();
    for (index, (scenario, injected, bytes, says)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("candidate-{index}.wasm"));
        std::fs::write(&file, bytes).unwrap();
        let file_name = file.file_name().unwrap().to_str().unwrap().to_string();
        let before = common::store_dump(&store_path);
        // Under a new name, and over the deployed processor (a redeploy
        // takes another path: it checks the module against the state).
        let refusals: Vec<(Refusal, Vec<&str>)> = ["fresh", "pt"]
            .iter()
            .map(|name| {
                let out = run_bounded(logstream().arg("deploy").arg(&file).args([
                    "--name",
                    name,
                    "--input",
                    INPUT_TOPIC,
                    "--output",
                    "out",
                    "--store",
                    &store_url,
                ]));
                (Refusal::of(&out), vec![file_name.as_str(), says])
            })
            .collect();
        let after = common::store_dump(&store_path);
        let problems = refusal_row(
            scenario,
            &format!(
                "`logstream deploy` of {injected}, as a new processor and over a deployed one"
            ),
            refusals.len(),
            &refusals,
            (&before, &after),
            dir.path(),
        );
        all_problems.extend(
            problems
                .into_iter()
                .map(|p| format!("{scenario}: {p} (stderr: {:?})", refusals[0].0.stderr)),
        );
    }
    assert!(all_problems.is_empty(), "{all_problems:#?}");
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    while at < haystack.len() {
        if haystack[at..].starts_with(from) {
            out.extend_from_slice(to);
            at += from.len();
        } else {
            out.push(haystack[at]);
            at += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 3. Malformed records into a running host.

/// A header value that brings the input record within a few bytes of
/// librdkafka's default record limit (`message.max.bytes`, 1,000,000 bytes
/// with the record's overhead; a few bytes more and the test's own producer
/// refuses it). Passthrough's copy of it also carries the id header the
/// host adds, so it is slightly larger than what came in.
const HUGE_HEADER_BYTES: usize = 999_900;

/// (scenario name, what is injected, the records).
fn malformed_records() -> Vec<(&'static str, &'static str, Vec<Input>)> {
    let json = |i: usize| format!(r#"{{"service":"odd","level":"warn","msg":"odd {i}"}}"#);
    vec![
        (
            "record: non-UTF-8 value",
            "values with invalid UTF-8 (raw bytes, and inside a JSON string)",
            vec![
                Input::keyed("bin", vec![0xff, 0xfe, 0x00, 0xc3, 0x28]),
                Input::keyed(
                    "bin",
                    b"{\"service\":\"\xff\xfe\",\"level\":\"info\"}".to_vec(),
                ),
            ],
        ),
        (
            "record: empty value",
            "records with a zero-byte value, with and without a key",
            vec![
                Input::keyed("empty", Vec::new()),
                Input {
                    key: None,
                    value: Vec::new(),
                    headers: Vec::new(),
                },
            ],
        ),
        (
            "record: no key",
            "records without a key (and one with a zero-byte or binary key)",
            vec![
                Input {
                    key: None,
                    value: json(1).into_bytes(),
                    headers: Vec::new(),
                },
                Input {
                    key: Some(Vec::new()),
                    value: json(2).into_bytes(),
                    headers: Vec::new(),
                },
                Input {
                    key: Some(vec![0x00, 0xff, 0x80]),
                    value: json(3).into_bytes(),
                    headers: Vec::new(),
                },
            ],
        ),
        (
            "record: 1,000 headers",
            "records with 1,000 headers each (distinct keys; one key repeated)",
            vec![
                Input {
                    key: Some(b"many".to_vec()),
                    value: json(4).into_bytes(),
                    headers: (0..1000)
                        .map(|i| header(&format!("h{i}"), format!("v{i}")))
                        .collect(),
                },
                Input {
                    key: Some(b"many".to_vec()),
                    value: json(5).into_bytes(),
                    headers: (0..1000).map(|i| header("same", vec![i as u8])).collect(),
                },
            ],
        ),
        (
            "record: ~1 MB header value",
            "a header value of 999,900 bytes: the record is just under librdkafka's 1,000,000-byte limit",
            vec![Input {
                key: Some(b"huge".to_vec()),
                value: json(6).into_bytes(),
                headers: vec![header("huge", vec![b'h'; HUGE_HEADER_BYTES])],
            }],
        ),
        (
            "record: forged logstream headers",
            "input headers named `logstream-id` (another unit's id) and `logstream-error`",
            vec![
                Input {
                    key: Some(b"forged".to_vec()),
                    value: json(7).into_bytes(),
                    headers: vec![
                        header("logstream-id", "pt/0/0/0"),
                        header(ERROR_HEADER, "forged"),
                    ],
                },
                Input {
                    key: Some(b"forged".to_vec()),
                    value: b"not json".to_vec(),
                    headers: vec![
                        header(ERROR_HEADER, "forged"),
                        header("logstream-id", "lc/0/1/dlq"),
                    ],
                },
            ],
        ),
    ]
}

/// A realistic log record for level-counter.
fn normal_record(i: usize) -> Input {
    let services = ["api", "db", "auth"];
    let levels = ["info", "warn", "error", "debug"];
    Input::keyed(
        &format!("host-{}", i % 3),
        format!(
            r#"{{"ts":{i},"service":"{}","level":"{}","msg":"request {i} served"}}"#,
            services[i % services.len()],
            levels[i % levels.len()]
        ),
    )
}

#[test]
fn malformed_records_into_a_running_host() {
    let _one = exclusive();
    let deadline = Instant::now() + SCENARIO_BOUND;
    const LC_CONFIG: &str = "every=7";
    let mut pipeline = Pipeline::start(
        &[
            ("pt", "passthrough", "pt-out", ""),
            ("lc", "level_counter", "lc-out", LC_CONFIG),
        ],
        &[],
    );
    // Normal records around each kind of malformed one, so summaries and
    // state depend on whether the malformed ones were counted.
    let mut produced = Vec::new();
    let mut kinds: Vec<(&str, &str, Vec<usize>)> = Vec::new();
    for (scenario, injected, inputs) in malformed_records() {
        let next = produced.len();
        produced.extend((next..next + 5).map(normal_record));
        let first = produced.len();
        produced.extend(inputs);
        kinds.push((scenario, injected, (first..produced.len()).collect()));
    }
    let next = produced.len();
    produced.extend((next..next + 5).map(normal_record));
    produce(&pipeline.broker.address, &produced);
    pipeline.wait_checkpointed(deadline);
    let alive = pipeline.host_alive();
    let exit = pipeline.stop(deadline);

    let input = read_back_input(&pipeline, &produced);
    let dir = pipeline.dir.path().to_path_buf();
    let pt_run = records::run_local_exact(
        &logstream_bin(),
        &plugin("passthrough"),
        "",
        &[],
        &input,
        &dir,
        "pt",
    );
    let lc_run = records::run_local_exact(
        &logstream_bin(),
        &plugin("level_counter"),
        LC_CONFIG,
        &[],
        &input,
        &dir,
        "lc",
    );
    let mut want = expected_items("pt", &pt_run);
    want.extend(expected_items("lc", &lc_run));
    let mut got = pipeline.produced_by("pt", "pt-out");
    got.extend(pipeline.produced_by("lc", "lc-out"));
    let pt_state_equal = pipeline.state_of("pt") == pt_run.state;
    let lc_state_equal = pipeline.state_of("lc") == lc_run.state;

    let all_offsets: HashSet<i64> = input.iter().map(|r| r.offset).collect();
    let everything = counts_among(&want, &got, &all_offsets);
    let mut shared_problems = Vec::new();
    if !alive || exit.is_none_or(|status| !status.success()) {
        shared_problems.push(format!(
            "host alive at the end: {alive}, exit on SIGTERM: {exit:?}"
        ));
    }
    if !everything.clean() {
        shared_problems.push(format!("all outputs: {}", everything.describe()));
    }
    if !pt_state_equal || !lc_state_equal {
        shared_problems.push(format!(
            "final state equal to run-local: passthrough {pt_state_equal}, level-counter {lc_state_equal}"
        ));
    }
    let mut all_problems = shared_problems.clone();
    for (scenario, injected, indices) in kinds {
        let offsets: HashSet<i64> = indices.iter().map(|&i| input[i].offset).collect();
        let tally = counts_among(&want, &got, &offsets);
        let rejected_by: Vec<String> = ["pt", "lc"]
            .iter()
            .filter_map(|p| {
                let n = got
                    .iter()
                    .filter(|item| {
                        matches!(item, Item::DeadLetter(q, d) if q == p && offsets.contains(&d.offset))
                    })
                    .count();
                (n > 0).then(|| format!("{n} in {}", dlq_topic(p)))
            })
            .collect();
        let mut problems = shared_problems.clone();
        if !tally.clean() {
            problems.push(format!("outputs and dead letters: {}", tally.describe()));
        }
        // Independently of run-local: passthrough echoes every record once.
        let echoed: HashSet<i64> = got
            .iter()
            .filter_map(|item| match item {
                Item::Output(p, o) if p == "pt" && offsets.contains(&o.offset) => Some(o.offset),
                _ => None,
            })
            .collect();
        if echoed != offsets {
            problems.push(format!(
                "passthrough echoed {} of {} records",
                echoed.len(),
                offsets.len()
            ));
        }
        let outcome = if problems.is_empty() {
            format!(
                "outputs, dead letters and final states of passthrough and level-counter equal run-local; rejected: {}",
                if rejected_by.is_empty() {
                    "none".to_string()
                } else {
                    rejected_by.join(", ")
                }
            )
        } else {
            format!("DIFFERS: {}", problems.join("; "))
        };
        Row {
            scenario,
            injected: &cell(injected),
            times: offsets.len(),
            outcome: &cell(&outcome),
            lost: tally.lost,
            out_of: tally.out_of,
            duplicated: tally.duplicated,
        }
        .write();
        all_problems.extend(problems.into_iter().map(|p| format!("{scenario}: {p}")));
    }
    assert!(
        all_problems.is_empty(),
        "{all_problems:#?}\nhost log:\n{}",
        pipeline.host_log()
    );
}

// ---------------------------------------------------------------------------
// 4. Bad command lines and config files.

#[test]
fn bad_command_lines_and_config_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let store_url = format!("sqlite:{}", store_path.display());
    let out = deploy(&plugin("passthrough"), "pt", "pt-out", "", &store_url);
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("unknown-key.toml"),
        "brokers = \"127.0.0.1:1\"\n[election]\nlease = 500\n",
    )
    .unwrap();
    std::fs::write(
        path("wrong-type.toml"),
        "[checkpoint]\ninterval_ms = \"fast\"\n",
    )
    .unwrap();
    let missing_store = path("missing/store.db");
    let missing_wasm = path("missing.wasm");
    let passthrough = plugin("passthrough").display().to_string();
    // A host that wrongly started would find nothing to reach: no broker,
    // no admin port.
    let host = |args: &[&str]| -> Vec<String> {
        ["host", "--store", &store_url, "--brokers", "127.0.0.1:1"]
            .iter()
            .chain(&["--admin-addr", "off"])
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let deploy_args = |file: &str, name: &str| -> Vec<String> {
        [
            "deploy", file, "--name", name, "--input", "logs", "--output", "out", "--store",
            &store_url,
        ]
        .map(String::from)
        .to_vec()
    };
    // (scenario, arguments, what the sentence must name).
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "cli: unknown flag",
            host(&["--bogus-flag"]),
            vec!["'--bogus-flag'".into()],
        ),
        (
            "cli: malformed duration",
            host(&["--lease-ms", "5s"]),
            vec!["'5s'".into(), "--lease-ms".into()],
        ),
        (
            "cli: lease under 3 heartbeats",
            host(&["--lease-ms", "200", "--heartbeat-ms", "100"]),
            vec!["at least 3 heartbeats".into()],
        ),
        (
            "cli: config unknown key",
            host(&["--config", &path("unknown-key.toml")]),
            vec!["unknown-key.toml".into(), "line 3".into(), "`lease`".into()],
        ),
        (
            "cli: config wrong type",
            host(&["--config", &path("wrong-type.toml")]),
            vec![
                "wrong-type.toml".into(),
                "line 2".into(),
                "interval_ms".into(),
            ],
        ),
        (
            "cli: unreadable config file",
            host(&["--config", &path("nope.toml")]),
            vec!["nope.toml".into()],
        ),
        (
            "cli: status of a missing store",
            vec![
                "status".into(),
                "--store".into(),
                format!("sqlite:{missing_store}"),
            ],
            vec![missing_store.clone()],
        ),
        (
            "cli: deploy of a missing file",
            deploy_args(&missing_wasm, "pt"),
            vec![missing_wasm.clone()],
        ),
        (
            "cli: invalid processor name",
            deploy_args(&passthrough, "Bad Name!"),
            vec!["Bad Name!".into()],
        ),
    ];
    let mut all_problems = Vec::new();
    for (scenario, args, needles) in cases {
        let before = common::store_dump(&store_path);
        let out = run_bounded(logstream().args(&args));
        let after = common::store_dump(&store_path);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let refusal = Refusal::of(&out);
        let mut problems = refusal_row(
            scenario,
            &format!(
                "`logstream {}`",
                args.join(" ")
                    .replace(&format!("{}/", dir.path().display()), "")
                    .replace(&passthrough, "passthrough.wasm")
            ),
            1,
            &[(refusal, needles)],
            (&before, &after),
            dir.path(),
        );
        if Path::new(&missing_store).exists() {
            problems.push(format!("{missing_store} was created"));
        }
        all_problems.extend(
            problems
                .into_iter()
                .map(|p| format!("{scenario}: {p} (stderr: {:?})", stderr(&out))),
        );
    }
    assert!(all_problems.is_empty(), "{all_problems:#?}");
}
