//! The simulated machines of `common::netns` (`scripts/netns.sh`), proved
//! with real sockets and no logstream: from a node, the store and broker
//! bridge addresses answer; cutting one link partitions exactly that link
//! of exactly that node, healing restores it, an established connection
//! stalls across a cut (no reset) and resumes after the heal; the root
//! namespace reaches a listener inside a node over its link; a node's
//! loopback is its own; programs run inside a node under their own PID and
//! die by kill -9; dropping the nodes removes everything.
//!
//! Needs root: unprivileged, every test prints why it skips and passes
//! (and fails under `CI` or `LOGSTREAM_NETNS_REQUIRED`). Probes inside a
//! node are small python3 programs (python3 is a dependency of the test
//! scripts already).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::netns::{self, Link, Nodes};

/// How long a probe waits on a connect that must fail: a cut link drops the
/// SYN, so the connect hangs until this. Not a performance figure: a link
/// that is up connects in microseconds.
const CUT_TIMEOUT: Duration = Duration::from_secs(1);
/// Liveness bound on anything that must succeed.
const BOUND: Duration = Duration::from_secs(30);

/// Every test holds this for reading; the teardown test holds it for
/// writing, so no other test makes a network (likely under the same ID)
/// while it checks that its own is gone.
static NETWORKS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    NETWORKS.read().unwrap_or_else(|p| p.into_inner())
}

/// Connects to HOST PORT within TIMEOUT seconds: exit 0 connected, 2 timed
/// out, 3 refused, 4 another error (on stdout).
const CONNECT: &str = r#"
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((host, port), timeout=timeout).close()
except socket.timeout:
    sys.exit(2)
except ConnectionRefusedError:
    sys.exit(3)
except OSError as e:
    print(e); sys.exit(4)
"#;

/// What a connect from inside a node came to.
#[derive(Debug, PartialEq)]
enum Probe {
    Connected,
    TimedOut,
    /// Reached the address, where nothing listens.
    Refused,
    Failed(String),
}

/// Connect from node `n` to `address`.
fn connect_from(nodes: &Nodes, n: u32, address: SocketAddr, timeout: Duration) -> Probe {
    let output = nodes
        .command(n, "python3")
        .args(["-c", CONNECT])
        .arg(address.ip().to_string())
        .arg(address.port().to_string())
        .arg(timeout.as_secs_f64().to_string())
        .output()
        .expect("python3 runs inside the node");
    match output.status.code() {
        Some(0) => Probe::Connected,
        Some(2) => Probe::TimedOut,
        Some(3) => Probe::Refused,
        Some(4) => Probe::Failed(String::from_utf8_lossy(&output.stdout).trim().to_string()),
        _ => panic!(
            "the connect probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn assert_connects(nodes: &Nodes, n: u32, address: SocketAddr, what: &str) {
    let probe = connect_from(nodes, n, address, BOUND);
    assert_eq!(
        probe,
        Probe::Connected,
        "node {n} cannot reach {what} at {address}"
    );
}

fn assert_partitioned(nodes: &Nodes, n: u32, address: SocketAddr, what: &str) {
    let probe = connect_from(nodes, n, address, CUT_TIMEOUT);
    assert!(
        !matches!(probe, Probe::Connected | Probe::Refused),
        "node {n} still reaches {what} at {address}: {probe:?}"
    );
}

/// A listener in the root namespace on `ip` (a bridge address), accepting
/// and closing in the background.
fn listen(ip: std::net::Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("binding a bridge address");
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    address
}

#[test]
fn a_cut_partitions_one_link_and_a_heal_restores_it() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(1) else {
        return;
    };
    let store = listen(nodes.store_ip());
    let broker = listen(nodes.broker_ip());
    assert_connects(&nodes, 1, store, "the store");
    assert_connects(&nodes, 1, broker, "the broker");

    nodes.cut(1, Link::Store);
    assert_partitioned(&nodes, 1, store, "the store");
    assert_connects(&nodes, 1, broker, "the broker");
    nodes.heal(1, Link::Store);
    assert_connects(&nodes, 1, store, "the store");

    nodes.cut(1, Link::Broker);
    assert_partitioned(&nodes, 1, broker, "the broker");
    assert_connects(&nodes, 1, store, "the store");
    nodes.heal(1, Link::Broker);
    assert_connects(&nodes, 1, broker, "the broker");

    nodes.cut(1, Link::All);
    assert_partitioned(&nodes, 1, store, "the store");
    assert_partitioned(&nodes, 1, broker, "the broker");
    nodes.heal(1, Link::All);
    assert_connects(&nodes, 1, store, "the store");
    assert_connects(&nodes, 1, broker, "the broker");
}

#[test]
fn cutting_one_node_leaves_the_other_connected() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(2) else {
        return;
    };
    let store = listen(nodes.store_ip());
    let broker = listen(nodes.broker_ip());
    nodes.cut(1, Link::All);
    assert_partitioned(&nodes, 1, store, "the store");
    assert_connects(&nodes, 2, store, "the store");
    assert_connects(&nodes, 2, broker, "the broker");
    // The nodes see each other over either bridge (node 1 answers with a
    // refusal: nothing listens on the port), and lose node 1 with its links.
    let node1 = SocketAddr::from((nodes.node_ip(1, Link::Broker), 9));
    assert_partitioned(&nodes, 2, node1, "node 1");
    nodes.heal(1, Link::All);
    assert_eq!(connect_from(&nodes, 2, node1, BOUND), Probe::Refused);
    assert_connects(&nodes, 1, store, "the store");
    assert_connects(&nodes, 1, broker, "the broker");
}

