//! The Kafka pipeline: hosts that run deployed processors over Kafka with
//! active-passive failover.
//!
//! - [`kafka`]: rdkafka clients (manual assignment, confirmed delivery,
//!   reading back output ids, topic creation);
//! - [`elector`]: the host's one elector thread, renewing every unit's lease
//!   in batched store transactions;
//! - [`broker_health`]: whether the host reaches its brokers (it yields its
//!   units to a peer that does); [`heartbeat`]: the thread that publishes
//!   the host's membership and makes that decision;
//! - [`fenced`]: the unit's output producer, fenced at the broker by the
//!   unit's epoch ([`wire`]: the protocol connection it speaks over,
//!   [`record_batch`]: the batches it sends);
//! - [`fetchers`]: the host's shared input consumers, one queue per
//!   partition;
//! - [`input`], [`tail`], [`links`]: a unit's input reader, the tail of its
//!   output partitions, and the connections it keeps across roles;
//! - [`shared_io`]: what a host's units share to reach the broker;
//! - [`standby_budget`]: how much memory the host's warm standbys may hold;
//! - [`position`]: where a checkpoint puts a unit (offset, output marks);
//! - [`unit`](mod@unit): one processor on one input partition: lead, checkpoint,
//!   hot standby, takeover with output suppression, crash-only restarts;
//!   it reaches the clock, its lease and the broker only through
//!   [`unit::seams`], so a simulation can run the same code;
//! - [`worker_pool`]: the threads that run a host's units step by step
//!   ([`wake`]: what wakes a waiting unit);
//! - [`node`]: a host: membership, registry polling, a job per unit in the
//!   worker pool.

pub mod broker_health;
pub mod checkpoint_watch;
pub mod elector;
pub mod fenced;
pub mod fetchers;
pub mod heartbeat;
pub mod input;
pub mod kafka;
pub mod links;
pub mod node;
pub mod position;
pub mod record_batch;
pub mod shared_io;
pub mod standby_budget;
pub mod stoppable;
pub mod tail;
pub mod unit;
pub mod wake;
pub mod wire;
pub mod worker_pool;
