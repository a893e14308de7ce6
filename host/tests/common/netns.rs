//! Simulated machines for the process tests: Linux network namespaces
//! ("nodes") made by `scripts/netns.sh`, each joined to the coordination
//! store and to the broker by two separate links that a test cuts and
//! heals one at a time. A cut link is a partition (its interface goes down;
//! nothing is filtered).
//!
//! Layout of one [`Nodes`] (network ID `K`, 0-254, chosen free by the
//! script under a lock, so parallel tests and test binaries never share an
//! address or an interface):
//!
//! | where | address | reached through |
//! |---|---|---|
//! | root namespace: the test, etcd, tansu | [`Nodes::store_ip`] `10.231.K.1` | bridge `lsstK` |
//! | | [`Nodes::broker_ip`] `10.232.K.1` | bridge `lsbkK` |
//! | node `n` (1..=count), namespace `ls-K-n<n>` | [`Nodes::node_ip`]`(n, Store)` `10.231.K.(10+n)` | veth `store` ↔ `lsKs<n>` |
//! | | [`Nodes::node_ip`]`(n, Broker)` `10.232.K.(10+n)` | veth `broker` ↔ `lsKb<n>` |
//!
//! - Services (etcd members, tansu) run in the root namespace and listen on
//!   (tansu: also advertise) the bridge addresses, never on 127.0.0.1: a
//!   node has its own loopback and no default route, so it reaches only the
//!   two bridge addresses and the other nodes.
//! - The root namespace reaches a node's addresses while the matching link
//!   is up: bind a host's admin HTTP to `node_ip(n, Broker)` and call it.
//! - [`Nodes::cut`] sets the link's root-side veth down: a connect from
//!   either side hangs until its own timeout, and an established TCP
//!   connection stalls — no reset, no error — and resumes by retransmission
//!   after [`Nodes::heal`], as across a real partition. A new connect across
//!   a cut times out, or fails with "no route to host" once ARP gave up
//!   (about 3 s). Healing also forgets the failed ARP entries on both ends,
//!   so the first connect after it works. Cutting one node's link never
//!   affects another node.
//! - [`Nodes::command`] runs a program inside a node; `ip netns exec` execs
//!   it, so the child's PID is the program's and `Child::kill` is kill -9 of
//!   the program itself.
//! - Dropping [`Nodes`] (also while a test panics) kills every process left
//!   in its namespaces and removes them, the veths and the bridges. A test
//!   process killed before that leaves them behind; the next `up` of any
//!   test removes the networks whose owner process is gone.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2's `ip`. Elsewhere [`up_or_skip`]
//! says why and the test returns early; with `CI` or
//! `LOGSTREAM_NETNS_REQUIRED` set it fails instead, so CI cannot pass green
//! without running the partitions. `LOGSTREAM_NETNS_PRETEND_UNPRIVILEGED=1`
//! makes the script refuse as if unprivileged (to check the skip path).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// The script's exit status for "cannot run here" (not root, no `ip`).
const CANNOT_RUN: i32 = 3;

/// The first two octets of the store and broker networks (the script's
/// `STORE_NET` and `BROKER_NET`).
const STORE_NET: [u8; 2] = [10, 231];
const BROKER_NET: [u8; 2] = [10, 232];

/// One of a node's two links, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Store,
    Broker,
    All,
}

impl Link {
    fn word(self) -> &'static str {
        match self {
            Link::Store => "store",
            Link::Broker => "broker",
            Link::All => "all",
        }
    }
}

/// Why the nodes cannot be made here (the script's one sentence).
#[derive(Debug)]
pub struct Skip(pub String);

/// `count` nodes on a network of their own, removed on drop.
pub struct Nodes {
    id: u8,
    count: u32,
}

/// `scripts/netns.sh`.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/netns.sh"))
}

