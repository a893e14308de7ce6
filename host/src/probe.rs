//! `logstream probe-election`: a diagnostic contender. It joins the election
//! of one processor on a store and, whenever it believes it holds the
//! epoch, appends fenced entries to a probe log in the store. Running a few
//! probes against one store and killing or pausing the leader shows the
//! election and the fencing at work; a checker ([`check_probe_log`]) then
//! verifies the log. Each probe also registers and heartbeats as a host
//! (store membership), as a `logstream host` does.
//!
//! The probe writes whenever it *believes* it leads, even past its
//! validity, so that a resumed zombie really attempts a write and the
//! store's fence (not the probe's own caution) is what refuses it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use foundationdb_tuple::Subspace;
use serde::{Deserialize, Serialize};

use crate::store::clock::{Clock, SystemClock};
use crate::store::election::{self, check_fence, Election, ElectionEvent, ElectionTiming, Fenced};
use crate::store::kv::{prefix_end, transact, KvStore, RetryPolicy, TransactError};
use crate::store::membership;

/// Entries one probe log read returns at most per transaction.
const LOG_PAGE_ENTRIES: usize = 1000;

/// What a probe does.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub processor: String,
    pub host_id: String,
    pub timing: ElectionTiming,
    /// Pause between fenced writes while leading.
    pub write_interval: Duration,
}

/// One accepted fenced write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEntry {
    pub epoch: u64,
    pub holder: String,
    /// Wall-clock time of the write, µs since the Unix epoch. Only for
    /// benchmarks on one machine: never compared across machines.
    #[serde(default)]
    pub written_at_us: u64,
}

fn log_subspace(processor: &str) -> Subspace {
    Subspace::from(("probe", processor))
}

fn counter_key(processor: &str) -> Vec<u8> {
    Subspace::from(("probe-seq", processor)).bytes().to_vec()
}

/// A process-unique incarnation id for `host_id`.
pub fn incarnation_of(host_id: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host_id}:{}:{nonce:08x}", std::process::id())
}

/// The process id in an incarnation made by [`incarnation_of`].
pub fn pid_of(incarnation: &str) -> Option<u32> {
    incarnation.split(':').nth(1)?.parse().ok()
}

/// Widest gap between two wall-clock readings around an election clock
/// reading for the pair to count as simultaneous, in µs.
const CLOCK_PAIR_TOLERANCE_US: u64 = 1_000;
/// Most attempts at a simultaneous pair before taking the last one.
const CLOCK_PAIR_ATTEMPTS: usize = 100;

/// The election clock's reading and the wall clock (µs) at the same moment,
/// within [`CLOCK_PAIR_TOLERANCE_US`] (the wall reading taken after, so an
/// interval's end is never printed early).
fn wall_clock_at(clock: &SystemClock) -> (Duration, u64) {
    let mut pair = (clock.now(), unix_micros());
    for _ in 0..CLOCK_PAIR_ATTEMPTS {
        let before = unix_micros();
        let now = clock.now();
        let after = unix_micros();
        pair = (now, after);
        if after.saturating_sub(before) <= CLOCK_PAIR_TOLERANCE_US {
            break;
        }
    }
    pair
}

/// Run the probe until `shutdown` is set. Prints one line per event on
/// stdout (for people and tests).
pub fn run(store: Arc<dyn KvStore>, config: ProbeConfig, shutdown: Arc<AtomicBool>) -> Result<()> {
    config.timing.validate().map_err(anyhow::Error::msg)?;
    let clock = SystemClock::default();
    let policy = RetryPolicy {
        max_elapsed: config.timing.heartbeat,
        ..RetryPolicy::default()
    };
    let incarnation = incarnation_of(&config.host_id);
    let mut election = Election::new(&config.host_id, &incarnation, config.timing);
    let name = config.processor.as_str();
    println!(
        "probe {incarnation} contending for '{name}' on {}",
        store.describe()
    );
    let started_at_unix_ms = unix_micros() / 1000;
    let mut next_round = Duration::ZERO;
    while !shutdown.load(Ordering::Relaxed) {
        // Write first: after a pause (SIGSTOP) the first thing a zombie does
        // is try to write, and the fence must refuse it.
        if let Some(epoch) = election.held_epoch() {
            match append_entry(store.as_ref(), &policy, name, epoch, &incarnation) {
                Ok(()) => {}
                Err(TransactError::Aborted(error)) if error.is::<Fenced>() => {
                    println!("fenced write refused: {error}; becoming passive");
                    next_round = Duration::ZERO;
                }
                Err(error) => tracing::warn!("probe write failed: {error}"),
            }
        }
        let now = clock.now();
        if now >= next_round {
            next_round = now + config.timing.heartbeat;
            if let Err(error) = membership::heartbeat(
                store.as_ref(),
                &policy,
                &config.host_id,
                &incarnation,
                started_at_unix_ms,
                None,
                None,
            ) {
                tracing::warn!("membership heartbeat failed: {error}");
            }
            match election::step(store.as_ref(), &policy, &mut election, name, &clock, false) {
                Ok(outcome) => report(name, outcome.event),
                Err(error) => tracing::warn!("election round failed: {error}"),
            }
            // The interval this contender now believes it may act in, on the
            // wall clock (comparable between probes on one machine). The
            // election's clock and the wall clock are read together (see
            // `wall_clock_at`): a probe descheduled between the two readings
            // would otherwise print an interval shifted by that pause.
            let (now, now_us) = wall_clock_at(&clock);
            if let (Some(epoch), Some(until)) =
                (election.acting_epoch(now), election.acting_until())
            {
                let until_us = now_us + (until - now).as_micros() as u64;
                println!("{ACTING_LINE} epoch={epoch} from_us={now_us} until_us={until_us}");
            }
        }
        std::thread::sleep(config.write_interval.min(config.timing.heartbeat));
    }
    if let Some(epoch) = election.held_epoch() {
        // It stops acting here, before the release lets a contender claim
        // at once: the intervals printed before may end later than this.
        let (_, now_us) = wall_clock_at(&clock);
        println!("{STOPPED_ACTING_LINE} epoch={epoch} at_us={now_us}");
        election.request_step_down();
        let outcome = election::step(store.as_ref(), &policy, &mut election, name, &clock, false)?;
        report(name, outcome.event);
    }
    membership::deregister(store.as_ref(), &policy, &config.host_id, &incarnation)?;
    Ok(())
}

