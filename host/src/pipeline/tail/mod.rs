//! Following the tail of the units' output partitions: the ids of what each
//! unit's leaders produced there since its last checkpoint's marks.
//!
//! A new leader must not re-emit outputs that already reached the topic
//! (guarantee 2 without Kafka transactions). A passive keeps its
//! [`OutputTail`] following while the active produces, so at takeover it
//! only asks for the high watermarks and waits for the last few records,
//! instead of connecting and reading everything since the marks.
//!
//! All units of a host follow through one [`TailHub`]: one consumer and one
//! thread read every output partition any unit follows, once, however many
//! units follow it (several units of a processor write one output partition
//! when the output topic has fewer partitions than the input; every unit of
//! a processor usually shares its dead-letter partitions), and hand each
//! unit the ids with its prefix. A unit that needs a partition from further
//! back than the hub reads it (a new follower, or one back from leading)
//! makes the hub read that partition again from there; the other followers
//! skip what they have seen, and the one that asked gets nothing until the
//! re-read starts (a record from further on would make it skip the ones
//! between: outputs it would then produce again).
//!
//! A takeover that waits for its partitions does not wait for the hub's
//! pass over every followed partition: the hub's [`express`] lane, a second
//! consumer, fetches only the partitions some catch-up waits for, from
//! where the hub stands up to the high watermark waited for, and hands
//! what it reads to the followers the same way. (On a broker that serves a
//! fetch partition after partition, the hub's fetch over a thousand
//! partitions takes seconds; the express fetch carries a handful.)
//!
//! Guarantees: after [`OutputTail::catch_up`] returns, the set holds every
//! id with the unit's prefix at offsets from the current marks up to the
//! high watermarks read at that moment; ids below the marks are never
//! returned. A catch-up makes progress however long the tail is: it has no
//! deadline of its own (only a bound on a broker that stops answering), and
//! what it read is kept when it fails, so the next attempt goes on from
//! there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{self, FetchProfile, ID_HEADER};
use super::stoppable::StoppableThread;

mod express;

pub use express::EXPRESS_MAX_PARTITIONS;

/// Bound on a catch-up that receives nothing at all: the broker is not
/// answering. (A catch-up that receives records goes on however long.)
pub const CATCH_UP_STALL_BOUND: Duration = Duration::from_secs(30);
/// What the hub's consumer may fetch ahead of the hub, per partition.
pub const TAIL_PREFETCH: FetchProfile = FetchProfile {
    records: 10_000,
    kbytes: 4 * 1024,
    // Only a takeover needs the tail current, and it waits for the high
    // watermarks then; meanwhile fewer idle fetches spare the broker.
    max_wait_ms: 100,
};
/// Longest single wait of the hub for records, and of a catch-up for the
/// hub (both also look at their stop conditions this often).
const HUB_POLL: Duration = Duration::from_millis(100);
/// Most records the hub takes in under one lock.
const HUB_BATCH_RECORDS: usize = 1_000;

/// One output partition to follow from a mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowFrom {
    pub topic: String,
    pub partition: i32,
    /// Ids below this offset are covered by the checkpoint.
    pub mark: i64,
}

type PartitionKey = (String, i32);

/// One unit following one partition.
#[derive(Debug)]
struct Follower {
    prefix: Arc<str>,
    /// Ids below this offset are covered by the unit's checkpoint.
    mark: i64,
    /// The offset the unit sees next (one past the last it saw).
    next: i64,
    /// `(offset, id)` of the unit's records at or above `mark`, in offset order.
    ids: Vec<(i64, String)>,
    /// Waiting for the hub to read the partition again from `next` (it
    /// joined below where the hub reads): until then the hub hands it
    /// nothing, since a record from further on would skip the ones between.
    rereading: bool,
}

