//! A host pair with 200 units (issue 14): one processor over a 200-partition
//! input writing a 50-partition output topic (so four units share each
//! output partition, and the host's one tail hub follows each of them for
//! four standbys), two hosts reading through two shared input fetchers
//! each, with a standby memory budget that keeps only some standbys warm.
//! kill -9 of the host leading every unit while records flow; every unit's
//! outputs — warm and cold standbys' alike — must equal an uninterrupted
//! run's. Each host runs its 200 units on a worker pool of 4 core threads,
//! and once idle again holds far fewer threads than units. Real binary,
//! real broker, SQLite store.

mod common;

use common::admin::{admin_address, get};
use common::reliability::Counts;
use common::stderr;
use common::verify;
use common::world::{exclusive, run_local, wait_until, World, RUN_BOUND};
use logstream_host::pipeline::kafka;
use logstream_host::store::checkpoint;
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, RetryPolicy, SqliteStore};

const UNITS: i32 = 200;
const OUTPUT_PARTITIONS: i32 = 50;
/// Records per round (spread over every input partition).
const RECORDS_PER_ROUND: u64 = 4_000;
/// The standby budget: room for some of the 200 standbys, not all.
const STANDBY_MEMORY_MIB: &str = "64";
/// The core of each host's worker pool: far fewer threads than units.
const UNIT_WORKERS: &str = "4";

/// Threads of process `pid` now.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("a thread count in /proc/PID/status")
}

