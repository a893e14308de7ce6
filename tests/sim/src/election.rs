//! The election simulator: one seeded scheduler driving the production
//! election code (`logstream_host::store::election`: [`Election`],
//! [`election::step`], [`election::step_many`]) over a simulated store
//! ([`crate::store`]) and simulated clocks, with faults, checking after
//! every event that no two hosts act for one unit at once.
//!
//! # What it owns
//!
//! A schedule ([`run`]) is a function of its seed: the [`Config`] (2–3
//! hosts, 1–3 units, the store's semantics, batched or per-unit rounds,
//! attempts per transaction, each host's clock rate, which kinds of faults
//! are on) and every latency and fault are drawn from one [`Rng`] in event
//! order. Time is simulated, in microseconds; a discrete-event queue holds
//! each host's next round and the next fault of each kind.
//!
//! Each host runs a real [`Election`] per unit and starts a round every
//! heartbeat of its *own* clock (`ElectionTiming::default()`: lease
//! 500 ms, heartbeat 100 ms, margin 100 ms): one [`election::step_many`]
//! transaction for all its units, or one [`election::step`] per unit. The
//! round is synchronous, as in the host's elector thread; when the store
//! lets time pass inside it ([`StoreEnv::pass`]), the scheduler runs the
//! other hosts' events due meanwhile — their whole rounds — so their
//! commits land between this round's reads and its commit. A host's own
//! later events wait until its round returns.
//!
//! # What it models
//!
//! - **Clocks.** A host's clock is simulated time × its rate, from the
//!   origin of its process (a restarted process starts its own monotonic
//!   clock at 0). Rates are within ±[`MAX_RATE_ERROR_PPM`] of nominal. The
//!   design's margin bounds how far apart two rates may be: a leader acts
//!   `lease - margin` of its clock after its renewal began, a contender
//!   claims `lease` of its own clock after it saw that renewal, so the
//!   claim comes after the leader stopped when `contender rate / leader
//!   rate ≤ lease / (lease - margin)` = 1.25 with the defaults (the
//!   foundationdb-rs recipe's `margin = lease·2e/(1+e)` is the same bound,
//!   e = 1/9). ±5 % gives a ratio of at most 1.105: well inside.
//! - **Faults** ([`Fault`]): a process crash and restart (the `Election`
//!   is dropped; a new one, a new incarnation, starts after up to
//!   [`RESTART_DELAY_MAX`]); a pause of any length up to [`PAUSE_MAX`]
//!   (the process does not run its rounds, then resumes with its old
//!   `Election`: the zombie); store latency spikes (single operations,
//!   and windows where every operation is slow, up to
//!   [`SPIKE_LATENCY_MAX`] each); store outages and one host's link to
//!   the store cut; stale snapshots; commits with an unknown outcome,
//!   applied or not, and commits refused as unavailable. Each seed turns
//!   each kind on or off (swarm testing), so quiet and stormy schedules
//!   both occur.
//! - **Retries.** The production policy's `transact` retries within one
//!   round; here with up to 3 attempts and no backoff sleep (`transact`
//!   sleeps on the real clock), the store's latency standing in for it.
//!
//! # The invariant
//!
//! A host acts for unit U at simulated time t when its process is alive
//! and `election.acting_epoch(host_clock(t))` is `Some`. After each round
//! the acting window of each of its units is computed with that very
//! function (and checked at both ends of the window); then, after every
//! event and at the last instant of every acting window:
//! at most one host acts per unit; the epochs anyone acts at never
//! decrease per unit; two incarnations never act at the same epoch.
//!
//! # Keeping it honest
//!
//! [`Variant`] breaks the system on purpose without touching production
//! code: a clock that, inside a round, keeps returning the reading taken
//! before the store was read (the contender then dates a record it saw
//! late by when its round began), or a host whose clock runs faster than
//! the bound. The tests assert the simulator catches both.
//!
//! # What it leaves out
//!
//! - The host's elector loop around the rounds (passive hosts there
//!   observe four times per heartbeat, yielding, preferred hosts, step-down
//!   requests): this drives `step`/`step_many` directly, every heartbeat.
//! - Everything a leader does while acting (checkpoints, fenced writes,
//!   Kafka): the invariant is about the acting windows themselves.
//! - Threads: a round is one synchronous call, as on the elector thread; a
//!   crash or pause of a host lands between its rounds (a pause inside a
//!   round is a latency spike of its store operation).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use logstream_host::store::clock::Clock;
use logstream_host::store::election::{
    self, Election, ElectionError, ElectionEvent, ElectionTiming, StepOutcome,
};
use logstream_host::store::RetryPolicy;

use crate::store::{CommitFate, Micros, Op, Semantics, SimDb, SimStore, StoreEnv};

