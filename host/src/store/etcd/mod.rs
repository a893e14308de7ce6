//! The distributed backend we can test here: an etcd v3 cluster (cargo
//! feature `etcd`, on by default).
//!
//! This module maps the [`KvStore`]/[`KvTxn`] contract onto etcd with
//! **optimistic concurrency**, the same conflict semantics as FoundationDB:
//!
//! - **Snapshot.** A transaction's first read is linearizable and fixes its
//!   snapshot revision; every later read is at that revision (served by the
//!   member from its own copy of the history, without a round through the
//!   Raft leader), so the transaction sees one consistent state. A member
//!   that has not applied the snapshot yet is asked again linearizably
//!   (it catches up first); a snapshot compacted away under the
//!   transaction is a [`StoreError::Conflict`] (retry at a fresh revision).
//! - **Writes are buffered** in the transaction and read back by its own
//!   reads (sets, clears and cleared ranges overlay the snapshot).
//! - **Commit is one conditional `Txn`**: compares that every key read still
//!   has the modification revision it was read at (0 for a key read as
//!   absent: created since fails the compare, deleted since too), plus one
//!   compare per range read that no key in the part of the range it covered
//!   was modified or created after the snapshot. If any compare fails,
//!   nothing is applied and commit returns [`StoreError::Conflict`]. A
//!   transaction that wrote nothing commits without a round trip: its reads
//!   were one consistent snapshot.
//! - **Outcome unknown.** A `Txn` whose reply was lost (timeout, connection
//!   reset, member down) may have been applied: [`StoreError::CommitUnknown`],
//!   which [`transact`](super::transact) retries with the idempotent body.
//! - **Limits.** The contract's limits ([`MAX_VALUE_BYTES`](super::kv::MAX_VALUE_BYTES),
//!   [`MAX_TXN_WRITE_BYTES`](super::kv::MAX_TXN_WRITE_BYTES)) are enforced as on every backend, and etcd's
//!   own are checked before sending: at most [`MAX_TXN_OPERATIONS`] compares and
//!   [`MAX_TXN_OPERATIONS`] writes per `Txn` (etcd's `--max-txn-ops` default) and a
//!   request under [`MAX_REQUEST_BYTES`] (its `--max-request-bytes`
//!   default). Beyond them the transaction is refused with
//!   [`StoreError::TooLarge`] naming the limit.
//! - **Keys** live under a prefix (`logstream/` by default, `?prefix=` in the
//!   URL), so a store shares a cluster with other applications and tests
//!   share one cluster; keys given to and returned by the contract never
//!   include it.
//! - **Time bounds.** Every request is cancelled after [`REQUEST_TIMEOUT`]
//!   and asks for a member with a leader (`require_leader`), so a cluster
//!   without quorum yields [`StoreError::Unavailable`] at once or within the
//!   timeout, never a hang.
//!
//! The contract is synchronous and its callers are threads: each request
//! runs on this store's own small tokio runtime and the calling thread
//! waits for it (never inside the caller's runtime, so a caller on a tokio
//! thread cannot deadlock or panic it).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
};

use super::kv::{check_write, KeyValue, KvStore, KvTxn, StoreError, TxnBudget, MAX_TXN_OPERATIONS};

mod target;
pub use target::{
    ClientCertificate, EtcdTarget, PasswordAuth, TlsFiles, DEFAULT_PREFIX, MAX_OPTION_FILE_BYTES,
};

/// Largest `Txn` request: 1.5 MiB, etcd's `--max-request-bytes` default,
/// less 64 KiB for the request's framing and compares' keys we do not
/// count exactly.
pub const MAX_REQUEST_BYTES: usize = 1_572_864 - 65_536;

/// Time one request may take before it is cancelled: 2 s. Well inside the
/// 5 s budget of [`transact`](super::transact), so a lost member costs one
/// retry, not the transaction.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Time to connect to a member: 1 s (loopback and LAN clusters).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Keys fetched per page of a range read whose limit is larger (or whose
/// page comes back thinned by this transaction's own clears).
const RANGE_PAGE_KEYS: usize = 1_000;

/// Largest reply the client accepts: 64 MiB (a page of 1,000 values of up
/// to 100 kB; tonic's default of 4 MiB would refuse it).
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Worker threads of the store's runtime: the requests are waited on by the
/// calling threads, the runtime only drives the connections.
const RUNTIME_THREADS: usize = 1;

