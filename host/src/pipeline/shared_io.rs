//! What all units of a host share to reach the broker: its address, the
//! input fetchers every unit's input partition is read through, the hub
//! that follows every output partition for the units' takeovers, and the
//! connections their fenced producers borrow. One per host, made at start
//! and dropped after the last unit.

use std::sync::Arc;

use anyhow::Result;

use super::fetchers::Fetchers;
use super::input::INPUT_PREFETCH;
use super::tail::TailHub;
use super::wire::WirePool;

/// The host's shared broker I/O.
#[derive(Debug)]
pub struct SharedIo {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The consumers every unit's input is read through.
    pub inputs: Fetchers,
    /// The one reader of every output partition the units follow.
    pub tails: TailHub,
    /// Broker connections every unit's fenced producer borrows for a
    /// request (each unit keeps its own producer id, epoch and sequences).
    pub producers: Arc<WirePool>,
}

impl SharedIo {
    /// Shared I/O to `brokers`, with `input_fetchers` input consumers.
    pub fn new(brokers: &str, input_fetchers: usize) -> Result<Self> {
        Ok(SharedIo {
            brokers: brokers.to_string(),
            inputs: Fetchers::new(brokers, input_fetchers, INPUT_PREFETCH)?,
            tails: TailHub::start(brokers)?,
            producers: Arc::new(WirePool::new("logstream")),
        })
    }
}
