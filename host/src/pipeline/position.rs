//! Where a unit stands at a checkpoint: the next input offset, and for
//! every output partition the unit writes, the high watermark it had when
//! the checkpoint was taken (its *mark*), plus the deployment that wrote it.
//!
//! The checkpoint store keeps these as opaque string marks
//! ([`CheckpointMeta::marks`]); this module owns their encoding:
//!
//! | mark | value | meaning |
//! |---|---|---|
//! | `out:TOPIC` | `PARTITION:OFFSET` | the unit writes `TOPIC` partition `PARTITION`; its outputs there from `OFFSET` on are not covered by the checkpoint |
//! | `lineage` | integer | the processor's state lineage (`ProcessorSpec::lineage`) |
//! | `spec_version` | integer | the processor version that wrote the checkpoint |
//!
//! Guarantees:
//! - **Stable output partitions.** Once a checkpoint records the partition
//!   a unit writes in a topic, the unit keeps writing there, whatever the
//!   topic's partition count becomes ([`Position::output_partition`]): the
//!   read-back at a takeover looks where the outputs went.
//! - **A mark before the first output.** [`Position::covers`] tells
//!   whether the checkpoint marks every partition the unit writes; a unit
//!   takes over only from a position that does (it checkpoints first
//!   otherwise), so no output is ever produced to a partition whose
//!   read-back start is unknown.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use crate::store::checkpoint::CheckpointMeta;

/// Prefix of an output mark.
const OUTPUT_MARK_PREFIX: &str = "out:";
/// The lineage mark.
const LINEAGE_MARK: &str = "lineage";
/// The spec-version mark.
const SPEC_VERSION_MARK: &str = "spec_version";

/// An output partition and the offset its read-back starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputMark {
    pub partition: i32,
    /// The partition's high watermark when the checkpoint was taken.
    pub offset: i64,
}

/// The position a checkpoint (or its absence) puts a unit at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Next input offset (`None`: the earliest).
    pub next_offset: Option<i64>,
    /// Output mark per topic.
    pub marks: BTreeMap<String, OutputMark>,
    /// The lineage and version of the processor that wrote it (0: none or
    /// unknown).
    pub lineage: u64,
    pub spec_version: u64,
}

impl Position {
    /// The position recorded in `meta` for input `partition` (no
    /// checkpoint: the start of the input, no marks).
    pub fn of(meta: Option<&CheckpointMeta>, partition: i32) -> Result<Position> {
        let Some(meta) = meta else {
            return Ok(Position::default());
        };
        let number = |name: &str| -> Result<u64> {
            meta.marks
                .get(name)
                .map(|v| {
                    v.parse()
                        .map_err(|_| anyhow!("the checkpoint mark {name} is {v:?}, not a number"))
                })
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let mut marks = BTreeMap::new();
        for (name, value) in &meta.marks {
            let Some(topic) = name.strip_prefix(OUTPUT_MARK_PREFIX) else {
                continue;
            };
            let mark = value
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
                .map(|(partition, offset)| OutputMark { partition, offset })
                .ok_or_else(|| {
                    anyhow!("the checkpoint mark {name} is {value:?}, not PARTITION:OFFSET")
                })?;
            marks.insert(topic.to_string(), mark);
        }
        Ok(Position {
            next_offset: meta.offsets.get(&partition).copied(),
            marks,
            lineage: number(LINEAGE_MARK)?,
            spec_version: number(SPEC_VERSION_MARK)?,
        })
    }

    /// The lineage and version a checkpoint's marks name (0 when none),
    /// without decoding the rest.
    pub fn deployment_of(meta: &CheckpointMeta) -> (u64, u64) {
        let number = |name| {
            meta.marks
                .get(name)
                .and_then(|v: &String| v.parse().ok())
                .unwrap_or(0)
        };
        (number(LINEAGE_MARK), number(SPEC_VERSION_MARK))
    }

    /// The marks as the checkpoint store keeps them.
    pub fn to_marks(&self) -> BTreeMap<String, String> {
        let mut marks: BTreeMap<String, String> = self
            .marks
            .iter()
            .map(|(topic, mark)| {
                (
                    format!("{OUTPUT_MARK_PREFIX}{topic}"),
                    format!("{}:{}", mark.partition, mark.offset),
                )
            })
            .collect();
        marks.insert(LINEAGE_MARK.to_string(), self.lineage.to_string());
        marks.insert(SPEC_VERSION_MARK.to_string(), self.spec_version.to_string());
        marks
    }

    /// The partition of `topic` the unit writes: the recorded one, else
    /// input partition `input_partition` modulo the topic's `partitions`.
    pub fn output_partition(&self, topic: &str, input_partition: i32, partitions: i32) -> i32 {
        match self.marks.get(topic) {
            Some(mark) => mark.partition,
            None => input_partition % partitions.max(1),
        }
    }

    /// Whether every one of `topics` has a mark.
    pub fn covers<'a>(&self, mut topics: impl Iterator<Item = &'a str>) -> bool {
        topics.all(|topic| self.marks.contains_key(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(marks: &[(&str, &str)]) -> CheckpointMeta {
        CheckpointMeta {
            generation: 1,
            epoch: 1,
            state_version: 1,
            size_bytes: 0,
            chunk_bytes: 1,
            chunk_count: 0,
            sha256: "0".repeat(64),
            offsets: BTreeMap::from([(2, 40)]),
            marks: marks
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at_unix_ms: 0,
        }
    }

    #[test]
    fn a_position_round_trips_through_the_marks() {
        let position = Position {
            next_offset: Some(40),
            marks: BTreeMap::from([
                (
                    "out".into(),
                    OutputMark {
                        partition: 1,
                        offset: 7,
                    },
                ),
                (
                    "lc.dlq".into(),
                    OutputMark {
                        partition: 2,
                        offset: 0,
                    },
                ),
            ]),
            lineage: 3,
            spec_version: 9,
        };
        let mut stored = meta(&[]);
        stored.marks = position.to_marks();
        assert_eq!(Position::of(Some(&stored), 2).unwrap(), position);
        assert_eq!(Position::deployment_of(&stored), (3, 9));
    }

    #[test]
    fn no_checkpoint_is_the_start_with_no_marks() {
        let start = Position::of(None, 0).unwrap();
        assert_eq!(start.next_offset, None);
        assert!(!start.covers(["out"].into_iter()));
        assert!(start.covers(std::iter::empty()));
    }

    #[test]
    fn a_recorded_partition_outlives_a_changed_partition_count() {
        let stored = meta(&[("out:out", "1:7")]);
        let position = Position::of(Some(&stored), 4).unwrap();
        // 4 % 3 would be 1 anyway; with 5 partitions it would be 4.
        assert_eq!(position.output_partition("out", 4, 5), 1);
        assert_eq!(position.output_partition("alerts", 4, 5), 4);
        assert_eq!(position.output_partition("alerts", 4, 0), 0);
        assert!(position.covers(["out"].into_iter()));
        assert!(!position.covers(["out", "alerts"].into_iter()));
    }

    #[test]
    fn malformed_marks_are_errors_not_zeros() {
        for bad in [("out:x", "1"), ("out:x", "a:1"), ("lineage", "-1")] {
            assert!(Position::of(Some(&meta(&[bad])), 2).is_err(), "{bad:?}");
        }
    }
}