/// An etcd coordination store: one cluster, one key prefix.
pub struct EtcdStore {
    /// The store's runtime; `None` only once dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    kv: KvClient,
    target: EtcdTarget,
}

impl EtcdStore {
    /// Connect to the cluster named by `target`. Fails with
    /// [`StoreError::Unavailable`] when no member answers within
    /// [`REQUEST_TIMEOUT`].
    pub fn open(target: EtcdTarget) -> Result<EtcdStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("cannot start the etcd client runtime: {e}")))?;
        let options = target.security(
            ConnectOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_require_leader(true),
        )?;
        let endpoints = target.endpoints.clone();
        let client = wait_on(&runtime, async move {
            Client::connect(endpoints, Some(options)).await
        })
        .map_err(|e| match refusal(&e, &target) {
            Some(refused) => refused,
            None => StoreError::Unavailable(format!(
                "cannot connect to etcd at {}: {}{}",
                target.endpoints.join(","),
                causes(&e),
                unanswered_hint(&target)
            )),
        })?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES + 65_536);
        let store = EtcdStore {
            runtime: Some(runtime),
            kv,
            target,
        };
        // A first read, so a wrong address or a cluster without quorum is
        // reported at open, not at the first election round.
        store.begin()?.get(b"")?;
        Ok(store)
    }

    /// Open the store named by the part of a URL after `etcd:`.
    pub fn open_url(spec: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::open(EtcdTarget::parse(spec)?)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.target.prefix.len() + key.len());
        full.extend_from_slice(self.target.prefix.as_bytes());
        full.extend_from_slice(key);
        full
    }

    fn unprefixed(&self, key: &[u8]) -> Vec<u8> {
        key[self.target.prefix.len().min(key.len())..].to_vec()
    }

    /// Run one request on the store's runtime and wait for it.
    fn run<T: Send + 'static>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, etcd_client::Error> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        wait_on(runtime, request)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which panics inside an
        // async context; nothing of ours is left running, so let it go.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Spawn `future` on `runtime` and block the calling thread until it ends.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, etcd_client::Error> {
    match futures::executor::block_on(runtime.spawn(future)) {
        Ok(result) => result,
        Err(join) => Err(etcd_client::Error::IoError(std::io::Error::other(format!(
            "the etcd request's task failed: {join}"
        )))),
    }
}