/// One partition the hub reads.
#[derive(Debug, Default)]
struct HubPartition {
    /// Every record below this offset was handed to the followers (by
    /// either lane). Lowered only when the hub reads the partition again,
    /// which starts a new `generation`.
    next: i64,
    /// Which reading of the partition this is: the express lane hands on a
    /// record only if it was assigned the partition in the same one.
    generation: u64,
    /// The highest high watermark a catch-up waits for on this partition:
    /// the express lane reads it while `next` is below.
    catch_up_to: i64,
    /// When a catch-up last started waiting for it (the hub's count of
    /// such waits): the express lane takes the longest waiting first.
    waited_since: u64,
    /// Whether the express lane has it assigned (kept by the lane).
    in_express_lane: bool,
    /// Whether the consumer has it assigned.
    assigned: bool,
    /// Whether it must be assigned again, from the lowest follower's `next`
    /// (or unassigned, when no follower is left).
    reassign: bool,
    followers: HashMap<u64, Follower>,
}

#[derive(Debug, Default)]
struct HubState {
    partitions: HashMap<PartitionKey, HubPartition>,
    /// The generation the next (re)reading of a partition gets.
    next_generation: u64,
    /// How many times a catch-up started waiting for a partition.
    waits: u64,
    /// How many records of its partitions the express lane took in: a
    /// catch-up queued for the lane is not stalled while this moves.
    express_taken_in: u64,
    /// Some partition's assignment must change.
    pending: bool,
    /// The hub's last read error (cleared by the next record).
    error: Option<String>,
}

/// What the hub thread and the units' tails share.
struct Hub {
    consumer: BaseConsumer,
    /// The express lane's consumer (see [`express`]).
    express: BaseConsumer,
    state: Mutex<HubState>,
    /// Notified when records arrive.
    arrived: Condvar,
    /// Notified when a catch-up starts waiting for a partition.
    wanted: Condvar,
    next_follower: AtomicU64,
    lanes: Lanes,
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, HubState> {
        // Plain data: a panicked holder leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HubState {
    /// A fresh generation for a partition read (again) from its `next`.
    fn new_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// Which of the hub's lanes read (tests take one out to see the other work
/// alone).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// The hub's pass over every followed partition and the express lane.
    Both,
    /// Only the express lane: a catch-up completes through it alone.
    ExpressOnly,
}

/// The host's one reader of output partitions; see the module docs. Its
/// threads stop when it is dropped.
pub struct TailHub {
    hub: Arc<Hub>,
    lanes: Vec<StoppableThread>,
}

impl std::fmt::Debug for TailHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailHub").finish_non_exhaustive()
    }
}

impl TailHub {
    /// A hub reading from `brokers`.
    pub fn start(brokers: &str) -> Result<Self> {
        Self::start_with(brokers, Lanes::Both)
    }

    /// A hub reading from `brokers` through `lanes` (tests).
    #[doc(hidden)]
    pub fn start_with(brokers: &str, lanes: Lanes) -> Result<Self> {
        let hub = Arc::new(Hub {
            consumer: kafka::manual_consumer(brokers, Some(TAIL_PREFETCH))?,
            express: kafka::manual_consumer(brokers, Some(express::EXPRESS_FETCH))?,
            state: Mutex::new(HubState::default()),
            arrived: Condvar::new(),
            wanted: Condvar::new(),
            next_follower: AtomicU64::new(0),
            lanes,
        });
        let mut tail_hub = TailHub {
            hub: hub.clone(),
            lanes: Vec::new(),
        };
        type Lane = fn(&Hub, &AtomicBool);
        let lanes: [(&str, Lane); 2] = [("output-tail", read), ("output-tail-fast", express::read)];
        for (name, lane) in lanes {
            let hub = hub.clone();
            let thread = StoppableThread::spawn(name, move |stop| lane(&hub, stop))
                .with_context(|| format!("starting the {name} thread"))?;
            // Pushed at once: dropping the hub on a later error stops it.
            tail_hub.lanes.push(thread);
        }
        Ok(tail_hub)
    }
}

impl Drop for TailHub {
    fn drop(&mut self) {
        // Both lanes stop at once; dropping them afterwards joins them.
        for lane in &self.lanes {
            lane.ask_to_stop();
        }
        self.hub.wanted.notify_all();
    }
}

