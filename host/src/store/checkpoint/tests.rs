//! Tests of the checkpoint layer, including the fuzz properties over its
//! decoders (`PROPTEST_CASES` scales them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;

use super::*;
use crate::store::kv::{KeyValue, StoreError};
use crate::store::SqliteStore;

/// A store wrapper that counts transactions and, every `flaky_every`-th
/// transaction, applies its commit and then reports `CommitUnknown` — the case the
/// retry loop re-runs bodies for.
pub(crate) struct TestStore {
    pub inner: SqliteStore,
    pub transactions: AtomicU64,
    pub flaky_every: u64,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub(crate) fn new() -> Self {
        Self::flaky(0)
    }

    pub(crate) fn flaky(flaky_every: u64) -> Self {
        Self::in_dir(flaky_every, tempfile::tempdir().unwrap())
    }

    /// A store on a RAM file system when there is one: the fuzz
    /// properties open thousands of stores, and on a disk their
    /// creation and checkpoints are mostly waiting for the disk.
    pub(crate) fn in_ram() -> Self {
        let ram = std::path::Path::new("/dev/shm");
        let dir = if ram.is_dir() {
            tempfile::tempdir_in(ram).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        Self::in_dir(0, dir)
    }

    fn in_dir(flaky_every: u64, dir: tempfile::TempDir) -> Self {
        let inner = SqliteStore::open(dir.path().join("store.db")).unwrap();
        TestStore {
            inner,
            transactions: AtomicU64::new(0),
            flaky_every,
            _dir: dir,
        }
    }

    /// Every key and value in the store.
    pub(crate) fn dump(&self) -> Vec<KeyValue> {
        let mut txn = self.inner.begin().unwrap();
        txn.get_range(b"", &[0xff, 0xff], usize::MAX).unwrap()
    }

    pub(crate) fn raw(&self, body: impl FnOnce(&mut dyn KvTxn)) {
        let mut txn = self.inner.begin().unwrap();
        body(&mut *txn);
        txn.commit().unwrap();
    }
}

struct TestTxn<'a> {
    inner: Box<dyn KvTxn + 'a>,
    report_unknown: bool,
}

impl KvStore for TestStore {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        let inner = self.inner.begin()?;
        let n = self.transactions.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Box::new(TestTxn {
            inner,
            report_unknown: self.flaky_every > 0 && n.is_multiple_of(self.flaky_every),
        }))
    }

    fn describe(&self) -> String {
        format!("test:{}", self.inner.describe())
    }
}

impl KvTxn for TestTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.get_range(begin, end, limit)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.set(key, value)
    }
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.clear(key)
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.inner.clear_range(begin, end)
    }
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.inner.commit()?;
        if self.report_unknown {
            return Err(StoreError::CommitUnknown);
        }
        Ok(())
    }
}

pub(crate) fn set_leader(store: &TestStore, name: &str, epoch: u64) {
    store.raw(|txn| {
        let record = format!(r#"{{"epoch":{epoch},"holder":"h1"}}"#);
        txn.set(&keys::leader(name), record.as_bytes()).unwrap();
    });
}

/// Incompressible pseudo-random bytes (splitmix64), reproducible.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(store: &TestStore, fence: &Fence, state: &[u8]) -> CheckpointMeta {
    write_checkpoint(store, fence, state, 1, BTreeMap::new(), BTreeMap::new()).unwrap()
}

fn write_err(store: &TestStore, fence: &Fence, state: &[u8]) -> CheckpointError {
    write_checkpoint(store, fence, state, 1, BTreeMap::new(), BTreeMap::new()).unwrap_err()
}

/// Run `f` with the log events it emits captured as text.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(move || writer.clone())
        .finish();
    let value = tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    (value, log)
}

fn keys_of_generation(store: &TestStore, name: &str, gen: u64) -> usize {
    let subspace = generation(name, gen);
    store
        .dump()
        .iter()
        .filter(|(key, _)| key.starts_with(subspace.bytes()))
        .count()
}