/// The gRPC status of an etcd error, if it carries one.
fn status(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

/// Whether a read at a fixed revision reached a member that has not
/// applied that revision yet (etcd's `ErrFutureRev`).
fn is_future_revision(error: &etcd_client::Error) -> bool {
    status(error).is_some_and(|s| {
        s.code() == tonic::Code::OutOfRange && s.message().contains("future revision")
    })
}

/// An error and its causes, outermost first: tonic's transport errors say
/// only "transport error" at the top, the reason (a refused connection, a
/// certificate the CA did not sign) is further down.
fn causes(error: &etcd_client::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An error that retrying cannot cure, because etcd refused *us* (a wrong
/// user or password, a role without access to the prefix, authentication
/// asked of a cluster that has none): one sentence naming what to fix.
fn refusal(error: &etcd_client::Error, target: &EtcdTarget) -> Option<StoreError> {
    use tonic::Code;
    if target.tls.is_some() {
        if let Some(sentence) = tls_refusal(&causes(error)) {
            return Some(StoreError::Other(sentence));
        }
    }
    let s = status(error)?;
    let user = target.auth.as_ref().map(|auth| auth.user.as_str());
    let message = s.message();
    let sentence = match s.code() {
        Code::InvalidArgument if message.contains("authentication failed") => format!(
            "etcd refused the user {:?}: the user or the password in {} is wrong ({message})",
            user.unwrap_or(""),
            target
                .auth
                .as_ref()
                .map(|auth| auth.password_file.display().to_string())
                .unwrap_or_default()
        ),
        Code::InvalidArgument if message.contains("user name is empty") => format!(
            "etcd has authentication enabled: name a user with `user=NAME&password_file=PATH` in the store URL ({message})"
        ),
        Code::FailedPrecondition if message.contains("authentication is not enabled") => format!(
            "the store URL names an etcd user but the cluster has authentication off: drop `user=` and `password_file=`, or enable it (`etcdctl auth enable`) ({message})"
        ),
        Code::PermissionDenied => match user {
            Some(user) => format!(
                "etcd denied the user {user:?} access to the prefix {:?}: grant its role readwrite on it (`etcdctl role grant-permission ROLE readwrite --prefix=true {}`) ({message})",
                target.prefix, target.prefix
            ),
            // Without a token, a member with `--client-cert-auth` takes the
            // client certificate's common name as the user.
            None => format!(
                "etcd denied this client access to the prefix {:?}: name a user allowed on it with `user=NAME&password_file=PATH`, or grant it to the user named by the client certificate's common name ({message})",
                target.prefix
            ),
        },
        _ => return None,
    };
    Some(StoreError::Other(sentence))
}

/// A TLS handshake that failed for a reason of configuration (rustls's
/// alert and error names), as one sentence saying which option to fix.
fn tls_refusal(causes: &str) -> Option<String> {
    let sentence = if causes.contains("BadCertificate") || causes.contains("CertificateRequired") {
        "the etcd member refused our TLS client certificate: it requires one signed by the cluster's CA, named with `cert_file=PATH&key_file=PATH`"
    } else if causes.contains("UnknownIssuer") || causes.contains("invalid peer certificate") {
        "the etcd member's TLS certificate is not signed by the CA of `ca_file` (or, without it, by one the system trusts)"
    } else {
        return None;
    };
    Some(format!("{sentence} ({causes})"))
}

/// What to check when members do not answer a TLS client without a
/// certificate: under TLS 1.3 a member that requires one (`--client-cert-auth`)
/// may close the connection before its alert reaches us, so the error alone
/// can read as a broken pipe.
fn unanswered_hint(target: &EtcdTarget) -> &'static str {
    match &target.tls {
        Some(tls) if tls.client.is_none() => {
            " (if the members require a client certificate, name one with `cert_file=PATH&key_file=PATH`)"
        }
        _ => "",
    }
}

impl EtcdStore {
    /// Map an error of a read (nothing applied, ever) onto the contract.
    fn read_error(&self, error: etcd_client::Error) -> StoreError {
        use tonic::Code;
        if let Some(refused) = refusal(&error, &self.target) {
            return refused;
        }
        match status(&error) {
            // The snapshot revision was compacted, or the member has not
            // applied it yet: retry at a fresh one.
            Some(s) if s.code() == Code::OutOfRange => StoreError::Conflict,
            Some(s)
                if matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition)
                    && !s.message().contains("leader") =>
            {
                StoreError::Other(format!("etcd refused the request: {}", s.message()))
            }
            _ => StoreError::Unavailable(format!(
                "etcd did not answer: {}{}",
                causes(&error),
                unanswered_hint(&self.target)
            )),
        }
    }

    /// Map an error of a commit onto the contract: anything but a refusal
    /// the server gave before applying may have been applied.
    fn commit_error(&self, error: etcd_client::Error) -> StoreError {
        use tonic::Code;
        if let Some(refused) = refusal(&error, &self.target) {
            return refused;
        }
        match status(&error) {
            Some(s) if s.code() == Code::InvalidArgument => {
                StoreError::TooLarge(format!("etcd refused the transaction: {}", s.message()))
            }
            Some(s) if s.code() == Code::ResourceExhausted => {
                StoreError::Other(format!("etcd refused the transaction: {}", s.message()))
            }
            _ => {
                tracing::debug!("etcd commit outcome unknown: {}", causes(&error));
                StoreError::CommitUnknown
            }
        }
    }
}

impl KvStore for EtcdStore {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        Ok(Box::new(EtcdTxn {
            store: self,
            snapshot: None,
            read_keys: BTreeMap::new(),
            read_ranges: Vec::new(),
            writes: Writes::default(),
            budget: TxnBudget::default(),
        }))
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }
}

