//! Resource limits of processor instances, with their defaults.
//!
//! Every limit carries its unit in its name. The defaults are chosen for a
//! log processor: generous enough for large keyed state, small enough that a
//! runaway guest cannot hurt the host.

use std::time::Duration;

/// Bytes in a MiB: memory limits and budgets are configured in MiB.
pub const MIB: u64 = 1024 * 1024;

/// Default linear-memory limit of one instance: 256 MiB.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;
/// Default wall-time limit of one call into a guest: 5 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on the total payload of what one call returns: 64 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES_PER_CALL: usize = 64 << 20;
/// Largest output record (topic, key, value and headers) a processor may
/// return: 1,000,000 bytes, librdkafka's default `message.max.bytes` and
/// under Kafka's default 1,048,588-byte record batch. A larger record would
/// be refused by the broker, and its partition could not move past it; so
/// it is the processor's failure (retried, then dead-lettered), the same in
/// `run-local` and in a host.
pub const MAX_OUTPUT_RECORD_BYTES: usize = 1_000_000;
/// Default number of units one host runs at most (`logstream host
/// --max-units`).
pub const DEFAULT_MAX_UNITS: u32 = 64;
/// Instances an engine allows beyond one per unit: a unit holds at most one
/// live instance at a time (its standby, or its active one; a rebuild drops
/// the old instance first), and the headroom covers an instance being
/// dropped while the next is made.
pub const INSTANCE_HEADROOM: u32 = 4;
/// Default number of instances that may be live at once in one engine.
pub const DEFAULT_MAX_INSTANCES: u32 = instances_for_units(DEFAULT_MAX_UNITS);

/// The instances an engine must allow for a host of `units` units.
pub const fn instances_for_units(units: u32) -> u32 {
    units.saturating_add(INSTANCE_HEADROOM)
}
/// Granularity of the time limit: the engine's epoch advances this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Longest guest log message forwarded to `tracing`; the rest is cut.
pub const MAX_GUEST_LOG_MESSAGE_BYTES: usize = 4096;
/// Table elements one instance may have (function tables).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The limits applied to every instance of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Linear memory per instance (all its memories together), in bytes.
    pub memory_limit_bytes: usize,
    /// Time limit of one call into the guest.
    pub call_timeout: Duration,
    /// Payload bytes one call may return (outputs or snapshot).
    pub max_output_bytes_per_call: usize,
    /// Instances live at once (sizes the pooling allocator).
    pub max_instances: u32,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_output_bytes_per_call: DEFAULT_MAX_OUTPUT_BYTES_PER_CALL,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

impl InstanceLimits {
    /// Epoch ticks that make up the call timeout (at least one).
    pub fn call_timeout_ticks(&self) -> u64 {
        let ticks = self.call_timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Check the limits make sense; one sentence on what does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_limit_bytes < (1 << 20) {
            return Err(format!(
                "the memory limit of {} bytes is below the 1 MiB minimum",
                self.memory_limit_bytes
            ));
        }
        if self.call_timeout < EPOCH_TICK {
            return Err(format!(
                "the call timeout of {:?} is shorter than the {:?} timer tick",
                self.call_timeout, EPOCH_TICK
            ));
        }
        if self.max_instances == 0 {
            return Err("max_instances must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up_to_ticks() {
        let mut limits = InstanceLimits::default();
        assert_eq!(limits.call_timeout_ticks(), 500);
        limits.call_timeout = Duration::from_millis(15);
        assert_eq!(limits.call_timeout_ticks(), 2);
        limits.call_timeout = Duration::ZERO;
        assert_eq!(limits.call_timeout_ticks(), 1);
    }

    #[test]
    fn validation_names_the_problem() {
        let limits = InstanceLimits {
            memory_limit_bytes: 10,
            ..InstanceLimits::default()
        };
        assert!(limits.validate().unwrap_err().contains("memory limit"));
        assert!(InstanceLimits::default().validate().is_ok());
    }
}