/// The hub thread: apply assignment changes, take in records, hand their
/// ids to the followers.
fn read(hub: &Hub, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = reassign(hub) {
            tracing::warn!(error = format!("{error:#}"), "output tail: reassigning");
            hub.state().error = Some(format!("{error:#}"));
            std::thread::sleep(HUB_POLL);
            continue;
        }
        if hub.lanes == Lanes::ExpressOnly {
            // Assignments applied (the express lane waits for them), but
            // nothing taken in.
            std::thread::sleep(HUB_POLL);
            continue;
        }
        take_in(
            hub,
            &hub.consumer,
            HUB_POLL,
            "following the output partitions",
            |state, message| {
                let key = (message.topic().to_string(), message.partition());
                if let Some(partition) = state.partitions.get_mut(&key) {
                    hand_on(partition, message.offset(), id_of(message));
                }
            },
        );
    }
}

/// Take in up to [`HUB_BATCH_RECORDS`] records from `consumer` (one of the
/// hub's lanes), waiting at most `wait` for the first, and give each to
/// `hand` under the hub's lock; an error is kept as the hub's last, saying
/// what the lane was `doing`. Wakes the catch-ups if anything came.
fn take_in(
    hub: &Hub,
    consumer: &BaseConsumer,
    wait: Duration,
    doing: &str,
    mut hand: impl FnMut(&mut HubState, &BorrowedMessage<'_>),
) {
    let mut wait = wait;
    let mut taken = 0;
    while taken < HUB_BATCH_RECORDS {
        let Some(message) = consumer.poll(wait) else {
            break;
        };
        wait = Duration::ZERO;
        taken += 1;
        match message {
            Ok(message) => {
                let mut state = hub.state();
                state.error = None;
                hand(&mut state, &message);
            }
            Err(error) => hub.state().error = Some(format!("{doing}: {error}")),
        }
    }
    if taken > 0 {
        hub.arrived.notify_all();
    }
}

/// Hand the record at `offset` (with `id`, if it has one) to the
/// partition's followers, unless it was handed on already.
///
/// Either lane calls this with the records of a partition in offset order,
/// from where the partition's `next` stood when the lane was assigned it in
/// the current generation. So every record below `next` was handed on, by
/// one lane or the other, and one at or above it may be handed on now: the
/// records between were handed on too, or do not exist.
fn hand_on(partition: &mut HubPartition, offset: i64, id: Option<&str>) {
    if offset < partition.next {
        // The other lane was faster, or left over from before a re-read.
        return;
    }
    partition.next = offset + 1;
    for follower in partition.followers.values_mut() {
        if follower.rereading || offset < follower.next {
            continue;
        }
        follower.next = offset + 1;
        if offset < follower.mark {
            continue;
        }
        if let Some(id) = id.filter(|id| id.starts_with(&*follower.prefix)) {
            follower.ids.push((offset, id.to_string()));
        }
    }
}

/// The unit id an output record carries, if any.
fn id_of<M: Message>(message: &M) -> Option<&str> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == ID_HEADER)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}

/// Apply the assignment changes the followers asked for.
fn reassign(hub: &Hub) -> Result<()> {
    let mut unassign = TopicPartitionList::new();
    let mut assign = TopicPartitionList::new();
    {
        let mut guard = hub.state();
        // Borrowed whole, so that its fields can be borrowed apart.
        let state = &mut *guard;
        if !state.pending {
            return Ok(());
        }
        state.pending = false;
        let mut gone = Vec::new();
        for (key, partition) in state.partitions.iter_mut() {
            if !partition.reassign {
                continue;
            }
            partition.reassign = false;
            if partition.assigned {
                unassign.add_partition(&key.0, key.1);
                partition.assigned = false;
            }
            for follower in partition.followers.values_mut() {
                // From here on the hub reads from the lowest `next`.
                follower.rereading = false;
            }
            match partition.followers.values().map(|f| f.next).min() {
                Some(from) => {
                    partition.next = from;
                    // The express lane's records of the last reading are
                    // from further on: none of them may be handed on now.
                    state.next_generation += 1;
                    partition.generation = state.next_generation;
                    partition.assigned = true;
                    assign
                        .add_partition_offset(&key.0, key.1, Offset::Offset(from))
                        .context("building the tail assignment")?;
                }
                None => gone.push(key.clone()),
            }
        }
        for key in gone {
            state.partitions.remove(&key);
        }
    }
    if unassign.count() > 0 {
        hub.consumer
            .incremental_unassign(&unassign)
            .context("unassigning output partitions")?;
    }
    if assign.count() > 0 {
        hub.consumer
            .incremental_assign(&assign)
            .context("assigning output partitions")?;
    }
    Ok(())
}

