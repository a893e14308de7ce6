//! The module registry: which processors are deployed, and the module bytes
//! they run.
//!
//! This module owns these keys:
//!
//! | key | value |
//! |---|---|
//! | `("module", SHA256)` | JSON [`ModuleMeta`], written after all chunks |
//! | `("module", SHA256, I)` | chunk `I` of the module bytes, at most [`CHUNK_BYTES`] |
//! | `("proc", NAME, "spec")` | JSON [`ProcessorSpec`] |
//! | `("registry", "version")` | the registry change counter, u64 little-endian |
//!
//! Guarantees:
//! - **Only valid modules are stored.** [`deploy`] loads (validates and
//!   compiles) the bytes before writing anything, and [`store_module`] takes
//!   the resulting [`ProcessorModule`] as proof; a refused deploy leaves the
//!   store exactly as it was.
//! - **Content-addressed, verified.** Module bytes live under their sha256,
//!   so the same bytes are stored once; metadata is written after every
//!   chunk, so metadata present means the module is complete; reading
//!   verifies the sha256.
//! - **Specs reference stored modules.** A spec is written only after its
//!   module, in a transaction that checks the module is there.
//! - **One key to poll.** Every change of a spec bumps the registry change
//!   counter in the same transaction ([`registry_version`]).
//! - **Retry safety.** Chunks and module metadata are set to the same bytes
//!   again; deploying a spec identical to the deployed one changes nothing,
//!   which is also what makes a retried deploy transaction harmless after
//!   an unknown commit result.

use foundationdb_tuple::Element;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{CHUNK_BYTES, MAX_CHUNKS_PER_TXN};
use super::keys;
use super::kv::{
    prefix_end, transact, KvStore, KvTxn, RetryPolicy, TransactError, TxnAbort, TxnResult,
};
use crate::unit_id::UnitId;
use crate::wasm::{ModuleError, ModuleLoader, ProcessorModule};

/// Largest module accepted: 64 MiB (our components are hundreds of kB).
pub const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;
/// Longest processor name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest Kafka topic name, in characters (Kafka's own limit).
pub const MAX_TOPIC_CHARS: usize = 249;
/// Largest processor config: 64 KiB, so the spec fits in one store value.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Default and upper bound of records per batch (one component call each).
pub const DEFAULT_BATCH_MAX_RECORDS: u32 = 1_000;
pub const MAX_BATCH_MAX_RECORDS: u32 = 1_000_000;
/// Default and upper bound of the bytes of one batch: 1 MiB and 64 MiB.
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 1024 * 1024;
pub const MAX_BATCH_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default and upper bound of the wait for a batch to fill: 5 ms and 10 s.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 5;
pub const MAX_BATCH_LINGER_MS: u64 = 10_000;
/// Most topics a processor may write outputs to: its default output topic
/// and up to 15 more it routes outputs to by name. Each costs the unit a
/// followed partition and a checkpoint mark.
pub const MAX_OUTPUT_TOPICS: usize = 16;
/// Processors examined per transaction when listing specs.
const LIST_PROCESSORS_PER_TXN: usize = 100;
/// Most units [`unit_partitions`] lists for one processor (partitions of
/// one input topic; Kafka's practical limit is far below).
pub const MAX_UNITS_LISTED: usize = 10_000;

/// How records are grouped into batches, one component call per batch.
/// A batch is cut at whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchSettings {
    /// At most this many records (default [`DEFAULT_BATCH_MAX_RECORDS`]).
    pub max_records: u32,
    /// At most this many bytes of record keys and values (default
    /// [`DEFAULT_BATCH_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Wait at most this long for more records once one is there (default
    /// [`DEFAULT_BATCH_LINGER_MS`]).
    pub linger_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: DEFAULT_BATCH_MAX_RECORDS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            linger_ms: DEFAULT_BATCH_LINGER_MS,
        }
    }
}

/// What to deploy: a spec without the module hash and version, which
/// [`deploy`] fills in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub name: String,
    pub input_topic: String,
    /// The default output topic: where outputs go that name no topic.
    pub output_topic: String,
    /// More topics the processor may route outputs to by name (the WIT
    /// `output-record.topic`); an output naming any other topic is the
    /// record's failure (dead-lettered), never produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_output_topics: Vec<String>,
    /// The processor's configuration, passed to it as is.
    #[serde(default)]
    pub config: String,
    #[serde(default)]
    pub batch: BatchSettings,
}

/// A deployed processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessorSpec {
    pub name: String,
    /// Hex sha256 of the module bytes (stored in the registry).
    pub module_sha256: String,
    pub input_topic: String,
    pub output_topic: String,
    /// See [`DeploySpec::extra_output_topics`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_output_topics: Vec<String>,
    #[serde(default)]
    pub config: String,
    #[serde(default)]
    pub batch: BatchSettings,
    /// 1 for the first deploy, +1 for each changing deploy.
    pub version: u64,
    /// The state lineage: 1 at the first deploy, +1 at each deploy with
    /// `reset` ([`DeployOptions::reset`]). Units take state and offsets
    /// only from checkpoints of their own lineage: a new lineage starts
    /// from empty state at the start of the input.
    #[serde(default = "first_lineage")]
    pub lineage: u64,
}

fn first_lineage() -> u64 {
    1
}

