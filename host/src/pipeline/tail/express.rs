//! The tail hub's express lane: a second consumer that reads only the
//! output partitions some catch-up waits for.
//!
//! The hub's own consumer follows every output partition the host's units
//! follow, and a takeover's catch-up would wait for its pass: for the fetch
//! in flight over all of them, then one more. The express lane is assigned
//! a partition when a catch-up waits for it (its `catch_up_to` above its
//! `next`), from the partition's `next`, and unassigned once `next` reached
//! `catch_up_to`, so its fetches carry the handful of partitions takeovers
//! wait for, at the same time as the hub's. It reads at most
//! [`EXPRESS_MAX_PARTITIONS`] at once, those waited for longest first; a
//! catch-up waiting its turn is not stalled while the lane moves on.
//!
//! Guarantees: the lane hands on records through the same
//! [`hand_on`](super::hand_on) as the hub, so a follower sees each record
//! once, in offset order, whichever lane read it first. It hands on a
//! record only in the generation (reading) of the partition it was assigned
//! in: a re-read from further back starts a new one, and until the lane is
//! assigned the partition again from there, what it reads is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{hand_on, id_of, take_in, Hub, HubState, PartitionKey, HUB_POLL};
use crate::pipeline::kafka::FetchProfile;

/// How the lane's consumer fetches: a catch-up waits for its answer, so
/// the broker may hold it only briefly.
pub(super) const EXPRESS_FETCH: FetchProfile = FetchProfile {
    records: 10_000,
    kbytes: 4 * 1024,
    max_wait_ms: 10,
};
/// Longest wait for records while partitions are assigned; the lane looks
/// at what catch-ups wait for this often.
const EXPRESS_POLL: Duration = Duration::from_millis(20);
/// Most partitions the lane reads at once; the others wait their turn,
/// longest waiting first. A fetch carries every assigned partition, and a
/// broker that serves a fetch partition after partition (tansu) times out
/// a fetch over a thousand of them: at 1,000 units with no bound, no
/// read-back got anything for 30 s, and the takeovers failed over and over.
pub const EXPRESS_MAX_PARTITIONS: usize = 64;

/// The lane's thread: assign what catch-ups wait for, hand on what arrives.
pub(super) fn read(hub: &Hub, stop: &AtomicBool) {
    // The partitions the lane's consumer has assigned, with the generation
    // of the partition's reading they were assigned in.
    let mut assigned: HashMap<PartitionKey, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = reassign(hub, &mut assigned) {
            tracing::warn!(
                error = format!("{error:#}"),
                "output tail express lane: reassigning"
            );
            // Start over from nothing assigned; the next round assigns
            // again what is still waited for.
            let _ = hub.express.unassign();
            let mut state = hub.state();
            for key in assigned.keys() {
                if let Some(partition) = state.partitions.get_mut(key) {
                    partition.in_express_lane = false;
                }
            }
            drop(state);
            assigned.clear();
            std::thread::sleep(HUB_POLL);
            continue;
        }
        if assigned.is_empty() {
            let state = hub.state();
            if !state.partitions.values().any(waited_for) {
                let _ = hub.wanted.wait_timeout(state, HUB_POLL);
            }
            continue;
        }
        take_in(
            hub,
            &hub.express,
            EXPRESS_POLL,
            "reading back the output partitions",
            |state, message| {
                let key = (message.topic().to_string(), message.partition());
                let Some(&generation) = assigned.get(&key) else {
                    return;
                };
                state.express_taken_in += 1;
                hand_on_in_generation(state, &key, generation, message.offset(), id_of(message));
            },
        );
    }
}

/// Hand on the lane's record at `offset` of `key`, read in `generation`,
/// unless the partition is being read again since (or no longer followed).
fn hand_on_in_generation(
    state: &mut HubState,
    key: &PartitionKey,
    generation: u64,
    offset: i64,
    id: Option<&str>,
) {
    if let Some(partition) = state.partitions.get_mut(key) {
        if partition.generation == generation {
            hand_on(partition, offset, id);
        }
    }
}

/// Whether a catch-up waits for more of `partition` than was handed on,
/// and the lane may read it: not while the hub is about to read it again
/// from further back (its `next` would move down under the lane).
fn waited_for(partition: &super::HubPartition) -> bool {
    partition.next < partition.catch_up_to && !partition.reassign
}