/// A unit's view of the hub: the partitions it follows from its marks.
pub struct OutputTail {
    hub: Arc<Hub>,
    id: u64,
    prefix: Arc<str>,
    /// The partitions followed (none while paused).
    followed: Vec<PartitionKey>,
}

impl OutputTail {
    /// Follow each partition from its mark, keeping the ids that start with
    /// `prefix`.
    pub fn open(hub: &TailHub, prefix: &str, partitions: &[FollowFrom]) -> Result<Self> {
        let mut tail = OutputTail {
            hub: hub.hub.clone(),
            id: hub.hub.next_follower.fetch_add(1, Ordering::Relaxed),
            prefix: prefix.into(),
            followed: Vec::new(),
        };
        tail.rebase(partitions)?;
        Ok(tail)
    }

    /// Follow `partitions` from their marks (a new checkpoint's): ids below
    /// the marks are dropped, what was read above them is kept. A mark
    /// below what was already read (a checkpoint older than the last one)
    /// re-reads from it; a partition not followed before is read from its
    /// mark.
    pub fn rebase(&mut self, partitions: &[FollowFrom]) -> Result<()> {
        let mut state = self.hub.state();
        let wanted: HashSet<PartitionKey> = partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        for key in self.followed.iter().filter(|k| !wanted.contains(*k)) {
            leave(&mut state, key, self.id);
        }
        for want in partitions {
            let key = (want.topic.clone(), want.partition);
            let generation = state.new_generation();
            let partition = state.partitions.entry(key).or_insert_with(|| HubPartition {
                next: want.mark,
                generation,
                reassign: true,
                ..HubPartition::default()
            });
            let follower = partition.followers.entry(self.id).or_insert(Follower {
                prefix: self.prefix.clone(),
                mark: want.mark,
                next: want.mark,
                ids: Vec::new(),
                rereading: false,
            });
            if want.mark >= follower.mark {
                follower.ids.retain(|(offset, _)| *offset >= want.mark);
                follower.next = follower.next.max(want.mark);
            } else {
                follower.ids.clear();
                follower.next = want.mark;
            }
            follower.mark = want.mark;
            if follower.next < partition.next {
                follower.rereading = true;
                partition.reassign = true;
            }
            state.pending |= partition_reassign(&state, &want.topic, want.partition);
        }
        self.followed = partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        Ok(())
    }

    /// Stop following until the next [`rebase`](Self::rebase) (the leader
    /// knows what it produces); what was read is dropped.
    pub fn pause(&mut self) -> Result<()> {
        let mut state = self.hub.state();
        for key in std::mem::take(&mut self.followed) {
            leave(&mut state, &key, self.id);
        }
        Ok(())
    }