impl ProcessorSpec {
    /// Every topic the processor may write outputs to, the default first.
    pub fn output_topics(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.output_topic.as_str())
            .chain(self.extra_output_topics.iter().map(String::as_str))
    }

    /// The processor's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        dead_letter_topic(&self.name)
    }

    /// Every topic a unit of the processor writes: its output topics (the
    /// default first) and its dead-letter topic.
    pub fn written_topics(&self) -> impl Iterator<Item = String> + '_ {
        self.output_topics()
            .map(str::to_string)
            .chain([self.dead_letter_topic()])
    }

    /// Everything but the version is the same.
    fn same_deployment(&self, other: &ProcessorSpec) -> bool {
        ProcessorSpec {
            version: other.version,
            ..self.clone()
        } == *other
    }
}

/// The metadata of a stored module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleMeta {
    pub sha256: String,
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub chunk_count: u64,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    /// The deployed spec, with its module hash and version.
    pub spec: ProcessorSpec,
    /// Whether the module bytes were written (false: already stored).
    pub module_stored: bool,
    /// Whether the spec changed (false: the identical spec was deployed).
    pub changed: bool,
    /// The registry change counter after the deploy.
    pub registry_version: u64,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A bad name, topic, config or batch setting (one sentence).
    #[error("{0}")]
    InvalidSpec(String),
    #[error("the module is {bytes} bytes, over the {MAX_MODULE_BYTES}-byte limit")]
    ModuleTooLarge { bytes: usize },
    /// The bytes given to [`store_module`] are not the loaded module's.
    #[error(
        "the module bytes (sha256 {actual}) are not those of the loaded module (sha256 {expected})"
    )]
    ModuleMismatch { expected: String, actual: String },
    #[error("module {sha256} is not stored in the registry")]
    ModuleMissing { sha256: String },
    #[error("stored module {sha256} is corrupt: {reason}")]
    CorruptModule { sha256: String, reason: String },
    /// A redeploy whose change the existing checkpoints cannot carry over
    /// (one sentence saying what to do); nothing was stored.
    #[error("{0}")]
    IncompatibleRedeploy(String),
    /// A stored record is not in the expected format.
    #[error("the {record} is malformed: {reason}")]
    BadRecord { record: String, reason: String },
    /// The coordination store failed (after retries).
    #[error("the coordination store failed: {0}")]
    Store(#[source] TransactError),
}

/// How a deploy treats the processor's existing units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// Start a new state lineage ([`ProcessorSpec::lineage`]): the units
    /// start from empty state at the start of the input, whatever the old
    /// checkpoints hold. Needed to change the input or the default output
    /// topic of a deployed processor.
    pub reset: bool,
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The bytes are not a loadable processor; nothing was stored.
    #[error("the module is refused: {0}")]
    InvalidModule(#[source] ModuleError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl RegistryError {
    fn from_transact(error: TransactError) -> Self {
        error.into_typed(RegistryError::Store)
    }
}

fn abort(error: RegistryError) -> TxnAbort {
    TxnAbort::with(error)
}

fn run<T>(
    store: &dyn KvStore,
    body: impl FnMut(&mut dyn KvTxn) -> TxnResult<T>,
) -> Result<T, RegistryError> {
    transact(store, &RetryPolicy::default(), body).map_err(RegistryError::from_transact)
}

// ---------------------------------------------------------------- validation

/// Check a processor name: 1 to [`MAX_NAME_CHARS`] characters from
/// `a-z 0-9 . _ -` (it appears in keys, metrics, logs and output ids).
pub fn validate_processor_name(name: &str) -> Result<(), RegistryError> {
    const ALLOWED: &str = "use 1 to 64 characters from a-z, 0-9, '.', '_' and '-'";
    if name.is_empty() {
        return invalid(format!("the processor name is empty; {ALLOWED}"));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return invalid(format!(
            "the processor name {name:?} is {chars} characters long; {ALLOWED}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return invalid(format!(
            "the processor name {name:?} contains {c:?}; {ALLOWED}"
        ));
    }
    Ok(())
}

