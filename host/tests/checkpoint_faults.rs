//! Corrupt checkpoints and incompatible state (issue 6), over a real broker
//! (tansu, sqlite storage), the real SQLite store and real `logstream host`
//! processes running `level-counter` on one partition.
//!
//! Fallback scenarios: host a leads and checkpoints 2,000 records; then the
//! current checkpoint generation is damaged in the store — a flipped byte in
//! a chunk, a missing chunk, or a state that is intact (valid metadata and
//! sha256) but written at a state version the processor refuses to restore.
//! Host b starts as the passive and must find the damage while restoring its
//! standby; host a is killed with kill -9, so b must take over from the
//! store. Then 1,000 more records flow. It must hold: b restored the
//! previous intact generation, reported the bad one on `/metrics`,
//! `/status` and `logstream status` (text and JSON), logged it naming unit,
//! generation and reason, and the output topic and final state equal
//! `logstream run-local` over the same input (nothing lost or duplicated).
//!
//! Redeploy scenario: `logstream deploy` of a module whose state version (2)
//! cannot read the current snapshot (version 1) is refused with the reason,
//! nothing is stored, and the running version keeps running.
//!
//! Each scenario writes its row of docs/reliability.md before asserting.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::admin;
use common::broker::Broker;
use common::hosts::Hosts;
use common::reliability::{Counts, Row};
use common::verify::{self, OutputRow};
use common::{logstream, plugin, run, stderr, stdout};
use logstream_host::pipeline::kafka;
use logstream_host::store::checkpoint::{self, CheckpointMeta, CHUNK_BYTES};
use logstream_host::store::election::read_leader;
use logstream_host::store::registry;
use logstream_host::store::{transact, KvStore, RetryPolicy, SqliteStore};
use sha2::{Digest, Sha256};

/// The unit under test: processor `lc` on input partition 0.
const PROCESSOR: &str = "lc";
const UNIT: &str = "lc/0";
const CONFIG: &str = "every=10";
/// Records per production round.
const ROUND: u64 = 1_000;
/// Liveness bound on every wait (not a performance assertion).
const BOUND: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

/// One pipeline at a time: each runs a broker and two hosts on a machine
/// with few cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logstream"))
}

/// Poll `condition` until it holds, or say what did not happen.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + BOUND;
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {BOUND:?} waiting for {what}"));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn check(ok: bool, problem: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(problem())
    }
}

/// A broker, the store, `lc` deployed and host a leading its unit.
struct Pipeline {
    broker: Broker,
    dir: tempfile::TempDir,
    store_url: String,
    store: SqliteStore,
    hosts: Hosts,
}

impl Pipeline {
    fn start() -> Pipeline {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("store.db");
        let store_url = format!("sqlite:{}", store_path.display());
        kafka::ensure_topics(&broker.address, &[("logs", 1), ("lc-out", 1)]).unwrap();
        let out = run(logstream()
            .arg("deploy")
            .arg(plugin("level_counter"))
            .args([
                "--name", PROCESSOR, "--input", "logs", "--output", "lc-out", "--config", CONFIG,
                "--store", &store_url,
            ]));
        assert!(out.status.success(), "deploy: {}", stderr(&out));
        let mut hosts = Hosts::new(
            binary(),
            store_url.clone(),
            broker.address.clone(),
            dir.path().to_path_buf(),
        );
        hosts.extra_args = vec!["--checkpoint-interval-ms".into(), "200".into()];
        let store = SqliteStore::open(&store_path).unwrap();
        let pipeline = Pipeline {
            broker,
            dir,
            store_url,
            store,
            hosts,
        };
        let mut pipeline = pipeline;
        pipeline.hosts.start("a");
        let a = pipeline.hosts.pid_of("a");
        wait_for("host a to lead lc/0", || {
            pipeline.leader().map(|l| l.1) == Some(a)
        })
        .unwrap();
        pipeline
    }

    /// `ROUND` sample records into partition 0 of `logs`.
    fn produce(&self, seed: u64) {
        let out = run(logstream().args([
            "gen-logs",
            "--count",
            &ROUND.to_string(),
            "--partitions",
            "1",
            "--seed",
            &seed.to_string(),
            "--topic",
            "logs",
            "--brokers",
            &self.broker.address,
        ]));
        assert!(out.status.success(), "gen-logs: {}", stderr(&out));
    }