/// Connects to HOST PORT, then for each line on stdin: `send X` sends X and
/// waits up to 1 s for the echo; `wait` waits up to 30 s more. Prints
/// `echo X`, or `stalled` when none came, or the error.
const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("connected", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "send":
        s.sendall((command[1] + "\n").encode())
    s.settimeout(1 if command[0] == "send" else 30)
    try:
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(100)
            if not more:
                break
            data += more
        print("echo " + data.decode().strip() if data else "closed", flush=True)
    except socket.timeout:
        print("stalled", flush=True)
    except OSError as e:
        print("error " + str(e), flush=True)
"#;

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn say(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.read()
    }

    fn read(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_established_connection_stalls_while_cut_and_resumes_after_heal() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(1) else {
        return;
    };
    let listener = TcpListener::bind((nodes.store_ip(), 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = writer.write_all(format!("{line}\n").as_bytes());
        }
    });
    let mut child = nodes
        .command(1, "python3")
        .args([
            "-c",
            CLIENT,
            &address.ip().to_string(),
            &address.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = Client {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()),
        child,
    };
    assert_eq!(client.read(), "connected");
    assert_eq!(client.say("send a"), "echo a");
    nodes.cut(1, Link::Store);
    // No reset and no error: the bytes are retransmitted into the void.
    assert_eq!(client.say("send b"), "stalled");
    nodes.heal(1, Link::Store);
    assert_eq!(client.say("wait"), "echo b");
}

/// Listens on HOST port 0, prints the port, then greets every connection.
const GREETER: &str = r#"
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the node")
    c.close()
"#;

#[test]
fn the_root_namespace_reaches_a_listener_inside_a_node_over_its_link() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(1) else {
        return;
    };
    let ip = nodes.node_ip(1, Link::Broker);
    let mut child = nodes
        .command(1, "python3")
        .args(["-c", GREETER, &ip.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let address = SocketAddr::from((ip, port.trim().parse::<u16>().unwrap()));
    let greeting = |timeout| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    assert_eq!(greeting(BOUND).unwrap(), "hello from the node");
    nodes.cut(1, Link::Broker);
    assert!(
        greeting(CUT_TIMEOUT).is_err(),
        "{address} answered across a cut"
    );
    nodes.heal(1, Link::Broker);
    assert_eq!(greeting(BOUND).unwrap(), "hello from the node");
    let _ = child.kill();
    let _ = child.wait();
}

/// Listens on 127.0.0.1, connects to itself and prints what it got.
const LOOPBACK: &str = r#"
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
c = socket.create_connection(s.getsockname(), timeout=30)
a, _ = s.accept()
a.sendall(b"over loopback")
print(c.recv(100).decode())
"#;

#[test]
fn a_node_has_a_loopback_of_its_own() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(1) else {
        return;
    };
    let output = nodes
        .command(1, "python3")
        .args(["-c", LOOPBACK])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "over loopback"
    );
    // The root namespace's 127.0.0.1 is not the node's: services must listen
    // on the bridge addresses.
    let root_loopback = listen(std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(
        connect_from(&nodes, 1, root_loopback, BOUND),
        Probe::Refused
    );
}

/// iproute2's `ip` (`/usr/sbin` is not on every PATH).
fn ip_command() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else {
        "ip"
    }
}

fn net_namespace_inode(path: &str) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Waits until `pid` runs `program` (the script and `ip` exec into it).
fn wait_for_exec(pid: u32, program: &str) {
    let deadline = Instant::now() + BOUND;
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != program
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never became {program}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_program_runs_inside_its_node_under_its_own_pid_and_dies_by_kill_9() {
    let _shared = shared();
    let Some(nodes) = netns::up_or_skip(2) else {
        return;
    };
    let mut child = nodes.command(2, "sleep").arg("300").spawn().unwrap();
    wait_for_exec(child.id(), "sleep");
    let namespace = net_namespace_inode(&format!("/run/netns/{}", nodes.namespace(2)));
    assert!(namespace.is_some());
    assert_eq!(
        net_namespace_inode(&format!("/proc/{}/ns/net", child.id())),
        namespace,
        "the program runs in node 2's network namespace"
    );
    assert_ne!(net_namespace_inode("/proc/self/ns/net"), namespace);
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[test]
fn dropping_the_nodes_removes_them_and_kills_what_runs_inside() {
    // Exclusive: a network made meanwhile would likely take the same ID.
    let _exclusive = NETWORKS.write().unwrap_or_else(|p| p.into_inner());
    let Some(nodes) = netns::up_or_skip(2) else {
        return;
    };
    let id = nodes.id();
    let namespaces = [nodes.namespace(1), nodes.namespace(2)];
    let mut leftover = nodes.command(2, "sleep").arg("300").spawn().unwrap();
    wait_for_exec(leftover.id(), "sleep");
    drop(nodes);

    assert_eq!(leftover.wait().unwrap().signal(), Some(9));
    let listed = std::process::Command::new(ip_command())
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for namespace in &namespaces {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(namespace)),
            "{namespace} is still there: {listed}"
        );
    }
    for interface in [
        format!("lsst{id}"),
        format!("lsbk{id}"),
        format!("ls{id}s1"),
        format!("ls{id}b2"),
    ] {
        assert!(
            !std::path::Path::new("/sys/class/net")
                .join(&interface)
                .exists(),
            "{interface} is still there"
        );
    }
}

#[test]
fn the_script_refuses_in_one_sentence_where_it_cannot_run() {
    let output = std::process::Command::new(netns::script())
        .args(["up", "auto", "1"])
        .env("LOGSTREAM_NETNS_PRETEND_UNPRIVILEGED", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("need root") || stderr.contains("need iproute2"),
        "{stderr}"
    );
}