/// Simulated length of one schedule: 3 s (3,000,000 µs), six leases.
pub const SCHEDULE_DURATION: Micros = 3_000_000;
/// Nominal clock rate, parts per million of simulated time.
pub const NOMINAL_RATE_PPM: u64 = 1_000_000;
/// Largest error of a host's clock rate: ±5 % (50,000 ppm); see the module
/// docs for why this is well inside the margin.
pub const MAX_RATE_ERROR_PPM: u64 = 50_000;
/// The rate of the fast host of [`Variant::FastClock`]: 1.4 (1,400,000
/// ppm), beyond the 1.25 ratio the margin covers.
pub const BROKEN_FAST_RATE_PPM: u64 = 1_400_000;
/// Latency of a store operation without a spike: 0–2 ms (µs).
pub const BASE_LATENCY_MAX: Micros = 2_000;
/// Latency of a store operation in a spike: 0–700 ms (µs), beyond the
/// lease.
pub const SPIKE_LATENCY_MAX: Micros = 700_000;
/// Per mille of store operations that spike on their own (when spikes are
/// on).
pub const ISOLATED_SPIKE_PER_MILLE: u64 = 20;
/// Longest window of slow store operations: 1 s (µs).
pub const SPIKE_WINDOW_MAX: Micros = 1_000_000;
/// Longest store outage or cut link: 1 s (µs).
pub const OUTAGE_MAX: Micros = 1_000_000;
/// Oldest snapshot served to a transaction: 1 s (µs) before it began.
pub const STALE_SNAPSHOT_MAX_AGE: Micros = 1_000_000;
/// Per mille of transactions served a stale snapshot (when on).
pub const STALE_PER_MILLE: u64 = 200;
/// Per mille of commits whose outcome is unknown and applied, unknown and
/// not applied, and refused as unavailable (when on).
pub const UNKNOWN_APPLIED_PER_MILLE: u64 = 50;
pub const UNKNOWN_NOT_APPLIED_PER_MILLE: u64 = 50;
pub const COMMIT_UNAVAILABLE_PER_MILLE: u64 = 30;
/// Longest time a crashed host stays down: 1 s (µs).
pub const RESTART_DELAY_MAX: Micros = 1_000_000;
/// Longest pause: 4 s (µs), eight leases.
pub const PAUSE_MAX: Micros = 4_000_000;
/// Mean time between two faults of one kind (of one host, for crashes,
/// pauses and cut links), µs.
pub const CRASH_MEAN_INTERVAL: Micros = 1_500_000;
pub const PAUSE_MEAN_INTERVAL: Micros = 800_000;
pub const SPIKE_MEAN_INTERVAL: Micros = 800_000;
pub const OUTAGE_MEAN_INTERVAL: Micros = 1_500_000;
/// Attempts of one round's transaction: 1 or this many.
pub const MAX_ATTEMPTS: u32 = 3;
/// Most re-runs a failing schedule's shrinking spends.
pub const MAX_SHRINK_RUNS: usize = 300;

/// A small deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A correct system, or one broken on purpose (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Correct,
    /// The election's clock, inside a round, returns the reading taken
    /// before the store was read.
    ClockReadBeforeStoreRead,
    /// One host's clock runs at [`BROKEN_FAST_RATE_PPM`].
    FastClock,
}

impl Variant {
    /// From `SIM_VARIANT`'s spelling: `correct`, `clock-before-read`,
    /// `fast-clock`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "correct" => Some(Variant::Correct),
            "clock-before-read" => Some(Variant::ClockReadBeforeStoreRead),
            "fast-clock" => Some(Variant::FastClock),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::ClockReadBeforeStoreRead => "clock-before-read",
            Variant::FastClock => "fast-clock",
        }
    }
}

/// Which kinds of faults a schedule injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultMix {
    pub crash: bool,
    pub pause: bool,
    pub spike: bool,
    pub outage: bool,
    pub stale: bool,
    pub unknown: bool,
}

/// One schedule's setting, drawn from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub hosts: usize,
    pub units: usize,
    pub semantics: Semantics,
    /// One `step_many` per round (else one `step` per unit).
    pub batched: bool,
    pub attempts: u32,
    pub rates_ppm: Vec<u64>,
    pub duration: Micros,
    pub faults: FaultMix,
}

impl Config {
    pub fn from_seed(seed: u64, variant: Variant) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed_c0f1_9000_0000);
        let hosts = rng.between(2, 3) as usize;
        let units = rng.between(1, 3) as usize;
        let semantics = if rng.chance(750) {
            Semantics::Optimistic
        } else {
            Semantics::Serial
        };
        let batched = rng.chance(500);
        let attempts = if rng.chance(500) { 1 } else { MAX_ATTEMPTS };
        let mut rates_ppm: Vec<u64> = (0..hosts)
            .map(|_| {
                rng.between(
                    NOMINAL_RATE_PPM - MAX_RATE_ERROR_PPM,
                    NOMINAL_RATE_PPM + MAX_RATE_ERROR_PPM,
                )
            })
            .collect();
        if variant == Variant::FastClock {
            let fast = rng.below(hosts as u64) as usize;
            rates_ppm[fast] = BROKEN_FAST_RATE_PPM;
        }
        let faults = FaultMix {
            crash: rng.chance(500),
            pause: rng.chance(500),
            spike: rng.chance(500),
            outage: rng.chance(500),
            stale: rng.chance(500),
            unknown: rng.chance(500),
        };
        Config {
            hosts,
            units,
            semantics,
            batched,
            attempts,
            rates_ppm,
            duration: SCHEDULE_DURATION,
            faults,
        }
    }
}

/// Kinds of injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Crash,
    Pause,
    LatencySpike,
    StoreOutage,
    LinkCut,
    StaleSnapshot,
    UnknownApplied,
    UnknownNotApplied,
    CommitUnavailable,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Crash,
        Fault::Pause,
        Fault::LatencySpike,
        Fault::StoreOutage,
        Fault::LinkCut,
        Fault::StaleSnapshot,
        Fault::UnknownApplied,
        Fault::UnknownNotApplied,
        Fault::CommitUnavailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Pause => "pause",
            Fault::LatencySpike => "latency spike",
            Fault::StoreOutage => "store outage",
            Fault::LinkCut => "link cut",
            Fault::StaleSnapshot => "stale snapshot",
            Fault::UnknownApplied => "commit unknown (applied)",
            Fault::UnknownNotApplied => "commit unknown (not applied)",
            Fault::CommitUnavailable => "commit unavailable",
        }
    }
}