    /// Wait until the hub has read up to `highs` — the high watermark of
    /// each followed partition, asked of the broker after the previous
    /// leader was fenced — and return the ids since the marks. Goes on as
    /// long as records arrive and `keep_going` holds; fails after
    /// [`CATCH_UP_STALL_BOUND`] without a record (while it waits its turn
    /// in the express lane: without a record for any partition of the
    /// lane), or once `keep_going` is false (what was read stays for the
    /// next attempt). A high watermark
    /// below a mark means the topic was recreated since the checkpoint: an
    /// error naming it.
    pub fn catch_up(
        &mut self,
        highs: &BTreeMap<String, i64>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>> {
        let mut wanted = Vec::with_capacity(self.followed.len());
        {
            let state = self.hub.state();
            for key in &self.followed {
                let (topic, partition) = key;
                let high = *highs.get(topic).ok_or_else(|| {
                    anyhow!("no high watermark of {topic}/{partition} to read back to")
                })?;
                let mark = self.follower(&state, key)?.mark;
                if high < mark {
                    bail!(
                        "the output partition {topic}/{partition} ends at offset {high}, before the checkpoint's mark {mark}: the topic was deleted and recreated (or truncated); deploy the processor again with --reset to start it over",
                    );
                }
                wanted.push(high);
            }
        }
        let started = Instant::now();
        let mut last_progress = started;
        let mut state = self.hub.state();
        let mut seen: Vec<i64> = Vec::new();
        let mut lane_seen = state.express_taken_in;
        loop {
            let mut behind = None;
            let mut now_seen = Vec::with_capacity(wanted.len());
            let mut express_asked = false;
            // Whether one of the partitions waited for is queued for the
            // express lane (waiting for a free place in it).
            let mut queued = false;
            let state_now = &mut *state;
            for (key, &high) in self.followed.iter().zip(&wanted) {
                let next = self.follower(state_now, key)?.next;
                now_seen.push(next);
                if next >= high {
                    continue;
                }
                if behind.is_none() {
                    behind = Some((key.clone(), next, high));
                }
                // Followed, so present (checked just above).
                if let Some(partition) = state_now.partitions.get_mut(key) {
                    if partition.catch_up_to < high {
                        if partition.next >= partition.catch_up_to {
                            state_now.waits += 1;
                            partition.waited_since = state_now.waits;
                        }
                        partition.catch_up_to = high;
                        express_asked = true;
                    }
                    queued |= !partition.in_express_lane;
                }
            }
            if express_asked {
                self.hub.wanted.notify_all();
            }
            let Some(((topic, partition), next, high)) = behind else {
                break;
            };
            // Progress: a partition waited for moved on, or, while one waits
            // its turn in the express lane, the lane moved on (the broker
            // answers; the queue is long).
            let lane_moved = state.express_taken_in != lane_seen;
            lane_seen = state.express_taken_in;
            if now_seen != seen || (queued && lane_moved) {
                seen = now_seen;
                last_progress = Instant::now();
            }
            if !keep_going() {
                bail!("stopped reading back the output partitions: no longer leading");
            }
            if last_progress.elapsed() > CATCH_UP_STALL_BOUND {
                let cause = state
                    .error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                bail!(
                    "reading back {topic}/{partition} stalled at offset {next} of {high}: nothing arrived for {CATCH_UP_STALL_BOUND:?}{cause}"
                );
            }
            state = self
                .hub
                .arrived
                .wait_timeout(state, HUB_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            "output tail: caught up"
        );
        let mut ids = HashSet::new();
        for key in &self.followed {
            ids.extend(
                self.follower(&state, key)?
                    .ids
                    .iter()
                    .map(|(_, id)| id.clone()),
            );
        }
        Ok(ids)
    }

    fn follower<'s>(&self, state: &'s HubState, key: &PartitionKey) -> Result<&'s Follower> {
        state
            .partitions
            .get(key)
            .and_then(|p| p.followers.get(&self.id))
            .ok_or_else(|| anyhow!("{}/{} is not followed", key.0, key.1))
    }
}

impl Drop for OutputTail {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        for key in std::mem::take(&mut self.followed) {
            leave(&mut state, &key, self.id);
        }
    }
}

/// Whether `topic`/`partition` waits for the hub to reassign it.
fn partition_reassign(state: &HubState, topic: &str, partition: i32) -> bool {
    state
        .partitions
        .get(&(topic.to_string(), partition))
        .is_some_and(|p| p.reassign)
}

/// Follower `id` stops following `key`; a partition nobody follows is
/// unassigned by the hub.
fn leave(state: &mut HubState, key: &PartitionKey, id: u64) {
    if let Some(partition) = state.partitions.get_mut(key) {
        partition.followers.remove(&id);
        if partition.followers.is_empty() {
            partition.reassign = true;
            state.pending = true;
        }
    }
}