/// The writes a transaction buffers until commit: single keys (a value, or
/// `None` for cleared) over cleared ranges. A key set after a range was
/// cleared is a hole in that range at commit (etcd refuses a `Txn` whose
/// put and delete overlap).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Writes {
    keys: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Disjoint, sorted `[begin, end)` ranges.
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What this transaction's own writes say about a key.
#[derive(Debug, PartialEq)]
pub(crate) enum Overlay<'a> {
    Set(&'a [u8]),
    Cleared,
    Untouched,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.cleared.is_empty()
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) {
        self.keys.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        self.keys.insert(key.to_vec(), None);
    }

    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let inside: Vec<Vec<u8>> = self
            .keys
            .range(begin.to_vec()..end.to_vec())
            .map(|(key, _)| key.clone())
            .collect();
        for key in inside {
            self.keys.remove(&key);
        }
        // Merge with every range it overlaps or touches.
        let mut merged = (begin.to_vec(), end.to_vec());
        let mut kept = Vec::with_capacity(self.cleared.len() + 1);
        for (b, e) in self.cleared.drain(..) {
            if e.as_slice() < merged.0.as_slice() || b.as_slice() > merged.1.as_slice() {
                kept.push((b, e));
            } else {
                merged.0 = merged.0.min(b);
                merged.1 = merged.1.max(e);
            }
        }
        kept.push(merged);
        kept.sort();
        self.cleared = kept;
    }

    fn in_cleared_range(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    pub(crate) fn overlay(&self, key: &[u8]) -> Overlay<'_> {
        match self.keys.get(key) {
            Some(Some(value)) => Overlay::Set(value),
            Some(None) => Overlay::Cleared,
            None if self.in_cleared_range(key) => Overlay::Cleared,
            None => Overlay::Untouched,
        }
    }

    /// Merge a page of the snapshot (`[from, to)`, sorted) with these
    /// writes: what the transaction sees in that span.
    pub(crate) fn merge(&self, from: &[u8], to: &[u8], snapshot: Vec<KeyValue>) -> Vec<KeyValue> {
        let mut seen: BTreeMap<Vec<u8>, Vec<u8>> = snapshot
            .into_iter()
            .filter(|(key, _)| self.overlay(key) == Overlay::Untouched)
            .collect();
        if from < to {
            for (key, value) in self.keys.range(from.to_vec()..to.to_vec()) {
                if let Some(value) = value {
                    seen.insert(key.clone(), value.clone());
                }
            }
        }
        seen.into_iter().collect()
    }

    /// The `Txn` operations, in etcd's terms: cleared ranges split around
    /// the keys set inside them, then the puts and single deletes.
    pub(crate) fn operations(&self) -> Vec<Operation> {
        let mut operations = Vec::new();
        for (begin, end) in &self.cleared {
            let mut from = begin.clone();
            // Holes for the keys set inside the range (a key cleared inside
            // it is deleted by the range itself).
            let set_inside = self
                .keys
                .range(begin.clone()..end.clone())
                .filter(|(_, value)| value.is_some());
            for (key, _) in set_inside {
                if from < *key {
                    operations.push(Operation::DeleteRange(from, key.clone()));
                }
                from = successor(key);
            }
            if from < *end {
                operations.push(Operation::DeleteRange(from, end.clone()));
            }
        }
        for (key, value) in &self.keys {
            match value {
                Some(value) => operations.push(Operation::Put(key.clone(), value.clone())),
                None if !self.in_cleared_range(key) => {
                    operations.push(Operation::Delete(key.clone()))
                }
                None => {}
            }
        }
        operations
    }
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operation {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

struct EtcdTxn<'a> {
    store: &'a EtcdStore,
    /// The revision every read is at, fixed by the first read.
    snapshot: Option<i64>,
    /// Keys read from the snapshot and their modification revision there
    /// (0: absent).
    read_keys: BTreeMap<Vec<u8>, i64>,
    /// Spans `[begin, end)` a range read covered in the snapshot.
    read_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    writes: Writes,
    budget: TxnBudget,
}

