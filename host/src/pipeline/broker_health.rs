//! Whether this host reaches its brokers, as a peer would judge it: a
//! thread opens a fresh connection to a broker and negotiates API versions
//! every [`PROBE_INTERVAL`], each attempt bounded by [`PROBE_TIMEOUT`].
//!
//! A fresh connection, not the units' pooled ones: when a network path is
//! cut, established connections just stall (no reset), so only a new
//! connect and a round trip tell within a bound that the path is gone.
//!
//! The host publishes the verdict with its membership heartbeat
//! ([`crate::store::membership::HostRecord::broker_reachable`]). A host
//! whose brokers have been unreachable for [`HANDOVER_AFTER`] while another
//! live host reaches them yields its units to it (the elector releases the
//! leases it holds and claims none); when every host is cut off from the
//! brokers nobody yields, so leadership does not churn where no host could
//! make progress anyway.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::WireConnection;
use crate::store::membership::HostRecord;

/// How often the brokers are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Bound on one probe: the connect, then each read and write of the
/// version negotiation.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Brokers unreachable this long: the host says so in its membership.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);
/// Brokers unreachable this long, while a live peer reaches them: the host
/// hands its units over. Long enough that a broker restart or a short
/// network blip (seconds) does not move every unit; short enough that a
/// host cut off from the brokers stops holding up its units within seconds.
pub const HANDOVER_AFTER: Duration = Duration::from_secs(3);

/// The client id of the probes, as brokers log it.
const CLIENT_ID: &str = "logstream-broker-probe";

/// The host's view of its brokers; see the module docs.
pub struct BrokerHealth {
    /// When a probe last succeeded (the start counts as success: a host
    /// does not judge its brokers before it tried).
    last_ok: Mutex<Instant>,
}

impl BrokerHealth {
    /// Start probing `brokers` (comma-separated `host:port`s; any one
    /// answering counts). The thread stops when the returned handle is the
    /// last one and is dropped.
    pub fn start(brokers: &str) -> std::io::Result<Arc<BrokerHealth>> {
        let health = Arc::new(BrokerHealth {
            last_ok: Mutex::new(Instant::now()),
        });
        let addresses: Vec<String> = brokers
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let weak = Arc::downgrade(&health);
        std::thread::Builder::new()
            .name("broker-health".into())
            .spawn(move || loop {
                let started = Instant::now();
                let reached = addresses
                    .iter()
                    .any(|a| WireConnection::connect_within(a, CLIENT_ID, PROBE_TIMEOUT).is_ok());
                // The thread holds only a weak handle: it ends once the
                // host dropped the last strong one.
                let Some(health) = weak.upgrade() else { return };
                if reached {
                    *health.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                }
                drop(health);
                std::thread::sleep(PROBE_INTERVAL.saturating_sub(started.elapsed()));
            })?;
        Ok(health)
    }

    /// How long no probe has reached a broker (zero while they answer).
    pub fn unreachable_for(&self) -> Duration {
        let last_ok = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        last_ok
            .elapsed()
            .saturating_sub(PROBE_INTERVAL + PROBE_TIMEOUT)
    }

    /// Whether the brokers answered within [`UNREACHABLE_AFTER`].
    pub fn reachable(&self) -> bool {
        self.unreachable_for() < UNREACHABLE_AFTER
    }
}

/// Whether host `own_host_id`, whose brokers have been unreachable for
/// `unreachable_for`, should yield its units: past [`HANDOVER_AFTER`], and
/// only to a live peer (`alive`) that says it reaches the brokers.
pub fn should_yield(
    unreachable_for: Duration,
    own_host_id: &str,
    hosts: &[HostRecord],
    alive: impl Fn(&str) -> bool,
) -> bool {
    unreachable_for >= HANDOVER_AFTER
        && hosts
            .iter()
            .any(|h| h.host_id != own_host_id && h.reaches_brokers() && alive(&h.host_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, broker_reachable: Option<bool>) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            incarnation: format!("{id}:1"),
            heartbeat: 1,
            started_at_unix_ms: 0,
            version: String::new(),
            capacity: None,
            broker_reachable,
        }
    }

    #[test]
    fn a_host_yields_only_past_the_bound_and_only_to_a_live_peer_that_reaches_the_brokers() {
        let long = HANDOVER_AFTER;
        let short = HANDOVER_AFTER - Duration::from_millis(1);
        let peers = [host("a", Some(false)), host("b", Some(true))];
        assert!(should_yield(long, "a", &peers, |_| true));
        assert!(
            !should_yield(short, "a", &peers, |_| true),
            "not before the bound"
        );
        assert!(
            !should_yield(long, "a", &peers, |id| id == "a"),
            "b is dead"
        );
        let all_cut = [host("a", Some(false)), host("b", Some(false))];
        assert!(
            !should_yield(long, "a", &all_cut, |_| true),
            "no churn when nobody reaches the brokers"
        );
        let older = [host("a", Some(false)), host("b", None)];
        assert!(
            should_yield(long, "a", &older, |_| true),
            "absent counts as reaching"
        );
        assert!(!should_yield(long, "a", &[host("a", Some(false))], |_| {
            true
        }));
    }

    #[test]
    fn an_address_nobody_listens_on_becomes_unreachable() {
        // A port bound and closed at once: connects are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let health = BrokerHealth::start(&format!("127.0.0.1:{port}")).unwrap();
        assert!(health.reachable(), "not judged before the first probes");
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.reachable() {
            assert!(Instant::now() < deadline, "never judged unreachable");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(health.unreachable_for() >= UNREACHABLE_AFTER);
    }
}
