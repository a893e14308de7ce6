//! Producing a processed batch: each output to the partition its unit
//! writes in the output's topic (the default output topic when it names
//! none), each refused record to the dead-letter topic with its reason,
//! every one with its deterministic id ([`UnitId::output_id`],
//! [`UnitId::dead_letter_id`]) — skipping ids the takeover's read-back
//! found already on the topics.
//!
//! An output can only name a topic its processor was deployed with: the
//! instance fails the batch otherwise (`wasm::instance`), so the record is
//! dead-lettered and nothing of it is produced.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Result};

use super::Active;
use crate::pipeline::kafka::Outgoing;
use crate::record::LogRecord;
use crate::store::registry::ProcessorSpec;
use crate::unit_id::{Deployment, UnitId};
use crate::wasm::bindings::Header;
use crate::wasm::ProcessedBatch;

/// Header of a dead letter carrying the reason.
pub const ERROR_HEADER: &str = "logstream-error";
/// Longest reason a dead letter carries, in bytes: a processor's rejection
/// reason is its own string, and an unbounded one could make the dead
/// letter too large for the broker (the partition would stop there).
pub const MAX_DEAD_LETTER_REASON_BYTES: usize = 4096;

/// How many records a batch produced.
pub(super) struct Sent {
    pub outputs: u64,
    pub dead_letters: u64,
}

/// Hold a batch's outputs and dead letters in the producer (the caller
/// flushes), skipping suppressed ids.
pub(super) fn emit(
    active: &mut Active,
    unit: &UnitId,
    deployment: &Deployment,
    spec: &ProcessorSpec,
    sources: &[LogRecord],
    result: &ProcessedBatch,
) -> Result<Sent> {
    // A copy (a few entries): the producer borrows the links below.
    let targets = active.links.targets().clone();
    let producer = active.links.producer();
    let partition_of = |topic: &str| -> Result<i32> {
        targets.get(topic).copied().ok_or_else(|| {
            anyhow!(
                "unit {unit} has no partition of topic {topic:?} to write (not deployed with it)"
            )
        })
    };
    let mut sent = Sent {
        outputs: 0,
        dead_letters: 0,
    };
    let mut index_of: HashMap<u32, u32> = HashMap::new();
    for output in &result.outputs {
        let source = &sources[output.input_index as usize];
        let index = index_of.entry(output.input_index).or_insert(0);
        let id = unit.output_id(deployment, source.offset, *index);
        *index += 1;
        if suppress(&mut active.suppressed, &id) {
            continue;
        }
        let topic = output.topic.as_deref().unwrap_or(&spec.output_topic);
        let partition = partition_of(topic)?;
        producer.send(&Outgoing {
            topic,
            partition,
            key: output.key.as_deref(),
            value: &output.value,
            headers: &output.headers,
            id: Some(&id),
        })?;
        sent.outputs += 1;
    }
    // Dead letters in input order, whichever way each record failed.
    let mut refusals: Vec<(u32, String)> = result
        .rejections
        .iter()
        .map(|r| (r.input_index, format!("rejected: {}", r.reason)))
        .chain(
            result
                .failures
                .iter()
                .map(|f| (f.input_index, format!("failed: {}", f.error))),
        )
        .collect();
    refusals.sort_by_key(|(input_index, _)| *input_index);
    let dead_letter_topic = spec.dead_letter_topic();
    let dead_letter_partition = partition_of(&dead_letter_topic)?;
    for (input_index, reason) in refusals {
        let source = &sources[input_index as usize];
        let id = unit.dead_letter_id(deployment, source.offset);
        if suppress(&mut active.suppressed, &id) {
            continue;
        }
        let mut headers = source.headers.clone();
        headers.push(Header {
            key: ERROR_HEADER.to_string(),
            value: bounded_reason(reason).into_bytes(),
        });
        producer.send(&Outgoing {
            topic: &dead_letter_topic,
            partition: dead_letter_partition,
            key: source.key.as_deref(),
            value: &source.value,
            headers: &headers,
            id: Some(&id),
        })?;
        sent.dead_letters += 1;
    }
    Ok(sent)
}

/// Whether output `id` is already on its topic (the takeover's read-back
/// found it): then it is not produced again, and no longer looked for.
fn suppress(suppressed: &mut HashSet<String>, id: &str) -> bool {
    // A deliberately broken variant for the simulator (`logstream-sim`),
    // compiled in only with `failpoints` and armed only by a test:
    // suppressing as many outputs as the read-back found, whatever their
    // ids. The simulator must catch it.
    #[cfg(feature = "failpoints")]
    if fail::eval("suppress-by-count", |_| ()).is_some() {
        let any = suppressed.iter().next().cloned();
        return any.is_some_and(|any| suppressed.remove(&any));
    }
    suppressed.remove(id)
}

/// `reason` cut to [`MAX_DEAD_LETTER_REASON_BYTES`] (at a character
/// boundary, saying how much was cut).
fn bounded_reason(reason: String) -> String {
    if reason.len() <= MAX_DEAD_LETTER_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_DEAD_LETTER_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &reason[..end], reason.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        assert_eq!(bounded_reason("short".into()), "short");
        let long = "é".repeat(MAX_DEAD_LETTER_REASON_BYTES);
        let cut = bounded_reason(long.clone());
        assert!(
            cut.len() < MAX_DEAD_LETTER_REASON_BYTES + 40,
            "{}",
            cut.len()
        );
        assert!(cut.ends_with(&format!(
            "… ({} bytes cut)",
            long.len() - MAX_DEAD_LETTER_REASON_BYTES
        )));
    }
}
