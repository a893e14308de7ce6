//! `logstream status [--json] [--brokers B]`: per processor and unit, who
//! leads (host and epoch), the current checkpoint (generation, age, size,
//! next offset, a records/s estimate), the kept generations hosts reported
//! unusable (corrupt, or refused by the processor) and, with `--brokers`,
//! the input lag;
//! per host, its incarnation, heartbeat counter and the units it leads.
//!
//! Everything is read from the store in separate small transactions, so the
//! report is a near-consistent picture, not one snapshot. Wall-clock ages
//! compare this machine's clock with the checkpoint writer's: display only.
//! The `--json` shape is versioned (`"version": 1`) and documented in
//! docs/operations.md; fields are only ever added to it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::StoreArgs;
use crate::pipeline::kafka;
use crate::store::checkpoint::{self, CheckpointMeta, UnusableReport};
use crate::store::election::{read_leader, LeaderRecord};
use crate::store::membership::{self, HostRecord};
use crate::store::registry::{self, ProcessorSpec};
use crate::store::{transact, KvStore, RetryPolicy};
use crate::unit_id::UnitId;

/// The version of the `--json` shape.
pub const STATUS_JSON_VERSION: u32 = 1;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Kafka bootstrap servers: also report each unit's input lag (each
    /// broker request waits at most the client's request timeout; on
    /// failure the lag is reported unknown, with a warning).
    #[arg(long)]
    pub brokers: Option<String>,

    /// Print one JSON object (shape in docs/operations.md).
    #[arg(long)]
    pub json: bool,
}

/// The `--json` output.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: u32,
    pub store: String,
    pub processors: Vec<ProcessorStatus>,
    pub hosts: Vec<HostStatus>,
    /// Non-fatal problems (e.g. the broker could not be asked for lag).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ProcessorStatus {
    pub name: String,
    pub version: u64,
    pub module_sha256: String,
    pub input_topic: String,
    pub output_topic: String,
    pub units: Vec<UnitStatus>,
}

#[derive(Debug, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    pub partition: i32,
    /// `null` when no host ever led the unit.
    pub leader: Option<LeaderStatus>,
    /// `null` when the unit has no checkpoint yet.
    pub checkpoint: Option<CheckpointStatus>,
    /// Input records per second between the two newest checkpoint
    /// generations (offset difference over their writers' wall-clock
    /// difference); `null` with fewer than two generations.
    pub records_per_second: Option<f64>,
    /// Input high watermark minus the checkpoint's next offset; `null`
    /// without `--brokers` or when the broker did not answer.
    pub lag: Option<i64>,
    /// Kept checkpoint generations a host found unusable (corrupt, or its
    /// state refused by the processor's restore) and skipped, newest first,
    /// as the hosts reported them. Empty when none.
    pub corrupt_checkpoints: Vec<UnusableReport>,
}

#[derive(Debug, Serialize)]
pub struct LeaderStatus {
    /// The host whose registered incarnation holds the record; `null` when
    /// no registered host has that incarnation (its host stopped or
    /// restarted).
    pub host_id: Option<String>,
    pub incarnation: String,
    pub epoch: u64,
    /// The holder stepped down; the next claim takes `epoch + 1`.
    pub released: bool,
    /// An operator asked this epoch to step down and it has not yet.
    pub step_down_requested: bool,
}

#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    pub generation: u64,
    /// The epoch that wrote it.
    pub epoch: u64,
    pub created_at_unix_ms: u64,
    /// Now minus `created_at_unix_ms` on this machine's clock (display only).
    pub age_ms: i64,
    pub size_bytes: u64,
    /// Next input offset to process; `null` if the checkpoint has none for
    /// the unit's partition.
    pub next_offset: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub host_id: String,
    pub incarnation: String,
    /// The membership heartbeat counter: it grows while the host lives
    /// (compare two reports); the record holds no heartbeat time.
    pub heartbeat: u64,
    pub started_at_unix_ms: u64,
    pub logstream_version: String,
    /// Units whose leader record this incarnation holds (not released).
    pub leads: Vec<String>,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let store = args.store.open()?;
    let report = collect(store.as_ref(), args.brokers.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report, args.brokers.is_some());
    }
    Ok(ExitCode::SUCCESS)
}

