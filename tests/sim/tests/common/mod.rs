//! What the broken-variant tests share: arm one of the host's fail points
//! (process-wide, hence one test binary per variant), explore the pipeline
//! simulator's schedules until one violates an invariant, and record the
//! figures for `docs/reliability.md`.

use logstream_sim::broker::EpochCheck;
use logstream_sim::pipeline::{explore, Variant};

/// Schedules a broken variant may take to be caught.
pub const BUDGET: u64 = 2_000;

/// Arm `fail_point` and explore until a violation naming `expected` (its
/// kind: "twice", "checkpoint", …) is found; panics if none is within
/// [`BUDGET`].
pub fn assert_fail_point_caught(fail_point: &str, expected: &str) {
    let scenario = fail::FailScenario::setup();
    fail::cfg(fail_point, "return").expect("arming the fail point");
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
            "the broken variant `{fail_point}` was not caught in {BUDGET} schedules: {}",
            counters.report()
        )
    });
    let violation = outcome.violation.unwrap_or_default();
    assert!(violation.contains(expected), "seed {seed}: {violation}");
    let figures = format!(
        "pipeline simulation, broken variant `{fail_point}` over Apache Kafka's per-partition epoch check: {} in {:.1} s on {threads} threads; stopped at the first violation, seed {seed}: {violation}",
        counters.report(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{figures}");
    logstream_sim::record_figures(&format!("3-pipeline-{fail_point}"), &figures);
}