impl EtcdTxn<'_> {
    /// Read `[begin, end)` (or the key `begin` when `end` is `None`) from
    /// the snapshot, at most `limit` keys: the pairs (unprefixed) with
    /// their modification revisions, and whether more keys follow.
    fn snapshot_read(
        &mut self,
        begin: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(KeyValue, i64)>, bool), StoreError> {
        let range_options = |serializable: bool| {
            let mut options = GetOptions::new()
                .with_revision(self.snapshot.unwrap_or(0))
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            if serializable {
                options = options.with_serializable();
            }
            if let Some(end) = end {
                options = options.with_range(self.store.key(end));
            }
            options
        };
        let read = |options: GetOptions| {
            let key = self.store.key(begin);
            let mut kv = self.store.kv.clone();
            self.store
                .run(async move { kv.get(key, Some(options)).await })
        };
        // At a fixed revision every member holds the same history, so the
        // member may answer from its own store without a round through the
        // Raft leader. A member that has not applied the revision yet
        // answers "future revision"; asked again linearizably it first
        // catches up to the leader's commit index (ReadIndex), which covers
        // the snapshot, so the transaction goes on instead of restarting.
        let serializable = self.snapshot.is_some();
        let response = match read(range_options(serializable)) {
            Err(error) if serializable && is_future_revision(&error) => read(range_options(false)),
            answer => answer,
        }
        .map_err(|e| self.store.read_error(e))?;
        if self.snapshot.is_none() {
            let revision = response.header().map(|h| h.revision()).ok_or_else(|| {
                StoreError::Other("etcd answered a read without its revision".into())
            })?;
            self.snapshot = Some(revision);
        }
        let more = response.more();
        let pairs = response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    (self.store.unprefixed(kv.key()), kv.value().to_vec()),
                    kv.mod_revision(),
                )
            })
            .collect();
        Ok((pairs, more))
    }

    /// The compares that make the commit fail if anything read changed.
    fn guards(&self) -> Vec<Compare> {
        let snapshot = self.snapshot.unwrap_or(0);
        let keys = self.read_keys.iter().map(|(key, revision)| {
            Compare::mod_revision(self.store.key(key), CompareOp::Equal, *revision)
        });
        let ranges = self.read_ranges.iter().map(|(begin, end)| {
            Compare::mod_revision(self.store.key(begin), CompareOp::Less, snapshot + 1)
                .with_range(self.store.key(end))
        });
        keys.chain(ranges).collect()
    }
}