/// What schedules did, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub schedules: u64,
    /// Simulated time, µs.
    pub simulated: Micros,
    pub events: u64,
    pub rounds: u64,
    pub failed_rounds: u64,
    pub became_leader: u64,
    pub fenced: u64,
    pub invariant_checks: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub too_old: u64,
    /// Injected faults, by [`Fault`] (in the order of [`Fault::ALL`]).
    pub faults: [u64; 9],
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.schedules += other.schedules;
        self.simulated += other.simulated;
        self.events += other.events;
        self.rounds += other.rounds;
        self.failed_rounds += other.failed_rounds;
        self.became_leader += other.became_leader;
        self.fenced += other.fenced;
        self.invariant_checks += other.invariant_checks;
        self.commits += other.commits;
        self.conflicts += other.conflicts;
        self.too_old += other.too_old;
        for (sum, n) in self.faults.iter_mut().zip(other.faults) {
            *sum += n;
        }
    }

    /// A few lines for a test's output.
    pub fn report(&self) -> String {
        let faults: Vec<String> = Fault::ALL
            .iter()
            .zip(self.faults)
            .map(|(f, n)| format!("{} {n}", f.name()))
            .collect();
        format!(
            "{} schedules, {:.1} s simulated, {} events, {} rounds ({} failed), {} leaderships won, {} fenced, {} commits, {} conflicts ({} too old), {} invariant checks\nfaults: {}",
            self.schedules,
            self.simulated as f64 / 1e6,
            self.events,
            self.rounds,
            self.failed_rounds,
            self.became_leader,
            self.fenced,
            self.commits,
            self.conflicts,
            self.too_old,
            self.invariant_checks,
            faults.join(", ")
        )
    }
}

/// What one schedule did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub variant: Variant,
    pub config: Config,
    /// The first violation of the invariant, if any.
    pub violation: Option<String>,
    /// Each event (only when traced), up to the first violation.
    pub trace: Vec<String>,
    pub counters: Counters,
    /// Ids of the faults injected (see [`run`]'s `skip`).
    pub injected: Vec<u64>,
    /// The faults left out of this run.
    pub skipped: BTreeSet<u64>,
}