#[test]
fn round_trips_64_mib_across_many_transactions() {
    let store = TestStore::new();
    set_leader(&store, "big", 1);
    let fence = Fence::new("big", 1);
    let state = random_bytes(64 * 1024 * 1024, 7);

    let started = Instant::now();
    let meta = write(&store, &fence, &state);
    let written = started.elapsed();
    let commits = store.transactions.load(Ordering::Relaxed);
    let started = Instant::now();
    let read = read_current(&store, "big").unwrap().unwrap();
    let read_time = started.elapsed();
    eprintln!("64 MiB checkpoint: write {written:?} in {commits} transactions, read {read_time:?}");

    assert_eq!(meta.chunk_count, 1024);
    // At most MAX_CHUNKS_PER_TXN chunks per transaction.
    assert!(commits >= 1024 / MAX_CHUNKS_PER_TXN as u64);
    assert_eq!(read.meta, meta);
    assert!(read.corrupt_generations.is_empty());
    assert!(read.state == state, "the state read back differs");
}

#[test]
fn offsets_marks_and_state_version_round_trip() {
    let store = TestStore::new();
    set_leader(&store, "p", 4);
    let offsets = BTreeMap::from([(0, 17), (3, 9_000_000_000), (-1, -1)]);
    let marks = BTreeMap::from([
        ("out:0".to_string(), "p/0/16/2".to_string()),
        ("weird \"key\"".to_string(), "\u{1f980}".to_string()),
    ]);
    let written = write_checkpoint(
        &store,
        &Fence::new("p", 4),
        b"hello",
        42,
        offsets.clone(),
        marks.clone(),
    )
    .unwrap();

    let meta = read_current_meta(&store, "p").unwrap().unwrap();
    assert_eq!(meta, written);
    assert_eq!((meta.offsets, meta.marks), (offsets.clone(), marks.clone()));
    assert_eq!(
        (meta.state_version, meta.epoch, meta.size_bytes),
        (42, 4, 5)
    );
    let checkpoint = read_current(&store, "p").unwrap().unwrap();
    assert_eq!(checkpoint.state, b"hello");
    assert_eq!(checkpoint.meta.offsets, offsets);
    assert_eq!(checkpoint.meta.marks, marks);
}

#[test]
fn nothing_stored_reads_as_none() {
    let store = TestStore::new();
    assert!(read_current(&store, "p").unwrap().is_none());
    assert!(read_current_meta(&store, "p").unwrap().is_none());
}

#[test]
fn empty_state_round_trips() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let meta = write(&store, &Fence::new("p", 1), b"");
    assert_eq!(meta.chunk_count, 0);
    assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"");
}

#[test]
fn a_flipped_byte_is_detected_and_the_previous_generation_used() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let old = random_bytes(100_000, 1);
    let new = random_bytes(3 * CHUNK_BYTES + 5, 2);
    let old_meta = write(&store, &fence, &old);
    let new_meta = write(&store, &fence, &new);

    store.raw(|txn| {
        let key = chunk_key("p", new_meta.generation, 1);
        let mut chunk = txn.get(&key).unwrap().unwrap();
        chunk[1234] ^= 0x01;
        txn.set(&key, &chunk).unwrap();
    });

    let (checkpoint, log) = capture_logs(|| read_current(&store, "p").unwrap().unwrap());
    assert_eq!(checkpoint.meta, old_meta);
    assert_eq!(checkpoint.state, old);
    assert_eq!(checkpoint.corrupt_generations, vec![new_meta.generation]);
    // Loudly: an error naming the processor, the generation and why.
    let expected = format!(
        "ERROR checkpoint generation {} of processor \"p\" is corrupt: its sha256 is",
        new_meta.generation
    );
    assert!(log.contains(&expected), "{log}");
    // The metadata itself is intact, so the cheap poll still names it.
    assert_eq!(read_current_meta(&store, "p").unwrap().unwrap(), new_meta);
}

#[test]
fn a_missing_chunk_is_detected_and_the_previous_generation_used() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let first = write(&store, &fence, &random_bytes(10, 1));
    let second = write(&store, &fence, &random_bytes(2 * CHUNK_BYTES, 2));
    let third = write(&store, &fence, &random_bytes(3 * CHUNK_BYTES, 3));

    // The last chunk of the newest, the middle chunk of the next.
    store.raw(|txn| {
        txn.clear(&chunk_key("p", third.generation, 2)).unwrap();
        txn.clear(&chunk_key("p", second.generation, 0)).unwrap();
    });

    let checkpoint = read_current(&store, "p").unwrap().unwrap();
    assert_eq!(checkpoint.meta, first);
    assert_eq!(
        checkpoint.corrupt_generations,
        vec![third.generation, second.generation]
    );
}