/// Check a Kafka topic name (`role`: "input" or "output"): non-empty, at
/// most [`MAX_TOPIC_CHARS`] characters from `a-z A-Z 0-9 . _ -`, not `.`
/// or `..` — Kafka's own rules, checked here so a deploy fails at once.
pub fn validate_topic(role: &str, topic: &str) -> Result<(), RegistryError> {
    if topic.is_empty() {
        return invalid(format!("the {role} topic is empty"));
    }
    if topic == "." || topic == ".." {
        return invalid(format!("the {role} topic may not be {topic:?}"));
    }
    let chars = topic.chars().count();
    if chars > MAX_TOPIC_CHARS {
        return invalid(format!(
            "the {role} topic is {chars} characters long; Kafka allows at most {MAX_TOPIC_CHARS}"
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return invalid(format!(
            "the {role} topic {topic:?} contains {c:?}; Kafka topic names use only a-z, A-Z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn invalid(message: String) -> Result<(), RegistryError> {
    Err(RegistryError::InvalidSpec(message))
}

/// The dead-letter topic of processor `name`.
pub fn dead_letter_topic(name: &str) -> String {
    format!("{name}.dlq")
}

impl DeploySpec {
    /// Check every field; the error is one sentence naming what is wrong.
    pub fn validate(&self) -> Result<(), RegistryError> {
        validate_processor_name(&self.name)?;
        validate_topic("input", &self.input_topic)?;
        let outputs: Vec<&String> = std::iter::once(&self.output_topic)
            .chain(&self.extra_output_topics)
            .collect();
        if outputs.len() > MAX_OUTPUT_TOPICS {
            return invalid(format!(
                "{} output topics are given; a processor may write to at most {MAX_OUTPUT_TOPICS}",
                outputs.len()
            ));
        }
        let dead_letters = dead_letter_topic(&self.name);
        for (i, topic) in outputs.iter().enumerate() {
            validate_topic("output", topic)?;
            if **topic == self.input_topic {
                return invalid(format!(
                    "the input and output topic are both {topic:?}; a processor may not consume its own output"
                ));
            }
            if **topic == dead_letters {
                return invalid(format!(
                    "the output topic {topic:?} is the processor's dead-letter topic, which only the host writes"
                ));
            }
            if outputs[..i].contains(topic) {
                return invalid(format!("the output topic {topic:?} is given twice"));
            }
        }
        if self.config.len() > MAX_CONFIG_BYTES {
            return invalid(format!(
                "the config is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                self.config.len()
            ));
        }
        let batch = &self.batch;
        if !(1..=MAX_BATCH_MAX_RECORDS).contains(&batch.max_records) {
            return invalid(format!(
                "batch.max_records is {}; it must be between 1 and {MAX_BATCH_MAX_RECORDS}",
                batch.max_records
            ));
        }
        if !(1..=MAX_BATCH_MAX_BYTES).contains(&batch.max_bytes) {
            return invalid(format!(
                "batch.max_bytes is {}; it must be between 1 and {MAX_BATCH_MAX_BYTES}",
                batch.max_bytes
            ));
        }
        if batch.linger_ms > MAX_BATCH_LINGER_MS {
            return invalid(format!(
                "batch.linger_ms is {}; it must be at most {MAX_BATCH_LINGER_MS}",
                batch.linger_ms
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- modules

fn module_meta_key(sha256: &str) -> Vec<u8> {
    keys::module(sha256).into_bytes()
}

fn module_chunk_key(sha256: &str, index: u64) -> Vec<u8> {
    keys::module(sha256).pack(&index)
}

fn read_module_meta(txn: &mut dyn KvTxn, sha256: &str) -> TxnResult<Option<ModuleMeta>> {
    let Some(value) = txn.get(&module_meta_key(sha256))? else {
        return Ok(None);
    };
    let meta: ModuleMeta = serde_json::from_slice(&value).map_err(|e| {
        abort(RegistryError::BadRecord {
            record: format!("metadata of module {sha256}"),
            reason: e.to_string(),
        })
    })?;
    let consistent = meta.sha256 == sha256
        && meta.chunk_bytes > 0
        && meta.chunk_count == meta.size_bytes.div_ceil(meta.chunk_bytes);
    if !consistent {
        return Err(abort(RegistryError::CorruptModule {
            sha256: sha256.to_string(),
            reason: format!("its metadata is inconsistent: {meta:?}"),
        }));
    }
    Ok(Some(meta))
}

/// The metadata of a stored module, `None` when it is not stored.
pub fn module_meta(store: &dyn KvStore, sha256: &str) -> Result<Option<ModuleMeta>, RegistryError> {
    run(store, |txn| read_module_meta(txn, sha256))
}

/// Store a validated module's bytes under their sha256. Returns whether
/// anything was written: storing bytes that are already stored (and
/// intact) writes nothing; a stored copy that fails verification is
/// rewritten.
pub fn store_module(
    store: &dyn KvStore,
    module: &ProcessorModule,
    bytes: &[u8],
) -> Result<bool, RegistryError> {
    let sha256 = hex::encode(Sha256::digest(bytes));
    if sha256 != module.sha256() {
        return Err(RegistryError::ModuleMismatch {
            expected: module.sha256().to_string(),
            actual: sha256,
        });
    }
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(RegistryError::ModuleTooLarge { bytes: bytes.len() });
    }
    match read_module(store, &sha256) {
        Ok(Some(_)) => return Ok(false),
        Ok(None) => {}
        Err(RegistryError::CorruptModule { reason, .. }) => {
            tracing::error!(module = %sha256, "the stored module is corrupt ({reason}); rewriting it");
        }
        Err(error) => return Err(error),
    }

    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
    for (batch_number, batch) in chunks.chunks(MAX_CHUNKS_PER_TXN).enumerate() {
        let first = (batch_number * MAX_CHUNKS_PER_TXN) as u64;
        run(store, |txn| {
            for (index, chunk) in (first..).zip(batch) {
                txn.set(&module_chunk_key(&sha256, index), chunk)?;
            }
            Ok(())
        })?;
    }
    let meta = ModuleMeta {
        sha256: sha256.clone(),
        size_bytes: bytes.len() as u64,
        chunk_bytes: CHUNK_BYTES as u64,
        chunk_count: chunks.len() as u64,
    };
    let meta_bytes = serde_json::to_vec(&meta).expect("module metadata serialises");
    run(store, |txn| {
        // Also clears chunks beyond the count a corrupt copy may have left.
        txn.clear_range(
            &module_chunk_key(&sha256, meta.chunk_count),
            &keys::module(&sha256).range().1,
        )?;
        txn.set(&module_meta_key(&sha256), &meta_bytes)?;
        Ok(())
    })?;
    tracing::info!(module = %sha256, size_bytes = bytes.len(), "stored module");
    Ok(true)
}

/// The bytes of a stored module, verified against their sha256; `None`
/// when it is not stored. Reads [`MAX_CHUNKS_PER_TXN`] chunks per
/// transaction (stored chunks never change).
pub fn read_module(store: &dyn KvStore, sha256: &str) -> Result<Option<Vec<u8>>, RegistryError> {
    let Some(meta) = module_meta(store, sha256)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| RegistryError::CorruptModule {
        sha256: sha256.to_string(),
        reason,
    };
    if meta.size_bytes > MAX_MODULE_BYTES as u64 {
        return Err(corrupt(format!(
            "its metadata claims {} bytes",
            meta.size_bytes
        )));
    }
    let subspace = keys::module(sha256);
    let mut bytes = Vec::with_capacity(meta.size_bytes as usize);
    let mut next = 0u64;
    while next < meta.chunk_count {
        let rows = run(store, |txn| {
            Ok(txn.get_range(
                &module_chunk_key(sha256, next),
                &module_chunk_key(sha256, meta.chunk_count),
                MAX_CHUNKS_PER_TXN,
            )?)
        })?;
        if rows.is_empty() {
            return Err(corrupt(format!(
                "chunk {next} of {} is missing",
                meta.chunk_count
            )));
        }
        for (key, value) in rows {
            if subspace.unpack::<u64>(&key).ok() != Some(next) {
                return Err(corrupt(format!(
                    "chunk {next} of {} is missing",
                    meta.chunk_count
                )));
            }
            let expected = meta
                .chunk_bytes
                .min(meta.size_bytes - next * meta.chunk_bytes);
            if value.len() as u64 != expected {
                return Err(corrupt(format!(
                    "chunk {next} is {} bytes, not {expected}",
                    value.len()
                )));
            }
            bytes.extend_from_slice(&value);
            next += 1;
        }
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != sha256 {
        return Err(corrupt(format!("its bytes hash to {actual}")));
    }
    Ok(Some(bytes))
}

// ---------------------------------------------------------------- specs

fn read_counter(txn: &mut dyn KvTxn) -> TxnResult<u64> {
    match txn.get(&keys::registry_version())? {
        None => Ok(0),
        Some(value) => <[u8; 8]>::try_from(value.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| {
                abort(RegistryError::BadRecord {
                    record: "registry change counter".to_string(),
                    reason: format!("it is {} bytes, not 8", value.len()),
                })
            }),
    }
}

/// Bump the change counter. Little-endian, so FoundationDB's atomic ADD
/// could bump it without a read if that ever matters.
fn bump_counter(txn: &mut dyn KvTxn) -> TxnResult<u64> {
    let next = read_counter(txn)? + 1;
    txn.set(&keys::registry_version(), &next.to_le_bytes())?;
    Ok(next)
}

fn read_spec(txn: &mut dyn KvTxn, name: &str) -> TxnResult<Option<ProcessorSpec>> {
    let Some(value) = txn.get(&keys::spec(name))? else {
        return Ok(None);
    };
    let bad = |reason: String| {
        abort(RegistryError::BadRecord {
            record: format!("spec of processor {name:?}"),
            reason,
        })
    };
    let spec: ProcessorSpec = serde_json::from_slice(&value).map_err(|e| bad(e.to_string()))?;
    if spec.name != name {
        return Err(bad(format!("it names processor {:?}", spec.name)));
    }
    Ok(Some(spec))
}

/// The registry change counter: bumped by every deploy that changes a spec
/// and every removal. Hosts poll this one key to notice deploys.
pub fn registry_version(store: &dyn KvStore) -> Result<u64, RegistryError> {
    run(store, read_counter)
}

/// The deployed spec of `name`, if any.
pub fn get_spec(store: &dyn KvStore, name: &str) -> Result<Option<ProcessorSpec>, RegistryError> {
    run(store, |txn| read_spec(txn, name))
}

/// Every deployed spec, by name. Skips from processor to processor (one
/// key-value read each, never their checkpoint chunks), in several
/// transactions if there are many: each spec is read consistently, the
/// list as a whole is not one snapshot (compare [`registry_version`] before
/// and after when that matters).
pub fn list_specs(store: &dyn KvStore) -> Result<Vec<ProcessorSpec>, RegistryError> {
    let all = keys::processors();
    let end = all.range().1;
    let mut specs = Vec::new();
    let mut cursor = Some(all.bytes().to_vec());
    while let Some(from) = cursor.take() {
        let (found, next) = run(store, |txn| {
            let mut from = from.clone();
            let mut found = Vec::new();
            for _ in 0..LIST_PROCESSORS_PER_TXN {
                let Some((key, _)) = txn.get_range(&from, &end, 1)?.into_iter().next() else {
                    return Ok((found, None));
                };
                let name = all
                    .unpack::<Vec<Element>>(&key)
                    .ok()
                    .and_then(|t| match t.first() {
                        Some(Element::String(name)) => Some(name.to_string()),
                        _ => None,
                    });
                match name {
                    Some(name) => {
                        found.extend(read_spec(txn, &name)?);
                        from = keys::processor(&name).range().1;
                    }
                    // Not a key of our layout: step over it.
                    None => {
                        from = key;
                        from.push(0);
                    }
                }
            }
            Ok((found, Some(from)))
        })?;
        specs.extend(found);
        cursor = next;
    }
    Ok(specs)
}

/// The input partitions of `processor` that have units with stored keys
/// (a leader record or checkpoints), ascending. Units are named
/// `PROCESSOR/PARTITION` ([`crate::unit_id::UnitId`]), and a processor name
/// never contains `/`, so they are the keys under `("unit", "PROCESSOR/…")`.
/// Skips from unit to unit (one key-value read each, never chunks), at most
/// [`MAX_UNITS_LISTED`] of them.
pub fn unit_partitions(store: &dyn KvStore, processor: &str) -> Result<Vec<i32>, RegistryError> {
    let all = keys::units();
    let prefix = format!("{processor}/");
    // A tuple-encoded string is 0x02, its UTF-8 bytes, then 0x00: every
    // unit key of the processor starts with 0x02 followed by `prefix`.
    let mut begin = all.bytes().to_vec();
    begin.push(0x02);
    begin.extend_from_slice(prefix.as_bytes());
    let end = prefix_end(&begin);
    run(store, |txn| {
        let mut from = begin.clone();
        let mut partitions = Vec::new();
        while partitions.len() < MAX_UNITS_LISTED {
            let Some((key, _)) = txn.get_range(&from, &end, 1)?.into_iter().next() else {
                break;
            };
            let unit = all
                .unpack::<Vec<Element>>(&key)
                .ok()
                .and_then(|t| match t.first() {
                    Some(Element::String(name)) => Some(name.to_string()),
                    _ => None,
                });
            match unit {
                Some(unit) => {
                    from = keys::unit(&unit).range().1;
                    partitions.extend(
                        UnitId::parse_name(&unit)
                            .filter(|u| u.processor() == processor)
                            .map(|u| u.partition()),
                    );
                }
                None => {
                    from = key;
                    from.push(0);
                }
            }
        }
        partitions.sort_unstable();
        partitions.dedup();
        Ok(partitions)
    })
}

/// Remove the spec of `name` and bump the change counter. Returns whether
/// there was one (a malformed one is removed too). The module bytes and the
/// processor's checkpoints stay.
pub fn remove_spec(store: &dyn KvStore, name: &str) -> Result<bool, RegistryError> {
    let removed = run(store, |txn| {
        // Check-then-write: a retry after an applied removal finds nothing
        // and bumps nothing.
        if txn.get(&keys::spec(name))?.is_none() {
            return Ok(false);
        }
        txn.clear(&keys::spec(name))?;
        bump_counter(txn)?;
        Ok(true)
    })?;
    if removed {
        tracing::info!(processor = name, "removed processor spec");
    }
    Ok(removed)
}

/// Deploy `bytes` as processor `request.name`: validate the spec, load the
/// module (refusing it with its [`ModuleError`] before anything is stored),
/// store the module, then in one transaction write the spec (version + 1)
/// and bump the registry change counter. Deploying the spec that is
/// already deployed changes nothing.
pub fn deploy(
    store: &dyn KvStore,
    loader: &ModuleLoader,
    bytes: &[u8],
    request: DeploySpec,
    options: DeployOptions,
) -> Result<DeployOutcome, DeployError> {
    // The spec checks are cheap and the load compiles: check them first.
    request.validate()?;
    check_redeploy(store, &request, options)?;
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(RegistryError::ModuleTooLarge { bytes: bytes.len() }.into());
    }
    let module = loader.load(bytes).map_err(DeployError::InvalidModule)?;
    let module_stored = store_module(store, &module, bytes)?;

    let wanted = ProcessorSpec {
        name: request.name,
        module_sha256: module.sha256().to_string(),
        input_topic: request.input_topic,
        output_topic: request.output_topic,
        extra_output_topics: request.extra_output_topics,
        config: request.config,
        batch: request.batch,
        version: 0,
        lineage: first_lineage(),
    };
    // The version an earlier attempt of this call wrote, so a retry after an
    // applied commit still reports the deploy as a change.
    let mut written_version = None;
    let (spec, changed, registry_version) = run(store, |txn| {
        if read_module_meta(txn, &wanted.module_sha256)?.is_none() {
            return Err(abort(RegistryError::ModuleMissing {
                sha256: wanted.module_sha256.clone(),
            }));
        }
        let previous = read_spec(txn, &wanted.name)?;
        let ours = previous
            .as_ref()
            .is_some_and(|p| written_version == Some(p.version));
        // Unchanged: the same spec (in the same lineage) is deployed, or
        // this is a retry of our own applied commit.
        if let Some(previous) = previous.as_ref().filter(|p| {
            ours || (!options.reset
                && p.same_deployment(&ProcessorSpec {
                    lineage: p.lineage,
                    ..wanted.clone()
                }))
        }) {
            return Ok((previous.clone(), ours, read_counter(txn)?));
        }
        if let (Some(previous), false) = (&previous, options.reset) {
            // Deployed by someone else since the check above.
            if let Some(change) =
                incompatible_change(previous, &wanted.input_topic, &wanted.output_topic)
            {
                return Err(abort(RegistryError::IncompatibleRedeploy(change)));
            }
        }
        let spec = ProcessorSpec {
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lineage: match &previous {
                Some(p) if options.reset => p.lineage + 1,
                Some(p) => p.lineage,
                None => first_lineage(),
            },
            ..wanted.clone()
        };
        let json = serde_json::to_vec(&spec).expect("spec serialises");
        txn.set(&keys::spec(&spec.name), &json)?;
        let counter = bump_counter(txn)?;
        written_version = Some(spec.version);
        Ok((spec, true, counter))
    })?;
    if changed {
        tracing::info!(
            processor = %spec.name,
            version = spec.version,
            module = %spec.module_sha256,
            registry_version,
            "deployed processor"
        );
    }
    Ok(DeployOutcome {
        spec,
        module_stored,
        changed,
        registry_version,
    })
}

/// Refuse deploying `wanted` over the deployed spec of its name when its
/// checkpoints cannot carry over (see [`DeployOptions::reset`]); callers
/// may check this before costlier checks of their own.
pub fn check_redeploy(
    store: &dyn KvStore,
    wanted: &DeploySpec,
    options: DeployOptions,
) -> Result<(), RegistryError> {
    if options.reset {
        return Ok(());
    }
    match get_spec(store, &wanted.name)? {
        Some(previous) => {
            match incompatible_change(&previous, &wanted.input_topic, &wanted.output_topic) {
                Some(change) => Err(RegistryError::IncompatibleRedeploy(change)),
                None => Ok(()),
            }
        }
        None => Ok(()),
    }
}

/// Why `wanted` cannot take over `previous`'s checkpoints, if it cannot:
/// their offsets belong to the input topic, and their output marks to the
/// default output topic. Routed topics may be added (a unit takes a mark of
/// a new topic before its first output there) or removed.
fn incompatible_change(previous: &ProcessorSpec, input: &str, output: &str) -> Option<String> {
    let name = &previous.name;
    if previous.input_topic != input {
        return Some(format!(
            "processor {name} reads {:?}, and its checkpointed offsets belong to that topic; to read {:?} instead, deploy with --reset (empty state, from the start of the new topic) or under another name",
            previous.input_topic, input
        ));
    }
    if previous.output_topic != output {
        return Some(format!(
            "processor {name} writes to {:?}, and its checkpoints mark what it wrote there; to write to {:?} instead, deploy with --reset (empty state, from the start of the input) or under another name",
            previous.output_topic, output
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::checkpoint::tests::{set_leader, TestStore};
    use crate::store::checkpoint::{write_checkpoint, Fence};
    use crate::wasm::{InstanceLimits, WasmEngine};

    const PASSTHROUGH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/wasm32-wasip2/plugin/passthrough.wasm"
    );
    const OTHER_WORLD: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/wasm32-wasip2/plugin/other_world.wasm"
    );

    fn component(path: &str) -> Vec<u8> {
        std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e}; build it with scripts/build-plugins.sh"))
    }

    fn loader() -> ModuleLoader {
        ModuleLoader::new(WasmEngine::new(InstanceLimits::default()).unwrap(), None).unwrap()
    }

    fn request(name: &str) -> DeploySpec {
        DeploySpec {
            name: name.to_string(),
            input_topic: "logs".to_string(),
            output_topic: "logs.out".to_string(),
            extra_output_topics: Vec::new(),
            config: String::new(),
            batch: BatchSettings::default(),
        }
    }

    fn module_keys(store: &TestStore, sha256: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let prefix = keys::module(sha256);
        store
            .dump()
            .into_iter()
            .filter(|(key, _)| key.starts_with(prefix.bytes()))
            .collect()
    }

    #[test]
    fn a_redeploy_that_changes_the_input_or_default_output_needs_a_reset() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let first = deploy(
            &store,
            &loader,
            &bytes,
            request("p"),
            DeployOptions::default(),
        )
        .unwrap()
        .spec;
        assert_eq!(first.lineage, 1);
        let before = store.dump();
        for (input, output, named) in [("logs2", "logs.out", "logs2"), ("logs", "out2", "out2")] {
            let changed = DeploySpec {
                input_topic: input.into(),
                output_topic: output.into(),
                ..request("p")
            };
            let error = deploy(&store, &loader, &bytes, changed, DeployOptions::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(named) && error.contains("--reset"),
                "{error}"
            );
            assert_eq!(store.dump(), before);
        }
        // Routed topics may come and go within the lineage.
        let routed = DeploySpec {
            extra_output_topics: vec!["alerts".into()],
            ..request("p")
        };
        let second = deploy(&store, &loader, &bytes, routed, DeployOptions::default())
            .unwrap()
            .spec;
        assert_eq!((second.version, second.lineage), (2, 1));
        // A reset starts a new lineage, even for an unchanged spec.
        let moved = DeploySpec {
            input_topic: "logs2".into(),
            ..request("p")
        };
        let reset = DeployOptions { reset: true };
        let third = deploy(&store, &loader, &bytes, moved.clone(), reset).unwrap();
        assert!(third.changed);
        assert_eq!((third.spec.version, third.spec.lineage), (3, 2));
        let again = deploy(&store, &loader, &bytes, moved, reset).unwrap().spec;
        assert_eq!((again.version, again.lineage), (4, 3));
    }

    #[test]
    fn output_topics_are_validated() {
        let spec = |outputs: &[&str]| DeploySpec {
            output_topic: outputs[0].into(),
            extra_output_topics: outputs[1..].iter().map(|t| t.to_string()).collect(),
            ..request("p")
        };
        spec(&["out", "alerts"]).validate().unwrap();
        for (outputs, says) in [
            (&["out", "out"][..], "given twice"),
            (&["out", "logs"][..], "may not consume its own output"),
            (&["out", "p.dlq"][..], "dead-letter topic"),
            (&["out", "bad topic"][..], "contains ' '"),
        ] {
            let error = spec(outputs).validate().unwrap_err().to_string();
            assert!(error.contains(says), "{outputs:?}: {error}");
        }
        let many: Vec<String> = (0..=MAX_OUTPUT_TOPICS).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(spec(&many)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn deploying_a_valid_module_stores_it_and_bumps_the_version() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        assert_eq!(registry_version(&store).unwrap(), 0);

        let first = deploy(
            &store,
            &loader,
            &bytes,
            request("p"),
            DeployOptions::default(),
        )
        .unwrap();
        assert!(first.module_stored && first.changed);
        assert_eq!((first.spec.version, first.registry_version), (1, 1));
        assert_eq!(
            first.spec.module_sha256,
            hex::encode(Sha256::digest(&bytes))
        );
        assert_eq!(registry_version(&store).unwrap(), 1);
        assert_eq!(get_spec(&store, "p").unwrap(), Some(first.spec.clone()));
        assert_eq!(
            read_module(&store, &first.spec.module_sha256).unwrap(),
            Some(bytes.clone())
        );

        // A changed config is a new version.
        let changed = DeploySpec {
            config: r#"{"level":"warn"}"#.to_string(),
            ..request("p")
        };
        let second = deploy(
            &store,
            &loader,
            &bytes,
            changed.clone(),
            DeployOptions::default(),
        )
        .unwrap();
        assert!(!second.module_stored && second.changed);
        assert_eq!((second.spec.version, second.registry_version), (2, 2));

        // The identical spec again changes nothing.
        let before = store.dump();
        let third = deploy(&store, &loader, &bytes, changed, DeployOptions::default()).unwrap();
        assert!(!third.module_stored && !third.changed);
        assert_eq!(third.spec, second.spec);
        assert_eq!(third.registry_version, 2);
        assert_eq!(store.dump(), before);
    }

    #[test]
    fn invalid_modules_are_refused_and_store_nothing() {
        let store = TestStore::new();
        let loader = loader();
        let valid = component(PASSTHROUGH);
        deploy(
            &store,
            &loader,
            &valid,
            request("existing"),
            DeployOptions::default(),
        )
        .unwrap();
        let before = store.dump();

        let mut random = vec![0u8; 100_000];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for byte in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("random bytes", random),
            ("an empty file", Vec::new()),
            ("a core module", b"\0asm\x01\0\0\0".to_vec()),
            ("a component of another world", component(OTHER_WORLD)),
            ("a truncated component", valid[..valid.len() / 2].to_vec()),
        ];
        for (what, bytes) in cases {
            // Deploying over the existing processor must not damage it either.
            for name in ["new", "existing"] {
                match deploy(
                    &store,
                    &loader,
                    &bytes,
                    request(name),
                    DeployOptions::default(),
                ) {
                    Err(DeployError::InvalidModule(error)) => {
                        let message = DeployError::InvalidModule(error).to_string();
                        assert!(!message.contains('\n'), "{what}: {message}");
                    }
                    other => panic!("{what}: expected InvalidModule, got {other:?}"),
                }
                assert!(store.dump() == before, "{what} changed the store");
            }
        }
        let core = deploy(
            &store,
            &loader,
            b"\0asm\x01\0\0\0",
            request("new"),
            DeployOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(core, DeployError::InvalidModule(ModuleError::CoreModule)),
            "{core:?}"
        );
    }

    #[test]
    fn the_same_module_deployed_twice_is_stored_once() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let first = deploy(
            &store,
            &loader,
            &bytes,
            request("a"),
            DeployOptions::default(),
        )
        .unwrap();
        let stored = module_keys(&store, &first.spec.module_sha256);

        let second = deploy(
            &store,
            &loader,
            &bytes,
            request("b"),
            DeployOptions::default(),
        )
        .unwrap();
        assert!(first.module_stored);
        assert!(!second.module_stored);
        assert_eq!(second.spec.module_sha256, first.spec.module_sha256);
        assert_eq!(module_keys(&store, &first.spec.module_sha256), stored);
        assert_eq!(registry_version(&store).unwrap(), 2);
        // No other module keys in the whole store.
        let all_modules = foundationdb_tuple::Subspace::from("module");
        let module_keys_anywhere = store
            .dump()
            .into_iter()
            .filter(|(key, _)| all_modules.is_start_of(key))
            .collect::<Vec<_>>();
        assert_eq!(module_keys_anywhere, stored);
    }

    #[test]
    fn module_bytes_round_trip_through_chunks() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        assert!(
            bytes.len() > CHUNK_BYTES,
            "the test needs a module over one chunk"
        );
        let module = loader.load(&bytes).unwrap();

        assert!(store_module(&store, &module, &bytes).unwrap());
        let meta = module_meta(&store, module.sha256()).unwrap().unwrap();
        assert_eq!(meta.size_bytes, bytes.len() as u64);
        assert_eq!(meta.chunk_count, bytes.len().div_ceil(CHUNK_BYTES) as u64);
        assert!(meta.chunk_count > 1);
        assert_eq!(
            module_keys(&store, module.sha256()).len() as u64,
            meta.chunk_count + 1
        );
        assert_eq!(
            read_module(&store, module.sha256()).unwrap(),
            Some(bytes.clone())
        );
        assert!(!store_module(&store, &module, &bytes).unwrap());
        assert_eq!(read_module(&store, &"0".repeat(64)).unwrap(), None);

        // Bytes that are not the loaded module's are refused.
        let mut other = bytes.clone();
        other.push(0);
        assert!(matches!(
            store_module(&store, &module, &other),
            Err(RegistryError::ModuleMismatch { .. })
        ));
    }

    #[test]
    fn a_corrupt_module_is_detected_and_storing_again_repairs_it() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let module = loader.load(&bytes).unwrap();
        store_module(&store, &module, &bytes).unwrap();

        store.raw(|txn| {
            let key = module_chunk_key(module.sha256(), 1);
            let mut chunk = txn.get(&key).unwrap().unwrap();
            chunk[0] ^= 0xff;
            txn.set(&key, &chunk).unwrap();
        });
        let error = read_module(&store, module.sha256()).unwrap_err();
        assert!(
            matches!(error, RegistryError::CorruptModule { .. }),
            "{error:?}"
        );

        store.raw(|txn| txn.clear(&module_chunk_key(module.sha256(), 0)).unwrap());
        let error = read_module(&store, module.sha256()).unwrap_err();
        assert!(
            error.to_string().contains("chunk 0 of 2 is missing"),
            "{error}"
        );

        assert!(store_module(&store, &module, &bytes).unwrap());
        assert_eq!(read_module(&store, module.sha256()).unwrap(), Some(bytes));
    }

    #[test]
    fn names_topics_and_batches_are_validated_before_anything_is_stored() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let cases = [
            (request(""), "the processor name is empty"),
            (request(&"a".repeat(65)), "65 characters long"),
            (request("Upper"), "contains 'U'"),
            (request("a/b"), "contains '/'"),
            (
                DeploySpec {
                    input_topic: String::new(),
                    ..request("p")
                },
                "the input topic is empty",
            ),
            (
                DeploySpec {
                    output_topic: "a b".into(),
                    ..request("p")
                },
                "the output topic \"a b\" contains ' '",
            ),
            (
                DeploySpec {
                    output_topic: "logs".into(),
                    ..request("p")
                },
                "may not consume its own output",
            ),
            (
                DeploySpec {
                    config: "x".repeat(MAX_CONFIG_BYTES + 1),
                    ..request("p")
                },
                "the config is",
            ),
            (
                DeploySpec {
                    batch: BatchSettings {
                        max_records: 0,
                        ..BatchSettings::default()
                    },
                    ..request("p")
                },
                "batch.max_records is 0",
            ),
        ];
        for (spec, expected) in cases {
            match deploy(&store, &loader, &bytes, spec, DeployOptions::default()) {
                Err(DeployError::Registry(RegistryError::InvalidSpec(message))) => {
                    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
                    assert!(!message.contains('\n'));
                }
                other => panic!("expected InvalidSpec({expected:?}), got {other:?}"),
            }
        }
        assert!(store.dump().is_empty());
        for name in ["a", "p-1.x_y", &"z".repeat(64)] {
            validate_processor_name(name).unwrap();
        }
    }

    #[test]
    fn unit_partitions_are_the_units_with_keys_of_that_processor_only() {
        let store = TestStore::new();
        assert_eq!(unit_partitions(&store, "pt").unwrap(), Vec::<i32>::new());
        for unit in ["pt/2", "pt/0", "pt/10", "pt2/1", "p/3", "pt"] {
            set_leader(&store, unit, 1);
        }
        // Checkpoint chunks of a unit are stepped over, not listed.
        write_checkpoint(
            &store,
            &Fence::new("pt/0", 1),
            &vec![7; CHUNK_BYTES * 2],
            1,
            Default::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(unit_partitions(&store, "pt").unwrap(), vec![0, 2, 10]);
        assert_eq!(unit_partitions(&store, "p").unwrap(), vec![3]);
    }

    #[test]
    fn list_and_remove_specs() {
        let store = TestStore::new();
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let b = deploy(
            &store,
            &loader,
            &bytes,
            request("b"),
            DeployOptions::default(),
        )
        .unwrap()
        .spec;
        let a = deploy(
            &store,
            &loader,
            &bytes,
            request("a"),
            DeployOptions::default(),
        )
        .unwrap()
        .spec;
        // Other keys of a processor (leader record, checkpoint chunks) and a
        // processor without a spec are skipped.
        set_leader(&store, "a", 1);
        write_checkpoint(
            &store,
            &Fence::new("a", 1),
            &vec![7; CHUNK_BYTES * 2],
            1,
            Default::default(),
            Default::default(),
        )
        .unwrap();
        set_leader(&store, "no-spec", 1);
        assert_eq!(list_specs(&store).unwrap(), vec![a, b.clone()]);

        let version = registry_version(&store).unwrap();
        assert!(remove_spec(&store, "a").unwrap());
        assert_eq!(registry_version(&store).unwrap(), version + 1);
        assert!(!remove_spec(&store, "a").unwrap());
        assert_eq!(registry_version(&store).unwrap(), version + 1);
        assert_eq!(get_spec(&store, "a").unwrap(), None);
        assert_eq!(list_specs(&store).unwrap(), vec![b]);
    }

    #[test]
    fn a_deploy_survives_unknown_commit_results() {
        // Every second commit applies but reports CommitUnknown.
        let store = TestStore::flaky(2);
        let loader = loader();
        let bytes = component(PASSTHROUGH);
        let outcome = deploy(
            &store,
            &loader,
            &bytes,
            request("p"),
            DeployOptions::default(),
        )
        .unwrap();
        assert!(outcome.changed);
        assert_eq!((outcome.spec.version, outcome.registry_version), (1, 1));
        assert_eq!(registry_version(&store).unwrap(), 1);
        assert_eq!(
            read_module(&store, &outcome.spec.module_sha256).unwrap(),
            Some(bytes)
        );
    }

    #[test]
    fn spec_json_defaults_the_optional_fields() {
        let spec: ProcessorSpec = serde_json::from_str(
            r#"{"name":"p","module_sha256":"ab","input_topic":"i","output_topic":"o","version":3}"#,
        )
        .unwrap();
        assert_eq!(spec.batch, BatchSettings::default());
        assert_eq!(spec.config, "");
        let batch: BatchSettings = serde_json::from_str(r#"{"max_records":5}"#).unwrap();
        assert_eq!(batch.max_records, 5);
        assert_eq!(batch.linger_ms, DEFAULT_BATCH_LINGER_MS);
    }
}