impl Outcome {
    /// The seed, how to replay it, the setting and the trace.
    pub fn report(&self) -> String {
        let skip: Vec<String> = self.skipped.iter().map(u64::to_string).collect();
        let mut out = format!(
            "seed {} ({} variant): {}\nreplay: SIM_SEED={} SIM_VARIANT={}{} cargo test -p logstream-sim the_real_election -- --nocapture\n{:?}\n",
            self.seed,
            self.variant.name(),
            self.violation.as_deref().unwrap_or("no violation"),
            self.seed,
            self.variant.name(),
            if skip.is_empty() {
                String::new()
            } else {
                format!(" SIM_SKIP={}", skip.join(","))
            },
            self.config
        );
        for line in &self.trace {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// A unit's name.
fn unit_name(unit: usize) -> String {
    format!("u{unit}")
}

/// A host's machine clock at simulated time `t`, µs.
pub(crate) fn machine(rate_ppm: u64, t: Micros) -> Micros {
    (u128::from(t) * u128::from(rate_ppm) / u128::from(NOMINAL_RATE_PPM)) as Micros
}

/// The first simulated instant at which a machine clock reads `at` or
/// more.
pub(crate) fn reaching(rate_ppm: u64, at: Micros) -> Micros {
    (u128::from(at) * u128::from(NOMINAL_RATE_PPM)).div_ceil(u128::from(rate_ppm)) as Micros
}

/// The clock a host's election reads: its process's monotonic clock.
struct HostClock<'w> {
    now: &'w AtomicU64,
    rate_ppm: u64,
    origin: Micros,
    /// [`Variant::ClockReadBeforeStoreRead`]: the round's first reading,
    /// returned by every later one.
    first: Option<Mutex<Option<Duration>>>,
}

impl HostClock<'_> {
    fn true_now(&self) -> Duration {
        let t = self.now.load(Ordering::Relaxed);
        Duration::from_micros(machine(self.rate_ppm, t) - self.origin)
    }
}

impl Clock for HostClock<'_> {
    fn now(&self) -> Duration {
        let now = self.true_now();
        match &self.first {
            Some(first) => *first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(now),
            None => now,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Round {
        host: usize,
        generation: u64,
    },
    Start {
        host: usize,
    },
    Crash {
        host: usize,
    },
    Pause {
        host: usize,
    },
    LinkCut {
        host: usize,
    },
    Spike,
    Outage,
    /// The last instant of an acting window: check there.
    Check,
}

impl Event {
    fn host(self) -> Option<usize> {
        match self {
            Event::Round { host, .. }
            | Event::Start { host }
            | Event::Crash { host }
            | Event::Pause { host }
            | Event::LinkCut { host } => Some(host),
            Event::Spike | Event::Outage | Event::Check => None,
        }
    }
}

/// A host acting for a unit: at `epoch`, until `until` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acting {
    epoch: u64,
    until: Micros,
    incarnation: String,
}

struct HostMeta {
    rate_ppm: u64,
    alive: bool,
    /// In a round: its other events wait.
    busy: bool,
    /// Its process's number (incarnation `h{host}#{generation}`).
    generation: u64,
    /// Machine-clock µs at its process's start.
    origin: Micros,
    paused_until: Micros,
    link_cut_until: Micros,
    acting: Vec<Option<Acting>>,
}

/// A live host process.
struct Process {
    incarnation: String,
    elections: Vec<Election>,
}

/// The scheduler's state (all but the processes, which rounds borrow).
struct Sim {
    rng: Rng,
    queue: BinaryHeap<Reverse<(Micros, u64, Event)>>,
    seq: u64,
    hosts: Vec<HostMeta>,
    spike_until: Micros,
    outage_until: Micros,
    counters: Counters,
    tracing: bool,
    trace: Vec<String>,
    violation: Option<String>,
    next_fault: u64,
    injected: Vec<u64>,
    /// Who acted first at each (unit, epoch).
    first_actor: BTreeMap<(usize, u64), String>,
    /// Highest epoch anyone acted at, per unit.
    highest_epoch: Vec<u64>,
}

impl Sim {
    fn schedule(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    /// The earliest event due by `target` that may run now: not one of a
    /// host in a round, and no round at all while a serial transaction
    /// holds the lock (`exclusive`).
    fn pop_runnable(&mut self, target: Micros, exclusive: bool) -> Option<(Micros, Event)> {
        let mut aside = Vec::new();
        let mut found = None;
        while let Some(&Reverse((at, seq, event))) = self.queue.peek() {
            if at > target {
                break;
            }
            self.queue.pop();
            let blocked = event.host().is_some_and(|h| self.hosts[h].busy)
                || (exclusive && matches!(event, Event::Round { .. }));
            if blocked {
                aside.push(Reverse((at, seq, event)));
            } else {
                found = Some((at, event));
                break;
            }
        }
        self.queue.extend(aside);
        found
    }

    /// Take fault number `next_fault` unless it is skipped.
    fn inject(&mut self, skip: &BTreeSet<u64>, fault: Fault) -> bool {
        let id = self.next_fault;
        self.next_fault += 1;
        if skip.contains(&id) {
            return false;
        }
        self.injected.push(id);
        let index = Fault::ALL.iter().position(|f| *f == fault).expect("listed");
        self.counters.faults[index] += 1;
        if self.tracing {
            self.note_line(format!("        fault #{id}: {}", fault.name()));
        }
        true
    }

    fn note_line(&mut self, line: String) {
        if self.tracing && self.violation.is_none() {
            self.trace.push(line);
        }
    }

    fn note(&mut self, now: Micros, host: Option<usize>, what: impl FnOnce() -> String) {
        if self.tracing && self.violation.is_none() {
            let who = host.map_or("  ".to_string(), |h| format!("h{h}"));
            let line = format!("{:>5}.{:03} ms  {who}  {}", now / 1000, now % 1000, what());
            self.trace.push(line);
        }
    }

    /// Pick the gap to the next fault of a kind with this mean interval.
    fn gap(&mut self, mean: Micros) -> Micros {
        self.rng.between(1, 2 * mean)
    }
}

struct World<'r> {
    cfg: &'r Config,
    variant: Variant,
    skip: &'r BTreeSet<u64>,
    timing: ElectionTiming,
    db: SimDb,
    now: AtomicU64,
    sim: Mutex<Sim>,
    procs: Vec<Mutex<Option<Process>>>,
}

impl World<'_> {
    fn lock(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn time(&self) -> Micros {
        self.now.load(Ordering::Relaxed)
    }

    /// Run every event due by `target` that may run (see
    /// [`Sim::pop_runnable`]), none after the schedule's end, checking
    /// after each; then let time reach `target` (a round in flight at the
    /// end finishes).
    fn run_until(&self, target: Micros, exclusive: bool) {
        let last = target.min(self.cfg.duration);
        loop {
            let next = {
                let mut sim = self.lock();
                if sim.violation.is_some() {
                    None
                } else {
                    sim.pop_runnable(last, exclusive)
                }
            };
            let Some((at, event)) = next else { break };
            self.now.fetch_max(at, Ordering::Relaxed);
            self.handle(event);
            self.check();
        }
        self.now.fetch_max(target, Ordering::Relaxed);
    }

    fn handle(&self, event: Event) {
        let now = self.time();
        let faults = self.cfg.faults;
        let mut sim = self.lock();
        sim.counters.events += 1;
        match event {
            Event::Round { host, generation } => {
                drop(sim);
                self.round(host, generation);
            }
            Event::Start { host } => {
                drop(sim);
                self.start(host);
            }
            Event::Crash { host } => {
                let restart = sim.rng.between(1, RESTART_DELAY_MAX);
                let gap = sim.gap(CRASH_MEAN_INTERVAL);
                sim.schedule(now + restart + gap, Event::Crash { host });
                if sim.hosts[host].alive && sim.inject(self.skip, Fault::Crash) {
                    let meta = &mut sim.hosts[host];
                    meta.alive = false;
                    meta.acting.iter_mut().for_each(|a| *a = None);
                    sim.note(now, Some(host), || {
                        format!("crash; restarts in {} ms", restart / 1000)
                    });
                    sim.schedule(now + restart, Event::Start { host });
                    drop(sim);
                    *self.procs[host].lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
            Event::Pause { host } => {
                let length = match sim.rng.below(100) {
                    0..=49 => sim.rng.between(1, 300_000),
                    50..=84 => sim.rng.between(300_000, 1_500_000),
                    _ => sim.rng.between(1_500_000, PAUSE_MAX),
                };
                let gap = sim.gap(PAUSE_MEAN_INTERVAL);
                sim.schedule(now + gap, Event::Pause { host });
                if sim.hosts[host].alive && sim.inject(self.skip, Fault::Pause) {
                    let meta = &mut sim.hosts[host];
                    meta.paused_until = meta.paused_until.max(now + length);
                    sim.note(now, Some(host), || {
                        format!("paused for {} ms", length / 1000)
                    });
                }
            }
            Event::LinkCut { host } => {
                let length = sim.rng.between(1, OUTAGE_MAX);
                let gap = sim.gap(OUTAGE_MEAN_INTERVAL);
                sim.schedule(now + gap, Event::LinkCut { host });
                if sim.inject(self.skip, Fault::LinkCut) {
                    let meta = &mut sim.hosts[host];
                    meta.link_cut_until = meta.link_cut_until.max(now + length);
                    sim.note(now, Some(host), || {
                        format!("link to the store cut for {} ms", length / 1000)
                    });
                }
            }
            Event::Spike => {
                let length = sim.rng.between(1, SPIKE_WINDOW_MAX);
                let gap = sim.gap(SPIKE_MEAN_INTERVAL);
                sim.schedule(now + gap, Event::Spike);
                if faults.spike && sim.inject(self.skip, Fault::LatencySpike) {
                    sim.spike_until = sim.spike_until.max(now + length);
                    sim.note(now, None, || {
                        format!("store operations slow for {} ms", length / 1000)
                    });
                }
            }
            Event::Outage => {
                let length = sim.rng.between(1, OUTAGE_MAX);
                let gap = sim.gap(OUTAGE_MEAN_INTERVAL);
                sim.schedule(now + gap, Event::Outage);
                if sim.inject(self.skip, Fault::StoreOutage) {
                    sim.outage_until = sim.outage_until.max(now + length);
                    sim.note(now, None, || {
                        format!("store unavailable for {} ms", length / 1000)
                    });
                }
            }
            Event::Check => {}
        }
    }

    /// Start (or restart) a host's process: a new incarnation.
    fn start(&self, host: usize) {
        let now = self.time();
        let mut sim = self.lock();
        let heartbeat = self.timing.heartbeat.as_micros() as Micros;
        let phase = sim.rng.between(0, heartbeat);
        let meta = &mut sim.hosts[host];
        meta.generation += 1;
        meta.alive = true;
        meta.origin = machine(meta.rate_ppm, now);
        meta.paused_until = 0;
        let generation = meta.generation;
        let incarnation = format!("h{host}#{generation}");
        sim.note(now, Some(host), || format!("starts as {incarnation}"));
        sim.schedule(now + phase, Event::Round { host, generation });
        drop(sim);
        let host_id = format!("h{host}");
        let elections = (0..self.cfg.units)
            .map(|_| Election::new(&host_id, &incarnation, self.timing))
            .collect();
        *self.procs[host].lock().unwrap_or_else(|p| p.into_inner()) = Some(Process {
            incarnation,
            elections,
        });
    }

    fn clock(&self, rate_ppm: u64, origin: Micros) -> HostClock<'_> {
        HostClock {
            now: &self.now,
            rate_ppm,
            origin,
            first: (self.variant == Variant::ClockReadBeforeStoreRead).then(|| Mutex::new(None)),
        }
    }

    /// One round of `host`'s process `generation`, if it is still the one
    /// running and not paused.
    fn round(&self, host: usize, generation: u64) {
        let (rate, origin) = {
            let now = self.time();
            let mut sim = self.lock();
            let meta = &mut sim.hosts[host];
            if !meta.alive || meta.generation != generation {
                return;
            }
            if now < meta.paused_until {
                let at = meta.paused_until;
                sim.schedule(at, Event::Round { host, generation });
                return;
            }
            meta.busy = true;
            (meta.rate_ppm, meta.origin)
        };
        let mut guard = self.procs[host].lock().unwrap_or_else(|p| p.into_inner());
        let process = guard.as_mut().expect("a live host has a process");
        let store = SimStore::new(&self.db, self, host);
        let policy = RetryPolicy {
            max_attempts: self.cfg.attempts,
            max_elapsed: Duration::MAX,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        };
        let started = self.clock(rate, origin).true_now();
        let names: Vec<String> = (0..self.cfg.units).map(unit_name).collect();
        if self.cfg.batched {
            let clock = self.clock(rate, origin);
            let mut elections: Vec<(&str, &mut Election)> = names
                .iter()
                .map(String::as_str)
                .zip(process.elections.iter_mut())
                .collect();
            let result = election::step_many(&store, &policy, &mut elections, &clock, false);
            drop(elections);
            let units: Vec<usize> = (0..self.cfg.units).collect();
            self.after_round(host, process, &units, result);
        } else {
            for (unit, name) in names.iter().enumerate() {
                let clock = self.clock(rate, origin);
                let result = election::step(
                    &store,
                    &policy,
                    &mut process.elections[unit],
                    name,
                    &clock,
                    false,
                )
                .map(|outcome| vec![outcome]);
                self.after_round(host, process, &[unit], result);
            }
        }
        drop(guard);
        let heartbeat = self.timing.heartbeat.as_micros() as Micros;
        let next = reaching(rate, origin + started.as_micros() as Micros + heartbeat);
        let now = self.time();
        let mut sim = self.lock();
        sim.hosts[host].busy = false;
        sim.schedule(next.max(now), Event::Round { host, generation });
    }

    /// Note what a round did and the acting windows it leaves.
    fn after_round(
        &self,
        host: usize,
        process: &Process,
        units: &[usize],
        result: Result<Vec<StepOutcome>, ElectionError>,
    ) {
        let now = self.time();
        let mut sim = self.lock();
        sim.counters.rounds += 1;
        match &result {
            Ok(outcomes) => {
                for (&unit, outcome) in units.iter().zip(outcomes) {
                    match outcome.event {
                        Some(ElectionEvent::BecameLeader { .. }) => sim.counters.became_leader += 1,
                        Some(ElectionEvent::Fenced { .. }) => sim.counters.fenced += 1,
                        _ => {}
                    }
                    sim.note(now, Some(host), || {
                        let state = outcome.state.as_ref().map_or("none".to_string(), |s| {
                            format!(
                                "e{} held by {} renewal {}",
                                s.record.epoch,
                                s.record.holder,
                                s.renewal()
                            )
                        });
                        format!(
                            "{} round ok: {:?}; record {state}",
                            unit_name(unit),
                            outcome.event
                        )
                    });
                }
            }
            Err(error) => {
                sim.counters.failed_rounds += 1;
                sim.note(now, Some(host), || {
                    let names: Vec<String> = units.iter().map(|u| unit_name(*u)).collect();
                    format!("{} round failed: {error}", names.join(","))
                });
            }
        }
        let (rate, origin) = (sim.hosts[host].rate_ppm, sim.hosts[host].origin);
        for &unit in units {
            let acting = acting_window(
                &process.elections[unit],
                rate,
                origin,
                now,
                &process.incarnation,
            );
            if let Some(acting) = &acting {
                let until = acting.until;
                let epoch = acting.epoch;
                sim.note(now, Some(host), || {
                    format!(
                        "{} acts at e{epoch} until {}.{:03} ms",
                        unit_name(unit),
                        until / 1000,
                        until % 1000
                    )
                });
                if until > now + 1 {
                    sim.schedule(until - 1, Event::Check);
                }
            }
            sim.hosts[host].acting[unit] = acting;
        }
    }

    /// The invariant at the current instant (module docs).
    fn check(&self) {
        let now = self.time();
        let mut sim = self.lock();
        if sim.violation.is_some() {
            return;
        }
        sim.counters.invariant_checks += 1;
        let mut violation = None;
        for unit in 0..self.cfg.units {
            let acting: Vec<(usize, Acting)> = sim
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.alive)
                .filter_map(|(i, h)| h.acting[unit].clone().map(|a| (i, a)))
                .filter(|(_, a)| a.until > now)
                .collect();
            if acting.len() > 1 {
                let who: Vec<String> = acting
                    .iter()
                    .map(|(_, a)| format!("{} at e{} until {} µs", a.incarnation, a.epoch, a.until))
                    .collect();
                violation = Some(format!(
                    "{} has {} hosts acting at once: {}",
                    unit_name(unit),
                    acting.len(),
                    who.join(", ")
                ));
                break;
            }
            for (_, a) in &acting {
                let first = sim
                    .first_actor
                    .entry((unit, a.epoch))
                    .or_insert_with(|| a.incarnation.clone());
                if *first != a.incarnation {
                    violation = Some(format!(
                        "{}: {} acts at e{}, at which {} acted",
                        unit_name(unit),
                        a.incarnation,
                        a.epoch,
                        first
                    ));
                }
                if a.epoch < sim.highest_epoch[unit] {
                    violation = Some(format!(
                        "{}: {} acts at e{} after e{} acted",
                        unit_name(unit),
                        a.incarnation,
                        a.epoch,
                        sim.highest_epoch[unit]
                    ));
                }
                sim.highest_epoch[unit] = sim.highest_epoch[unit].max(a.epoch);
            }
            if violation.is_some() {
                break;
            }
        }
        if let Some(violation) = violation {
            let message = format!("at {}.{:03} ms: {violation}", now / 1000, now % 1000);
            sim.note(now, None, || format!("VIOLATION: {violation}"));
            sim.violation = Some(message);
        }
    }
}

/// Where `election` acts from `now` on: its epoch and the first simulated
/// instant it no longer does, both read with `acting_epoch` itself.
fn acting_window(
    election: &Election,
    rate_ppm: u64,
    origin: Micros,
    now: Micros,
    incarnation: &str,
) -> Option<Acting> {
    let clock_at = |t: Micros| Duration::from_micros(machine(rate_ppm, t) - origin);
    let epoch = election.acting_epoch(clock_at(now))?;
    let valid_until = election.acting_until().expect("an acting election leads");
    let until_us = valid_until.as_nanos().div_ceil(1000) as Micros;
    let until = reaching(rate_ppm, origin + until_us);
    assert_eq!(election.acting_epoch(clock_at(until - 1)), Some(epoch));
    assert_eq!(election.acting_epoch(clock_at(until)), None);
    Some(Acting {
        epoch,
        until,
        incarnation: incarnation.to_string(),
    })
}

impl StoreEnv for World<'_> {
    fn now(&self) -> Micros {
        self.time()
    }

