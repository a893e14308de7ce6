//! `logstream host` processes for tests and the demo: started with a log
//! file each in a directory, killed with kill -9, stopped with SIGTERM, and
//! killed when dropped so none outlives its test. Shared by
//! `tests/pipeline_failover.rs` and `examples/failover_demo.rs` (by path),
//! so it takes the binary as an argument.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Makes the command that runs the binary (second argument) for a host id.
pub type Launcher = Box<dyn Fn(&str, &PathBuf) -> Command>;

pub struct Hosts {
    pub binary: PathBuf,
    pub store_url: String,
    pub brokers: String,
    /// Host logs (`host-ID-N.log`) and the compile cache go here.
    pub dir: PathBuf,
    /// Extra `logstream host` options of every host.
    pub extra_args: Vec<String>,
    pub children: BTreeMap<String, Child>,
    /// Makes the command that runs the binary for a host id (e.g. inside a
    /// network namespace); `None`: the binary itself, here.
    pub launcher: Option<Launcher>,
    starts: usize,
}

impl Hosts {
    pub fn new(binary: PathBuf, store_url: String, brokers: String, dir: PathBuf) -> Self {
        Hosts {
            binary,
            store_url,
            brokers,
            dir,
            extra_args: Vec::new(),
            children: BTreeMap::new(),
            launcher: None,
            starts: 0,
        }
    }

    /// Start host `id`, logging at info level to a fresh file.
    pub fn start(&mut self, id: &str) {
        self.start_with(id, &[]);
    }

    /// [`Hosts::start`] with more environment variables (e.g. `FAILPOINTS`).
    pub fn start_with(&mut self, id: &str, env: &[(&str, &str)]) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("host-{id}-{}.log", self.starts)))
            .expect("creating a host log");
        let mut command = match &self.launcher {
            Some(launch) => launch(id, &self.binary),
            None => Command::new(&self.binary),
        };
        let child = command
            .args(["host", "--host-id", id, "--brokers", &self.brokers])
            .args(["--store", &self.store_url])
            // Several hosts on one machine: each on a free admin port.
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(&self.extra_args)
            .env("LOGSTREAM_LOG", "info")
            .env("LOGSTREAM_CACHE_DIR", self.dir.join("cache"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting logstream host");
        self.children.insert(id.to_string(), child);
    }

    pub fn pid_of(&self, id: &str) -> u32 {
        self.children[id].id()
    }

    pub fn id_of_pid(&self, pid: u32) -> Option<String> {
        self.children
            .iter()
            .find(|(_, c)| c.id() == pid)
            .map(|(id, _)| id.clone())
    }

    pub fn kill9(&mut self, id: &str) {
        if let Some(mut child) = self.children.remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to every host: each hands over and deregisters.
    pub fn stop_all(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
