//! A broken variant of the unit that the pipeline simulator must catch:
//! suppression by count (a takeover that found N outputs already on the
//! topics skips the first N outputs it replays, whatever their ids)
//! instead of by id. The variant is the host's `suppress-by-count` fail
//! point; fail points are process-wide, so it is armed here, in a test
//! binary of its own, not beside the correct runs of the library's tests.

mod common;

#[test]
fn suppression_by_count_instead_of_by_id_is_caught() {
    // Skipping the wrong outputs shows as an output produced twice.
    common::assert_fail_point_caught("suppress-by-count", "twice");
}