    fn pass(&self, client: usize, op: Op, exclusive: bool) {
        let latency = {
            let now = self.time();
            let mut sim = self.lock();
            let base = sim.rng.between(0, BASE_LATENCY_MAX);
            let spike = sim.rng.between(0, SPIKE_LATENCY_MAX);
            let isolated = sim.rng.chance(ISOLATED_SPIKE_PER_MILLE);
            if now < sim.spike_until {
                spike
            } else if self.cfg.faults.spike
                && isolated
                && sim.inject(self.skip, Fault::LatencySpike)
            {
                sim.note(now, Some(client), || {
                    format!("store {op:?} takes {} ms", spike / 1000)
                });
                spike
            } else {
                base
            }
        };
        self.run_until(self.time() + latency, exclusive);
    }

    fn unavailable(&self, client: usize) -> bool {
        let now = self.time();
        let sim = self.lock();
        now < sim.outage_until || now < sim.hosts[client].link_cut_until
    }

    fn snapshot_age(&self, client: usize) -> Micros {
        if !self.cfg.faults.stale {
            return 0;
        }
        let now = self.time();
        let mut sim = self.lock();
        let stale = sim.rng.chance(STALE_PER_MILLE);
        let age = sim.rng.between(1, STALE_SNAPSHOT_MAX_AGE);
        if stale && sim.inject(self.skip, Fault::StaleSnapshot) {
            sim.note(now, Some(client), || {
                format!("snapshot served {} ms old", age / 1000)
            });
            age
        } else {
            0
        }
    }

