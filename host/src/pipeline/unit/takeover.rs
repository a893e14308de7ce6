//! Becoming the leader, and staying ready to: the warm standby, and the
//! takeover that turns it into the active.
//!
//! A takeover, in order (the order is the guarantee):
//! 1. **Restore** the newest usable checkpoint of the unit's state lineage
//!    (the standby already holds it, or a fresh instance is restored); a
//!    checkpoint written by a newer version of the processor is refused —
//!    this host runs an older deployment and leaves the unit to the hosts
//!    that run the newer one.
//! 2. **Fence** the previous leader's producer at the broker
//!    ([`FencedProducer::fence`](crate::pipeline::fenced::FencedProducer::fence))
//!    and write a fence record at the new epoch to every partition the
//!    unit writes, so each refuses the old epoch whatever the broker's
//!    epoch check ([`FencedProducer::write_fences`](crate::pipeline::fenced::FencedProducer::write_fences));
//!    moving the unit to its next producer generation when the epochs of
//!    its transactional id run out.
//! 3. **Mark** every output partition the checkpoint does not cover yet
//!    (a new unit, a new lineage, a routed topic added by a redeploy) at
//!    its high watermark, in a checkpoint of the restored state — before
//!    anything is produced there, so a later takeover knows where this
//!    leader's outputs begin.
//! 4. **Read back** the ids on every output partition from the marks up to
//!    the high watermarks; after the fence nothing of an earlier epoch can
//!    land above them.
//! 5. **Seek** the input to the checkpointed offset and lead.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::seams::UnitIo;
use super::{in_lineage, position_in_lineage, Active, Role, Standby, Unit};
use crate::admin::TakeoverFigures;
use crate::pipeline::fenced::epochs_used_up;
use crate::pipeline::position::{OutputMark, Position};
use crate::store::checkpoint::{self, CheckpointError, CheckpointMeta, Fence, KeptGeneration};
use crate::store::{producer_generation, RetryPolicy};
use crate::wasm::{RecoveryPolicy, SupervisedProcessor};

impl Unit {
    /// Take over at `epoch`; see the module docs. Leaves the unit active,
    /// or passive when another host took the epoch meanwhile.
    pub(super) fn take_over(&mut self, epoch: u64) -> Result<()> {
        if self.is_active() {
            self.demote();
        }
        let started = Instant::now();
        tracing::info!(epoch, "taking over at epoch {epoch}");
        let Role::Passive { standby, links, .. } =
            std::mem::replace(&mut self.role, Role::passive(None))
        else {
            unreachable!("demoted above");
        };
        // Read only the metadata first: when the warm standby already holds
        // the generation a restore would use, its state need not be read.
        let kept = checkpoint::read_kept(self.store.as_ref(), &self.id.name())?;
        self.refuse_newer_deployment(&kept)?;
        let candidate = self.candidate(&kept).cloned();
        let restore_started = Instant::now();
        // A stale standby is dropped here, before a fresh instance is made:
        // a unit holds one instance at a time (the pool is sized so).
        let warm = standby.filter(|s| s.generation == candidate.as_ref().map(|m| m.generation));
        // A leader is no standby.
        self.settings.standby_budget.release(&self.id.name());
        let warm_standby = warm.is_some();
        let (meta, mut processor) = match warm {
            Some(standby) => (candidate, standby.processor),
            None => self.start_processor()?,
        };
        let generation = meta.as_ref().map(|m| m.generation);
        let restored_in = restore_started.elapsed();
        let mut position = position_in_lineage(meta.as_ref(), &self.spec, self.id.partition())?;
        let seek_started = Instant::now();
        let warm_links = links.is_some();
        let mut links = self.links_at(links, &position)?;
        let fence_offsets = self.fence_producer(&mut *links, epoch)?;
        // After the fence: nothing of an earlier leader can land above these.
        let (input_high, mut highs) =
            links.watermarks_now(Some((&self.spec.input_topic, self.id.partition())))?;
        // Nothing of an earlier leader lies above its partition's fence
        // record either, and the tail already holds what lies below it:
        // reading back up to the fence record (not the fresh high
        // watermark past it) spares a fetch round trip per takeover.
        for (topic, mark) in highs.iter_mut() {
            if let Some(&fence) = fence_offsets.get(&(topic.clone(), mark.partition)) {
                mark.offset = mark.offset.min(fence);
            }
        }
        let input_high = input_high.expect("asked for");
        if let Some(next) = position.next_offset.filter(|next| *next > input_high) {
            bail!(
                "the input partition {}/{} ends at offset {input_high}, before the checkpoint's next offset {next}: the topic was deleted and recreated (or truncated); deploy the processor again with --reset to start it over",
                self.spec.input_topic,
                self.id.partition()
            );
        }
        let marks_needed = meta.is_none()
            || position.next_offset.is_none()
            || !position.covers(links.targets().keys().map(String::as_str));
        if marks_needed {
            let marked = self.mark_outputs(
                epoch,
                &mut *links,
                &mut processor,
                position,
                &highs,
                meta.is_none(),
            )?;
            match marked {
                Some(marked) => position = marked,
                None => {
                    self.role = Role::passive(Some(links));
                    return Ok(());
                }
            }
        }
        let next_offset = position
            .next_offset
            .expect("a marked position has an offset");
        links.input_from(&position)?;
        let suppressed = links
            .read_back(&highs, &|| self.acting(epoch))
            .context("reading back the outputs since the checkpoint")?;
        links.start_leading()?;
        let fence_and_seek = seek_started.elapsed();
        tracing::info!(
            "takeover phases: restore {:?} (generation {generation:?}), fence, read-back and seek {:?} ({} outputs to suppress, connections {}{}), next offset {next_offset}",
            restored_in,
            fence_and_seek,
            suppressed.len(),
            if warm_links { "kept from standby" } else { "opened" },
            if marks_needed { ", new marks checkpointed" } else { "" },
        );
        self.role = Role::Active(Active {
            epoch,
            processor,
            links,
            next_offset,
            suppressed,
            read_back_from: position.marks.clone(),
            records_since_checkpoint: 0,
            last_checkpoint: self.settings.clock.now(),
            took_over_at: started,
            first_output_logged: false,
            input_failing_since: None,
            paused: false,
        });
        self.admin.took_over(TakeoverFigures {
            epoch,
            next_offset,
            generation,
            warm_standby,
            restore: restored_in,
            fence_and_seek,
            total: started.elapsed(),
        });
        Ok(())
    }