/// Unassign the partitions caught up (or read again since, or no longer
/// followed); assign, from their `next`, those newly waited for.
fn reassign(hub: &Hub, assigned: &mut HashMap<PartitionKey, u64>) -> Result<()> {
    let mut unassign = TopicPartitionList::new();
    let mut assign = TopicPartitionList::new();
    {
        let mut state = hub.state();
        assigned.retain(|key, generation| {
            let partition = state.partitions.get_mut(key);
            let keep = partition
                .as_ref()
                .is_some_and(|p| p.generation == *generation && waited_for(p));
            if !keep {
                if let Some(partition) = partition {
                    partition.in_express_lane = false;
                }
                unassign.add_partition(&key.0, key.1);
            }
            keep
        });
        let room = EXPRESS_MAX_PARTITIONS.saturating_sub(assigned.len());
        if room > 0 {
            let mut queue: Vec<(u64, &PartitionKey)> = state
                .partitions
                .iter()
                .filter(|(key, p)| waited_for(p) && !assigned.contains_key(*key))
                .map(|(key, p)| (p.waited_since, key))
                .collect();
            queue.sort_unstable();
            let turn: Vec<PartitionKey> = queue
                .into_iter()
                .take(room)
                .map(|(_, key)| key.clone())
                .collect();
            for key in turn {
                let partition = state
                    .partitions
                    .get_mut(&key)
                    .expect("picked from the partitions");
                partition.in_express_lane = true;
                assign
                    .add_partition_offset(&key.0, key.1, Offset::Offset(partition.next))
                    .context("building the express lane's assignment")?;
                assigned.insert(key, partition.generation);
            }
        }
    }
    if unassign.count() > 0 {
        hub.express
            .incremental_unassign(&unassign)
            .context("unassigning caught-up output partitions")?;
    }
    if assign.count() > 0 {
        tracing::debug!(
            partitions = assign.count(),
            "output tail express lane: reading what catch-ups wait for"
        );
        hub.express
            .incremental_assign(&assign)
            .context("assigning the output partitions catch-ups wait for")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Follower, HubPartition};
    use super::*;

    fn follower(mark: i64, next: i64) -> Follower {
        Follower {
            prefix: "u/".into(),
            mark,
            next,
            ids: Vec::new(),
            rereading: false,
        }
    }

    #[test]
    fn a_record_read_before_the_partition_was_read_again_is_not_handed_on() {
        let key: PartitionKey = ("out".into(), 0);
        let mut state = HubState::default();
        let generation = state.new_generation();
        let mut partition = HubPartition {
            next: 100,
            generation,
            ..HubPartition::default()
        };
        partition.followers.insert(1, follower(0, 100));
        state.partitions.insert(key.clone(), partition);

        // Read in the lane's generation: handed on.
        hand_on_in_generation(&mut state, &key, generation, 100, Some("u/100"));
        let partition = &state.partitions[&key];
        assert_eq!((partition.next, partition.followers[&1].next), (101, 101));

        // A follower back at an older mark: the hub reads the partition
        // again from 30, in a new generation (what `reassign` does).
        let newer = state.new_generation();
        let partition = state.partitions.get_mut(&key).unwrap();
        partition.followers.insert(2, follower(30, 30));
        partition.next = 30;
        partition.generation = newer;
        // The lane's record from further on, read before it was assigned
        // again: handing it on would skip offsets 30..101 for follower 2.
        hand_on_in_generation(&mut state, &key, generation, 101, Some("u/101"));
        let partition = &state.partitions[&key];
        assert_eq!(partition.next, 30);
        assert_eq!(partition.followers[&2].next, 30);
        assert!(partition.followers[&2].ids.is_empty());

        // Assigned again in the new generation, from 30: handed on.
        hand_on_in_generation(&mut state, &key, newer, 30, Some("u/30"));
        let partition = &state.partitions[&key];
        assert_eq!(partition.followers[&2].ids, vec![(30, "u/30".to_string())]);
        // Follower 1 saw up to 100 already: nothing again.
        assert_eq!(
            partition.followers[&1].ids,
            vec![(100, "u/100".to_string())]
        );
    }
}