    fn commit_fate(&self, client: usize) -> CommitFate {
        if self.unavailable(client) {
            return CommitFate::Unavailable;
        }
        if !self.cfg.faults.unknown {
            return CommitFate::Commit;
        }
        let now = self.time();
        let mut sim = self.lock();
        let draw = sim.rng.below(1000);
        let (fate, fault) = if draw < UNKNOWN_APPLIED_PER_MILLE {
            (CommitFate::UnknownApplied, Fault::UnknownApplied)
        } else if draw < UNKNOWN_APPLIED_PER_MILLE + UNKNOWN_NOT_APPLIED_PER_MILLE {
            (CommitFate::UnknownNotApplied, Fault::UnknownNotApplied)
        } else if draw
            < UNKNOWN_APPLIED_PER_MILLE
                + UNKNOWN_NOT_APPLIED_PER_MILLE
                + COMMIT_UNAVAILABLE_PER_MILLE
        {
            (CommitFate::Unavailable, Fault::CommitUnavailable)
        } else {
            return CommitFate::Commit;
        };
        if sim.inject(self.skip, fault) {
            sim.note(now, Some(client), || format!("commit: {fate:?}"));
            fate
        } else {
            CommitFate::Commit
        }
    }
}

/// Run the schedule of `seed`, leaving out the faults whose ids are in
/// `skip`; record its trace when `trace`.
pub fn run(seed: u64, variant: Variant, skip: &BTreeSet<u64>, trace: bool) -> Outcome {
    let cfg = Config::from_seed(seed, variant);
    let hosts = (0..cfg.hosts)
        .map(|h| HostMeta {
            rate_ppm: cfg.rates_ppm[h],
            alive: false,
            busy: false,
            generation: 0,
            origin: 0,
            paused_until: 0,
            link_cut_until: 0,
            acting: vec![None; cfg.units],
        })
        .collect();
    let mut sim = Sim {
        rng: Rng::new(seed),
        queue: BinaryHeap::new(),
        seq: 0,
        hosts,
        spike_until: 0,
        outage_until: 0,
        counters: Counters::default(),
        tracing: trace,
        trace: Vec::new(),
        violation: None,
        next_fault: 0,
        injected: Vec::new(),
        first_actor: BTreeMap::new(),
        highest_epoch: vec![0; cfg.units],
    };
    for host in 0..cfg.hosts {
        sim.schedule(0, Event::Start { host });
        if cfg.faults.crash {
            let at = sim.gap(CRASH_MEAN_INTERVAL);
            sim.schedule(at, Event::Crash { host });
        }
        if cfg.faults.pause {
            let at = sim.gap(PAUSE_MEAN_INTERVAL);
            sim.schedule(at, Event::Pause { host });
        }
        if cfg.faults.outage {
            let at = sim.gap(OUTAGE_MEAN_INTERVAL);
            sim.schedule(at, Event::LinkCut { host });
        }
    }
    if cfg.faults.spike {
        let at = sim.gap(SPIKE_MEAN_INTERVAL);
        sim.schedule(at, Event::Spike);
    }
    if cfg.faults.outage {
        let at = sim.gap(OUTAGE_MEAN_INTERVAL);
        sim.schedule(at, Event::Outage);
    }
    let world = World {
        cfg: &cfg,
        variant,
        skip,
        timing: ElectionTiming::default(),
        db: SimDb::new(cfg.semantics),
        now: AtomicU64::new(0),
        sim: Mutex::new(sim),
        procs: (0..cfg.hosts).map(|_| Mutex::new(None)).collect(),
    };
    world.run_until(cfg.duration, false);
    let stats = world.db.stats();
    let end = world.time();
    let sim = world.sim.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut counters = sim.counters;
    counters.schedules = 1;
    counters.simulated = end;
    counters.commits = stats.commits;
    counters.conflicts = stats.conflicts;
    counters.too_old = stats.too_old;
    Outcome {
        seed,
        variant,
        config: cfg,
        violation: sim.violation,
        trace: sim.trace,
        counters,
        injected: sim.injected,
        skipped: skip.clone(),
    }
}

