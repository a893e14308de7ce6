//! A broken variant of the unit that the pipeline simulator must catch: a
//! leader that writes its checkpoint after processing a batch but before
//! the broker acknowledged the batch's outputs. The variant is the host's
//! `checkpoint-before-flush` fail point; fail points are process-wide, so
//! it is armed here, in a test binary of its own.

mod common;

#[test]
fn a_checkpoint_written_before_the_flush_is_caught() {
    common::assert_fail_point_caught("checkpoint-before-flush", "checkpoint");
}
