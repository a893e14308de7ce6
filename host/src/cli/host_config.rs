//! `logstream host --config FILE`: the host's settings in a TOML file.
//!
//! Every key mirrors a `logstream host` option (same name, `_` for `-`),
//! grouped in tables; see docs/configuration.md for the reference. A value
//! comes from, in order of precedence: the command line, the option's
//! `LOGSTREAM_…` environment variable, the file, the built-in default.
//!
//! Guarantees: an unknown key, a value of the wrong type or an unreadable
//! file is refused with one sentence naming the file and the key; nothing
//! is started.

use std::path::Path;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use super::host::HostArgs;

/// Largest config file read: 1 MiB (a real one is a few hundred bytes).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The file's schema.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub host_id: Option<String>,
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

/// Whether `id` was left at its built-in default (not given on the command
/// line or in the environment), so the file may set it.
fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        None | Some(ValueSource::DefaultValue)
    )
}

/// Fill in `args` from `file` where the command line and the environment
/// left the default.
pub fn apply(file: HostFile, args: &mut HostArgs, matches: &ArgMatches) -> Result<()> {
    macro_rules! take {
        ($id:literal, $from:expr => $to:expr) => {
            if let Some(value) = $from {
                if defaulted(matches, $id) {
                    $to = value;
                }
            }
        };
    }
    take!("store", file.store => args.store);
    take!("brokers", file.brokers => args.brokers);
    if let Some(host_id) = file.host_id {
        if defaulted(matches, "host_id") {
            args.host_id = Some(host_id);
        }
    }
    if let Some(text) = file.admin_addr {
        if defaulted(matches, "admin_addr") {
            args.admin_addr = super::host::parse_admin_addr(&text)
                .map_err(|e| anyhow::anyhow!("admin_addr: {e}"))?;
        }
    }
    take!("lease_ms", file.election.lease_ms => args.election.lease_ms);
    take!("heartbeat_ms", file.election.heartbeat_ms => args.election.heartbeat_ms);
    take!("margin_ms", file.election.margin_ms => args.election.margin_ms);
    take!("checkpoint_interval_ms", file.checkpoint.interval_ms => args.checkpoint_interval_ms);
    take!("checkpoint_every_records", file.checkpoint.every_records => args.checkpoint_every_records);
    take!("memory_limit_mib", file.limits.memory_limit_mib => args.limits.memory_limit_mib);
    take!("call_timeout_ms", file.limits.call_timeout_ms => args.limits.call_timeout_ms);
    take!("max_output_mib", file.limits.max_output_mib => args.limits.max_output_mib);
    Ok(())
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
"#,
        )
        .unwrap();
        assert_eq!(file.host_id.as_deref(), Some("a"));
        assert_eq!(file.election.lease_ms, Some(2000));
        assert_eq!(file.checkpoint.every_records, Some(50_000));
        assert_eq!(file.limits.max_output_mib, Some(16));
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

    /// `logstream host ARGS` parsed, with the host's matches.
    fn parsed(args: &[&str]) -> (HostArgs, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let argv = ["logstream", "host"].iter().chain(args);
        let matches = super::super::Cli::command().get_matches_from(argv);
        let cli = super::super::Cli::from_arg_matches(&matches).unwrap();
        let super::super::Command::Host(host) = cli.command else {
            panic!("not the host command")
        };
        (host, matches.subcommand_matches("host").unwrap().clone())
    }

    #[test]
    fn the_file_fills_in_only_what_the_command_line_left_at_its_default() {
        let (mut args, matches) = parsed(&["--brokers", "from-cli:9092", "--margin-ms", "150"]);
        let file = parse(
            "brokers = \"from-file:9092\"\nstore = \"sqlite:from-file.db\"\n[election]\nlease_ms = 900\nmargin_ms = 300\n",
        )
        .unwrap();
        apply(file, &mut args, &matches).unwrap();
        assert_eq!(args.brokers, "from-cli:9092");
        assert_eq!(args.store, "sqlite:from-file.db");
        assert_eq!(args.election.lease_ms, 900);
        assert_eq!(args.election.margin_ms, 150);
        // Untouched by both: the built-in default.
        assert_eq!(
            args.checkpoint_interval_ms,
            super::super::host::DEFAULT_CHECKPOINT_INTERVAL_MS
        );
    }

    #[test]
    fn a_bad_admin_address_in_the_file_is_named() {
        let (mut args, matches) = parsed(&[]);
        let file = parse("admin_addr = \"everywhere\"\n").unwrap();
        let message = format!("{:#}", apply(file, &mut args, &matches).unwrap_err());
        assert!(message.starts_with("admin_addr: "), "{message}");
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let file = parse("").unwrap();
        assert!(file.store.is_none() && file.election.lease_ms.is_none());
    }
}