/// A failing seed's schedule with as few faults as still fail: each
/// injected fault is left out in turn, and stays out while the schedule
/// still fails (at most [`MAX_SHRINK_RUNS`] re-runs); the result is
/// re-run with its trace, which ends at the first violation.
pub fn shrink(seed: u64, variant: Variant) -> Outcome {
    let mut skip = BTreeSet::new();
    let first = run(seed, variant, &skip, false);
    assert!(first.violation.is_some(), "seed {seed} does not fail");
    for id in first.injected.iter().copied().take(MAX_SHRINK_RUNS) {
        skip.insert(id);
        if run(seed, variant, &skip, false).violation.is_none() {
            skip.remove(&id);
        }
    }
    run(seed, variant, &skip, true)
}

/// What [`explore`] found.
#[derive(Debug, Clone)]
pub struct Exploration {
    pub counters: Counters,
    /// Failing seeds, ascending.
    pub failing: Vec<u64>,
    pub elapsed: Duration,
}

/// Run the schedules of `seeds` on `threads` threads (each schedule is
/// deterministic on its own; the sums and the failing seeds do not depend
/// on the threads).
pub fn explore(seeds: Range<u64>, variant: Variant, threads: usize) -> Exploration {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let results: Mutex<(Counters, Vec<u64>)> = Mutex::new((Counters::default(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut counters = Counters::default();
                let mut failing = Vec::new();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let outcome = run(seed, variant, &BTreeSet::new(), false);
                    counters.add(&outcome.counters);
                    if outcome.violation.is_some() {
                        failing.push(seed);
                    }
                }
                let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                results.0.add(&counters);
                results.1.extend(failing);
            });
        }
    });
    let (counters, mut failing) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    failing.sort_unstable();
    Exploration {
        counters,
        failing,
        elapsed: started.elapsed(),
    }
}

