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

/// Wait until `woken` reaches `count` (or give up).
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

/// What a pooled leader does: arm, look, and while nothing is there wait
/// for the next wake. A wake may come from something else the partition's
/// queue carries (an event, not a record), so a look after a wake may find
/// nothing; the unit then arms and waits again. Fails if nothing wakes it
/// while nothing is there.
fn next_records(input: &mut UnitInput, wake: &ArmedWake, woken: &AtomicUsize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let seen = woken.load(Ordering::SeqCst);
        wake.arm();
        let found = look(input);
        if !found.is_empty() {
            return found;
        }
        assert!(started.elapsed() < GIVE_UP_AFTER, "nothing arrived");
        assert!(woken_to(woken, seen + 1), "no wake while nothing was there");
    }
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

    // Armed, looked, empty: the record that arrives wakes it.
    wake.arm();
    assert!(look(&mut input).is_empty());
    let before = woken.load(Ordering::SeqCst);
    produce(&broker.address, "first");
    assert!(woken_to(&woken, before + 1), "no wake for the first record");
    assert_eq!(next_records(&mut input, &wake, &woken), ["first"]);

    // Not armed: a record arrives without a wake (a busy leader, or a
    // passive reading ahead on its own schedule). (Firing spends an arming
    // the last look left.)
    wake.fire();
    let unarmed = woken.load(Ordering::SeqCst);
    produce(&broker.address, "second");
    let started = Instant::now();
    let mut second = Vec::new();
    while second.is_empty() && started.elapsed() < GIVE_UP_AFTER {
        std::thread::sleep(Duration::from_millis(20));
        second = look(&mut input);
    }
    assert_eq!(second, ["second"]);
    assert_eq!(
        woken.load(Ordering::SeqCst),
        unarmed,
        "woken while not armed"
    );

    // Restarted at the first offset (a takeover's seek): the partition's
    // new queue wakes it too.
    input.restart_at(Some(0)).unwrap();
    let mut again = Vec::new();
    while again.len() < 2 {
        again.extend(next_records(&mut input, &wake, &woken));
    }
    assert_eq!(again, ["first", "second"]);

    // And a record produced after the restart wakes it once more.
    let mut third = next_records_after(&mut input, &wake, &woken, || {
        produce(&broker.address, "third")
    });
    third.retain(|value| value == "third");
    assert_eq!(third, ["third"]);
}

/// Arm, look (nothing there), then `arrive`: the wake must come, and the
/// records after it.
fn next_records_after(
    input: &mut UnitInput,
    wake: &ArmedWake,
    woken: &AtomicUsize,
    arrive: impl FnOnce(),
) -> Vec<String> {
    wake.arm();
    assert!(look(input).is_empty());
    let before = woken.load(Ordering::SeqCst);
    arrive();
    assert!(woken_to(woken, before + 1), "no wake for the new record");
    next_records(input, wake, woken)
}