fn report(name: &str, event: Option<ElectionEvent>) {
    match event {
        Some(ElectionEvent::BecameLeader { epoch }) => {
            println!("became leader of '{name}' at epoch {epoch}")
        }
        Some(ElectionEvent::Fenced { epoch, by_epoch }) => {
            println!("lost leadership of '{name}' at epoch {epoch}: fenced by epoch {by_epoch}; now passive")
        }
        Some(ElectionEvent::SteppedDown { epoch }) => {
            println!("stepped down from '{name}' at epoch {epoch}")
        }
        // The probe acts by its acting epoch, which already says so.
        Some(ElectionEvent::Resumed { .. }) | None => {}
    }
}

fn append_entry(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    processor: &str,
    epoch: u64,
    incarnation: &str,
) -> Result<(), TransactError> {
    let entry = serde_json::to_vec(&ProbeEntry {
        epoch,
        holder: incarnation.to_string(),
        written_at_us: unix_micros(),
    })
    .expect("serialises");
    transact(store, policy, |txn| {
        check_fence(txn, processor, epoch, incarnation)?;
        // The sequence number is read and written in the fenced
        // transaction, so log order is commit order.
        let counter = counter_key(processor);
        let seq = match txn.get(&counter)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().unwrap_or([0; 8])) + 1,
            None => 0,
        };
        txn.set(&counter, &seq.to_be_bytes())?;
        txn.set(&log_subspace(processor).pack(&seq), &entry)?;
        Ok(())
    })
}

/// Wall-clock microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Read the whole probe log of `processor`, in commit order.
pub fn read_probe_log(store: &dyn KvStore, processor: &str) -> Result<Vec<ProbeEntry>> {
    let subspace = log_subspace(processor);
    let end = prefix_end(subspace.bytes());
    let mut begin = subspace.bytes().to_vec();
    let mut entries = Vec::new();
    loop {
        let page = transact(store, &RetryPolicy::default(), |txn| {
            Ok(txn.get_range(&begin, &end, LOG_PAGE_ENTRIES)?)
        })?;
        for (_, value) in &page {
            entries.push(serde_json::from_slice(value)?);
        }
        match page.last() {
            Some((key, _)) if page.len() == LOG_PAGE_ENTRIES => {
                begin = key.clone();
                begin.push(0);
            }
            _ => return Ok(entries),
        }
    }
}

/// How a probe's stdout line that states an acting interval begins.
pub const ACTING_LINE: &str = "acting";

/// How a probe's stdout line begins that says it stopped acting (before a
/// graceful step-down): it cuts the intervals of that epoch printed before.
pub const STOPPED_ACTING_LINE: &str = "stopped acting";

/// One interval a contender believed it may act in (wall clock, µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingInterval {
    pub holder: String,
    pub epoch: u64,
    pub from_us: u64,
    pub until_us: u64,
}

