//! `logstream check` against real components and real non-components.

mod common;

use common::{js_plugin, logstream, plugin, python_plugin, run, stderr, stdout};

#[test]
fn accepts_the_example_processors() {
    for name in ["level_counter", "redactor", "dedup", "passthrough"] {
        let output = run(logstream().arg("check").arg(plugin(name)));
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let text = stdout(&output);
        assert!(text.contains("valid LogStream processor"), "{name}: {text}");
        assert!(
            text.contains("exports:       logstream:processor/processor@0.1.0"),
            "{text}"
        );
        assert!(text.contains("state version: "), "{text}");
    }
}

/// The Python and JavaScript SDKs' examples (componentize-py: CPython
/// inside; componentize-js: SpiderMonkey inside) are processors like any
/// other: the host accepts their WASI imports, which its sandbox serves
/// without preopens, network or entropy of the host.
#[test]
fn accepts_the_python_and_javascript_processors() {
    let components = [
        ("level_counter", python_plugin("level_counter")),
        ("passthrough", python_plugin("passthrough")),
        ("redactor", js_plugin("redactor")),
    ];
    for (name, component) in components {
        let output = run(logstream().arg("check").arg(component));
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let text = stdout(&output);
        assert!(text.contains("valid LogStream processor"), "{name}: {text}");
        assert!(text.contains("state version: 1"), "{name}: {text}");
        assert!(
            text.contains("wasi:filesystem/preopens@0.2"),
            "{name}: {text}"
        );
    }
}

/// A component whose initial linear memory exceeds the instance limit (the
/// Python interpreter starts at 12.5 MiB) is refused with the limit to
/// set, in one line, and nothing runs.
#[test]
fn a_memory_limit_below_the_components_initial_memory_names_the_limit_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let out = run(logstream()
        .args(["gen-logs", "--count", "10", "--out"])
        .arg(&input));
    assert!(out.status.success(), "{}", stderr(&out));
    let output = run(logstream()
        .arg("run-local")
        .arg(python_plugin("level_counter"))
        .arg("--input")
        .arg(&input)
        .args(["--memory-limit-mib", "8"]));
    assert!(!output.status.success(), "ran: {}", stdout(&output));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(
        err.contains("more than the 8.0 MiB an instance may have; raise the memory limit (`--memory-limit-mib`, `limits.memory_limit_mib`) to at least 13"),
        "{err}"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn json_report_names_world_and_state_version() {
    let output = run(logstream()
        .args(["check", "--json"])
        .arg(plugin("level_counter")));
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["world"], "logstream:processor/log-processor@0.1.0");
    assert!(report["state_version"].as_u64().unwrap() >= 1);
    assert!(report["exports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "logstream:processor/processor@0.1.0"));
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);
}

/// Runs `check` on `bytes`, expecting one line on stderr containing `needle`.
fn assert_refused(bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candidate.wasm");
    std::fs::write(&path, bytes).unwrap();
    let output = run(logstream().arg("check").arg(&path));
    assert!(!output.status.success(), "accepted: {}", stdout(&output));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn refuses_a_core_module() {
    // The smallest valid core module: magic and version 1, no sections.
    assert_refused(
        b"\0asm\x01\0\0\0",
        "is a core WebAssembly module, not a component",
    );
}

#[test]
fn refuses_random_bytes() {
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_refused(&noise, "is not a WebAssembly file");
}

#[test]
fn refuses_a_truncated_component() {
    let bytes = std::fs::read(plugin("passthrough")).unwrap();
    assert_refused(
        &bytes[..bytes.len() / 2],
        "is not a valid WebAssembly component",
    );
}

#[test]
fn refuses_a_component_of_another_world() {
    let bytes = std::fs::read(plugin("other_world")).unwrap();
    assert_refused(&bytes, "is a component of another world");
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let output = run(logstream().args(["check", "/nonexistent/processor.wasm"]));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot read /nonexistent/processor.wasm"),
        "{err}"
    );
}
