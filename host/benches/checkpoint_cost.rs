//! Checkpoint cost vs state size on the embedded SQLite store, or with
//! `STORE=etcd` on a three-member etcd cluster on loopback: the fenced,
//! chunked write (`write_checkpoint`) and the verified read
//! (`read_current`) of states from 1 kB to 64 MB.
//!
//! Run: `cargo bench -p logstream-host --bench checkpoint_cost` (env `ROUNDS`,
//! default 5; `STORE`, `sqlite` or `etcd`).

#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/tls.rs"]
mod tls;

use std::collections::BTreeMap;
use std::time::Instant;

use logstream_host::store::checkpoint::{self, Fence};
use logstream_host::store::election::{step, Election, ElectionTiming};
use logstream_host::store::{KvStore, RetryPolicy, SqliteStore};

const SIZES: [usize; 6] = [1 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let cluster;
    let store: Box<dyn KvStore> = match std::env::var("STORE").as_deref() {
        Ok("sqlite") | Err(_) => Box::new(SqliteStore::open(dir.path().join("store.db")).unwrap()),
        Ok("etcd") => {
            cluster = etcd::EtcdCluster::start(3);
            etcd::EtcdCluster::open(&cluster.url())
        }
        Ok(other) => panic!("STORE is `sqlite` or `etcd`, not {other:?}"),
    };
    let store = store.as_ref();
    println!("checkpoint cost on {}", store.describe());
    // Become the leader of the unit, so checkpoints pass the fence.
    let mut election = Election::new("bench", "bench:1:0", ElectionTiming::default());
    let outcome = step(
        store,
        &RetryPolicy::default(),
        &mut election,
        "bench/0",
        &logstream_host::store::clock::SystemClock::default(),
        false,
    )
    .unwrap();
    let epoch = outcome.state.unwrap().record.epoch;
    let fence = Fence::new("bench/0", epoch);
    println!("| state size | write median | read median | write MB/s |");
    println!("|---:|---:|---:|---:|");
    for size in SIZES {
        // Incompressible, like real serialized state would mostly be.
        let mut state = vec![0u8; size];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for byte in state.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let started = Instant::now();
            let offsets = BTreeMap::from([(0, round as i64)]);
            checkpoint::write_checkpoint(store, &fence, &state, 1, offsets, BTreeMap::new())
                .unwrap();
            writes.push(started.elapsed().as_secs_f64() * 1000.0);
            let started = Instant::now();
            let read = checkpoint::read_current(store, "bench/0").unwrap().unwrap();
            reads.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(read.state.len(), size);
        }
        writes.sort_by(f64::total_cmp);
        reads.sort_by(f64::total_cmp);
        let (write, read) = (writes[rounds / 2], reads[rounds / 2]);
        let label = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        println!(
            "| {label} | {write:.1} ms | {read:.1} ms | {:.0} |",
            size as f64 / 1e6 / (write / 1000.0)
        );
    }
}