    /// (epoch, pid) of the unit's unreleased leader.
    fn leader(&self) -> Option<(u64, u32)> {
        transact(&self.store, &RetryPolicy::default(), |txn| {
            read_leader(txn, UNIT)
        })
        .unwrap()
        .filter(|r| !r.released)
        .and_then(|r| Some((r.epoch, logstream_host::probe::pid_of(&r.holder)?)))
    }

    fn checkpointed_offset(&self) -> Option<i64> {
        checkpoint::read_kept_meta(&self.store, UNIT)
            .unwrap()
            .first()
            .and_then(|m| m.offsets.get(&0).copied())
    }

    fn wait_checkpointed(&self, offset: u64) -> Result<(), String> {
        wait_for(&format!("lc/0 to checkpoint offset {offset}"), || {
            self.checkpointed_offset() == Some(offset as i64)
        })
    }

    /// Outputs and final state against run-local over the whole input.
    fn compare(&self) -> Comparison {
        let input = verify::read_partition(&self.broker.address, "logs", 0, BOUND);
        let (want, want_state) = verify::run_local(
            &binary(),
            &plugin("level_counter"),
            CONFIG,
            &input,
            self.dir.path(),
            "expected",
        );
        let got = verify::output_rows(
            verify::read_partition(&self.broker.address, "lc-out", 0, BOUND),
            UNIT,
        );
        let state = checkpoint::read_current(&self.store, UNIT)
            .unwrap()
            .map(|c| c.state)
            .unwrap_or_default();
        Comparison::new(input.len(), want, got, want_state == state)
    }

    fn host_log(&self, id: &str) -> String {
        admin::newest_log(self.dir.path(), id)
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// `logstream status` of the store: (text, JSON).
    fn status(&self) -> (String, serde_json::Value) {
        let text = run(logstream().args(["status", "--store", &self.store_url]));
        assert!(text.status.success(), "status: {}", stderr(&text));
        let json = run(logstream().args(["status", "--json", "--store", &self.store_url]));
        assert!(json.status.success(), "status --json: {}", stderr(&json));
        (stdout(&text), serde_json::from_str(&stdout(&json)).unwrap())
    }
}

/// Outputs against an uninterrupted run.
struct Comparison {
    records: usize,
    outputs: Counts,
    identical: bool,
    state_identical: bool,
}

impl Comparison {
    fn new(
        records: usize,
        want: Vec<OutputRow>,
        got: Vec<OutputRow>,
        state_identical: bool,
    ) -> Self {
        Comparison {
            records,
            outputs: Counts::of(&want, &got),
            identical: got == want,
            state_identical,
        }
    }

