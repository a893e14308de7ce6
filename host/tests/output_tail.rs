//! The host's output tail hub against the real broker, while records keep
//! arriving: catch-ups from several threads at once, rebases to new marks
//! and back to older ones (a re-read); every catch-up returns exactly the
//! ids between its mark and the high watermark it was given — none missing,
//! none from below a mark — through the hub's two lanes together, and
//! through its express lane alone.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::Broker;
use logstream_host::pipeline::kafka::{ensure_topics, watermarks, Outgoing, OutputProducer};
use logstream_host::pipeline::tail::{
    FollowFrom, Lanes, OutputTail, TailHub, EXPRESS_MAX_PARTITIONS,
};

const TOPIC: &str = "tail-out";
/// Output partitions, one unit following each.
const PARTITIONS: i32 = 12;
/// Records written to each partition while the catch-ups run.
const ROUNDS: usize = 150;
/// Catch-ups each checking thread runs.
const CATCH_UPS_PER_THREAD: usize = 40;
const CHECKING_THREADS: i32 = 3;

/// The id of the `n`th record of `partition`: every partition holds only
/// its unit's records, so record `n` sits at offset `n`.
fn id(partition: i32, n: i64) -> String {
    format!("u{partition}/{n}")
}

/// The ids a catch-up from `mark` to `high` must return.
fn expected(partition: i32, mark: i64, high: i64) -> HashSet<String> {
    (mark..high).map(|n| id(partition, n)).collect()
}

fn produce_rounds(brokers: &str, stop: &AtomicBool) {
    // The feeders' producer: in send order per partition, with the id
    // header the hub reads.
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    for n in 0..ROUNDS as i64 {
        for partition in 0..PARTITIONS {
            send_record(&producer, TOPIC, partition, n);
        }
        std::thread::sleep(Duration::from_millis(10));
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    producer.flush().unwrap();
}

#[test]
fn catch_ups_under_load_return_exactly_the_ids_since_their_marks() {
    let broker = Broker::start();
    ensure_topics(&broker.address, &[(TOPIC, PARTITIONS)]).unwrap();
    let hub = TailHub::start(&broker.address).unwrap();
    let follow = |partition: i32, mark: i64| FollowFrom {
        topic: TOPIC.to_string(),
        partition,
        mark,
    };
    let tails: Vec<Arc<Mutex<(OutputTail, i64)>>> = (0..PARTITIONS)
        .map(|p| {
            let tail = OutputTail::open(&hub, &format!("u{p}/"), &[follow(p, 0)]).unwrap();
            Arc::new(Mutex::new((tail, 0)))
        })
        .collect();

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let producing = scope.spawn(|| produce_rounds(&broker.address, &stop));
        let checkers: Vec<_> = (0..CHECKING_THREADS)
            .map(|thread| {
                let tails = &tails;
                let brokers = &broker.address;
                scope.spawn(move || {
                    for round in 0..CATCH_UPS_PER_THREAD {
                        // Spread the threads over the partitions, so that
                        // their catch-ups overlap on some and not others.
                        let partition = (thread * 5 + round as i32 * 7) % PARTITIONS;
                        let mut guard = tails[partition as usize].lock().unwrap();
                        let (tail, mark) = &mut *guard;
                        if round % 4 == 3 {
                            // A new checkpoint: follow from a later mark.
                            let high = watermarks(brokers, TOPIC, partition).unwrap().1;
                            *mark = high / 2;
                            tail.rebase(&[follow(partition, *mark)]).unwrap();
                        } else if round % 8 == 5 {
                            // Back from leading, at an older checkpoint: the
                            // hub reads the partition again from further
                            // back, while the express lane may be reading
                            // it for another catch-up.
                            *mark /= 2;
                            tail.rebase(&[follow(partition, *mark)]).unwrap();
                        }
                        let high = watermarks(brokers, TOPIC, partition).unwrap().1;
                        let highs = BTreeMap::from([(TOPIC.to_string(), high)]);
                        let ids = tail.catch_up(&highs, &|| true).unwrap();
                        // Records past `high` may have arrived meanwhile:
                        // the catch-up returns at least up to it.
                        let want = expected(partition, *mark, high);
                        let missing: Vec<_> = want.difference(&ids).collect();
                        assert!(
                            missing.is_empty(),
                            "partition {partition} from mark {mark} to {high}: missing {missing:?}"
                        );
                        let below: Vec<_> = ids
                            .iter()
                            .filter(|id| {
                                let n: i64 = id.rsplit('/').next().unwrap().parse().unwrap();
                                n < *mark
                            })
                            .collect();
                        assert!(
                            below.is_empty(),
                            "partition {partition}: ids below the mark {mark}: {below:?}"
                        );
                    }
                })
            })
            .collect();
        let checked = checkers.into_iter().map(|c| c.join()).collect::<Vec<_>>();
        stop.store(true, Ordering::Relaxed);
        producing.join().unwrap();
        for result in checked {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    });

    // Once the writing stopped, each tail holds exactly its partition's ids
    // from its mark to the end.
    for (partition, tail) in tails.iter().enumerate() {
        let partition = partition as i32;
        let mut guard = tail.lock().unwrap();
        let (tail, mark) = &mut *guard;
        let high = watermarks(&broker.address, TOPIC, partition).unwrap().1;
        assert!(high > 0, "nothing was written to partition {partition}");
        let highs = BTreeMap::from([(TOPIC.to_string(), high)]);
        let ids = tail.catch_up(&highs, &|| true).unwrap();
        assert_eq!(
            ids,
            expected(partition, *mark, high),
            "partition {partition} from mark {mark}"
        );
    }
}