/// The acting intervals a probe printed (`holder` names the probe), each
/// cut where the probe said it stopped acting for that epoch.
pub fn acting_intervals(output: &str, holder: &str) -> Vec<ActingInterval> {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let mut intervals: Vec<ActingInterval> = Vec::new();
    for line in output.lines() {
        if line.starts_with(STOPPED_ACTING_LINE) {
            let (Some(epoch), Some(at_us)) = (field(line, "epoch"), field(line, "at_us")) else {
                continue;
            };
            for interval in intervals.iter_mut().filter(|i| i.epoch == epoch) {
                interval.until_us = interval.until_us.min(at_us.max(interval.from_us));
            }
        } else if line.starts_with(ACTING_LINE) {
            if let (Some(epoch), Some(from_us), Some(until_us)) = (
                field(line, "epoch"),
                field(line, "from_us"),
                field(line, "until_us"),
            ) {
                intervals.push(ActingInterval {
                    holder: holder.to_string(),
                    epoch,
                    from_us,
                    until_us,
                });
            }
        }
    }
    intervals
}

/// Moments where two contenders believed they may act at once: one sentence
/// per overlapping pair of intervals of different holders.
pub fn overlapping_acting(intervals: &[ActingInterval]) -> Vec<String> {
    let mut sorted: Vec<&ActingInterval> = intervals.iter().collect();
    sorted.sort_by_key(|i| i.from_us);
    let mut overlaps = Vec::new();
    for (k, a) in sorted.iter().enumerate() {
        for b in &sorted[k + 1..] {
            if b.from_us >= a.until_us {
                break;
            }
            if b.holder != a.holder {
                overlaps.push(format!(
                    "{} (epoch {}) acted until {} µs, and {} (epoch {}) from {} µs",
                    a.holder, a.epoch, a.until_us, b.holder, b.epoch, b.from_us
                ));
            }
        }
    }
    overlaps
}

/// What the checker found in a probe log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProbeLogReport {
    pub entries: usize,
    /// Epochs in the order they first appear, with their holder.
    pub epochs: BTreeMap<u64, String>,
}

/// Check a probe log: in commit order, epochs never go back (no write from
/// an older epoch accepted after a newer one wrote), and every epoch has
/// exactly one holder. Returns one sentence per violation.
pub fn check_probe_log(entries: &[ProbeEntry]) -> Result<ProbeLogReport, Vec<String>> {
    let mut report = ProbeLogReport {
        entries: entries.len(),
        ..ProbeLogReport::default()
    };
    let mut violations = Vec::new();
    let mut newest = 0;
    for (seq, entry) in entries.iter().enumerate() {
        if entry.epoch < newest {
            violations.push(format!(
                "entry {seq}: a write of epoch {} was accepted after epoch {newest} had written",
                entry.epoch
            ));
        }
        newest = newest.max(entry.epoch);
        let holder = report
            .epochs
            .entry(entry.epoch)
            .or_insert_with(|| entry.holder.clone());
        if *holder != entry.holder {
            violations.push(format!(
                "entry {seq}: epoch {} has two holders, {holder} and {}",
                entry.epoch, entry.holder
            ));
        }
    }
    if violations.is_empty() {
        Ok(report)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, holder: &str) -> ProbeEntry {
        ProbeEntry {
            epoch,
            holder: holder.into(),
            written_at_us: 0,
        }
    }

    #[test]
    fn the_checker_accepts_a_clean_log_and_names_each_violation() {
        let clean = [entry(1, "a"), entry(1, "a"), entry(2, "b"), entry(3, "a")];
        assert_eq!(check_probe_log(&clean).unwrap().epochs.len(), 3);
        let stale = [entry(1, "a"), entry(2, "b"), entry(1, "a")];
        assert!(
            check_probe_log(&stale).unwrap_err()[0].contains("epoch 1 was accepted after epoch 2")
        );
        let split = [entry(1, "a"), entry(1, "b")];
        assert!(check_probe_log(&split).unwrap_err()[0].contains("two holders"));
    }

    #[test]
    fn overlapping_acting_intervals_of_different_holders_are_named() {
        let interval = |holder: &str, epoch, from_us, until_us| ActingInterval {
            holder: holder.into(),
            epoch,
            from_us,
            until_us,
        };
        let printed = format!("{ACTING_LINE} epoch=3 from_us=10 until_us=50\nother line\n");
        assert_eq!(acting_intervals(&printed, "a"), [interval("a", 3, 10, 50)]);
        let stopped = format!("{printed}\n{STOPPED_ACTING_LINE} epoch=3 at_us=20\n");
        assert_eq!(
            acting_intervals(&stopped, "a"),
            [interval("a", 3, 10, 20)],
            "cut where it stopped acting"
        );
        let clean = [
            interval("a", 1, 0, 100),
            interval("a", 1, 50, 150),
            interval("b", 2, 150, 300),
        ];
        assert!(overlapping_acting(&clean).is_empty());
        let overlap = [interval("a", 1, 0, 100), interval("b", 2, 99, 200)];
        assert_eq!(overlapping_acting(&overlap).len(), 1);
    }

    #[test]
    fn incarnations_carry_the_pid() {
        let incarnation = incarnation_of("h1");
        assert_eq!(pid_of(&incarnation), Some(std::process::id()));
        assert!(incarnation.starts_with("h1:"));
    }
}