#[test]
fn every_generation_corrupt_is_an_error_naming_them() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let first = write(&store, &fence, &random_bytes(CHUNK_BYTES + 1, 1));
    let second = write(&store, &fence, &random_bytes(CHUNK_BYTES + 1, 2));
    store.raw(|txn| {
        txn.clear(&chunk_key("p", first.generation, 1)).unwrap();
        // Truncated chunk: length check.
        txn.set(&chunk_key("p", second.generation, 1), b"").unwrap();
    });
    match read_current(&store, "p") {
        Err(CheckpointError::Corrupt {
            processor,
            corrupt_generations,
        }) => {
            assert_eq!(processor, "p");
            assert_eq!(
                corrupt_generations,
                vec![second.generation, first.generation]
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_stale_epoch_is_refused_and_changes_nothing() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    write(&store, &fence, &random_bytes(CHUNK_BYTES * 2, 1));
    set_leader(&store, "p", 2);
    let before = store.dump();

    let error = write_checkpoint(
        &store,
        &fence,
        &random_bytes(CHUNK_BYTES * 2, 2),
        1,
        BTreeMap::from([(0, 99)]),
        BTreeMap::new(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            CheckpointError::Fenced {
                writer_epoch: 1,
                current_epoch: Some(2),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("epoch 2"), "{error}");
    assert_eq!(store.dump(), before);

    // Without any leader record, nobody may write.
    let error = write_err(&TestStore::new(), &fence, b"x");
    assert!(matches!(
        error,
        CheckpointError::Fenced {
            current_epoch: None,
            ..
        }
    ));
}

#[test]
fn orphan_chunks_of_a_fenced_out_writer_are_collected() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let zombie = Fence::new("p", 1);
    let policy = RetryPolicy::default();
    let kept = write(&store, &zombie, b"first");

    // The epoch-1 leader starts a checkpoint, then is deposed mid-way.
    let orphan = allocate_generation(&store, &policy, &zombie).unwrap();
    let state = random_bytes(CHUNK_BYTES * MAX_CHUNKS_PER_TXN * 2, 9);
    write_chunks(
        &store,
        &policy,
        &zombie,
        orphan,
        &state[..CHUNK_BYTES * MAX_CHUNKS_PER_TXN],
    )
    .unwrap();
    set_leader(&store, "p", 2);
    assert!(matches!(
        write_chunks(&store, &policy, &zombie, orphan, &state),
        Err(CheckpointError::Fenced { .. })
    ));
    let meta = CheckpointMeta {
        generation: orphan,
        ..kept.clone()
    };
    assert!(matches!(
        commit_generation(&store, &policy, &zombie, &meta, KEEP_GENERATIONS),
        Err(CheckpointError::Fenced { .. })
    ));
    // The zombie cannot garbage-collect either.
    assert!(matches!(
        collect_garbage(&store, &policy, &zombie, 1),
        Err(CheckpointError::Fenced { .. })
    ));
    assert_eq!(keys_of_generation(&store, "p", orphan), MAX_CHUNKS_PER_TXN);
    assert_eq!(
        stored_generations(&store, "p").unwrap(),
        vec![kept.generation, orphan]
    );
    assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"first");

    // The new leader's first checkpoint collects the orphan.
    let leader = Fence::new("p", 2);
    let newer = write(&store, &leader, b"second");
    assert!(newer.generation > orphan);
    assert_eq!(keys_of_generation(&store, "p", orphan), 0);
    assert_eq!(
        stored_generations(&store, "p").unwrap(),
        vec![kept.generation, newer.generation]
    );
    assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"second");
}

#[test]
fn only_the_last_k_generations_remain() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let mut written = Vec::new();
    for i in 0..10u64 {
        written.push(write(&store, &fence, &random_bytes(CHUNK_BYTES + 10, i)).generation);
    }
    assert_eq!(stored_generations(&store, "p").unwrap(), written[7..]);

    let options = CheckpointOptions {
        keep_generations: 5,
        ..CheckpointOptions::default()
    };
    for i in 0..6u64 {
        let meta = write_checkpoint_with(
            &store,
            &options,
            &fence,
            &random_bytes(10, i),
            1,
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .unwrap();
        written.push(meta.generation);
    }
    assert_eq!(
        stored_generations(&store, "p").unwrap(),
        written[written.len() - 5..]
    );
    // Another processor's checkpoints are untouched.
    set_leader(&store, "q", 1);
    write(&store, &Fence::new("q", 1), b"q");
    assert_eq!(stored_generations(&store, "p").unwrap().len(), 5);
    assert_eq!(stored_generations(&store, "q").unwrap().len(), 1);
}

#[test]
fn writes_survive_unknown_commit_results() {
    // Every third commit applies but reports CommitUnknown, so bodies
    // are re-run after applied commits: allocation, chunks, switch, GC.
    let store = TestStore::flaky(3);
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let mut last = None;
    for i in 0..6u64 {
        let state = random_bytes(CHUNK_BYTES * 9 + 3, i);
        let meta = write(&store, &fence, &state);
        last = Some((meta, state));
    }
    let (meta, state) = last.unwrap();
    let checkpoint = read_current(&store, "p").unwrap().unwrap();
    assert_eq!(checkpoint.meta, meta);
    assert_eq!(checkpoint.state, state);
    assert!(checkpoint.corrupt_generations.is_empty());
    // No orphan left behind: exactly the kept generations.
    assert_eq!(
        stored_generations(&store, "p").unwrap().len(),
        KEEP_GENERATIONS
    );
}

#[test]
fn a_commit_older_than_the_current_generation_is_refused() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let policy = RetryPolicy::default();
    let early = allocate_generation(&store, &policy, &fence).unwrap();
    let current = write(&store, &fence, b"later");
    let meta = CheckpointMeta {
        generation: early,
        ..current.clone()
    };
    assert!(matches!(
        commit_generation(&store, &policy, &fence, &meta, KEEP_GENERATIONS),
        Err(CheckpointError::Superseded { .. })
    ));
    assert_eq!(read_current_meta(&store, "p").unwrap().unwrap(), current);
}

