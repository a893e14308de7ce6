//! # logstream-host
//!
//! The LogStream host: runs stateful log processors, compiled to
//! WebAssembly components, with active-passive failover.
//!
//! - [`unit_id`]: a unit's identity and every name and id derived from it;
//! - [`wasm`]: the processor runtime (engine, sandbox, instances, recovery);
//! - [`record`]: the host's input record and its packing into a batch;
//! - [`pipeline`]: the Kafka pipeline, units with failover, the host node;
//! - [`jsonl`]: the JSON-lines record format of `run-local`;
//! - [`store`]: the coordination store (transactional KV, election, checkpoints);
//! - [`probe`]: the diagnostic election probe and its log checker;
//! - [`sample_logs`]: deterministic realistic sample records;
//! - [`admin`]: a host's Prometheus metrics and admin HTTP server;
//! - [`cli`]: the `logstream` command line.

pub mod admin;
pub mod cli;
pub mod jsonl;
pub mod pipeline;
pub mod probe;
pub mod record;
pub mod sample_logs;
pub mod store;
pub mod unit_id;
pub mod wasm;
