//! The real [`Unit`] driven step by step through its [`seams`](super::seams)
//! with no broker: a scripted lease, a manual clock, the SQLite store, the
//! real wasm runtime (`passthrough`), and an in-memory broker that keeps
//! the one rule the protocol leans on — a producer epoch fenced at the
//! coordinator is refused on flush. These check the leader's ordering
//! (acknowledged outputs before the checkpoint) and the takeover's
//! suppression, deterministically; the process tests check the same over
//! a real broker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::seams::{InputReader, Lease, OutputProducer, UnitIo, UnitIoFactory};
use super::{Next, Unit, UnitSettings};
use crate::admin::Admin;
use crate::pipeline::fenced::{ProduceError, TopicPartition};
use crate::pipeline::kafka::{BatchLimits, Outgoing};
use crate::pipeline::position::{OutputMark, Position};
use crate::pipeline::record_batch::ProducerIdentity;
use crate::pipeline::standby_budget::StandbyBudget;
use crate::record::LogRecord;
use crate::store::checkpoint::tests::{set_leader, TestStore};
use crate::store::checkpoint::{self};
use crate::store::clock::ManualClock;
use crate::store::election::ElectionTiming;
use crate::store::registry::{self, BatchSettings, DeployOptions, DeploySpec, ProcessorSpec};
use crate::store::KvStore;
use crate::unit_id::{Deployment, UnitId};
use crate::wasm::{InstanceLimits, ModuleLoader, ProcessorModule, WasmEngine};

const PASSTHROUGH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/wasm32-wasip2/plugin/passthrough.wasm"
);
/// Records on the input partition.
const INPUT_RECORDS: i64 = 20;
/// Records per batch: several batches, several checkpoints.
const BATCH_RECORDS: u32 = 2;
/// Steps enough to process the whole input, with room to spare.
const MAX_STEPS: usize = 100;

/// One record on an output partition.
#[derive(Debug, Clone)]
struct Landed {
    id: Option<String>,
    producer_epoch: i16,
}

/// The in-memory broker: one input partition, the outputs, and the
/// coordinator's epoch per transactional id.
#[derive(Debug, Default)]
struct Broker {
    input: Vec<LogRecord>,
    outputs: BTreeMap<TopicPartition, Vec<Landed>>,
    epochs: HashMap<String, i16>,
    /// Refuse about one flush in this many whole (the broker unreachable),
    /// in a fixed pseudo-random pattern; 0: never.
    fail_one_flush_in: u64,
    flushes: u64,
}

impl Broker {
    fn with_input(records: i64) -> Arc<Mutex<Broker>> {
        let input = (0..records)
            .map(|offset| LogRecord {
                partition: 0,
                offset,
                timestamp_ms: 1_700_000_000_000 + offset,
                key: None,
                value: format!("record {offset}").into_bytes(),
                headers: Vec::new(),
            })
            .collect();
        Arc::new(Mutex::new(Broker {
            input,
            ..Broker::default()
        }))
    }

    /// Every id on `topic`'s partition 0, in order.
    fn ids(&self, topic: &str) -> Vec<String> {
        self.outputs
            .get(&(topic.to_string(), 0))
            .into_iter()
            .flatten()
            .filter_map(|landed| landed.id.clone())
            .collect()
    }
}

/// A well-mixed hash of `x` (splitmix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A unit's connections to [`Broker`].
struct FakeIo {
    broker: Arc<Mutex<Broker>>,
    transactional_id: String,
    id_prefix: String,
    targets: BTreeMap<String, i32>,
    /// The next input offset the reader returns.
    next_input: i64,
    /// Where the tail follows each output from (the position's marks).
    marks: BTreeMap<String, i64>,
    epoch: Option<i16>,
    held: Vec<(TopicPartition, Option<String>)>,
}

impl FakeIo {
    fn broker(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.broker.lock().unwrap()
    }