#[test]
fn oversized_metadata_is_refused_before_writing() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let before = store.dump();
    let marks = (0..2_000)
        .map(|i| (format!("mark-{i}"), "x".repeat(50)))
        .collect();
    let error =
        write_checkpoint(&store, &Fence::new("p", 1), b"s", 1, BTreeMap::new(), marks).unwrap_err();
    assert!(
        matches!(error, CheckpointError::MetadataTooLarge { .. }),
        "{error:?}"
    );
    assert_eq!(store.dump(), before);
}

#[test]
fn a_malformed_leader_record_is_reported() {
    let store = TestStore::new();
    store.raw(|txn| txn.set(&keys::leader("p"), b"not json").unwrap());
    let error = write_err(&store, &Fence::new("p", 1), b"x");
    assert!(
        matches!(error, CheckpointError::BadRecord { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("leader record"), "{error}");
}

#[test]
fn the_leader_epoch_ignores_other_fields() {
    let store = TestStore::new();
    store.raw(|txn| {
        txn.set(
            &keys::leader("p"),
            br#"{"holder":"h2","epoch":7,"renewed":{"n":1}}"#,
        )
        .unwrap()
    });
    let mut txn = store.inner.begin().unwrap();
    assert_eq!(read_leader_epoch(&mut *txn, "p").unwrap(), Some(7));
    assert_eq!(read_leader_epoch(&mut *txn, "q").unwrap(), None);
}

/// Restore with a callback that refuses the states in `refused`.
fn restore_refusing(
    store: &TestStore,
    refused: &[Vec<u8>],
) -> Result<Option<Restored<Vec<u8>>>, RestoreError<String>> {
    restore_newest(store, &RetryPolicy::default(), "p", |_, state| {
        if refused.contains(&state) {
            Err(RestoreFailure::Refused("incompatible state".to_string()))
        } else {
            Ok(state)
        }
    })
}

fn write_at(store: &TestStore, fence: &Fence, state: &[u8], offset: i64) -> CheckpointMeta {
    let marks = BTreeMap::from([("out".to_string(), (offset * 10).to_string())]);
    write_checkpoint(store, fence, state, 1, BTreeMap::from([(0, offset)]), marks).unwrap()
}

#[test]
fn a_refused_state_falls_back_to_the_previous_generation_with_its_own_position() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let old = write_at(&store, &fence, b"old", 100);
    let new = write_at(&store, &fence, b"new", 200);

    let (restored, log) = capture_logs(|| {
        restore_refusing(&store, &[b"new".to_vec()])
            .unwrap()
            .unwrap()
    });
    assert_eq!(restored.value, b"old");
    // The older generation's own offsets and marks come with its state.
    assert_eq!(restored.meta, old);
    assert_eq!(restored.meta.offsets[&0], 100);
    assert_eq!(
        restored.unusable,
        vec![UnusableGeneration {
            generation: new.generation,
            kind: FaultKind::Refused,
            reason: "incompatible state".to_string(),
        }]
    );
    let expected = format!(
        "ERROR checkpoint generation {} of processor \"p\" was refused by the processor: incompatible state; trying an older one",
        new.generation
    );
    assert!(log.contains(&expected), "{log}");
    // Nothing refused: the current generation, nothing skipped.
    let restored = restore_refusing(&store, &[]).unwrap().unwrap();
    assert_eq!((restored.meta, restored.unusable), (new, Vec::new()));
}

#[test]
fn no_usable_generation_is_an_error_naming_each_and_why() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let first = write(&store, &fence, b"a");
    let second = write(&store, &fence, b"b");
    store.raw(|txn| {
        txn.set(&chunk_key("p", second.generation, 0), b"x")
            .unwrap()
    });
    let error = match restore_refusing(&store, &[b"a".to_vec()]) {
        Err(RestoreError::Checkpoint(error)) => error,
        other => panic!("expected a checkpoint error, got {:?}", other.map(|_| ())),
    };
    let CheckpointError::Unusable { unusable, .. } = &error else {
        panic!("expected Unusable, got {error:?}");
    };
    assert_eq!(
        unusable
            .iter()
            .map(|u| (u.generation, u.kind))
            .collect::<Vec<_>>(),
        vec![
            (second.generation, FaultKind::Corrupt),
            (first.generation, FaultKind::Refused)
        ]
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "generation {} is corrupt: its sha256",
            second.generation
        )) && message.contains(&format!(
            "generation {} was refused by the processor: incompatible state",
            first.generation
        )),
        "{message}"
    );
}

