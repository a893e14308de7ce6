//! A unit's input wakes it, against the real broker: a leader that found
//! its input empty holds no thread (`pipeline::worker_pool`) and waits for
//! the armed wake its partition's queue fires when a record arrives
//! (`pipeline::wake`). Checked here: the wake fires once the record lands,
//! again after the reader restarted at another offset (a new queue is
//! split for the partition), and not at all while it is not armed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{produce_values, Broker};
use logstream_host::pipeline::fetchers::Fetchers;
use logstream_host::pipeline::input::{UnitInput, INPUT_PREFETCH};
use logstream_host::pipeline::kafka::{ensure_topics, BatchLimits};
use logstream_host::pipeline::wake::ArmedWake;

const TOPIC: &str = "wake-in";
/// How long a record may take to reach the reader before the test gives
/// up (a bound on a hang, not a speed requirement).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

fn produce(brokers: &str, value: &str) {
    produce_values(brokers, TOPIC, 0, &[value]);
}

/// Polls nothing but what is there: the way a pooled unit looks.
fn look(input: &mut UnitInput) -> Vec<String> {
    input
        .poll_batch(BatchLimits {
            max_records: 100,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
            linger: Duration::ZERO,
        })
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect()
}

/// Wait until `woken` reaches `count` (or give up); then look once more.
fn woken_to(woken: &AtomicUsize, count: usize) -> bool {
    let started = Instant::now();
    while woken.load(Ordering::SeqCst) < count {
        if started.elapsed() > GIVE_UP_AFTER {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn an_armed_input_wakes_its_unit_when_a_record_arrives() {
    let broker = Broker::start();
    ensure_topics(&broker.address, &[(TOPIC, 1)]).unwrap();
    let fetchers = Fetchers::new(&broker.address, 1, INPUT_PREFETCH).unwrap();
    let mut input = UnitInput::open(&fetchers, TOPIC, 0, Some(0)).unwrap();
    let woken = Arc::new(AtomicUsize::new(0));
    let counter = woken.clone();
    let wake = ArmedWake::new(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    input.set_arrival_wake(wake.clone());

    // Armed, looked, empty: the first record wakes it.
    wake.arm();
    assert!(look(&mut input).is_empty());
    produce(&broker.address, "first");
    assert!(woken_to(&woken, 1), "no wake for the first record");
    assert_eq!(look(&mut input), ["first"]);

    // Not armed: a record arrives without a wake (a busy leader, or a
    // passive reading ahead on its own schedule).
    produce(&broker.address, "second");
    let started = Instant::now();
    let mut second = Vec::new();
    while second.is_empty() && started.elapsed() < GIVE_UP_AFTER {
        std::thread::sleep(Duration::from_millis(20));
        second = look(&mut input);
    }
    assert_eq!(second, ["second"]);
    assert_eq!(woken.load(Ordering::SeqCst), 1, "woken while not armed");

    // Restarted at the first offset (a takeover's seek): the partition's
    // new queue wakes it too.
    input.restart_at(Some(0)).unwrap();
    wake.arm();
    let mut again = look(&mut input);
    if again.is_empty() {
        assert!(woken_to(&woken, 2), "no wake after the restart");
    }
    // Whatever the first look after the restart found, the rest follows.
    let started = Instant::now();
    while again.len() < 2 && started.elapsed() < GIVE_UP_AFTER {
        std::thread::sleep(Duration::from_millis(20));
        again.extend(look(&mut input));
    }
    assert_eq!(again, ["first", "second"]);

    // And a new record after the restart wakes it once more.
    let before = woken.load(Ordering::SeqCst);
    wake.arm();
    assert!(look(&mut input).is_empty());
    produce(&broker.address, "third");
    assert!(
        woken_to(&woken, before + 1),
        "no wake for a record after the restart"
    );
    assert_eq!(look(&mut input), ["third"]);
}