/// The pid of each unit's unreleased leader.
fn leader_pids(store: &SqliteStore) -> Vec<Option<u32>> {
    transact(store, &RetryPolicy::default(), |txn| {
        (0..UNITS)
            .map(|p| read_leader(txn, &format!("pt/{p}")))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .into_iter()
    .map(|r| {
        r.filter(|r| !r.released)
            .and_then(|r| logstream_host::probe::pid_of(&r.holder))
    })
    .collect()
}

/// Whether every unit checkpointed up to its partition's high watermark.
fn all_checkpointed(store: &SqliteStore, highs: &[i64]) -> bool {
    (0..UNITS).all(|p| {
        checkpoint::read_current_meta(store, &format!("pt/{p}"))
            .unwrap()
            .and_then(|m| m.offsets.get(&p).copied())
            == Some(highs[p as usize])
    })
}

#[test]
fn two_hundred_units_fail_over_together_and_match_an_uninterrupted_run() {
    let _exclusive = exclusive();
    let world = World::new("many-units-");
    world.deploy_passthrough("s", UNITS, OUTPUT_PARTITIONS);
    let mut hosts = world.hosts("s");
    hosts.extra_args.extend(
        [
            "--max-units",
            "200",
            "--input-fetchers",
            "2",
            "--standby-memory-mib",
            STANDBY_MEMORY_MIB,
            "--unit-workers",
            UNIT_WORKERS,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let store = SqliteStore::open(world.store_path("s")).unwrap();
    hosts.start("a");
    let a = hosts.pid_of("a");
    wait_until("a to lead all 200 units", || {
        leader_pids(&store).iter().all(|l| *l == Some(a))
    });
    hosts.start("b");
    world.produce("logs", RECORDS_PER_ROUND, UNITS);
    let highs = |world: &World| -> Vec<i64> {
        (0..UNITS)
            .map(|p| {
                kafka::watermarks(&world.broker.address, "logs", p)
                    .unwrap()
                    .1
            })
            .collect()
    };
    let first = highs(&world);
    wait_until("a to checkpoint every unit's first round", || {
        all_checkpointed(&store, &first)
    });
    // b keeps warm standbys within its budget and the rest cold.
    let b_admin = admin_address(&hosts.dir, "b", RUN_BOUND);
    let mut standbys = (0, 0);
    wait_until("b to report every standby warm or cold", || {
        let (_, body) = get(b_admin, "/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let units = status["units"].as_array().unwrap();
        let count = |kind: &str| units.iter().filter(|u| u["standby"] == kind).count();
        standbys = (count("warm"), count("cold"));
        let capacity = &status["capacity"];
        standbys.0 + standbys.1 == UNITS as usize
            && capacity["warm_standbys"] == standbys.0
            && capacity["standby_memory_used_mib"].as_u64().unwrap() <= 64
    });
    let (warm, cold) = standbys;
    assert!(warm > 0 && cold > 0, "{warm} warm and {cold} cold standbys");
    // b's standbys (warm and cold) follow the checkpoints a wrote after b
    // started: b's checkpoint watch tells each unit its checkpoint moved.
    let current: Vec<u64> = (0..UNITS)
        .map(|p| {
            checkpoint::read_current_meta(&store, &format!("pt/{p}"))
                .unwrap()
                .unwrap()
                .generation
        })
        .collect();
    wait_until("b's standbys to reach every unit's checkpoint", || {
        let (_, body) = get(b_admin, "/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["units"].as_array().unwrap().iter().all(|u| {
            let partition = u["partition"].as_u64().unwrap() as usize;
            u["last_checkpoint"]["generation"].as_u64() == Some(current[partition])
        })
    });

    // The second round flows while a is killed.
    let feeder = {
        let brokers = world.broker.address.clone();
        std::thread::spawn(move || {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_logstream"))
                .args(["gen-logs", "--count", &RECORDS_PER_ROUND.to_string()])
                .args(["--partitions", &UNITS.to_string()])
                .args(["--topic", "logs", "--brokers", &brokers])
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    hosts.kill9("a");
    feeder.join().unwrap();
    let b = hosts.pid_of("b");
    wait_until("b to lead all 200 units", || {
        leader_pids(&store).iter().all(|l| *l == Some(b))
    });
    let second = highs(&world);
    wait_until("b to checkpoint every unit's records", || {
        all_checkpointed(&store, &second)
    });
    // b runs its 200 units on its worker pool: once the takeovers and
    // flushes are done, most extra workers they needed end (a few stay
    // busy with the idle units' short steps), and the host holds far fewer
    // threads than units (a thread per unit held 236).
    let mut b_threads = 0;
    wait_until(
        "b's extra unit workers to end once its units are idle",
        || {
            let (_, body) = get(b_admin, "/status").unwrap();
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            b_threads = threads_of(b);
            let workers = status["capacity"]["unit_workers"].as_u64().unwrap() as usize;
            (4..UNITS as usize / 4).contains(&workers) && b_threads < UNITS as usize / 2
        },
    );
    hosts.stop_all();

    let mut counts = Counts::default();
    let mut outputs_by_unit: Vec<Vec<verify::OutputRow>> = vec![Vec::new(); UNITS as usize];
    for partition in 0..OUTPUT_PARTITIONS {
        for record in world.read("pt-out", partition) {
            let id = verify::id_of(&record);
            let unit = id.unit.partition();
            outputs_by_unit[unit as usize]
                .extend(verify::output_rows(vec![record], &id.unit.name()));
        }
    }
    for partition in 0..UNITS {
        let (want, _) = run_local(
            world.dir.path(),
            "passthrough",
            "",
            &world.read("logs", partition),
        );
        let got = &outputs_by_unit[partition as usize];
        counts.add(Counts::of(&want, got));
        assert_eq!(got, &want, "pt/{partition}");
    }
    assert!(counts.clean(), "{}", counts.describe());
    counts.write_row(
        "200 units fail over together",
        "kill -9 of the host leading all 200 units of a processor (200 input partitions into 50 output partitions, 2 input fetchers per host, a 64 MiB standby budget) while 4,000 records flow",
        1,
        &format!("the other host ({warm} warm and {cold} cold standbys, {UNIT_WORKERS} core unit workers, {b_threads} threads once idle) led all 200; every unit's outputs identical to an uninterrupted run"),
    );
}