#[test]
fn a_failure_that_is_not_the_states_stops_without_falling_back() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    write(&store, &fence, b"a");
    write(&store, &fence, b"b");
    let mut calls = 0;
    let result = restore_newest(&store, &RetryPolicy::default(), "p", |_, _| {
        calls += 1;
        Err::<(), _>(RestoreFailure::Failed("the module does not instantiate"))
    });
    assert!(matches!(
        result,
        Err(RestoreError::Failed("the module does not instantiate"))
    ));
    assert_eq!(calls, 1, "no older generation is tried");
}

#[test]
fn the_candidate_skips_known_unusable_and_broken_metadata() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let first = write(&store, &fence, b"a");
    let second = write(&store, &fence, b"b");
    let third = write(&store, &fence, b"c");
    store.raw(|txn| txn.set(&meta_key("p", third.generation), b"{").unwrap());
    let kept = read_kept(&store, "p").unwrap();
    assert_eq!(
        kept.iter().map(|k| k.generation).collect::<Vec<_>>(),
        vec![third.generation, second.generation, first.generation]
    );
    assert!(kept[0].meta.is_err());
    assert_eq!(newest_candidate(&kept, |_| false), Some(&second));
    assert_eq!(
        newest_candidate(&kept, |g| g == second.generation),
        Some(&first)
    );
    assert_eq!(newest_candidate(&kept, |_| true), None);
    assert!(read_kept(&TestStore::new(), "p").unwrap().is_empty());
}

#[test]
fn reports_live_with_kept_generations_and_are_collected_with_them() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let first = write(&store, &fence, b"a");
    let found = UnusableGeneration {
        generation: first.generation,
        kind: FaultKind::Refused,
        reason: "é".repeat(MAX_REPORT_REASON_BYTES),
    };
    let report = UnusableReport::new(&found, "b", Some("abc"));
    assert!(report.reason.len() <= MAX_REPORT_REASON_BYTES + '…'.len_utf8());
    assert!(report_unusable(&store, "p", &report).unwrap());
    assert_eq!(
        read_unusable_reports(&store, "p").unwrap(),
        vec![report.clone()]
    );
    // The report key never reads as a chunk, nor disturbs the state.
    assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"a");

    // Not kept any more: collected with its generation, never re-created.
    for state in [b"b", b"c", b"d"] {
        write(&store, &fence, state);
    }
    assert!(!stored_generations(&store, "p")
        .unwrap()
        .contains(&first.generation));
    assert!(read_unusable_reports(&store, "p").unwrap().is_empty());
    assert!(!report_unusable(&store, "p", &report).unwrap());
    assert!(!stored_generations(&store, "p")
        .unwrap()
        .contains(&first.generation));
}

