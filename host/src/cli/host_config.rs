//! `logstream host --config FILE`: the host's settings in a TOML file.
//!
//! Every key mirrors a `logstream host` option (same name, `_` for `-`),
//! grouped in tables; see docs/configuration.md for the reference. A value
//! comes from, in order of precedence: the command line, the option's
//! `LOGSTREAM_…` environment variable, the file, the built-in default
//! (`cli::host` applies the file).
//!
//! Guarantees: an unknown key, a value of the wrong type or an unreadable
//! file is refused with one sentence naming the file and the key; nothing
//! is started.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Largest config file read: 1 MiB (a real one is a few hundred bytes).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The file's schema.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub host_id: Option<String>,
    pub deployment: Option<String>,
    pub store: Option<String>,
    pub brokers: Option<String>,
    /// `IP:PORT` or `off`.
    pub admin_addr: Option<String>,
    #[serde(default)]
    pub election: ElectionTable,
    #[serde(default)]
    pub checkpoint: CheckpointTable,
    #[serde(default)]
    pub limits: LimitsTable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionTable {
    pub lease_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub margin_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointTable {
    pub interval_ms: Option<u64>,
    pub every_records: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsTable {
    pub memory_limit_mib: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub max_output_mib: Option<u64>,
    pub max_units: Option<u32>,
    pub input_fetchers: Option<usize>,
    pub unit_workers: Option<usize>,
    pub standby_memory_mib: Option<u64>,
}

/// Read and parse `path`.
pub fn load(path: &Path) -> Result<HostFile> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?
        .len();
    if size > MAX_CONFIG_FILE_BYTES {
        anyhow::bail!(
            "the config file {} is {size} bytes; the limit is {MAX_CONFIG_FILE_BYTES}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    parse(&text).with_context(|| format!("the config file {} is invalid", path.display()))
}

/// Parse a config file's text.
pub fn parse(text: &str) -> Result<HostFile> {
    // toml's messages span lines (a source excerpt); keep the first, which
    // names the key and the problem.
    toml::from_str(text).map_err(|error| {
        let message = error.message().lines().next().unwrap_or("").to_string();
        match error.span() {
            Some(span) => {
                let line = 1 + text[..span.start.min(text.len())].matches('\n').count();
                // A wrong value's message names only the types: name the key.
                match key_on_line(text, line) {
                    Some(key)
                        if !message
                            .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) =>
                    {
                        anyhow::anyhow!("line {line}, key `{key}`: {message}")
                    }
                    _ => anyhow::anyhow!("line {line}: {message}"),
                }
            }
            None => anyhow::anyhow!("{message}"),
        }
    })
}

/// The dotted key assigned on 1-based `line` of `text` (`key = …`, in the
/// table of the last `[table]` header above it), if that line assigns one.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let file = parse(
            r#"
host_id = "a"
store = "sqlite:/var/lib/logstream/store.db"
brokers = "kafka-1:9092,kafka-2:9092"
admin_addr = "off"

[election]
lease_ms = 2000
heartbeat_ms = 400
margin_ms = 400

[checkpoint]
interval_ms = 500
every_records = 50000

[limits]
memory_limit_mib = 128
call_timeout_ms = 2000
max_output_mib = 16
max_units = 200
input_fetchers = 2
unit_workers = 3
standby_memory_mib = 512
"#,
        )
        .unwrap();
        assert_eq!(file.host_id.as_deref(), Some("a"));
        assert_eq!(file.election.lease_ms, Some(2000));
        assert_eq!(file.checkpoint.every_records, Some(50_000));
        assert_eq!(file.limits.max_output_mib, Some(16));
        assert_eq!(file.limits.max_units, Some(200));
        assert_eq!(file.limits.input_fetchers, Some(2));
        assert_eq!(file.limits.unit_workers, Some(3));
        assert_eq!(file.limits.standby_memory_mib, Some(512));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let error = parse("brokers = \"x:1\"\n[election]\nlease = 5\n").unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with("line 3: unknown field `lease`"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let error = parse("[checkpoint]\ninterval_ms = \"fast\"\n").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("invalid type"), "{message}");
        // docs/configuration.md: the sentence names the key.
        assert!(
            message.starts_with("line 2, key `checkpoint.interval_ms`: invalid type"),
            "{message}"
        );
        let top = format!("{:#}", parse("brokers = 9092\n").unwrap_err());
        assert!(
            top.starts_with("line 1, key `brokers`: invalid type"),
            "{top}"
        );
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let file = parse("").unwrap();
        assert!(file.store.is_none() && file.election.lease_ms.is_none());
    }
}