/// [`Nodes::up`], or `None` after printing why the test is skipped (past
/// the test harness's capture, so a passing run shows it too). Panics
/// instead when `CI` or `LOGSTREAM_NETNS_REQUIRED` is set.
pub fn up_or_skip(count: u32) -> Option<Nodes> {
    match Nodes::up(count) {
        Ok(nodes) => Some(nodes),
        Err(Skip(reason)) => {
            let required = ["CI", "LOGSTREAM_NETNS_REQUIRED"]
                .into_iter()
                .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
            if let Some(var) = required {
                panic!(
                    "network namespaces are required ({var} is set) but cannot be made: {reason}"
                );
            }
            let _ = writeln!(std::io::stderr(), "skipped: {reason}");
            None
        }
    }
}

impl Nodes {
    /// Make a network with nodes 1..=`count`.
    pub fn up(count: u32) -> Result<Nodes, Skip> {
        let output = Command::new(script())
            .args(["up", "auto", &count.to_string()])
            .env("LOGSTREAM_NETNS_OWNER", std::process::id().to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() == Some(CANNOT_RUN) {
            let reason = stderr.trim().trim_start_matches("netns.sh: ");
            return Err(Skip(reason.to_string()));
        }
        assert!(
            output.status.success(),
            "netns.sh up failed ({}): {stderr}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let id = stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("netns.sh up printed {stdout:?}, not a network ID"));
        Ok(Nodes { id, count })
    }

    /// The network ID (the third octet of every address).
    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Where the store's services listen, in the root namespace.
    pub fn store_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(STORE_NET[0], STORE_NET[1], self.id, 1)
    }

    /// Where the broker listens and what it advertises, in the root namespace.
    pub fn broker_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(BROKER_NET[0], BROKER_NET[1], self.id, 1)
    }

    /// Node `n`'s address on `link` (`Store` or `Broker`).
    pub fn node_ip(&self, n: u32, link: Link) -> Ipv4Addr {
        let host = 10 + u8::try_from(self.check(n)).expect("at most 200 nodes");
        match link {
            Link::Store => Ipv4Addr::new(STORE_NET[0], STORE_NET[1], self.id, host),
            Link::Broker => Ipv4Addr::new(BROKER_NET[0], BROKER_NET[1], self.id, host),
            Link::All => panic!("a node has an address per link, not one for both"),
        }
    }

    /// Node `n`'s namespace (for `ip netns exec` and `ip -n`).
    pub fn namespace(&self, n: u32) -> String {
        format!("ls-{}-n{}", self.id, self.check(n))
    }

    /// Partition node `n` from the store, the broker or both.
    pub fn cut(&self, n: u32, link: Link) {
        self.script(&[
            "cut",
            &self.id.to_string(),
            &self.check(n).to_string(),
            link.word(),
        ]);
    }

    /// Undo [`Nodes::cut`] (healing a link that is up does nothing).
    pub fn heal(&self, n: u32, link: Link) {
        self.script(&[
            "heal",
            &self.id.to_string(),
            &self.check(n).to_string(),
            link.word(),
        ]);
    }

    /// `program` to run inside node `n`: add arguments, environment and
    /// stdio, then spawn. The spawned PID is the program's.
    pub fn command(&self, n: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(script());
        command
            .args(["exec", &self.id.to_string(), &self.check(n).to_string()])
            .arg(program);
        command
    }

    /// What [`command`](Self::command) does, as a function that outlives
    /// `self` borrows (for launchers stored elsewhere); the nodes must
    /// still be up when it is called.
    pub fn launcher(&self) -> impl Fn(u32, &std::ffi::OsStr) -> Command + 'static {
        let (id, count) = (self.id, self.count);
        move |n, program| {
            assert!((1..=count).contains(&n), "node {n} does not exist");
            let mut command = Command::new(script());
            command
                .args(["exec", &id.to_string(), &n.to_string()])
                .arg(program);
            command
        }
    }

    fn check(&self, n: u32) -> u32 {
        assert!(
            (1..=self.count).contains(&n),
            "node {n} does not exist: the nodes are 1..={}",
            self.count
        );
        n
    }

    fn script(&self, args: &[&str]) {
        let output = Command::new(script())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        assert!(
            output.status.success(),
            "netns.sh {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let result = Command::new(script())
            .args(["down", &self.id.to_string()])
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "netns.sh down {} failed ({}): {}",
                self.id,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot run netns.sh down {}: {e}", self.id),
        }
    }
}