#[test]
fn a_changed_offset_in_the_metadata_is_detected() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let fence = Fence::new("p", 1);
    let old = write_at(&store, &fence, b"old", 100);
    let new = write_at(&store, &fence, b"new", 200);
    // One digit: the state's sha256 still matches, only the position is
    // wrong — which would silently skip 100 records.
    store.raw(|txn| {
        let key = meta_key("p", new.generation);
        let text = String::from_utf8(txn.get(&key).unwrap().unwrap()).unwrap();
        assert!(text.contains(r#""offsets":{"0":200}"#), "{text}");
        let damaged = text.replace(r#""offsets":{"0":200}"#, r#""offsets":{"0":300}"#);
        txn.set(&key, damaged.as_bytes()).unwrap();
    });
    let checkpoint = read_current(&store, "p").unwrap().unwrap();
    assert_eq!(checkpoint.meta, old);
    assert_eq!(checkpoint.corrupt_generations, vec![new.generation]);
    let kept = read_kept(&store, "p").unwrap();
    assert!(
        kept[0]
            .meta
            .as_ref()
            .unwrap_err()
            .contains("metadata checksum"),
        "{:?}",
        kept[0].meta
    );
}

#[test]
fn legacy_metadata_without_a_checksum_is_read_only_with_its_exact_members() {
    let store = TestStore::new();
    set_leader(&store, "p", 1);
    let meta = write_at(&store, &Fence::new("p", 1), b"s", 5);
    let legacy = serde_json::to_vec(&meta).unwrap();
    assert_eq!(parse_meta(&legacy, meta.generation), Ok(meta.clone()));
    // A damaged checksum key must not pass for legacy metadata.
    let renamed = String::from_utf8(encode_meta(&meta))
        .unwrap()
        .replace("meta_sha256", "meta_sha25x");
    let error = parse_meta(renamed.as_bytes(), meta.generation).unwrap_err();
    assert!(error.contains("unknown member \"meta_sha25x\""), "{error}");
    // A newer writer's extra member is fine when the checksum covers it.
    let mut members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&serde_json::to_vec(&meta).unwrap()).unwrap();
    members.insert(
        "added_later".into(),
        serde_json::json!([1, {"b": 2, "a": 1}]),
    );
    members.insert(META_CHECKSUM_KEY.into(), meta_checksum(&members).into());
    let newer = serde_json::to_vec(&members).unwrap();
    assert_eq!(parse_meta(&newer, meta.generation), Ok(meta));
}

/// Fuzzing the decoders of stored bytes (issue 6): metadata, the current
/// pointer, the generation counter, the leader epoch, reports, and chunk
/// assembly with its integrity check. Properties: never a panic, and
/// damaged bytes are an error or a fallback to another generation read
/// back exactly — never a silently different state or position.
///
/// Cases per property: `PROPTEST_CASES` (proptest's default config reads
/// it; 256 when unset), e.g.
/// `PROPTEST_CASES=100000 cargo test -p logstream-host --release --lib store::checkpoint::tests::fuzz`.
mod fuzz {
    use super::*;

    /// A way to damage stored bytes; positions are taken modulo the length.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip { at: usize, bit: u8 },
        Set { at: usize, byte: u8 },
        Truncate { at: usize },
        Insert { at: usize, byte: u8 },
        Delete { at: usize },
        Replace(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Set { at, byte }),
            any::<usize>().prop_map(|at| Damage::Truncate { at }),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert { at, byte }),
            any::<usize>().prop_map(|at| Damage::Delete { at }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
        ]
    }

    fn apply(bytes: &[u8], damage: &Damage) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let len = out.len();
        match *damage {
            Damage::Flip { at, bit } if len > 0 => out[at % len] ^= 1 << bit,
            Damage::Set { at, byte } if len > 0 => out[at % len] = byte,
            Damage::Truncate { at } => out.truncate(at % (len + 1)),
            Damage::Insert { at, byte } => out.insert(at % (len + 1), byte),
            Damage::Delete { at } if len > 0 => {
                out.remove(at % len);
            }
            Damage::Replace(ref bytes) => out = bytes.clone(),
            _ => {}
        }
        out
    }

    fn meta() -> impl Strategy<Value = CheckpointMeta> {
        (
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
            1u64..=MAX_VALUE_BYTES as u64,
            any::<[u8; 32]>(),
            proptest::collection::btree_map(any::<i32>(), any::<i64>(), 0..4),
            proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..4),
            any::<u64>(),
        )
            .prop_map(
                |(
                    (generation, epoch, state_version, size_bytes),
                    chunk_bytes,
                    digest,
                    offsets,
                    marks,
                    created,
                )| {
                    CheckpointMeta {
                        generation,
                        epoch,
                        state_version,
                        size_bytes,
                        chunk_bytes,
                        chunk_count: size_bytes.div_ceil(chunk_bytes),
                        sha256: hex::encode(digest),
                        offsets,
                        marks,
                        created_at_unix_ms: created,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn metadata_decoder_never_panics_and_checks_what_it_accepts(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            gen in any::<u64>(),
        ) {
            if let Ok(meta) = parse_meta(&bytes, gen) {
                prop_assert_eq!(meta.generation, gen);
                prop_assert!(meta.chunk_bytes > 0);
                prop_assert_eq!(meta.chunk_count, meta.size_bytes.div_ceil(meta.chunk_bytes));
            }
        }

        #[test]
        fn damaged_metadata_is_refused_or_reads_unchanged(
            meta in meta(),
            damages in proptest::collection::vec(damage(), 1..4),
        ) {
            let stored = encode_meta(&meta);
            prop_assert_eq!(parse_meta(&stored, meta.generation), Ok(meta.clone()));
            let damaged = damages.iter().fold(stored, |bytes, d| apply(&bytes, d));
            if let Ok(read) = parse_meta(&damaged, meta.generation) {
                prop_assert_eq!(read, meta);
            }
        }

        #[test]
        fn report_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let store = TestStore::in_ram();
            set_leader(&store, "p", 1);
            let meta = write(&store, &Fence::new("p", 1), b"s");
            store.raw(|txn| txn.set(&report_key("p", meta.generation), &bytes).unwrap());
            for report in read_unusable_reports(&store, "p").unwrap() {
                prop_assert_eq!(report.generation, meta.generation);
            }
        }

        /// Damage to any stored key of a processor's checkpoints — the
        /// pointer, the counter, metadata, chunks, or an extra chunk —
        /// yields the exact state, metadata and position of *some*
        /// written generation, or an error; a write afterwards is
        /// refused or lands as a readable generation.
        #[test]
        fn damaged_checkpoints_read_back_exactly_or_fail(
            sizes in proptest::collection::vec(0usize..(2 * CHUNK_BYTES + 3), 1..=3),
            seed in any::<u64>(),
            target in any::<usize>(),
            damage in damage(),
        ) {
            let store = TestStore::in_ram();
            set_leader(&store, "p", 1);
            let fence = Fence::new("p", 1);
            let mut written = BTreeMap::new();
            for (i, size) in sizes.iter().enumerate() {
                let state = random_bytes(*size, seed.wrapping_add(i as u64));
                let meta = write_at(&store, &fence, &state, 10 * (i as i64 + 1));
                written.insert(meta.generation, (meta, state));
            }
            // Every key of the checkpoints, plus one chunk past the end of
            // the newest generation (bytes that must be ignored).
            let (newest, (newest_meta, _)) = written.last_key_value().unwrap();
            let mut keys: Vec<Vec<u8>> = store
                .dump()
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| key.starts_with(keys::checkpoints("p").bytes()))
                .collect();
            keys.push(chunk_key("p", *newest, newest_meta.chunk_count));
            let key = keys[target % keys.len()].clone();
            store.raw(|txn| {
                let before = txn.get(&key).unwrap().unwrap_or_default();
                let after = apply(&before, &damage);
                if matches!(damage, Damage::Truncate { at } if at % 3 == 0) {
                    txn.clear(&key).unwrap();
                } else {
                    txn.set(&key, &after).unwrap();
                }
            });

            match read_current(&store, "p") {
                Ok(Some(read)) => {
                    let (meta, state) = &written[&read.meta.generation];
                    prop_assert_eq!(&read.meta, meta);
                    prop_assert!(&read.state == state, "a different state was read back");
                }
                Ok(None) => prop_assert!(false, "the checkpoints vanished"),
                Err(error) => prop_assert!(
                    matches!(error, CheckpointError::Corrupt { .. } | CheckpointError::BadRecord { .. }),
                    "{error:?}"
                ),
            }
            if let Ok(meta) = write_checkpoint(&store, &fence, b"after", 1, BTreeMap::new(), BTreeMap::new()) {
                let read = read_current(&store, "p").unwrap().unwrap();
                prop_assert_eq!(read.meta, meta);
                prop_assert_eq!(read.state, b"after".to_vec());
            }
        }

        /// A refusing processor over random generations: the newest not
        /// refused is restored with its own metadata, the refused newer
        /// ones are listed in order.
        #[test]
        fn restore_uses_the_newest_state_not_refused(
            count in 1usize..=KEEP_GENERATIONS,
            refused_mask in any::<u8>(),
        ) {
            let store = TestStore::in_ram();
            set_leader(&store, "p", 1);
            let fence = Fence::new("p", 1);
            let metas: Vec<CheckpointMeta> = (0..count)
                .map(|i| write_at(&store, &fence, format!("state-{i}").as_bytes(), i as i64))
                .collect();
            let refused: Vec<Vec<u8>> = (0..count)
                .filter(|i| refused_mask & (1 << i) != 0)
                .map(|i| format!("state-{i}").into_bytes())
                .collect();
            let newest_ok = (0..count).rev().find(|i| refused_mask & (1 << i) == 0);
            match (restore_refusing(&store, &refused), newest_ok) {
                (Ok(Some(restored)), Some(i)) => {
                    prop_assert_eq!(&restored.meta, &metas[i]);
                    prop_assert_eq!(restored.value, format!("state-{i}").into_bytes());
                    let skipped: Vec<u64> = restored.unusable.iter().map(|u| u.generation).collect();
                    let expected: Vec<u64> = metas[i + 1..].iter().rev().map(|m| m.generation).collect();
                    prop_assert_eq!(skipped, expected);
                }
                (Err(RestoreError::Checkpoint(CheckpointError::Unusable { unusable, .. })), None) => {
                    prop_assert_eq!(unusable.len(), count);
                }
                (other, expected) => prop_assert!(
                    false,
                    "restored {:?}, expected state {expected:?}",
                    other.map(|r| r.map(|r| r.meta.generation)).map_err(|e| e.to_string())
                ),
            }
        }

        #[test]
        fn counter_and_leader_decoders_never_panic(
            counter in proptest::collection::vec(any::<u8>(), 0..12),
            leader in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let store = TestStore::in_ram();
            set_leader(&store, "p", 1);
            let fence = Fence::new("p", 1);
            let first = write(&store, &fence, b"s");
            store.raw(|txn| txn.set(&next_generation_key("p"), &counter).unwrap());
            match allocate_generation(&store, &RetryPolicy::default(), &fence) {
                Ok(gen) => {
                    prop_assert_eq!(counter.len(), 8);
                    prop_assert!(gen > first.generation);
                }
                Err(error) => prop_assert!(
                    counter.len() != 8 && matches!(error, CheckpointError::BadRecord { .. }),
                    "{error:?}"
                ),
            }
            store.raw(|txn| txn.set(&keys::leader("p"), &leader).unwrap());
            let mut txn = store.inner.begin().unwrap();
            let _ = read_leader_epoch(&mut *txn, "p");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Chunking round-trips at and around chunk and batch boundaries.
    #[test]
    fn chunking_round_trips(
        chunks in 0usize..(MAX_CHUNKS_PER_TXN + 3),
        delta in -2i64..=2,
        seed in any::<u64>(),
    ) {
        let len = (chunks as i64 * CHUNK_BYTES as i64 + delta).max(0) as usize;
        let store = TestStore::in_ram();
        set_leader(&store, "p", 1);
        let state = random_bytes(len, seed);
        let meta = write(&store, &Fence::new("p", 1), &state);
        prop_assert_eq!(meta.chunk_count, len.div_ceil(CHUNK_BYTES) as u64);
        let checkpoint = read_current(&store, "p").unwrap().unwrap();
        prop_assert!(checkpoint.state == state);
    }
}