/// Read everything the report needs.
pub fn collect(store: &dyn KvStore, brokers: Option<&str>) -> Result<StatusReport> {
    let policy = RetryPolicy::default();
    let specs = registry::list_specs(store)?;
    let host_records = membership::list_hosts(store, &policy)?;
    let host_of: BTreeMap<&str, &str> = host_records
        .iter()
        .map(|h| (h.incarnation.as_str(), h.host_id.as_str()))
        .collect();
    let mut warnings = Vec::new();
    // After one failed broker request the broker is taken as unreachable:
    // every further request would wait out its timeout too.
    let mut broker = brokers;
    let now_ms = crate::probe::unix_micros() as i64 / 1000;
    let mut processors = Vec::new();
    for spec in &specs {
        let mut partitions = registry::unit_partitions(store, &spec.name)?;
        if let Some(brokers) = broker {
            match kafka::partition_count(brokers, &spec.input_topic) {
                Ok(count) => partitions.extend(0..count),
                Err(error) => {
                    warnings.push(lag_warning(&spec.input_topic, &error));
                    broker = None;
                }
            }
        }
        partitions.sort_unstable();
        partitions.dedup();
        let mut units = Vec::new();
        for partition in partitions {
            let unit = unit_status(store, &policy, spec, partition, &host_of, now_ms)?;
            units.push(unit);
        }
        if let Some(brokers) = broker {
            for unit in &mut units {
                match kafka::watermarks(brokers, &spec.input_topic, unit.partition) {
                    Ok((_, high)) => {
                        let next = unit
                            .checkpoint
                            .as_ref()
                            .and_then(|c| c.next_offset)
                            .unwrap_or(0);
                        unit.lag = Some((high - next).max(0));
                    }
                    Err(error) => {
                        warnings.push(lag_warning(&spec.input_topic, &error));
                        broker = None;
                        break;
                    }
                }
            }
        }
        processors.push(ProcessorStatus {
            name: spec.name.clone(),
            version: spec.version,
            module_sha256: spec.module_sha256.clone(),
            input_topic: spec.input_topic.clone(),
            output_topic: spec.output_topic.clone(),
            units,
        });
    }
    let hosts = host_records
        .iter()
        .map(|h| host_status(h, &processors))
        .collect();
    Ok(StatusReport {
        version: STATUS_JSON_VERSION,
        store: store.describe(),
        processors,
        hosts,
        warnings,
    })
}

fn lag_warning(topic: &str, error: &anyhow::Error) -> String {
    format!(
        "lag unknown: the broker did not answer about {topic}: {}",
        super::one_line(error)
    )
}

fn unit_status(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    spec: &ProcessorSpec,
    partition: i32,
    host_of: &BTreeMap<&str, &str>,
    now_ms: i64,
) -> Result<UnitStatus> {
    let unit = UnitId::new(&spec.name, partition).name();
    let record: Option<LeaderRecord> = transact(store, policy, |txn| read_leader(txn, &unit))
        .map_err(|e| anyhow::anyhow!("reading the leader record of {unit}: {e}"))?;
    let leader = record.map(|r| LeaderStatus {
        host_id: host_of.get(r.holder.as_str()).map(|h| h.to_string()),
        step_down_requested: r.step_down_requested(),
        incarnation: r.holder,
        epoch: r.epoch,
        released: r.released,
    });
    let kept = checkpoint::read_kept_meta(store, &unit)?;
    let checkpoint = kept.first().map(|meta| CheckpointStatus {
        generation: meta.generation,
        epoch: meta.epoch,
        created_at_unix_ms: meta.created_at_unix_ms,
        age_ms: now_ms - meta.created_at_unix_ms as i64,
        size_bytes: meta.size_bytes,
        next_offset: meta.offsets.get(&partition).copied(),
    });
    let corrupt_checkpoints = checkpoint::read_unusable_reports(store, &unit)?;
    Ok(UnitStatus {
        unit,
        partition,
        leader,
        checkpoint,
        records_per_second: rate(&kept, partition),
        lag: None,
        corrupt_checkpoints,
    })
}

