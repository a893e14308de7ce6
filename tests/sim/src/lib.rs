//! The deterministic simulator of LogStream's failover protocol.
//!
//! Hosts elect one active per unit; the active consumes, produces its
//! outputs as one Kafka transactional id and checkpoints its state; a
//! passive takes over after a lease, fences the id and reads the output
//! tails back before replaying. This crate models the parties of that
//! protocol as pure, synchronous state machines so that a test can drive
//! every interleaving of their steps, reproducibly, without a network,
//! clocks or threads.
//!
//! Where the production code is already a pure state machine over
//! injected time and the store contract, the simulator drives *that* code
//! rather than a model of it: the election runs as `logstream-host` ships
//! it.
//!
//! - [`broker`]: the producer-facing state of a Kafka broker (transaction
//!   coordinator, partition logs, per-partition producer state), with
//!   Apache Kafka's per-partition epoch check or tansu's global one.
//! - [`store`]: a simulated coordination store implementing the host's
//!   `KvStore` contract, with FoundationDB's and etcd's optimistic
//!   concurrency or SQLite's single writer, every latency and failure
//!   decided by the scheduler.
//! - [`election`]: the seeded scheduler that runs the host's real
//!   `Election` state machines over that store and simulated clocks, under
//!   crashes, pauses and store faults, checking after every event that no
//!   two hosts act for one unit at once; failing seeds are shrunk and
//!   replayed from their seed.
//! - [`pipeline`]: the seeded scheduler that runs the host's real `Unit`
//!   (takeover, fence, read-back, batches, checkpoints) and `Election` over
//!   the store and the broker model, under crashes, pauses, lost messages
//!   and store faults, checking exactly-once after every event.

pub mod broker;
pub mod election;
pub mod pipeline;
pub mod store;

/// Record a simulation's figures for `docs/reliability.md`: `line` goes to
/// `target/tmp/reliability/NAME.sim`, which `scripts/reliability-table.sh`
/// puts in the document's simulation section (as the process tests' rows
/// go in its table). Best effort: a test never fails for it.
pub fn record_figures(name: &str, line: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/reliability");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.sim")), format!("{line}\n"));
    }
}
