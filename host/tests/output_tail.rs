//! The host's output tail hub against the real broker, while records keep
//! arriving: catch-ups from several threads at once and rebases to new
//! marks; every catch-up returns exactly the ids between its mark and the
//! high watermark it was given — none missing, none from below a mark.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::Broker;
use logstream_host::pipeline::kafka::{ensure_topics, watermarks, Outgoing, OutputProducer};
use logstream_host::pipeline::tail::{FollowFrom, OutputTail, TailHub};

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
            let id = id(partition, n);
            producer
                .send(&Outgoing {
                    topic: TOPIC,
                    partition,
                    key: None,
                    value: id.as_bytes(),
                    headers: &[],
                    id: Some(&id),
                })
                .unwrap();
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
