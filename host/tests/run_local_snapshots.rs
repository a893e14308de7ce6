//! `run-local --snapshot-every 1` (snapshot, drop the instance, restore into
//! a fresh one after every batch) must print exactly what an uninterrupted
//! run prints, for every example processor, on ≥ 100k generated records.

mod common;

use common::{logstream, plugin, run, sample_input, stderr};

const RECORDS: u64 = 100_000;

fn run_local(
    name: &str,
    config: &str,
    input: &std::path::Path,
    snapshot_every: u32,
    state_out: &std::path::Path,
) -> Vec<u8> {
    let output = run(logstream()
        .arg("run-local")
        .arg(plugin(name))
        .arg("--input")
        .arg(input)
        .args(["--config", config, "--batch", "500"])
        .args(["--snapshot-every", &snapshot_every.to_string()])
        .arg("--state-out")
        .arg(state_out));
    assert!(output.status.success(), "{name}: {}", stderr(&output));
    output.stdout
}

fn assert_restarts_are_transparent(name: &str, config: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_input(dir.path(), RECORDS, 3);
    let (state_plain, state_restarted) = (
        dir.path().join("plain.state"),
        dir.path().join("restarted.state"),
    );
    let plain = run_local(name, config, &input, 0, &state_plain);
    let restarted = run_local(name, config, &input, 1, &state_restarted);
    assert!(!plain.is_empty(), "{name} printed nothing");
    assert!(
        plain == restarted,
        "{name}: output differs after snapshot/restore"
    );
    assert_eq!(
        std::fs::read(&state_plain).unwrap(),
        std::fs::read(&state_restarted).unwrap(),
        "{name}: final state differs"
    );
    plain
}

fn count_lines_with(output: &[u8], needle: &str) -> usize {
    String::from_utf8_lossy(output)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn level_counter_is_transparent_to_restarts() {
    let output = assert_restarts_are_transparent("level_counter", "every=1000");
    // One summary per 1000 accepted records; a few sample lines are not JSON.
    let summaries = count_lines_with(&output, "\"index\":0");
    assert!((95..=100).contains(&summaries), "{summaries} summaries");
    assert!(count_lines_with(&output, "\"rejected\"") > 0);
}

#[test]
fn redactor_is_transparent_to_restarts() {
    let output = assert_restarts_are_transparent("redactor", "");
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("[email]") && text.contains("[ipv4]") && text.contains("Bearer [token]"));
    assert!(!text.contains("alice@example.com"));
}

#[test]
fn dedup_is_transparent_to_restarts() {
    let output = assert_restarts_are_transparent("dedup", "window=20000");
    let emitted = count_lines_with(&output, "\"index\":0");
    assert!(
        emitted > 0 && (emitted as u64) < RECORDS,
        "{emitted} of {RECORDS} emitted"
    );
}