impl KvTxn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.overlay(key) {
            Overlay::Set(value) => return Ok(Some(value.to_vec())),
            Overlay::Cleared => return Ok(None),
            Overlay::Untouched => {}
        }
        let (pairs, _) = self.snapshot_read(key, None, 1)?;
        let found = pairs.into_iter().next();
        if let Some(((key, value), _)) = &found {
            self.budget.read([(key.as_slice(), value.as_slice())])?;
        }
        let revision = found.as_ref().map_or(0, |(_, revision)| *revision);
        self.read_keys.insert(key.to_vec(), revision);
        Ok(found.map(|((_, value), _)| value))
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out: Vec<KeyValue> = Vec::new();
        if begin >= end || limit == 0 {
            return Ok(out);
        }
        let mut from = begin.to_vec();
        loop {
            let page = (limit - out.len()).min(RANGE_PAGE_KEYS);
            let (pairs, more) = self.snapshot_read(&from, Some(end), page)?;
            // The span this page covers: up to its last key when more follow.
            let to = match (more, pairs.last()) {
                (true, Some(((last, _), _))) => successor(last),
                _ => end.to_vec(),
            };
            // Counted page by page, so a read wider than the budget stops
            // at the page that passes it.
            self.budget.read(
                pairs
                    .iter()
                    .map(|((key, value), _)| (key.as_slice(), value.as_slice())),
            )?;
            let mut snapshot = Vec::with_capacity(pairs.len());
            for ((key, value), revision) in pairs {
                self.read_keys.insert(key.clone(), revision);
                snapshot.push((key, value));
            }
            for pair in self.writes.merge(&from, &to, snapshot) {
                out.push(pair);
                if out.len() == limit {
                    // Read up to (and including) the last key returned.
                    let last = successor(&out[out.len() - 1].0);
                    self.read_ranges.push((begin.to_vec(), last));
                    return Ok(out);
                }
            }
            if to.as_slice() >= end {
                self.read_ranges.push((begin.to_vec(), end.to_vec()));
                return Ok(out);
            }
            from = to;
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_write(key, value)?;
        self.budget.write(key.len() + value.len())?;
        self.writes.set(key, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.write(key.len())?;
        self.writes.clear(key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.write(begin.len() + end.len())?;
        self.writes.clear_range(begin, end);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let guards = self.guards();
        let operations = self.writes.operations();
        if guards.len() > MAX_TXN_OPERATIONS || operations.len() > MAX_TXN_OPERATIONS {
            return Err(StoreError::TooLarge(format!(
                "the transaction reads {} keys or ranges and writes {} keys or ranges; etcd allows at most {MAX_TXN_OPERATIONS} of each",
                guards.len(),
                operations.len()
            )));
        }
        let request_bytes: usize = operations
            .iter()
            .map(|op| match op {
                Operation::Put(k, v) => k.len() + v.len(),
                Operation::Delete(k) => k.len(),
                Operation::DeleteRange(b, e) => b.len() + e.len(),
            })
            .sum::<usize>()
            + self.read_keys.keys().map(Vec::len).sum::<usize>()
            + (guards.len() + operations.len()) * self.store.target.prefix.len();
        if request_bytes > MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge(format!(
                "the transaction's request of {request_bytes} bytes exceeds etcd's {MAX_REQUEST_BYTES}-byte limit"
            )));
        }
        let ops: Vec<TxnOp> = operations
            .into_iter()
            .map(|op| match op {
                Operation::Put(key, value) => TxnOp::put(self.store.key(&key), value, None),
                Operation::Delete(key) => TxnOp::delete(self.store.key(&key), None),
                Operation::DeleteRange(begin, end) => TxnOp::delete(
                    self.store.key(&begin),
                    Some(DeleteOptions::new().with_range(self.store.key(&end))),
                ),
            })
            .collect();
        let txn = Txn::new().when(guards).and_then(ops);
        let mut kv = self.store.kv.clone();
        let response = self
            .store
            .run(async move { kv.txn(txn).await })
            .map_err(|e| self.store.commit_error(e))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's own texts (server/storage/mvcc/kvstore.go, as sent by the
    /// gRPC layer): only a lagging member is asked again; a compacted
    /// snapshot stays a conflict.
    #[test]
    fn only_a_future_revision_is_read_again() {
        let answer = |message: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(message.to_string()))
        };
        assert!(is_future_revision(&answer(
            "etcdserver: mvcc: required revision is a future revision"
        )));
        assert!(!is_future_revision(&answer(
            "etcdserver: mvcc: required revision has been compacted"
        )));
        assert!(!is_future_revision(&etcd_client::Error::GRpcStatus(
            tonic::Status::unavailable("etcdserver: no leader")
        )));
    }

    #[test]
    fn a_key_set_inside_a_cleared_range_splits_it() {
        let mut writes = Writes::default();
        writes.set(b"b", b"old");
        writes.clear_range(b"a", b"z");
        writes.set(b"m", b"1");
        writes.clear(b"q");
        writes.clear(b"zz");
        assert_eq!(
            writes.operations(),
            vec![
                Operation::DeleteRange(b"a".to_vec(), b"m".to_vec()),
                Operation::DeleteRange(b"m\0".to_vec(), b"z".to_vec()),
                Operation::Put(b"m".to_vec(), b"1".to_vec()),
                Operation::Delete(b"zz".to_vec()),
            ]
        );
        assert_eq!(writes.overlay(b"b"), Overlay::Cleared);
        assert_eq!(writes.overlay(b"m"), Overlay::Set(b"1"));
        assert_eq!(writes.overlay(b"z"), Overlay::Untouched);
    }

    #[test]
    fn overlapping_cleared_ranges_merge() {
        let mut writes = Writes::default();
        writes.clear_range(b"a", b"c");
        writes.clear_range(b"x", b"y");
        writes.clear_range(b"b", b"d");
        writes.clear_range(b"d", b"e");
        assert_eq!(
            writes.operations(),
            vec![
                Operation::DeleteRange(b"a".to_vec(), b"e".to_vec()),
                Operation::DeleteRange(b"x".to_vec(), b"y".to_vec()),
            ]
        );
    }

    #[test]
    fn merge_overlays_own_writes_on_the_snapshot() {
        let mut writes = Writes::default();
        writes.set(b"b", b"mine");
        writes.clear(b"c");
        writes.set(b"q", b"outside");
        let snapshot = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec()),
        ];
        assert_eq!(
            writes.merge(b"a", b"d", snapshot),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"mine".to_vec())
            ]
        );
    }
}