/// Writes `count` records to each of `partitions` of `topic`, numbered on
/// from `from`.
fn produce_to(brokers: &str, topic: &str, partitions: i32, from: i64, count: i64) {
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    for n in from..from + count {
        for partition in 0..partitions {
            send_record(&producer, topic, partition, n);
        }
    }
    producer.flush().unwrap();
}

/// Record `n` of `partition`, with its id in the header the hub reads.
fn send_record(producer: &OutputProducer, topic: &str, partition: i32, n: i64) {
    let id = id(partition, n);
    producer
        .send(&Outgoing {
            topic,
            partition,
            key: None,
            value: id.as_bytes(),
            headers: &[],
            id: Some(&id),
        })
        .unwrap();
}

fn produce(brokers: &str, partitions: i32, from: i64, count: i64) {
    produce_to(brokers, TOPIC, partitions, from, count)
}

#[test]
fn a_catch_up_completes_through_the_express_lane_alone() {
    const FEW: i32 = 3;
    let broker = Broker::start();
    ensure_topics(&broker.address, &[(TOPIC, FEW)]).unwrap();
    // The hub's own pass takes nothing in: only the express lane can bring
    // a catch-up to its high watermark.
    let hub = TailHub::start_with(&broker.address, Lanes::ExpressOnly).unwrap();
    let follow = |partition: i32, mark: i64| FollowFrom {
        topic: TOPIC.to_string(),
        partition,
        mark,
    };
    produce(&broker.address, FEW, 0, 200);
    let catch_up = |tail: &mut OutputTail, partition: i32| {
        let high = watermarks(&broker.address, TOPIC, partition).unwrap().1;
        let highs = BTreeMap::from([(TOPIC.to_string(), high)]);
        (tail.catch_up(&highs, &|| true).unwrap(), high)
    };
    // Two units share partition 0 from different marks; one follows 1.
    let mut from_start = OutputTail::open(&hub, "u0/", &[follow(0, 0)]).unwrap();
    let mut from_middle = OutputTail::open(&hub, "u0/", &[follow(0, 120)]).unwrap();
    let mut other = OutputTail::open(&hub, "u1/", &[follow(1, 50)]).unwrap();

    let (ids, high) = catch_up(&mut from_middle, 0);
    assert_eq!(ids, expected(0, 120, high));
    let (ids, high) = catch_up(&mut from_start, 0);
    assert_eq!(ids, expected(0, 0, high));
    let (ids, high) = catch_up(&mut other, 1);
    assert_eq!(ids, expected(1, 50, high));

    // More records, and a unit back at an older checkpoint: the partition
    // is read again from further back, in a new generation.
    produce(&broker.address, FEW, 200, 100);
    from_middle.rebase(&[follow(0, 30)]).unwrap();
    let (ids, high) = catch_up(&mut from_middle, 0);
    assert_eq!(high, 300);
    assert_eq!(ids, expected(0, 30, 300));
    let (ids, _) = catch_up(&mut from_start, 0);
    assert_eq!(ids, expected(0, 0, 300));
    let (ids, _) = catch_up(&mut other, 1);
    assert_eq!(ids, expected(1, 50, 300));
}

#[test]
fn catch_ups_beyond_the_express_lanes_width_wait_their_turn() {
    // More partitions waited for at once than the lane reads at once (a
    // mass takeover), each by a unit of its own.
    const WIDE: &str = "tail-wide";
    let partitions = EXPRESS_MAX_PARTITIONS as i32 + 36;
    let broker = Broker::start();
    ensure_topics(&broker.address, &[(WIDE, partitions)]).unwrap();
    produce_to(&broker.address, WIDE, partitions, 0, 20);
    let hub = TailHub::start_with(&broker.address, Lanes::ExpressOnly).unwrap();
    std::thread::scope(|scope| {
        let catch_ups: Vec<_> = (0..partitions)
            .map(|partition| {
                let (hub, brokers) = (&hub, &broker.address);
                scope.spawn(move || {
                    let mark = i64::from(partition % 7);
                    let follow = FollowFrom {
                        topic: WIDE.to_string(),
                        partition,
                        mark,
                    };
                    let mut tail =
                        OutputTail::open(hub, &format!("u{partition}/"), &[follow]).unwrap();
                    let high = watermarks(brokers, WIDE, partition).unwrap().1;
                    let highs = BTreeMap::from([(WIDE.to_string(), high)]);
                    let ids = tail.catch_up(&highs, &|| true).unwrap();
                    assert_eq!(ids, expected(partition, mark, 20), "partition {partition}");
                })
            })
            .collect();
        for catch_up in catch_ups {
            if let Err(panic) = catch_up.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}
