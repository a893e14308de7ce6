//! The host's heartbeat thread: every heartbeat it publishes the host's
//! membership record (incarnation, capacity, whether it reaches its
//! brokers) and decides whether the host yields its units to a peer
//! ([`broker_health::should_yield`]).
//!
//! A thread of its own, because the host loop calls the brokers (topic
//! metadata, partition counts), which block for their timeouts when the
//! broker path is cut: a heartbeat stuck behind them would make the host
//! look dead to its peers, publish a stale broker verdict, and decide to
//! yield only once the broker calls gave up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::broker_health::{self, BrokerHealth};
use super::elector::HostElector;
use super::stoppable::StoppableThread;
use crate::admin::Admin;
use crate::store::clock::{Clock, SystemClock};
use crate::store::membership::{self, HostCapacity, LivenessView};
use crate::store::{KvStore, RetryPolicy};

/// What the heartbeat thread needs.
pub struct Duties {
    pub store: Arc<dyn KvStore>,
    pub policy: RetryPolicy,
    pub host_id: String,
    pub incarnation: String,
    pub started_at_unix_ms: u64,
    pub heartbeat: Duration,
    pub lease: Duration,
    /// Updated by the host loop as units start and stop.
    pub capacity: Arc<Mutex<HostCapacity>>,
    pub broker_health: Arc<BrokerHealth>,
    pub elector: HostElector,
    pub admin: Admin,
}

/// The running heartbeat thread; stopped and joined when dropped.
pub struct Heartbeat {
    _thread: StoppableThread,
}

impl Heartbeat {
    pub fn start(duties: Duties) -> Result<Heartbeat> {
        let thread = StoppableThread::spawn("heartbeat", move |stop| beat(&duties, stop))
            .context("starting the heartbeat thread")?;
        Ok(Heartbeat { _thread: thread })
    }
}

fn beat(duties: &Duties, stop: &AtomicBool) {
    let mut peers = PeerView::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let capacity = *duties.capacity.lock().unwrap_or_else(|p| p.into_inner());
        match membership::heartbeat(
            duties.store.as_ref(),
            &duties.policy,
            &duties.host_id,
            &duties.incarnation,
            duties.started_at_unix_ms,
            Some(capacity),
            Some(duties.broker_health.reachable()),
        ) {
            Ok(_) => duties.admin.status().heartbeat_succeeded(),
            Err(error) => tracing::warn!(%error, "membership heartbeat failed"),
        }
        let yielding = peers.should_yield(duties, duties.broker_health.unreachable_for());
        duties.elector.set_yielding(yielding);
        std::thread::park_timeout(duties.heartbeat.saturating_sub(started.elapsed()));
    }
}

/// The peers a host watches while its brokers are unreachable.
#[derive(Default)]
struct PeerView {
    liveness: LivenessView,
    clock: SystemClock,
}

impl PeerView {
    fn should_yield(&mut self, duties: &Duties, unreachable_for: Duration) -> bool {
        // Peers are read only once the brokers are unreachable, early
        // enough that their liveness is judged (a lease) before the bound.
        if unreachable_for < broker_health::UNREACHABLE_AFTER {
            return false;
        }
        let hosts = match membership::list_hosts(duties.store.as_ref(), &duties.policy) {
            Ok(hosts) => hosts,
            Err(error) => {
                tracing::warn!(%error, "listing the hosts failed");
                return false;
            }
        };
        let now = self.clock.now();
        self.liveness.observe(now, &hosts);
        broker_health::should_yield(unreachable_for, &duties.host_id, &hosts, |id| {
            self.liveness.is_alive(id, now, duties.lease)
        })
    }
}
