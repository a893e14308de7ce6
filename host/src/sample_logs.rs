//! Deterministic, realistic sample log records: JSON log lines (about 200
//! bytes, with trace and span ids) from a few services, with e-mail addresses, IPv4 addresses and bearer tokens in some
//! messages, repeated messages, and an occasional line that is not JSON.
//! Used by `logstream gen-logs`, the tests, the benchmarks and the demo.
//!
//! Guarantee: the same seed gives the same records, on every machine.

use crate::record::LogRecord;

const SERVICES: &[&str] = &[
    "checkout",
    "payments",
    "search",
    "auth",
    "inventory",
    "gateway",
];
const LEVELS: &[&str] = &["debug", "info", "info", "info", "warn", "error"];
const USERS: &[&str] = &[
    "alice@example.com",
    "bob.smith@mail.example.org",
    "carol+ops@corp.example",
];
const MESSAGES: &[&str] = &[
    "request served in {ms} ms",
    "user {user} logged in from {ip}",
    "cache miss for key item:{n}",
    "retrying upstream call to {ip}:8443 (attempt {attempt})",
    "authorization header Bearer {token} rejected",
    "order {n} placed by {user}",
    "slow query took {ms} ms",
    "connection reset by peer {ip}",
    "health check ok",
];

/// A small, fast, seedable generator (SplitMix64): the sample must not
/// depend on a RNG crate's algorithm changes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Generates sample records round-robin over `partitions` partitions.
pub struct SampleLogs {
    rng: SplitMix64,
    partitions: i32,
    next_offsets: Vec<i64>,
    produced: u64,
}

/// Timestamp of the first sample record: 2024-01-01T00:00:00Z, in ms.
const START_MS: i64 = 1_704_067_200_000;

impl SampleLogs {
    pub fn new(seed: u64, partitions: i32) -> Self {
        let partitions = partitions.max(1);
        SampleLogs {
            rng: SplitMix64(seed),
            partitions,
            next_offsets: vec![0; partitions as usize],
            produced: 0,
        }
    }

    /// The value of the next log line (without partition bookkeeping).
    pub fn next_value(&mut self) -> String {
        let rng = &mut self.rng;
        // About one line in 500 is not JSON (a stack trace fragment).
        if rng.below(500) == 0 {
            return "    at com.example.Handler.run(Handler.java:42)".to_string();
        }
        let service = rng.pick(SERVICES);
        let level = rng.pick(LEVELS);
        let template = rng.pick(MESSAGES);
        let message = template
            .replace("{ms}", &(rng.below(2000) + 1).to_string())
            .replace("{user}", rng.pick(USERS))
            .replace(
                "{ip}",
                &format!(
                    "10.{}.{}.{}",
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                ),
            )
            .replace("{n}", &rng.below(50).to_string())
            .replace("{attempt}", &(rng.below(3) + 1).to_string())
            .replace(
                "{token}",
                &format!("eyJ{:016x}.{:08x}", rng.next(), rng.next() as u32),
            );
        serde_json::json!({
            "service": service,
            "level": level,
            "message": message,
            "host": format!("{service}-{}", rng.below(3)),
            "trace_id": format!("{:016x}{:016x}", rng.next(), rng.next()),
            "span_id": format!("{:016x}", rng.next()),
        })
        .to_string()
    }
}

impl Iterator for SampleLogs {
    type Item = LogRecord;

    fn next(&mut self) -> Option<LogRecord> {
        let partition = (self.produced % self.partitions as u64) as i32;
        let offset = self.next_offsets[partition as usize];
        self.next_offsets[partition as usize] += 1;
        let value = self.next_value();
        let record = LogRecord {
            partition,
            offset,
            timestamp_ms: START_MS + self.produced as i64 * 7,
            key: None,
            value: value.into_bytes(),
            headers: Vec::new(),
        };
        self.produced += 1;
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_records() {
        let a: Vec<_> = SampleLogs::new(7, 3).take(100).collect();
        let b: Vec<_> = SampleLogs::new(7, 3).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, SampleLogs::new(8, 3).take(100).collect::<Vec<_>>());
    }

    #[test]
    fn offsets_increase_per_partition() {
        let records: Vec<_> = SampleLogs::new(1, 3).take(9).collect();
        let p1: Vec<_> = records
            .iter()
            .filter(|r| r.partition == 1)
            .map(|r| r.offset)
            .collect();
        assert_eq!(p1, vec![0, 1, 2]);
    }
}