/// The first failing seed from `seeds.start` on, within `seeds`, one
/// schedule at a time; with what ran until then.
pub fn first_failure(seeds: Range<u64>, variant: Variant) -> (Option<u64>, Counters) {
    let mut counters = Counters::default();
    for seed in seeds {
        let outcome = run(seed, variant, &BTreeSet::new(), false);
        counters.add(&outcome.counters);
        if outcome.violation.is_some() {
            return (Some(seed), counters);
        }
    }
    (None, counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedules of the default budget: 10,000.
    const DEFAULT_SCHEDULES: u64 = 10_000;
    /// Most schedules a broken variant may take to be caught.
    const BROKEN_BUDGET: u64 = 10_000;

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    }

    fn threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    /// `SIM_SEED=<n>` replays one schedule and prints its trace
    /// (`SIM_VARIANT` and `SIM_SKIP=<id,…>` as a failure report says);
    /// otherwise `SIM_SCHEDULES` (default 10,000) seeds from 0 run, and a
    /// failure panics with the shrunk schedule's trace.
    #[test]
    fn the_real_election_keeps_one_actor_per_unit_under_faults() {
        if let Some(seed) = env_u64("SIM_SEED") {
            let variant = std::env::var("SIM_VARIANT").map_or(Variant::Correct, |v| {
                Variant::parse(&v).unwrap_or_else(|| panic!("SIM_VARIANT={v:?} is unknown"))
            });
            let skip: BTreeSet<u64> = std::env::var("SIM_SKIP")
                .map(|s| {
                    s.split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.parse().expect("SIM_SKIP is a list of numbers"))
                        .collect()
                })
                .unwrap_or_default();
            let outcome = run(seed, variant, &skip, true);
            println!("{}", outcome.report());
            println!("{}", outcome.counters.report());
            assert!(outcome.violation.is_none(), "{}", outcome.report());
            return;
        }
        let schedules = env_u64("SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
        let found = explore(0..schedules, Variant::Correct, threads());
        let figures = format!(
            "election simulation: {} in {:.1} s on {} threads; {} failing",
            found.counters.report(),
            found.elapsed.as_secs_f64(),
            threads(),
            found.failing.len()
        );
        println!("{figures}");
        crate::record_figures("1-election", &figures);
        assert_eq!(found.counters.schedules, schedules);
        if let Some(&seed) = found.failing.first() {
            let shrunk = shrink(seed, Variant::Correct);
            panic!(
                "{} of {schedules} schedules fail (seeds {:?}); the first, shrunk:\n{}",
                found.failing.len(),
                &found.failing[..found.failing.len().min(20)],
                shrunk.report()
            );
        }
        // Not vacuous: leadership changed hands, and every kind of fault
        // was injected (in a budget large enough to say so).
        if schedules < 1_000 {
            return;
        }
        assert!(found.counters.became_leader > 2 * schedules);
        assert!(found.counters.fenced > 0);
        for (fault, n) in Fault::ALL.iter().zip(found.counters.faults) {
            assert!(n > 0, "no {} injected", fault.name());
        }
    }

    fn assert_caught(variant: Variant) {
        let (seed, counters) = first_failure(0..BROKEN_BUDGET, variant);
        let seed = seed.unwrap_or_else(|| {
            panic!(
                "the {} variant was not caught in {BROKEN_BUDGET} schedules: {}",
                variant.name(),
                counters.report()
            )
        });
        let shrunk = shrink(seed, variant);
        assert!(shrunk.violation.is_some());
        println!(
            "the {} variant is caught at seed {seed}, after {} schedules:\n{}",
            variant.name(),
            counters.schedules,
            shrunk.report()
        );
        crate::record_figures(
            &format!("2-election-{}", variant.name()),
            &format!(
                "election simulation, broken variant `{}`: caught at seed {seed}, after {} schedules",
                variant.name(),
                counters.schedules
            ),
        );
    }

    #[test]
    fn a_contender_dating_records_before_its_store_read_is_caught() {
        assert_caught(Variant::ClockReadBeforeStoreRead);
    }

    #[test]
    fn a_host_whose_clock_runs_faster_than_the_bound_is_caught() {
        assert_caught(Variant::FastClock);
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed() {
        for seed in 0..20 {
            let a = run(seed, Variant::Correct, &BTreeSet::new(), true);
            let b = run(seed, Variant::Correct, &BTreeSet::new(), true);
            assert_eq!(a.trace, b.trace);
            assert_eq!(a.counters, b.counters);
        }
    }

    #[test]
    fn clocks_and_their_inverse_agree() {
        for rate in [950_000, 1_000_000, 1_050_000, BROKEN_FAST_RATE_PPM] {
            for at in [0, 1, 999, 123_457, 2_999_999] {
                let t = reaching(rate, at);
                assert!(machine(rate, t) >= at);
                assert!(t == 0 || machine(rate, t - 1) < at);
            }
        }
    }
}
