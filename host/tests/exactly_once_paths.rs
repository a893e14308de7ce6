//! Exactly-once on the paths beside the default one (issue 11), each with
//! the real binary, the real broker (tansu) and the SQLite store:
//! - an output to a topic the processor was not deployed with is that
//!   record's failure (dead-lettered with the topic named), never produced;
//! - a redeploy that changes the input or the default output topic is
//!   refused with the store untouched, unless `--reset` starts the
//!   processor over, which then equals an uninterrupted run from the start;
//! - one processor that cannot start never keeps another from running;
//! - a new processor over an output topic that already holds 200,000
//!   records starts without reading them;
//! - two deployments sharing one broker, topics and processor names never
//!   fence or suppress each other;
//! - a processor over another's output topic skips the upstream's fence
//!   records and equals an uninterrupted run.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::broker::Broker;
use common::reliability::{Counts, Row};
use common::verify;
use common::world::{
    deploy, exclusive, run_local, wait_for_checkpoint, wait_until, World, RUN_BOUND,
};
use common::{plugin, stderr, stdout};
use logstream_host::pipeline::kafka;
use logstream_host::record::LogRecord;
use logstream_host::store::SqliteStore;
use logstream_host::store::{checkpoint, registry};

#[test]
fn an_output_to_an_undeclared_topic_is_dead_lettered_and_never_produced() {
    let _exclusive = exclusive();
    let world = World::new("undeclared-topic-");
    kafka::ensure_topics(
        &world.broker.address,
        &[("logs", 1), ("lc-out", 1), ("lc-alerts", 1)],
    )
    .unwrap();
    // Routes error records to lc-alerts, but is deployed without it.
    let out = deploy(
        "level_counter",
        &[
            "--name",
            "lc",
            "--input",
            "logs",
            "--output",
            "lc-out",
            "--config",
            "every=50,alerts=lc-alerts",
            "--store",
            &world.store_url("s"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hosts = world.hosts("s");
    hosts.start("a");
    world.produce("logs", 2_000, 1);
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    wait_for_checkpoint(&store, "lc/0", 0, 2_000);
    hosts.stop_all();

    let input = world.read("logs", 0);
    // run-local with the same declared topics refuses the same records the
    // same way: every error-level record, its reason naming the topic.
    let local = common::records::run_local_exact(
        Path::new(env!("CARGO_BIN_EXE_logstream")),
        &plugin("level_counter"),
        "every=50,alerts=lc-alerts",
        &["--output", "lc-out"],
        &input,
        world.dir.path(),
        "lc-undeclared",
    );
    // (Besides the records the processor rejects itself: sample lines that
    // are not JSON.)
    let routed: Vec<_> = local
        .dead_letters
        .iter()
        .filter(|d| d.reason.starts_with("failed:"))
        .collect();
    assert!(!routed.is_empty());
    for dead in &routed {
        assert!(
            dead.reason
                .contains("to topic \"lc-alerts\", which it was not deployed to write to"),
            "{}",
            dead.reason
        );
    }
    assert!(
        world.read("lc-alerts", 0).is_empty(),
        "an undeclared topic got outputs"
    );
    let dead = common::records::dead_letters_of(&world.read("lc.dlq", 0), "lc/0");
    assert_eq!(
        dead, local.dead_letters,
        "dead letters differ from run-local's refusals"
    );
    let errors = routed.len();
    // The failed records were not counted: outputs and state equal
    // run-local's.
    let (want, want_state) = run_local(
        world.dir.path(),
        "level_counter",
        "every=50,alerts=lc-alerts",
        &input,
    );
    let got = verify::output_rows(world.read("lc-out", 0), "lc/0");
    assert_eq!(got, want);
    let state = checkpoint::read_current(&store, "lc/0")
        .unwrap()
        .unwrap()
        .state;
    assert!(state == want_state, "final state differs from run-local");
    Row {
        scenario: "output to an undeclared topic",
        injected: "level-counter routes error records to lc-alerts, deployed with --output lc-out only; 2000 records",
        times: errors,
        outcome: "each such record dead-lettered with the topic named; nothing produced to lc-alerts; outputs and state identical to run-local",
        lost: 0,
        out_of: want.len(),
        duplicated: 0,
    }
    .write();
}

#[test]
fn a_redeploy_that_changes_a_topic_is_refused_unless_reset_starts_over() {
    let _exclusive = exclusive();
    let world = World::new("redeploy-topics-");
    kafka::ensure_topics(
        &world.broker.address,
        &[
            ("logs", 1),
            ("logs2", 1),
            ("pt-out", 1),
            ("pt-out2", 1),
            ("pt-extra", 1),
        ],
    )
    .unwrap();
    let url = world.store_url("s");
    let pt = |args: &[&str]| {
        let mut all = vec!["--name", "pt", "--store", &url];
        all.extend_from_slice(args);
        deploy("passthrough", &all)
    };
    let out = pt(&["--input", "logs", "--output", "pt-out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hosts = world.hosts("s");
    hosts.start("a");
    world.produce("logs", 1_000, 1);
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    wait_for_checkpoint(&store, "pt/0", 0, 1_000);

    // Changing the input or the default output topic: refused, one
    // sentence, nothing stored.
    // (The running host heartbeats and checkpoints, so compare what a
    // deploy writes: the registry.)
    let registry = || {
        (
            registry::registry_version(&store).unwrap(),
            registry::list_specs(&store).unwrap(),
        )
    };
    let before = registry();
    for (args, named) in [
        (&["--input", "logs2", "--output", "pt-out"][..], "logs2"),
        (&["--input", "logs", "--output", "pt-out2"][..], "pt-out2"),
    ] {
        let out = pt(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let message = stderr(&out);
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(
            message.contains(named) && message.contains("--reset"),
            "{message}"
        );
        assert_eq!(registry(), before, "{args:?} changed the registry");
    }
    // Adding a routed topic keeps the state lineage.
    let out = pt(&[
        "--input", "logs", "--output", "pt-out", "--output", "pt-extra",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // --reset: a new lineage, from empty state at the start of the new
    // input, writing to the new output topic.
    world.produce("logs2", 700, 1);
    let out = pt(&["--input", "logs2", "--output", "pt-out2", "--reset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("reset: state lineage 2"),
        "{}",
        stdout(&out)
    );
    wait_for_checkpoint(&store, "pt/0", 0, 700);
    hosts.stop_all();
    let input = world.read("logs2", 0);
    let (want, want_state) = run_local(world.dir.path(), "passthrough", "", &input);
    let got = verify::output_rows(world.read("pt-out2", 0), "pt/0");
    let counts = Counts::of(&want, &got);
    let state = checkpoint::read_current(&store, "pt/0")
        .unwrap()
        .unwrap()
        .state;
    Row {
        scenario: "redeploy with a changed topic",
        injected: "redeploy of a running processor with another input topic, then another output topic (refused); then with --reset",
        times: 2,
        outcome: if counts.clean() && state == want_state {
            "refused with one sentence, registry unchanged; after --reset, outputs and state identical to an uninterrupted run over the new input"
        } else {
            "DIFFERS after --reset"
        },
        lost: counts.lost,
        out_of: counts.out_of,
        duplicated: counts.duplicated,
    }
    .write();
    assert_eq!(got, want);
    assert!(
        state == want_state,
        "state after --reset differs from run-local"
    );
}

#[test]
fn a_processor_that_cannot_start_never_blocks_the_others() {
    let _exclusive = exclusive();
    let world = World::new("broken-beside-healthy-");
    kafka::ensure_topics(
        &world.broker.address,
        &[("logs", 1), ("pt-out", 1), ("lc-out", 1), ("rd-out", 1)],
    )
    .unwrap();
    let url = world.store_url("s");
    // lc reads a topic that does not exist yet; rd's stored module gets
    // damaged; pt is healthy.
    for (component, name, input, output) in [
        ("level_counter", "lc", "later", "lc-out"),
        ("redactor", "rd", "logs", "rd-out"),
        ("passthrough", "pt", "logs", "pt-out"),
    ] {
        let out = deploy(
            component,
            &[
                "--name", name, "--input", input, "--output", output, "--store", &url,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    let rd_module = registry::get_spec(&store, "rd")
        .unwrap()
        .unwrap()
        .module_sha256;
    damage_module(&store, &rd_module);
    let mut hosts = world.hosts("s");
    hosts.start("a");
    world.produce("logs", 500, 1);
    wait_for_checkpoint(&store, "pt/0", 0, 500);
    let admin = common::admin::admin_address(&hosts.dir, "a", RUN_BOUND);
    let (code, body) = common::admin::get(admin, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("could not start on this host"), "{body}");
    let (_, status) = common::admin::get(admin, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let failed: Vec<(String, String)> = status["failed_processors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["processor"].as_str().unwrap().into(),
                f["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0].0 == "lc" && failed[0].1.contains("later"),
        "{failed:?}"
    );
    assert!(
        failed[1].0 == "rd" && failed[1].1.contains("corrupt"),
        "{failed:?}"
    );
    // Once its topic exists, lc starts on the next retry; deploying rd's
    // module again stores its bytes again, and rd starts too.
    kafka::ensure_topics(&world.broker.address, &[("later", 1)]).unwrap();
    world.produce("later", 300, 1);
    let out = deploy(
        "redactor",
        &[
            "--name", "rd", "--input", "logs", "--output", "rd-out", "--store", &url,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for_checkpoint(&store, "lc/0", 0, 300);
    wait_for_checkpoint(&store, "rd/0", 0, 500);
    let (code, body) = common::admin::get(admin, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    hosts.stop_all();
    let got = verify::output_rows(world.read("pt-out", 0), "pt/0");
    let (want, _) = run_local(world.dir.path(), "passthrough", "", &world.read("logs", 0));
    let counts = Counts::of(&want, &got);
    counts.write_row(
        "broken processors beside a healthy one",
        "beside a healthy processor, one whose stored module is damaged and one over a missing input topic; then the module deployed again and the topic created",
        2,
        "the healthy one ran from the start (outputs identical to run-local); the broken ones were reported in /readyz and /status, and started once repaired",
    );
    assert_eq!(got, want);
}

/// Flip a byte of the first chunk of a stored module.
fn damage_module(store: &SqliteStore, sha256: &str) {
    use logstream_host::store::{keys, transact, RetryPolicy};
    let chunk = keys::module(sha256).pack(&0u64);
    transact(store, &RetryPolicy::default(), |txn| {
        let mut bytes = txn.get(&chunk)?.expect("the module's first chunk");
        bytes[100] ^= 0xff;
        txn.set(&chunk, &bytes)?;
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_new_processor_over_a_long_output_topic_starts_without_reading_it() {
    let _exclusive = exclusive();
    const ALREADY: u64 = 200_000;
    let world = World::new("long-tail-");
    kafka::ensure_topics(&world.broker.address, &[("logs", 1), ("pt-out", 1)]).unwrap();
    // Someone else's 200,000 records already on the output topic.
    world.produce("pt-out", ALREADY, 1);
    let out = deploy(
        "passthrough",
        &[
            "--name",
            "pt",
            "--input",
            "logs",
            "--output",
            "pt-out",
            "--store",
            &world.store_url("s"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hosts = world.hosts("s");
    hosts.start("a");
    hosts.start("b");
    world.produce("logs", 1_000, 1);
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    wait_for_checkpoint(&store, "pt/0", 0, 1_000);
    hosts.kill9("a");
    hosts.kill9("b");
    hosts.start("a");
    world.produce("logs", 1_000, 1);
    wait_for_checkpoint(&store, "pt/0", 0, 2_000);
    hosts.stop_all();
    let all = world.read("pt-out", 0);
    assert_eq!(all.len() as u64, ALREADY + 2_000);
    let got = verify::output_rows(all[ALREADY as usize..].to_vec(), "pt/0");
    let (want, _) = run_local(world.dir.path(), "passthrough", "", &world.read("logs", 0));
    let counts = Counts::of(&want, &got);
    counts.write_row(
        "long output topic at takeover",
        "a new processor over an output topic already holding 200,000 records of another producer; both hosts killed and one restarted",
        1,
        "started at once (its first takeover marks the topic's end); outputs identical to an uninterrupted run",
    );
    assert_eq!(got, want);
}

#[test]
fn two_deployments_on_one_broker_never_interfere() {
    let _exclusive = exclusive();
    let world = World::new("two-deployments-");
    kafka::ensure_topics(&world.broker.address, &[("logs", 2), ("pt-out", 2)]).unwrap();
    // The same processor name over the same topics, in two deployments
    // (two stores).
    let mut fleets = Vec::new();
    for store in ["one", "two"] {
        let out = deploy(
            "passthrough",
            &[
                "--name",
                "pt",
                "--input",
                "logs",
                "--output",
                "pt-out",
                "--store",
                &world.store_url(store),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let mut hosts = world.hosts(store);
        hosts.start("a");
        hosts.start("b");
        fleets.push(hosts);
    }
    let producer = {
        let brokers = world.broker.address.clone();
        std::thread::spawn(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_logstream"))
                .args(["gen-logs", "--count", "20000", "--partitions", "2"])
                .args(["--topic", "logs", "--brokers", &brokers])
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
        })
    };
    // Each deployment fails over a few times while both run.
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let hosts = &mut fleets[round % 2];
        hosts.kill9("a");
        hosts.start("a");
    }
    producer.join().unwrap();
    let stores: Vec<SqliteStore> = ["one", "two"]
        .iter()
        .map(|s| SqliteStore::open(world.store_path(s)).unwrap())
        .collect();
    let deployments: Vec<String> = stores
        .iter()
        .map(|s| {
            logstream_host::store::deployment::read(s)
                .unwrap()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(deployments[0], deployments[1]);
    for store in &stores {
        for partition in 0..2 {
            let high = kafka::watermarks(&world.broker.address, "logs", partition)
                .unwrap()
                .1;
            wait_for_checkpoint(store, &format!("pt/{partition}"), partition, high);
        }
    }
    for hosts in &mut fleets {
        hosts.stop_all();
    }
    let mut counts = Counts::default();
    for partition in 0..2 {
        let (want, _) = run_local(
            world.dir.path(),
            "passthrough",
            "",
            &world.read("logs", partition),
        );
        let produced = world.read("pt-out", partition);
        for deployment in &deployments {
            let ours: Vec<LogRecord> = produced
                .iter()
                .filter(|r| &verify::id_of(r).deployment == deployment)
                .cloned()
                .collect();
            let got = verify::output_rows(ours, &format!("pt/{partition}"));
            counts.add(Counts::of(&want, &got));
            assert_eq!(got, want, "deployment {deployment}, partition {partition}");
        }
    }
    Row {
        scenario: "two deployments on one broker",
        injected: "two deployments (two stores) run the same processor name over the same topics; kill -9 in each, 3 times; 20000 records",
        times: 3,
        outcome: "each deployment's outputs identical to an uninterrupted run; neither fenced nor suppressed the other's",
        lost: counts.lost,
        out_of: counts.out_of,
        duplicated: counts.duplicated,
    }
    .write();
}

/// `count` sample records onto `topic` of the broker at `brokers`.
fn produce_to(brokers: &str, topic: &str, count: u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args([
            "gen-logs",
            "--count",
            &count.to_string(),
            "--partitions",
            "1",
        ])
        .args(["--topic", topic, "--brokers", brokers])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

/// A processor's hosts pointed at another Kafka cluster whose topics have
/// the same names (a migration, or topics deleted and created again): the
/// input's offsets start over below the checkpoint's. (tansu 0.6.0 cannot
/// delete one topic: its `topic_delete_by.sql` removes every topic of the
/// cluster, so a new broker stands in for recreated topics.)
#[test]
fn an_input_topic_that_starts_over_stops_the_unit_until_a_reset() {
    let _exclusive = exclusive();
    let world = World::new("recreated-topic-");
    kafka::ensure_topics(&world.broker.address, &[("logs", 1), ("pt-out", 1)]).unwrap();
    let url = world.store_url("s");
    let pt = |reset: bool| {
        let mut args = vec![
            "--name", "pt", "--input", "logs", "--output", "pt-out", "--store", &url,
        ];
        if reset {
            args.push("--reset");
        }
        let out = deploy("passthrough", &args);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    pt(false);
    let mut hosts = world.hosts("s");
    hosts.start("a");
    world.produce("logs", 1_000, 1);
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    wait_for_checkpoint(&store, "pt/0", 0, 1_000);
    hosts.stop_all();

    let other = Broker::start();
    kafka::ensure_topics(&other.address, &[("logs", 1), ("pt-out", 1)]).unwrap();
    produce_to(&other.address, "logs", 300);
    hosts.brokers = other.address.clone();
    hosts.start("a");
    let admin = common::admin::admin_address(&hosts.dir, "a", RUN_BOUND);
    wait_until("pt/0 to refuse the input that starts over", || {
        let (_, status) = common::admin::get(admin, "/status").unwrap();
        status.contains("the topic was deleted and recreated")
    });
    let read = |topic| verify::read_partition(&other.address, topic, 0, RUN_BOUND);
    assert!(
        read("pt-out").is_empty(),
        "outputs were produced from the new input"
    );
    pt(true);
    wait_for_checkpoint(&store, "pt/0", 0, 300);
    hosts.stop_all();
    let got = verify::output_rows(read("pt-out"), "pt/0");
    let (want, _) = run_local(world.dir.path(), "passthrough", "", &read("logs"));
    let counts = Counts::of(&want, &got);
    counts.write_row(
        "input topic that starts over",
        "the hosts pointed at a cluster whose input topic's offsets start below the checkpoint's (as after deleting and creating the topic again), then a deploy with --reset",
        1,
        "the unit refused to lead (failed, in /status: deploy with --reset), producing nothing; after --reset, outputs identical to an uninterrupted run over the new topic",
    );
    assert_eq!(got, want);
}

/// Processors whose input is another's output topic (`logs` → `pt` →
/// `pt-out`, read by `pt2` (passthrough) and `lc` (level-counter)), both
/// hosts killed in turn while records arrive: every takeover of the
/// upstream unit leaves a fence record in `pt-out` (consumers skip them by
/// their `logstream-fence` header), and the downstream units skip them too
/// — their outputs equal an uninterrupted run over the upstream's data
/// records (a fence record taken for data would be passed through by
/// `pt2`).
#[test]
fn processors_over_another_processors_output_skip_its_fence_records() {
    let _exclusive = exclusive();
    const ROUNDS: u64 = 4;
    const PER_ROUND: u64 = 5_000;
    let world = World::new("chained-");
    kafka::ensure_topics(
        &world.broker.address,
        &[("logs", 1), ("pt-out", 1), ("pt2-out", 1), ("lc-out", 1)],
    )
    .unwrap();
    let store_url = world.store_url("s");
    let downstream = [
        ("passthrough", "pt2", "pt2-out", ""),
        ("level_counter", "lc", "lc-out", "every=100"),
    ];
    let upstream = ("passthrough", "pt", "logs", "pt-out", "");
    for (component, name, input, output, config) in [upstream].into_iter().chain(
        downstream
            .iter()
            .map(|&(component, name, output, config)| (component, name, "pt-out", output, config)),
    ) {
        let out = deploy(
            component,
            &[
                "--name", name, "--input", input, "--output", output, "--config", config,
                "--store", &store_url,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut hosts = world.hosts("s");
    hosts.start("a");
    hosts.start("b");
    for round in 0..ROUNDS {
        world.produce("logs", PER_ROUND, 1);
        std::thread::sleep(Duration::from_millis(400));
        let victim = if round % 2 == 0 { "a" } else { "b" };
        hosts.kill9(victim);
        hosts.start(victim);
    }
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    wait_for_checkpoint(&store, "pt/0", 0, (ROUNDS * PER_ROUND) as i64);
    let data = world.read("pt-out", 0);
    assert_eq!(data.len() as u64, ROUNDS * PER_ROUND);
    let (_, high) = kafka::watermarks(&world.broker.address, "pt-out", 0).unwrap();
    let fences = high - data.len() as i64;
    assert!(
        fences >= 1,
        "the upstream's takeovers left fence records in pt-out"
    );
    let mut counts = Counts::default();
    let mut mismatched = Vec::new();
    for (component, name, output, config) in downstream {
        let (want, _) = run_local(world.dir.path(), component, config, &data);
        wait_until(&format!("{name} to emit every output"), || {
            world.read(output, 0).len() >= want.len()
        });
        let got = verify::output_rows(world.read(output, 0), &format!("{name}/0"));
        // A fence record taken for data: an output (it has an id) that
        // still carries the fence header (passthrough copies headers).
        let passed_on = verify::read_partition_raw(&world.broker.address, output, 0, RUN_BOUND)
            .iter()
            .filter(|r| {
                kafka::is_fence_record(r) && r.headers.iter().any(|h| h.key == kafka::ID_HEADER)
            })
            .count();
        assert_eq!(passed_on, 0, "{name} processed fence records as data");
        counts.add(Counts::of(&want, &got));
        if got != want {
            mismatched.push(name);
        }
    }
    hosts.stop_all();
    counts.write_row(
        "chained processors",
        &format!("two processors over a third's output topic; kill -9 of each host in turn, {ROUNDS} times, {} records; {fences} fence records in the upstream's output", ROUNDS * PER_ROUND),
        ROUNDS as usize,
        "fence records skipped; outputs identical to an uninterrupted run over the upstream's data",
    );
    assert!(mismatched.is_empty(), "outputs differ: {mismatched:?}");
}
