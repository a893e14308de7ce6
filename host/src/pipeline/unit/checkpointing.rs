//! The leader's checkpoint: everything produced is acknowledged first, then
//! the state, the next input offset and a mark on every output partition
//! (its high watermark) go into one fenced checkpoint.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Role, Unit};
use crate::pipeline::position::Position;
use crate::store::checkpoint::{self, CheckpointError, Fence};

impl Unit {
    /// Checkpoint the active's state now (no-op while passive).
    pub(super) fn checkpoint(&mut self) -> Result<()> {
        if !self.is_active() {
            return Ok(());
        }
        let started = Instant::now();
        // Everything produced so far must be acknowledged before the
        // checkpoint records the input as done (each batch is, this keeps it
        // true on every path); then these watermarks bound what the outputs
        // since hold.
        if !self.flushed()? {
            return Ok(());
        }
        self.write_checkpoint(started)
    }

    /// The checkpoint itself, once everything produced is acknowledged
    /// (started at `started`).
    pub(super) fn write_checkpoint(&mut self, started: Instant) -> Result<()> {
        let Role::Active(active) = &mut self.role else {
            return Ok(());
        };
        // Outputs the takeover found for records not replayed yet lie
        // between the marks it read back from and the high watermarks: keep
        // those marks until they are all replayed (see `read_back_from`).
        // Otherwise read the watermarks before the snapshot, so a postponed
        // checkpoint costs no snapshot (nothing is produced in between
        // either way).
        let marks = if !active.suppressed.is_empty() {
            Ok(active.read_back_from.clone())
        } else {
            active.links.marks_now()
        };
        let marks = match marks {
            Ok(marks) => marks,
            // The broker is unreachable (restarting, say): everything is
            // delivered, so the checkpoint can wait for the next interval;
            // a takeover meanwhile replays a little more.
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "checkpoint postponed, the output watermarks are unreadable"
                );
                active.last_checkpoint = self.settings.clock.now();
                return Ok(());
            }
        };
        let position = Position {
            next_offset: Some(active.next_offset),
            marks,
            lineage: self.spec.lineage,
            spec_version: self.spec.version,
        };
        let state = active.processor.snapshot()?;
        let state_version = active.processor.state_version()?;
        let written = checkpoint::write_checkpoint(
            self.store.as_ref(),
            &Fence::new(self.id.name(), active.epoch),
            &state,
            state_version,
            BTreeMap::from([(self.id.partition(), active.next_offset)]),
            position.to_marks(),
        );
        match written {
            Ok(meta) => {
                tracing::debug!(
                    generation = meta.generation,
                    bytes = meta.size_bytes,
                    next_offset = active.next_offset,
                    elapsed = ?started.elapsed(),
                    "checkpoint written"
                );
                active.records_since_checkpoint = 0;
                active.last_checkpoint = self.settings.clock.now();
                self.admin.checkpointed(&meta, started.elapsed());
                Ok(())
            }
            Err(CheckpointError::Fenced { .. }) => {
                tracing::warn!(
                    epoch = active.epoch,
                    "checkpoint fenced off at epoch {}; going passive",
                    active.epoch
                );
                self.demote();
                Ok(())
            }
            Err(error) => Err(error).context("writing a checkpoint"),
        }
    }
}
