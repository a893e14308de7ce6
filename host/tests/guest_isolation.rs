//! Isolation (design guarantee 5) with a real component built to misbehave
//! (`tests/components/misbehave`), run by the real binary: traps, endless
//! loops, memory bombs and reaches for files and sockets are contained,
//! reported with the processor name and offset, and the run goes on with the
//! state as it was before the failing record.

mod common;

use common::{input_of, json_lines, logstream, plugin, run, stderr, stdout};

fn run_misbehave(values: &[&str], extra_args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = input_of(dir.path(), "input.jsonl", values);
    let output = run(logstream()
        .arg("run-local")
        .arg(plugin("misbehave"))
        .arg("--input")
        .arg(&input)
        .args(extra_args));
    assert!(
        output.status.success(),
        "the host process failed: {}",
        stderr(&output)
    );
    (json_lines(&stdout(&output)), stderr(&output))
}

#[test]
fn a_trap_is_reported_with_name_and_offset_and_the_run_continues() {
    let (lines, log) = run_misbehave(&["a", "b", "trap", "c"], &[]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[2]["offset"], 2);
    let failure = lines[2]["failed"].as_str().unwrap();
    assert!(
        failure.contains("trapped") && failure.contains("poison record at offset 2"),
        "{failure}"
    );
    assert!(
        log.contains("processor 'misbehave' failed on partition 0 offset 2"),
        "{log}"
    );
    // The failed record's effect on state is discarded: c is the third record counted.
    assert_eq!(lines[3]["value"], "n=3:c");
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_limit() {
    let (lines, log) = run_misbehave(&["a", "loop", "b"], &["--call-timeout-ms", "100"]);
    let failure = lines[1]["failed"].as_str().unwrap();
    assert!(failure.contains("time limit of 100ms"), "{failure}");
    assert!(log.contains("offset 1"), "{log}");
    assert_eq!(lines[2]["value"], "n=2:b");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let (lines, _) = run_misbehave(&["a", "bomb", "b"], &["--memory-limit-mib", "32"]);
    let failure = lines[1]["failed"].as_str().unwrap();
    assert!(
        failure.contains("memory limit of 33554432 bytes exceeded"),
        "{failure}"
    );
    assert_eq!(lines[2]["value"], "n=2:b");
}

#[test]
fn an_oversized_output_is_refused() {
    let (lines, _) = run_misbehave(&["big-output", "a"], &["--max-output-mib", "1"]);
    let failure = lines[0]["failed"].as_str().unwrap();
    assert!(
        failure.contains("more than the limit of 1048576 bytes"),
        "{failure}"
    );
    assert_eq!(lines[1]["value"], "n=1:a");
}

#[test]
fn opening_a_file_gets_an_error_not_access() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let command = format!("open-file {}", secret.display());
    let (lines, _) = run_misbehave(&[&command, "open-file /etc/hostname", "open-file ."], &[]);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let rejected = line["rejected"]
            .as_str()
            .unwrap_or_else(|| panic!("not rejected: {line}"));
        assert!(rejected.starts_with("open-file "), "{rejected}");
        assert!(!line.to_string().contains("ESCAPED"), "{line}");
    }
}

#[test]
fn opening_a_socket_gets_an_error_not_access() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let command = format!("open-socket {}", listener.local_addr().unwrap());
    let (lines, _) = run_misbehave(&[&command, "open-socket localhost:80"], &[]);
    for line in &lines {
        let rejected = line["rejected"]
            .as_str()
            .unwrap_or_else(|| panic!("not rejected: {line}"));
        assert!(rejected.starts_with("open-socket "), "{rejected}");
    }
    assert!(listener.accept().is_err(), "the guest reached the listener");
}

#[test]
fn the_guest_sees_no_environment_and_a_fixed_clock() {
    let (lines, _) = run_misbehave(&["env", "clock"], &[]);
    assert_eq!(lines[0]["value"], "env=0");
    assert_eq!(lines[1]["value"], "clock=1704067200");
}
