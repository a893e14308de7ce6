//! Talking to a test host's admin HTTP endpoint: finding the address it
//! logged (hosts started by [`super::hosts::Hosts`] listen on port 0), one
//! plain HTTP/1.0 GET, and reading one unit's sample of a metric family.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a host logs once its admin server listens.
const LISTENING: &str = "admin HTTP listening on http://";
/// Bound on one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The newest log of host `id` in `dir` (`host-ID-N.log`, highest N).
pub fn newest_log(dir: &Path, id: &str) -> Option<PathBuf> {
    let prefix = format!("host-{id}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let n: u64 = name
                .strip_prefix(&prefix)?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .max()
        .map(|(_, path)| path)
}

/// The admin address host `id` logged in its newest log in `dir`, waiting
/// up to `bound` for it.
pub fn admin_address(dir: &Path, id: &str, bound: Duration) -> SocketAddr {
    let deadline = Instant::now() + bound;
    loop {
        let text = newest_log(dir, id)
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default();
        if let Some(at) = text.find(LISTENING) {
            let address = text[at + LISTENING.len()..].split_whitespace().next();
            return address.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
                panic!("host {id} logged an unreadable admin address:\n{text}")
            });
        }
        assert!(
            Instant::now() < deadline,
            "host {id} did not log its admin address within {bound:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path`: the status code and the body.
pub fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    };
    let response = exchange().map_err(|e| format!("GET {path} from {address}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of `family`'s sample for unit `processor`/`partition` in a
/// Prometheus text exposition, if there is one.
pub fn unit_sample(text: &str, family: &str, processor: &str, partition: i32) -> Option<f64> {
    let processor = format!("processor=\"{processor}\"");
    let partition = format!("partition=\"{partition}\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| line.contains(&processor) && line.contains(&partition))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}