    fn problem(&self) -> Option<String> {
        (!self.identical || !self.state_identical).then(|| {
            format!(
                "DIFFERS: {} lost, {} duplicated, {} unexpected outputs; final state {}",
                self.outputs.lost,
                self.outputs.duplicated,
                self.outputs.unexpected,
                if self.state_identical {
                    "identical"
                } else {
                    "differs"
                }
            )
        })
    }
}

// ---------------------------------------------------------------- faults

/// Damage done to the current generation, and what must be reported.
struct Fault {
    scenario: &'static str,
    /// For the reliability table.
    what: &'static str,
    /// `corrupt` or `refused`, as `/status` and `logstream status` say.
    fault: &'static str,
    /// In the reason the host logs and reports.
    reason: &'static str,
    inject: fn(&SqliteStore, &CheckpointMeta),
}

fn raw(store: &SqliteStore, body: impl FnOnce(&mut dyn logstream_host::store::KvTxn)) {
    let mut txn = store.begin().unwrap();
    body(&mut *txn);
    txn.commit().unwrap();
}

fn flip_a_byte(store: &SqliteStore, current: &CheckpointMeta) {
    raw(store, |txn| {
        let key = checkpoint::chunk_key(UNIT, current.generation, 0);
        let mut chunk = txn.get(&key).unwrap().expect("chunk 0 exists");
        let middle = chunk.len() / 2;
        chunk[middle] ^= 0x20;
        txn.set(&key, &chunk).unwrap();
    });
}

fn remove_a_chunk(store: &SqliteStore, current: &CheckpointMeta) {
    raw(store, |txn| {
        let last = current.chunk_count - 1;
        txn.clear(&checkpoint::chunk_key(UNIT, current.generation, last))
            .unwrap();
    });
}

/// The state version [`rewrite_at_a_foreign_state_version`] claims.
const FOREIGN_STATE_VERSION: u32 = 99;

/// Replace the generation's state by the same payload under another SDK
/// state version, with metadata (size, sha256, state version, checksum)
/// that matches: intact to the store, refused by the processor's restore.
fn rewrite_at_a_foreign_state_version(store: &SqliteStore, current: &CheckpointMeta) {
    raw(store, |txn| {
        let gen = current.generation;
        let mut state = Vec::new();
        for index in 0..current.chunk_count {
            state.extend(
                txn.get(&checkpoint::chunk_key(UNIT, gen, index))
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(&state[..4], b"LSS1", "an SDK snapshot");
        state[4..8].copy_from_slice(&FOREIGN_STATE_VERSION.to_le_bytes());
        for index in 0..current.chunk_count {
            txn.clear(&checkpoint::chunk_key(UNIT, gen, index)).unwrap();
        }
        for (index, chunk) in state.chunks(CHUNK_BYTES).enumerate() {
            txn.set(&checkpoint::chunk_key(UNIT, gen, index as u64), chunk)
                .unwrap();
        }
        let meta = CheckpointMeta {
            state_version: FOREIGN_STATE_VERSION,
            size_bytes: state.len() as u64,
            chunk_count: state.len().div_ceil(CHUNK_BYTES) as u64,
            sha256: hex::encode(Sha256::digest(&state)),
            ..current.clone()
        };
        txn.set(
            &checkpoint::meta_key(UNIT, gen),
            &checkpoint::encode_meta(&meta),
        )
        .unwrap();
    });
    // Intact as far as the store can tell.
    let read = checkpoint::read_current(store, UNIT).unwrap().unwrap();
    assert_eq!(read.meta.generation, current.generation);
    assert!(read.corrupt_generations.is_empty());
}

/// What the scenario observed, for its row and its assertions.
#[derive(Default)]
struct Evidence {
    bad: u64,
    previous: u64,
}

/// The fallback scenario of `fault` (see the module docs).
fn fallback_scenario(fault: Fault) {
    let _exclusive = exclusive();
    let mut pipeline = Pipeline::start();
    let mut evidence = Evidence::default();
    let steps = (|| -> Result<(), String> {
        pipeline.produce(1);
        pipeline.wait_checkpointed(ROUND)?;
        pipeline.produce(2);
        pipeline.wait_checkpointed(2 * ROUND)?;
        let kept = checkpoint::read_kept_meta(&pipeline.store, UNIT).unwrap();
        check(kept.len() >= 2, || {
            format!("only {} generations kept", kept.len())
        })?;
        let (current, previous) = (&kept[0], &kept[1]);
        evidence.bad = current.generation;
        evidence.previous = previous.generation;
        eprintln!(
            "damaging generation {} (next offset {:?}); the previous is {} (next offset {:?})",
            current.generation, current.offsets, previous.generation, previous.offsets
        );
        (fault.inject)(&pipeline.store, current);

        // The passive finds it while restoring its standby.
        pipeline.hosts.start("b");
        let b = admin::admin_address(pipeline.dir.path(), "b", BOUND);
        let family = "logstream_corrupt_checkpoints_total";
        let corrupt_count = || {
            admin::get(b, "/metrics")
                .ok()
                .and_then(|(_, body)| admin::unit_sample(&body, family, PROCESSOR, 0))
        };
        wait_for("host b to count the bad generation", || {
            corrupt_count() == Some(1.0)
        })?;
        let (_, body) = admin::get(b, "/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let unit = &status["units"][0];
        check(unit["name"] == UNIT && unit["role"] == "passive", || {
            format!("unexpected /status of b: {unit}")
        })?;
        let listed = &unit["corrupt_checkpoints"];
        check(
            listed.as_array().map(Vec::len) == Some(1)
                && listed[0]["generation"] == current.generation
                && listed[0]["fault"] == fault.fault
                && listed[0]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(fault.reason)),
            || format!("/status of b lists {listed}"),
        )?;
        check(
            unit["last_checkpoint"]["generation"] == previous.generation,
            || format!("b's standby is not at the previous generation: {unit}"),
        )?;

        // ... and says so in the store, for `logstream status`.
        let (text, json) = pipeline.status();
        let reported = &json["processors"][0]["units"][0]["corrupt_checkpoints"];
        check(
            reported.as_array().map(Vec::len) == Some(1)
                && reported[0]["generation"] == current.generation
                && reported[0]["fault"] == fault.fault
                && reported[0]["host_id"] == "b"
                && reported[0]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(fault.reason)),
            || format!("logstream status --json reports {reported}"),
        )?;
        let verb = if fault.fault == "corrupt" {
            "is corrupt"
        } else {
            "was refused by the processor"
        };
        let line = format!(
            "! {UNIT} checkpoint generation {} {verb} (found by host b): ",
            current.generation
        );
        check(text.contains(&line), || {
            format!("logstream status says:\n{text}")
        })?;

        // Host a dies: b must take over from the store's checkpoints.
        let (old_epoch, _) = pipeline.leader().ok_or("no leader")?;
        pipeline.hosts.kill9("a");
        let b_pid = pipeline.hosts.pid_of("b");
        wait_for("host b to take lc/0 over", || {
            pipeline
                .leader()
                .is_some_and(|(epoch, pid)| epoch > old_epoch && pid == b_pid)
        })?;
        pipeline.produce(3);
        pipeline.wait_checkpointed(3 * ROUND)?;

        let log = pipeline.host_log("b");
        let restored = format!("(generation Some({}))", previous.generation);
        check(
            log.lines()
                .any(|l| l.contains("takeover phases: restore") && l.contains(&restored)),
            || {
                format!(
                    "b did not take over from generation {}:\n{log}",
                    previous.generation
                )
            },
        )?;
        let logged = format!(
            "checkpoint generation {} of processor \"{UNIT}\" {verb}: ",
            current.generation
        );
        check(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains(&logged) && l.contains(fault.reason)),
            || {
                format!(
                    "b did not log the bad generation ({logged}… {}):\n{log}",
                    fault.reason
                )
            },
        )?;
        // Counted once, though the takeover could have met it again.
        check(corrupt_count() == Some(1.0), || {
            format!("b counts {:?} bad generations", corrupt_count())
        })?;
        Ok(())
    })();
    pipeline.hosts.stop_all();
    let comparison = pipeline.compare();
    let outcome = match (&steps, comparison.problem()) {
        (Err(problem), _) => format!("FAILED: {problem}"),
        (Ok(()), Some(differs)) => differs,
        (Ok(()), None) => format!(
            "generation {} {} and reported (/metrics, /status, logstream status); the new active restored generation {}; outputs and final state identical to an uninterrupted run",
            evidence.bad,
            if fault.fault == "corrupt" {
                "found corrupt"
            } else {
                "refused by restore()"
            },
            evidence.previous
        ),
    };
    Row {
        scenario: fault.scenario,
        injected: &format!(
            "{} while host a leads lc/0 (level-counter); host b started, then host a killed with kill -9; {} records",
            fault.what, comparison.records
        ),
        times: 1,
        outcome: &outcome,
        lost: comparison.outputs.lost,
        out_of: comparison.outputs.out_of,
        duplicated: comparison.outputs.duplicated,
    }
    .write();
    if let Err(problem) = steps {
        panic!("{problem}\nhost b's log:\n{}", pipeline.host_log("b"));
    }
    assert_eq!(comparison.records as u64, 3 * ROUND);
    assert!(
        comparison.identical,
        "outputs differ from run-local: {outcome}"
    );
    assert!(
        comparison.state_identical,
        "the final state differs from run-local"
    );
}

#[test]
fn a_flipped_byte_in_the_current_checkpoint_falls_back_to_the_previous() {
    fallback_scenario(Fault {
        scenario: "corrupt checkpoint: flipped byte",
        what: "one byte of the current checkpoint generation's chunk flipped in the store",
        fault: "corrupt",
        reason: "its sha256 is",
        inject: flip_a_byte,
    });
}

#[test]
fn a_missing_chunk_of_the_current_checkpoint_falls_back_to_the_previous() {
    fallback_scenario(Fault {
        scenario: "corrupt checkpoint: missing chunk",
        what: "the last chunk of the current checkpoint generation deleted from the store",
        fault: "corrupt",
        reason: "is missing",
        inject: remove_a_chunk,
    });
}

#[test]
fn a_state_the_processor_refuses_falls_back_to_the_previous() {
    fallback_scenario(Fault {
        scenario: "checkpoint refused by restore()",
        what: "the current checkpoint generation rewritten intact (metadata, sha256) at state version 99, which the processor cannot restore",
        fault: "refused",
        reason: "no migration from version 99",
        inject: rewrite_at_a_foreign_state_version,
    });
}

#[test]
fn a_redeploy_with_an_incompatible_state_version_is_refused_and_the_old_version_keeps_running() {
    let _exclusive = exclusive();
    let mut pipeline = Pipeline::start();
    let mut refusal = String::new();
    let steps = (|| -> Result<(), String> {
        pipeline.produce(1);
        pipeline.wait_checkpointed(ROUND)?;
        let before = registry::get_spec(&pipeline.store, PROCESSOR)
            .unwrap()
            .unwrap();
        let leader = pipeline.leader().ok_or("no leader")?;
        // The generation the refusal names: the current one (the unit
        // checkpoints only when records flow, and none do now).
        let current = checkpoint::read_current_meta(&pipeline.store, UNIT)
            .unwrap()
            .ok_or("no checkpoint")?
            .generation;
        let names_generation = format!("(checkpoint generation {current}, state version 1)");

        let out = run(logstream().arg("deploy").arg(plugin("state_v2")).args([
            "--name",
            PROCESSOR,
            "--input",
            "logs",
            "--output",
            "lc-out",
            "--config",
            CONFIG,
            "--store",
            &pipeline.store_url,
        ]));
        // The component's path is this machine's: the table names the file.
        let component = plugin("state_v2").display().to_string();
        refusal = stderr(&out).trim().replace(&component, "state_v2.wasm");
        check(!out.status.success(), || {
            format!("the deploy succeeded: {}", stdout(&out))
        })?;
        check(refusal.lines().count() == 1, || {
            format!("not one line: {refusal}")
        })?;
        // A sentence, not the bindings' debug form.
        check(!refusal.contains("ProcessorError"), || {
            format!("unclear: {refusal}")
        })?;
        for needed in [
            "was not deployed",
            "refuses the state of lc/0",
            &names_generation,
            "incompatible state (the snapshot has state version 1, this module reads state version 2): \
             this module reads state version 2 and has no migration from version 1",
            "the deployed version keeps running",
        ] {
            check(refusal.contains(needed), || format!("{needed:?} missing from: {refusal}"))?;
        }
        let after = registry::get_spec(&pipeline.store, PROCESSOR)
            .unwrap()
            .unwrap();
        check(after == before, || {
            format!("the spec changed: {before:?} -> {after:?}")
        })?;

        // The old version keeps running, without a handover.
        pipeline.produce(2);
        pipeline.wait_checkpointed(2 * ROUND)?;
        check(pipeline.leader() == Some(leader), || {
            format!("the leader changed: {leader:?} -> {:?}", pipeline.leader())
        })?;
        let current = checkpoint::read_kept_meta(&pipeline.store, UNIT).unwrap();
        check(current[0].state_version == 1, || {
            format!("state version {} was written", current[0].state_version)
        })?;
        Ok(())
    })();
    pipeline.hosts.stop_all();
    let comparison = pipeline.compare();
    let outcome = match (&steps, comparison.problem()) {
        (Err(problem), _) => format!("FAILED: {problem}"),
        (Ok(()), Some(differs)) => differs,
        (Ok(()), None) => format!(
            "refused (`{}`); the old version kept running: outputs and final state identical to an uninterrupted run",
            refusal.replace('|', "\\|")
        ),
    };
    Row {
        scenario: "redeploy with an incompatible state version",
        injected: &format!(
            "`logstream deploy` of state-v2 (state version 2, no migration) over level-counter's version-1 state while host a leads; {} records",
            comparison.records
        ),
        times: 1,
        outcome: &outcome,
        lost: comparison.outputs.lost,
        out_of: comparison.outputs.out_of,
        duplicated: comparison.outputs.duplicated,
    }
    .write();
    if let Err(problem) = steps {
        panic!("{problem}\nhost a's log:\n{}", pipeline.host_log("a"));
    }
    assert_eq!(comparison.records as u64, 2 * ROUND);
    assert!(
        comparison.identical,
        "outputs differ from run-local: {outcome}"
    );
    assert!(
        comparison.state_identical,
        "the final state differs from run-local"
    );
}