    /// Refuse to act on checkpoints a newer version of the processor wrote
    /// (this host has not seen the redeploy yet; the hosts that have run
    /// the unit).
    fn refuse_newer_deployment(&self, kept: &[KeptGeneration]) -> Result<()> {
        let newest = kept.iter().find_map(|k| k.meta.as_ref().ok());
        if let Some(meta) = newest {
            let (_, version) = Position::deployment_of(meta);
            if version > self.spec.version {
                bail!(
                    "checkpoint generation {} was written by version {version} of processor {}, and this host runs version {}; leaving the unit to hosts that run the newer one",
                    meta.generation,
                    self.spec.name,
                    self.spec.version
                );
            }
        }
        Ok(())
    }

    /// The generation a restore would use, as far as this unit knows: the
    /// newest intact one it has not found unusable before — if it is of the
    /// unit's state lineage.
    fn candidate<'a>(&self, kept: &'a [KeptGeneration]) -> Option<&'a CheckpointMeta> {
        checkpoint::newest_candidate(kept, |g| self.admin.found_unusable(g))
            .filter(|meta| in_lineage(meta, &self.spec))
    }

    /// The unit's connections put at `position`: `kept` if open, new ones
    /// otherwise.
    fn links_at(
        &self,
        kept: Option<Box<dyn UnitIo>>,
        position: &Position,
    ) -> Result<Box<dyn UnitIo>> {
        match kept {
            Some(mut links) => {
                links.rebase(position)?;
                Ok(links)
            }
            None => {
                let mut links = self.settings.io.open(
                    &self.spec,
                    self.id.partition(),
                    &self.id.transactional_id(&self.settings.deployment, 0),
                    &self.id.id_prefix(&self.settings.deployment),
                    position,
                )?;
                if let Some(arrival) = &self.arrival_wake {
                    links.input().set_arrival_wake(arrival.clone());
                }
                Ok(links)
            }
        }
    }

    /// Fence the previous leader's producer under the unit's current
    /// transactional id, moving to the next producer generation when its
    /// epochs are used up (see [`epochs_used_up`]), and mark every
    /// partition the unit writes at the new epoch. Returns the offset of
    /// each partition's last fence record (those the broker reported).
    fn fence_producer(
        &self,
        links: &mut dyn UnitIo,
        epoch: u64,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        let name = self.id.name();
        let deployment = &self.settings.deployment;
        let generation = producer_generation::read(self.store.as_ref(), &name)?;
        let transactional_id = self.id.transactional_id(deployment, generation);
        if links.producer().transactional_id() != transactional_id {
            links.producer().retarget(&transactional_id);
        }
        let targets = links.target_partitions();
        let identity = links
            .producer()
            .fence()
            .context("fencing the previous leader's producer")?;
        // Every partition the unit writes learns the new epoch before the
        // read-back (brokers that check epochs per partition; see
        // `fenced`).
        let mut fence_offsets = links
            .producer()
            .write_fences(&targets)
            .context("writing the fence records at the new producer epoch")?;
        if epochs_used_up(identity.epoch) {
            // The fence records above, at the old id's last epoch, fence
            // every earlier holder of it for good, on every partition the
            // unit writes (a new producer id would not: partitions keep
            // producer state per producer id). Later leaders produce as
            // the next one.
            let next = producer_generation::advance(
                self.store.as_ref(),
                &Fence::new(name, epoch),
                generation,
            )?;
            let next_id = self.id.transactional_id(deployment, next);
            tracing::warn!(
                producer_epoch = identity.epoch,
                transactional_id = %next_id,
                "the producer epochs of {transactional_id} are used up; moving to {next_id}"
            );
            links.producer().retarget(&next_id);
            links
                .producer()
                .fence()
                .context("fencing the unit's next producer generation")?;
            fence_offsets = links
                .producer()
                .write_fences(&targets)
                .context("writing the fence records of the next producer generation")?;
        }
        Ok(fence_offsets)
    }

    /// Checkpoint the restored state with a mark on every output partition
    /// at its high watermark (keeping the marks the checkpoint has; `fresh`:
    /// none, and the input from its first offset). `None` when another
    /// leader fenced this one meanwhile.
    fn mark_outputs(
        &mut self,
        epoch: u64,
        links: &mut dyn UnitIo,
        processor: &mut SupervisedProcessor,
        position: Position,
        high: &BTreeMap<String, OutputMark>,
        fresh: bool,
    ) -> Result<Option<Position>> {
        let started = Instant::now();
        let next_offset = match (fresh, position.next_offset) {
            (false, Some(offset)) => offset,
            _ => links
                .producer()
                .low_watermark(&self.spec.input_topic, self.id.partition())?,
        };
        let mut marks = if fresh {
            BTreeMap::new()
        } else {
            position.marks
        };
        for (topic, mark) in high {
            marks.entry(topic.clone()).or_insert(*mark);
        }
        let marked = Position {
            next_offset: Some(next_offset),
            marks,
            lineage: self.spec.lineage,
            spec_version: self.spec.version,
        };
        let state = processor.snapshot()?;
        let state_version = processor.state_version()?;
        let written = checkpoint::write_checkpoint(
            self.store.as_ref(),
            &Fence::new(self.id.name(), epoch),
            &state,
            state_version,
            BTreeMap::from([(self.id.partition(), next_offset)]),
            marked.to_marks(),
        );
        match written {
            Ok(meta) => {
                self.admin.checkpointed(&meta, started.elapsed());
                links.rebase(&marked)?;
                Ok(Some(marked))
            }
            Err(CheckpointError::Fenced { .. }) => {
                tracing::warn!(epoch, "fenced off while marking the outputs; going passive");
                Ok(None)
            }
            Err(error) => Err(error).context("checkpointing the output marks"),
        }
    }

    /// A fresh instance restored from the newest usable checkpoint of the
    /// unit's lineage, with that checkpoint's metadata (`None`: none, empty
    /// state).
    ///
    /// A kept generation that is corrupt, or whose state the processor's
    /// restore refuses, is skipped for the next older one of the lineage.
    /// That keeps exactly-once: the metadata returned is the generation
    /// actually restored, so the takeover replays from *its* offsets and
    /// suppresses the outputs found since *its* marks. Each skipped
    /// generation is logged (by the checkpoint layer), and the first time
    /// this unit finds it, counted, listed in `/status` and stored for
    /// `logstream status`.
    pub(super) fn start_processor(&self) -> Result<(Option<CheckpointMeta>, SupervisedProcessor)> {
        let start = |state: Option<Vec<u8>>| {
            let mut processor = SupervisedProcessor::start_from(
                &self.id.name(),
                self.module.clone(),
                &self.spec.config,
                RecoveryPolicy::default(),
                state,
            )?;
            processor.route_to(self.spec.output_topics().map(str::to_string));
            Ok::<_, crate::wasm::SupervisorError>(processor)
        };
        let name = self.id.name();
        let restored = checkpoint::restore_newest_where(
            self.store.as_ref(),
            &RetryPolicy::default(),
            &name,
            |meta| in_lineage(meta, &self.spec),
            |_, state| {
                start(Some(state)).map_err(|error| match error {
                    // The state's fault (refused, or the guest failed on
                    // it): an older generation may do.
                    crate::wasm::SupervisorError::Restore { .. } => {
                        checkpoint::RestoreFailure::Refused(error.to_string())
                    }
                    // Not the state's (instantiation, configuration): no
                    // generation would do better.
                    other => checkpoint::RestoreFailure::Failed(other),
                })
            },
        );
        let report = |unusable: &[checkpoint::UnusableGeneration]| {
            for found in unusable
                .iter()
                .filter(|f| self.admin.unusable_checkpoint(f))
            {
                let report = checkpoint::UnusableReport::new(
                    found,
                    &self.settings.host_id,
                    Some(&self.spec.module_sha256),
                );
                if let Err(error) = checkpoint::report_unusable(self.store.as_ref(), &name, &report)
                {
                    tracing::warn!(
                        %error,
                        "could not store the report that checkpoint {found} is unusable"
                    );
                }
            }
        };
        let context = || format!("starting processor {}", self.id);
        match restored {
            Ok(Some(restored)) => {
                report(&restored.unusable);
                Ok((Some(restored.meta), restored.value))
            }
            Ok(None) => Ok((None, start(None).with_context(context)?)),
            Err(checkpoint::RestoreError::Checkpoint(error)) => {
                if let CheckpointError::Unusable { unusable, .. } = &error {
                    report(unusable);
                }
                Err(error).with_context(context)
            }
            Err(checkpoint::RestoreError::Failed(error)) => Err(error).with_context(context),
        }
    }

    /// Keep a warm instance and the connections at the latest checkpoint.
    pub(super) fn refresh_standby(&mut self) -> Result<()> {
        let kept = checkpoint::read_kept(self.store.as_ref(), &self.id.name())?;
        if let Err(newer) = self.refuse_newer_deployment(&kept) {
            // Restoring a newer version's state could only be refused (and
            // reported as unusable); this host is about to run that version.
            tracing::debug!(reason = %newer, "not refreshing the standby");
            return Ok(());
        }
        let candidate = self.candidate(&kept).cloned();
        let fresh = matches!(&self.role, Role::Passive { standby: Some(s), .. }
            if s.generation == candidate.as_ref().map(|m| m.generation));
        let meta = if fresh {
            candidate
        } else {
            // The restore may find a newer generation than the metadata read
            // did, or fall back past unusable ones; the connections follow
            // the one restored. The old standby goes first: a unit holds
            // one instance at a time.
            if let Role::Passive { standby, .. } = &mut self.role {
                *standby = None;
            }
            let name = self.id.name();
            let budget = self.settings.standby_budget.clone();
            budget.release(&name);
            let room = self
                .instance_bytes
                .is_none_or(|bytes| budget.has_room(&name, bytes));
            if room {
                let (meta, processor) = self.start_processor()?;
                let bytes = processor.memory_bytes() as u64;
                self.instance_bytes = Some(bytes);
                let warm = budget.admit(&name, bytes);
                if let (Role::Passive { standby, .. }, true) = (&mut self.role, warm) {
                    *standby = Some(Standby {
                        generation: meta.as_ref().map(|m| m.generation),
                        processor,
                    });
                }
                self.admin.standby(warm, Some(bytes));
                meta
            } else {
                // Cold: no instance (its takeover restores from the store);
                // the connections still follow the latest checkpoint.
                self.admin.standby(false, None);
                candidate
            }
        };
        if let Some(meta) = &meta {
            self.admin.standby_at(meta);
        }
        // A no-op when the connections are already at this checkpoint.
        let position = position_in_lineage(meta.as_ref(), &self.spec, self.id.partition())?;
        let kept_links = match &mut self.role {
            Role::Passive { links, .. } => links.take(),
            Role::Active(_) => return Ok(()),
        };
        let opened = self.links_at(kept_links, &position)?;
        if let Role::Passive { links, .. } = &mut self.role {
            *links = Some(opened);
        }
        Ok(())
    }
}
