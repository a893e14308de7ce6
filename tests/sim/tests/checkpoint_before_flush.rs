//! A broken variant of the unit that the pipeline simulator must catch: a
//! leader that writes its checkpoint after processing a batch but before
//! the broker acknowledged the batch's outputs. The variant is the host's
//! `checkpoint-before-flush` fail point; fail points are process-wide, so
//! it is armed here, in a test binary of its own.

use logstream_sim::broker::EpochCheck;
use logstream_sim::pipeline::{explore, Variant};

/// Schedules the variant may take to be caught.
const BUDGET: u64 = 2_000;

#[test]
fn a_checkpoint_written_before_the_flush_is_caught() {
    let scenario = fail::FailScenario::setup();
    fail::cfg("checkpoint-before-flush", "return").expect("arming the fail point");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let (found, counters) = explore(
        0..BUDGET,
        Variant::Correct,
        EpochCheck::PerPartition,
        threads,
    );
    scenario.teardown();
    let (seed, outcome) = found.unwrap_or_else(|| {
        panic!(
            "a checkpoint before the flush was not caught in {BUDGET} schedules: {}",
            counters.report()
        )
    });
    let violation = outcome.violation.unwrap_or_default();
    assert!(violation.contains("checkpoint"), "seed {seed}: {violation}");
    let figures = format!(
        "pipeline simulation, broken variant `checkpoint-before-flush` over Apache Kafka's per-partition epoch check: {} in {:.1} s on {threads} threads; stopped at the first violation, seed {seed}: {violation}",
        counters.report(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{figures}");
    logstream_sim::record_figures("3-pipeline-CheckpointBeforeFlush", &figures);
}