    fn land(&self, records: &[(TopicPartition, Option<String>)], epoch: i16) -> Vec<i64> {
        let mut broker = self.broker();
        records
            .iter()
            .map(|(tp, id)| {
                let log = broker.outputs.entry(tp.clone()).or_default();
                log.push(Landed {
                    id: id.clone(),
                    producer_epoch: epoch,
                });
                log.len() as i64 - 1
            })
            .collect()
    }
}

impl InputReader for FakeIo {
    fn poll_batch(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>> {
        let broker = self.broker();
        let batch: Vec<LogRecord> = broker
            .input
            .iter()
            .skip(self.next_input as usize)
            .take(limits.max_records)
            .cloned()
            .collect();
        drop(broker);
        self.next_input += batch.len() as i64;
        Ok(batch)
    }
    fn cached_high_watermark(&self) -> Option<i64> {
        Some(self.broker().input.len() as i64)
    }
}

impl OutputProducer for FakeIo {
    fn transactional_id(&self) -> &str {
        &self.transactional_id
    }
    fn retarget(&mut self, transactional_id: &str) {
        self.transactional_id = transactional_id.to_string();
    }
    fn fence(&mut self) -> Result<ProducerIdentity> {
        let mut broker = self.broker();
        let epoch = broker
            .epochs
            .entry(self.transactional_id.clone())
            .or_insert(-1);
        *epoch += 1;
        let epoch = *epoch;
        drop(broker);
        self.epoch = Some(epoch);
        Ok(ProducerIdentity { id: 1, epoch })
    }
    fn write_fences(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ProduceError> {
        let epoch = self.epoch.expect("fenced in");
        let fences: Vec<_> = partitions.iter().map(|tp| (tp.clone(), None)).collect();
        let offsets = self.land(&fences, epoch);
        Ok(partitions.iter().cloned().zip(offsets).collect())
    }
    fn send(&mut self, record: &Outgoing<'_>) -> Result<()> {
        self.held.push((
            (record.topic.to_string(), record.partition),
            record.id.map(str::to_string),
        ));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ProduceError> {
        let epoch = self.epoch.expect("fenced in");
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        let mut broker = self.broker();
        let current = broker.epochs[&self.transactional_id];
        broker.flushes += 1;
        let unreachable = broker.fail_one_flush_in > 0
            && splitmix64(broker.flushes).is_multiple_of(broker.fail_one_flush_in);
        drop(broker);
        if unreachable {
            return Err(ProduceError::Other(anyhow::anyhow!(
                "the broker is unreachable"
            )));
        }
        if epoch < current {
            return Err(ProduceError::Fenced {
                transactional_id: self.transactional_id.clone(),
                epoch,
            });
        }
        self.land(&held, epoch);
        Ok(())
    }
    fn abandon(&mut self) {
        self.held.clear();
    }
    fn low_watermark(&mut self, _topic: &str, _partition: i32) -> Result<i64> {
        Ok(0)
    }
}

impl UnitIo for FakeIo {
    fn input(&mut self) -> &mut dyn InputReader {
        self
    }
    fn cached_input_high_watermark(&self) -> Option<i64> {
        InputReader::cached_high_watermark(self)
    }
    fn producer(&mut self) -> &mut dyn OutputProducer {
        self
    }
    fn targets(&self) -> &BTreeMap<String, i32> {
        &self.targets
    }
    fn watermarks_now(
        &mut self,
        input: Option<(&str, i32)>,
    ) -> Result<(Option<i64>, BTreeMap<String, OutputMark>)> {
        let broker = self.broker();
        let marks = self
            .targets
            .iter()
            .map(|(topic, &partition)| {
                let offset = broker
                    .outputs
                    .get(&(topic.clone(), partition))
                    .map_or(0, |log| log.len() as i64);
                (topic.clone(), OutputMark { partition, offset })
            })
            .collect();
        Ok((input.map(|_| broker.input.len() as i64), marks))
    }
    fn rebase(&mut self, position: &Position) -> Result<()> {
        self.next_input = position.next_offset.unwrap_or(0);
        self.marks = position
            .marks
            .iter()
            .map(|(topic, mark)| (topic.clone(), mark.offset))
            .collect();
        Ok(())
    }
    fn follow(&mut self) -> Result<()> {
        Ok(())
    }
    fn input_from(&mut self, position: &Position) -> Result<()> {
        self.next_input = position.next_offset.unwrap_or(0);
        Ok(())
    }
    fn read_back(
        &mut self,
        highs: &BTreeMap<String, OutputMark>,
        _keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>> {
        let broker = self.broker();
        let mut ids = HashSet::new();
        for (topic, &from) in &self.marks {
            let (Some(high), Some(&partition)) = (highs.get(topic), self.targets.get(topic)) else {
                continue;
            };
            let log = broker.outputs.get(&(topic.clone(), partition));
            let between = log
                .into_iter()
                .flatten()
                .take(high.offset as usize)
                .skip(from as usize);
            for landed in between {
                if let Some(id) = &landed.id {
                    ids.insert(id.clone());
                }
            }
        }
        Ok(ids
            .into_iter()
            .filter(|id| id.starts_with(&self.id_prefix))
            .collect())
    }
    fn start_leading(&mut self) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct FakeIoFactory {
    broker: Arc<Mutex<Broker>>,
}

impl UnitIoFactory for FakeIoFactory {
    fn open(
        &self,
        spec: &ProcessorSpec,
        _partition: i32,
        transactional_id: &str,
        id_prefix: &str,
        position: &Position,
    ) -> Result<Box<dyn UnitIo>> {
        let targets = spec.written_topics().map(|topic| (topic, 0)).collect();
        let mut io = FakeIo {
            broker: self.broker.clone(),
            transactional_id: transactional_id.to_string(),
            id_prefix: id_prefix.to_string(),
            targets,
            next_input: 0,
            marks: BTreeMap::new(),
            epoch: None,
            held: Vec::new(),
        };
        io.rebase(position)?;
        Ok(Box::new(io))
    }
}

/// A lease that says what the test sets: the epoch held and whether it
/// may be acted on.
#[derive(Clone, Default)]
struct ScriptedLease {
    held: Arc<Mutex<Option<u64>>>,
    lapsed: Arc<Mutex<bool>>,
}

impl ScriptedLease {
    /// Hold `epoch` (or nothing) and act on it.
    fn set(&self, epoch: Option<u64>) {
        *self.held.lock().unwrap() = epoch;
        *self.lapsed.lock().unwrap() = false;
    }

    /// Keep the epoch held but too old to act on (a renewal overdue).
    fn lapse(&self) {
        *self.lapsed.lock().unwrap() = true;
    }
}

impl Lease for ScriptedLease {
    fn acting_epoch(&self) -> Option<u64> {
        if *self.lapsed.lock().unwrap() {
            return None;
        }
        *self.held.lock().unwrap()
    }
    fn held_epoch(&self) -> Option<u64> {
        *self.held.lock().unwrap()
    }
    fn changes(&self) -> u64 {
        0
    }
    fn wait_for_change(&self, _seen: u64, _timeout: Duration) {}
    fn step_down_asked(&self, _epoch: u64) -> bool {
        false
    }
    fn release(&self, _only: Option<u64>) {
        self.set(None);
    }
}

/// A store, a broker, and `passthrough` deployed as processor `p`.
struct World {
    store: Arc<TestStore>,
    broker: Arc<Mutex<Broker>>,
    clock: ManualClock,
    spec: ProcessorSpec,
    module: ProcessorModule,
    deployment: Deployment,
}

impl World {
    fn new() -> World {
        let store = Arc::new(TestStore::new());
        let loader =
            ModuleLoader::new(WasmEngine::new(InstanceLimits::default()).unwrap(), None).unwrap();
        let bytes = std::fs::read(PASSTHROUGH).unwrap_or_else(|e| {
            panic!("{PASSTHROUGH}: {e}; build it with scripts/build-plugins.sh")
        });
        let mut spec = registry::deploy(
            store.as_ref(),
            &loader,
            &bytes,
            DeploySpec {
                name: "p".to_string(),
                input_topic: "in".to_string(),
                output_topic: "out".to_string(),
                extra_output_topics: Vec::new(),
                config: String::new(),
                batch: BatchSettings::default(),
            },
            DeployOptions::default(),
        )
        .unwrap()
        .spec;
        spec.batch.max_records = BATCH_RECORDS;
        spec.batch.linger_ms = 0;
        World {
            store,
            broker: Broker::with_input(INPUT_RECORDS),
            clock: ManualClock::default(),
            module: loader.load(&bytes).unwrap(),
            spec,
            deployment: Deployment::new("test").unwrap(),
        }
    }

    /// A unit of `p` on partition 0 on host `host`, checkpointing every
    /// `every_records` records, acting as `lease` says.
    fn unit(&self, host: &str, every_records: u64, lease: &ScriptedLease) -> Unit {
        let settings = UnitSettings {
            io: Arc::new(FakeIoFactory {
                broker: self.broker.clone(),
            }),
            clock: Arc::new(self.clock.clone()),
            standby_budget: Arc::new(StandbyBudget::new(64)),
            host_id: host.to_string(),
            incarnation: format!("{host}-1"),
            deployment: self.deployment.clone(),
            timing: ElectionTiming::default(),
            checkpoint_watch: None,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_every_records: every_records,
        };
        let store: Arc<dyn KvStore> = self.store.clone();
        Unit::new(
            self.spec.clone(),
            0,
            self.module.clone(),
            store,
            settings,
            Box::new(lease.clone()),
            Admin::new(host, &format!("{host}-1")).unit("p", 0),
        )
    }

    /// Host `host` becomes the leader at `epoch` (the store's leader record
    /// and its lease say so): its unit, checkpointing every `every_records`
    /// records, and its lease (to take the epoch away, or keep it: a
    /// zombie's lease still says it acts).
    fn leader(&self, host: &str, epoch: u64, every_records: u64) -> (Unit, ScriptedLease) {
        let lease = ScriptedLease::default();
        set_leader(&self.store, "p/0", epoch);
        lease.set(Some(epoch));
        (self.unit(host, every_records, &lease), lease)
    }

    /// Step `unit` until every input record's output is on the topic.
    fn run_to_end(&self, unit: &mut Unit) {
        for _ in 0..MAX_STEPS {
            unit.step().unwrap();
            self.clock.advance(Duration::from_millis(10));
            if self.output_ids().len() as i64 >= INPUT_RECORDS {
                return;
            }
        }
    }

    /// The next input offset of the newest checkpoint (0: none).
    fn checkpointed_offset(&self) -> i64 {
        let kept = checkpoint::read_kept(self.store.as_ref(), "p/0").unwrap();
        kept.iter()
            .find_map(|k| k.meta.as_ref().ok())
            .and_then(|meta| meta.offsets.get(&0).copied())
            .unwrap_or(0)
    }

    fn output_ids(&self) -> Vec<String> {
        self.broker.lock().unwrap().ids("out")
    }

    /// The output id of input `offset`.
    fn id_of(&self, offset: i64) -> String {
        UnitId::new("p", 0).output_id(&self.deployment, offset, 0)
    }

    /// The epoch the coordinator holds for the unit's producer.
    fn producer_epoch(&self) -> i16 {
        let broker = self.broker.lock().unwrap();
        *broker.epochs.values().max().unwrap()
    }
}

/// Each output id in `ids` once, and every input offset's id there.
fn assert_exactly_once(world: &World, ids: &[String]) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an output landed twice: {ids:?}");
    for offset in 0..INPUT_RECORDS {
        assert!(
            unique.contains(&world.id_of(offset)),
            "the output of offset {offset} is missing: {ids:?}"
        );
    }
}

#[test]
fn a_leader_checkpoints_only_offsets_whose_outputs_the_broker_acknowledged() {
    let world = World::new();
    // About one flush in three fails whole: the unit fails (crash-only)
    // and is started again, which replays from its checkpoint.
    world.broker.lock().unwrap().fail_one_flush_in = 3;
    let (mut unit, lease) = world.leader("a", 1, 3);
    let mut checkpoints = HashSet::new();
    let mut failures = 0;
    for _ in 0..MAX_STEPS {
        if unit.step().is_err() {
            failures += 1;
            unit = world.unit("a", 3, &lease);
        }
        world.clock.advance(Duration::from_millis(10));
        let checkpointed = world.checkpointed_offset();
        checkpoints.insert(checkpointed);
        let landed: HashSet<String> = world.output_ids().into_iter().collect();
        for offset in 0..checkpointed {
            assert!(
                landed.contains(&world.id_of(offset)),
                "checkpoint at offset {checkpointed} is ahead of offset {offset}'s output"
            );
        }
        if world.output_ids().len() as i64 == INPUT_RECORDS {
            break;
        }
    }
    assert_exactly_once(&world, &world.output_ids());
    // Not vacuous: the leader checkpointed mid-stream, more than once, and
    // failed flushes made it start over.
    assert!(checkpoints.len() > 3, "checkpoints at {checkpoints:?}");
    assert!(failures > 2, "{failures} failed flushes");
}

#[test]
fn a_zombie_fenced_at_the_broker_loses_its_batch_and_the_successor_suppresses_what_landed() {
    let world = World::new();
    // Host a leads epoch 1, checkpointing only at its takeover (marks).
    let (mut a, _lease_a) = world.leader("a", 1, u64::MAX);
    for _ in 0..4 {
        a.step().unwrap();
    }
    let by_a = world.output_ids();
    assert_eq!(by_a.len(), 4 * BATCH_RECORDS as usize, "{by_a:?}");
    assert_eq!(world.checkpointed_offset(), 0, "only the takeover's marks");

    // Host b takes over at epoch 2 while a is paused (its lease still says
    // epoch 1: a zombie). b's takeover fences a's producer epoch.
    let (mut b, _lease_b) = world.leader("b", 2, 3);
    b.step().unwrap();
    assert!(b.is_active());
    let fenced_epoch = world.producer_epoch();

    // The zombie wakes and processes its next batch: the broker refuses it,
    // nothing of it lands, and a goes passive.
    let before = world.output_ids();
    a.step().unwrap();
    assert!(!a.is_active(), "the zombie went passive");
    assert_eq!(world.output_ids(), before, "nothing of the zombie landed");

    world.run_to_end(&mut b);
    // b replayed from the start (a's checkpoint holds only marks) and
    // suppressed the 8 outputs a had produced: each once.
    assert_exactly_once(&world, &world.output_ids());
    let broker = world.broker.lock().unwrap();
    let out = &broker.outputs[&("out".to_string(), 0)];
    assert!(
        out.iter()
            .any(|l| l.id.is_none() && l.producer_epoch == fenced_epoch),
        "b's fence record is on the output"
    );
    assert!(out
        .iter()
        .filter(|l| l.id.is_some())
        .all(|l| l.producer_epoch <= fenced_epoch));
}

#[test]
fn a_checkpoint_taken_while_replaying_keeps_the_marks_a_later_takeover_reads_back_from() {
    // Found by the pipeline simulator (logstream-sim, seed 7510): a leader
    // that checkpointed in the middle of its replay recorded the high
    // watermarks as marks, above outputs of records it had not replayed
    // yet; the next takeover did not read those back and produced them
    // again.
    let world = World::new();
    // Host a leads epoch 1 and produces 8 outputs, checkpointing only its
    // takeover's marks.
    let (mut a, _lease_a) = world.leader("a", 1, u64::MAX);
    for _ in 0..4 {
        a.step().unwrap();
    }
    drop(a);
    // Host b takes over at epoch 2 and checkpoints after 3 records: in the
    // middle of replaying a's 8.
    let (mut b, _lease_b) = world.leader("b", 2, 3);
    b.step().unwrap();
    b.step().unwrap();
    assert_eq!(world.checkpointed_offset(), 4, "b checkpointed mid-replay");
    assert_eq!(world.output_ids().len(), 8, "b produced nothing yet");
    drop(b);
    // Host c takes over at epoch 3 from b's checkpoint and runs to the end.
    let (mut c, _lease_c) = world.leader("c", 3, 3);
    world.run_to_end(&mut c);
    assert_exactly_once(&world, &world.output_ids());
}

/// The fence records on the output partition (one per takeover).
fn fence_records(world: &World) -> usize {
    let broker = world.broker.lock().unwrap();
    broker.outputs[&("out".to_string(), 0)]
        .iter()
        .filter(|l| l.id.is_none())
        .count()
}

#[test]
fn a_leader_whose_lease_lapses_pauses_and_goes_on_at_the_same_epoch_without_a_takeover() {
    let world = World::new();
    let (mut a, lease) = world.leader("a", 1, 3);
    a.step().unwrap();
    a.step().unwrap();
    let before = world.output_ids();
    assert_eq!(before.len(), 2 * BATCH_RECORDS as usize, "{before:?}");
    let producer_epoch = world.producer_epoch();

    // A renewal is overdue: the leader acts on nothing, and stays the
    // leader with its state (no demotion, no standby rebuilt).
    lease.lapse();
    for _ in 0..5 {
        a.step().unwrap();
        world.clock.advance(Duration::from_millis(10));
        assert!(a.is_active(), "a paused leader stays active");
    }
    assert_eq!(
        world.output_ids(),
        before,
        "a paused leader produces nothing"
    );

    // The next renewal commits at the same epoch: it goes on from where it
    // stopped — no fence, no read-back, no replay.
    lease.set(Some(1));
    world.run_to_end(&mut a);
    assert_exactly_once(&world, &world.output_ids());
    assert_eq!(world.producer_epoch(), producer_epoch, "no new fence");
    assert_eq!(fence_records(&world), 1, "one takeover only");
}

#[test]
fn a_paused_leader_whose_lease_another_host_claimed_goes_passive() {
    let world = World::new();
    let (mut a, lease_a) = world.leader("a", 1, 3);
    a.step().unwrap();
    a.step().unwrap();
    lease_a.lapse();
    a.step().unwrap();
    assert!(a.is_active(), "paused");

    // Host b claims epoch 2; a's next round sees it: a holds nothing.
    let (mut b, _lease_b) = world.leader("b", 2, 3);
    lease_a.set(None);
    a.step().unwrap();
    assert!(!a.is_active(), "the paused leader went passive");

    world.run_to_end(&mut b);
    assert_exactly_once(&world, &world.output_ids());
    assert_eq!(fence_records(&world), 2, "b took over");
}

/// What the worker pool reads from each step: a passive waits for its
/// lease, a leader with records steps again at once, and a leader that
/// drained its input waits for the next record (or its lease).
#[test]
fn a_step_says_what_the_unit_waits_for() {
    let world = World::new();
    let lease = ScriptedLease::default();
    let mut passive = world.unit("b", u64::MAX, &lease);
    assert!(
        matches!(passive.step().unwrap(), Next::Lease { .. }),
        "a passive waits for its lease"
    );

    let (mut leader, _lease) = world.leader("a", 1, u64::MAX);
    let mut steps = Vec::new();
    for _ in 0..MAX_STEPS {
        let next = leader.step().unwrap();
        steps.push(next);
        if next != Next::Now {
            break;
        }
    }
    assert_eq!(world.output_ids().len() as i64, INPUT_RECORDS);
    // A batch of BATCH_RECORDS per step, then one look that finds nothing.
    let batches = (INPUT_RECORDS as usize).div_ceil(BATCH_RECORDS as usize);
    assert_eq!(steps.len(), batches + 1, "{steps:?}");
    assert!(
        steps[..batches].iter().all(|s| *s == Next::Now),
        "{steps:?}"
    );
    assert!(
        matches!(steps[batches], Next::Input { .. }),
        "a drained leader waits for input: {steps:?}"
    );
}