/// Records per second between the two newest generations.
fn rate(kept: &[CheckpointMeta], partition: i32) -> Option<f64> {
    let [newest, previous, ..] = kept else {
        return None;
    };
    let records = newest.offsets.get(&partition)? - previous.offsets.get(&partition)?;
    let millis = newest
        .created_at_unix_ms
        .checked_sub(previous.created_at_unix_ms)?;
    (millis > 0).then(|| records as f64 * 1000.0 / millis as f64)
}

fn host_status(host: &HostRecord, processors: &[ProcessorStatus]) -> HostStatus {
    let leads = processors
        .iter()
        .flat_map(|p| &p.units)
        .filter(|u| {
            u.leader
                .as_ref()
                .is_some_and(|l| !l.released && l.incarnation == host.incarnation)
        })
        .map(|u| u.unit.clone())
        .collect();
    HostStatus {
        host_id: host.host_id.clone(),
        incarnation: host.incarnation.clone(),
        heartbeat: host.heartbeat,
        started_at_unix_ms: host.started_at_unix_ms,
        logstream_version: host.version.clone(),
        leads,
    }
}

/// `lag_asked`: whether `--brokers` was given (lag "unknown" vs "-").
fn print_text(report: &StatusReport, lag_asked: bool) {
    println!("store {}", report.store);
    if report.processors.is_empty() {
        println!("no processors are deployed");
    }
    for p in &report.processors {
        println!(
            "processor {} v{} (module {}, {} -> {})",
            p.name,
            p.version,
            super::processors::short_sha(&p.module_sha256),
            p.input_topic,
            p.output_topic
        );
        if p.units.is_empty() {
            println!("  no units yet (no host has run it; --brokers lists its partitions)");
            continue;
        }
        println!(
            "  {:<16} {:<16} {:>6} {:>10} {:>9} {:>10} {:>12} {:>8} {:>10}",
            "unit",
            "leader",
            "epoch",
            "generation",
            "age",
            "size",
            "next offset",
            "lag",
            "records/s"
        );
        for u in &p.units {
            let (leader, epoch) = match &u.leader {
                None => ("none".to_string(), "-".to_string()),
                Some(l) if l.released => ("released".to_string(), l.epoch.to_string()),
                Some(l) => (
                    l.host_id.clone().unwrap_or_else(|| "(gone)".into())
                        + if l.step_down_requested {
                            " (stepping down)"
                        } else {
                            ""
                        },
                    l.epoch.to_string(),
                ),
            };
            let dash = || "-".to_string();
            let c = u.checkpoint.as_ref();
            println!(
                "  {:<16} {:<16} {:>6} {:>10} {:>9} {:>10} {:>12} {:>8} {:>10}",
                u.unit,
                leader,
                epoch,
                c.map_or_else(dash, |c| c.generation.to_string()),
                c.map_or_else(dash, |c| format!("{:.1}s", c.age_ms as f64 / 1000.0)),
                c.map_or_else(dash, |c| format!("{} B", c.size_bytes)),
                c.and_then(|c| c.next_offset)
                    .map_or_else(dash, |o| o.to_string()),
                match (u.lag, lag_asked) {
                    (Some(lag), _) => lag.to_string(),
                    (None, true) => "unknown".to_string(),
                    (None, false) => dash(),
                },
                u.records_per_second
                    .map_or_else(dash, |r| format!("{r:.1}")),
            );
            for report in &u.corrupt_checkpoints {
                println!(
                    "    ! {} checkpoint generation {} {} (found by host {}): {}",
                    u.unit,
                    report.generation,
                    match report.fault {
                        checkpoint::FaultKind::Corrupt => "is corrupt",
                        checkpoint::FaultKind::Refused => "was refused by the processor",
                    },
                    report.host_id,
                    report.reason
                );
            }
        }
    }
    if report.hosts.is_empty() {
        println!("no hosts are registered");
    }
    for h in &report.hosts {
        println!(
            "host {} (incarnation {}, heartbeat {}, logstream {}) leads: {}",
            h.host_id,
            h.incarnation,
            h.heartbeat,
            h.logstream_version,
            if h.leads.is_empty() {
                "nothing".to_string()
            } else {
                h.leads.join(", ")
            }
        );
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
}
