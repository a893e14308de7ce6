//! A broken variant of the unit that the pipeline simulator must catch:
//! suppression by count (a takeover that found N outputs already on the
//! topics skips the first N outputs it replays, whatever their ids)
//! instead of by id. The variant is the host's `suppress-by-count` fail
//! point; fail points are process-wide, so it is armed here, in a test
//! binary of its own, not beside the correct runs of the library's tests.

use logstream_sim::broker::EpochCheck;
use logstream_sim::pipeline::{explore, Variant};

/// Schedules the variant may take to be caught.
const BUDGET: u64 = 2_000;

#[test]
fn suppression_by_count_instead_of_by_id_is_caught() {
    let scenario = fail::FailScenario::setup();
    fail::cfg("suppress-by-count", "return").expect("arming the fail point");
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
            "suppression by count was not caught in {BUDGET} schedules: {}",
            counters.report()
        )
    });
    let violation = outcome.violation.unwrap_or_default();
    let figures = format!(
        "pipeline simulation, broken variant `suppress-by-count` over Apache Kafka's per-partition epoch check: {} in {:.1} s on {threads} threads; stopped at the first violation, seed {seed}: {violation}",
        counters.report(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{figures}");
    logstream_sim::record_figures("3-pipeline-SuppressByCount", &figures);
}
