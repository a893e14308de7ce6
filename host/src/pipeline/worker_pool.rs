//! The host's unit workers: a pool of threads that runs every unit's steps,
//! instead of a thread per unit (issue 14). A unit is a [`Job`]: each
//! [`Job::step`] does what the unit can do now and says what it waits for
//! ([`JobNext`]) — a time, and whatever wakes it through its [`Waker`] (its
//! lease changing, a record reaching its input). Between steps a unit holds
//! no thread.
//!
//! The pool keeps `core` workers. A step may still block (a flush waits for
//! the broker's acknowledgements, a takeover for its read-back), so when a
//! ready job has waited [`SPAWN_AFTER`], no worker is free and some step
//! has run past [`BLOCKED_AFTER`], the pool starts up to one worker per
//! such step — again at every look (every 2 ms) while jobs still wait, so a
//! mass takeover ramps up fast — to at most `max`; a worker beyond the
//! core that finds nothing to do for [`EXTRA_WORKER_KEEP_ALIVE`] ends. Idle
//! workers are handed work most recently idle first, so under steady light
//! work the others stay idle and end. So an idle host runs
//! its units on the core workers, and a mass takeover still runs its
//! takeovers side by side (Go's scheduler hands a blocked thread's work to
//! another the same way; tokio's blocking pool grows and shrinks so).
//!
//! Guarantees:
//! - **One step of a job at a time**, and steps of one job in order: a job
//!   is either waiting, queued once, or running on one worker.
//! - **No lost wake-up.** A wake while the job runs is kept, and the job is
//!   queued again as soon as that step ends, whatever the step asked for.
//! - **Fair.** Ready jobs run in the order they became ready.
//! - **A panicking step ends its job** (logged), never a worker: the unit's
//!   own job catches its panics first and restarts the unit
//!   ([`super::unit::restarts`]).
//! - [`TaskHandle::stop`] makes the job's next step its last
//!   (`stopping` is true); [`TaskHandle::join`] returns once the job is done.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Core unit workers per host, unless configured (`limits.unit_workers`).
pub const DEFAULT_UNIT_WORKERS: usize = 8;
/// Most core unit workers a host may be configured with.
pub const MAX_UNIT_WORKERS: usize = 1_024;
/// How long a ready job may wait for a free worker before the pool starts
/// more (the steps it waits behind are blocked in I/O).
pub const SPAWN_AFTER: Duration = Duration::from_millis(5);
/// How long a step must have run for the pool to count its worker as
/// blocked (in I/O) and start another in its place.
pub const BLOCKED_AFTER: Duration = Duration::from_millis(20);
/// How long a worker beyond the core stays without work before it ends.
pub const EXTRA_WORKER_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How often the pool's monitor looks at a ready queue that no worker takes
/// from (the timers wake it on their own).
const MONITOR_TICK: Duration = Duration::from_millis(2);

/// What a job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobNext {
    /// Step again as soon as a worker is free (behind the jobs already
    /// ready).
    Now,
    /// Step again after this long, or as soon as the job's waker is called.
    Wait(Duration),
    /// The job is over.
    Done,
}

/// Work the pool runs step by step.
pub trait Job: Send {
    /// Do what can be done now. `stopping`: the job was asked to stop; the
    /// step should wind up and return [`JobNext::Done`].
    fn step(&mut self, stopping: bool) -> JobNext;
}

/// Wakes one job of the pool: its next step comes at once, not at the end
/// of its wait. Cheap to clone; calling it for a job that is over does
/// nothing.
#[derive(Clone)]
pub struct Waker {
    pool: Weak<Shared>,
    id: u64,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").field("id", &self.id).finish()
    }
}

impl Waker {
    pub fn wake(&self) {
        if let Some(shared) = self.pool.upgrade() {
            shared.wake(self.id);
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the ready queue.
    Ready,
    /// On a worker `since` then; `woken`: its waker was called meanwhile.
    Running { woken: bool, since: Instant },
    /// Waiting for its waker or the timer armed with this sequence number.
    Waiting { timer: u64 },
}

struct Task {
    name: String,
    /// `None` while a worker runs it.
    job: Option<Box<dyn Job>>,
    place: Place,
    stop_asked: bool,
}

/// A timer: job `id`'s wait armed as `seq` ends at `at`. Stale timers (the
/// job woke before, and waits under a newer number now) are skipped.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: std::cmp::Reverse<Instant>,
    seq: u64,
    id: u64,
}

struct State {
    tasks: HashMap<u64, Task>,
    /// Ready job ids with when they became ready.
    ready: VecDeque<(u64, Instant)>,
    timers: BinaryHeap<Timer>,
    next_id: u64,
    next_seq: u64,
    workers: usize,
    /// Idle workers, the most recently idle last; each parks on its own
    /// condvar. Work goes to the most recently idle one, so the workers
    /// that have been idle longest stay idle and the extra ones among them
    /// end (a shared condvar would hand work round-robin and keep every
    /// extra worker alive).
    idle: Vec<(u64, Arc<Condvar>)>,
    /// Workers handed work that have not taken it yet. One at a time: a
    /// worker that takes a job and sees more ready wakes the next, so a
    /// burst of short steps does not wake every idle worker at once.
    waking: usize,
    next_worker: u64,
    closing: bool,
}

impl State {
    /// Hand ready work to the most recently idle worker, unless one is
    /// already on its way.
    fn wake_a_worker(&mut self) {
        if self.waking == 0 {
            self.wake_idle(1);
        }
    }

    /// Wake up to `count` idle workers, the most recently idle first.
    fn wake_idle(&mut self, count: usize) {
        for _ in 0..count {
            let Some((_, parked)) = self.idle.pop() else {
                return;
            };
            self.waking += 1;
            parked.notify_one();
        }
    }

    fn wake_all_workers(&mut self) {
        let idle = self.idle.len();
        self.wake_idle(idle);
    }
}

struct Shared {
    state: Mutex<State>,
    /// The monitor waits here for the next timer or a stalled queue.
    monitor: Condvar,
    /// Joiners wait here for jobs to end.
    done: Condvar,
    core: usize,
    max: usize,
    /// How long an extra worker stays without work.
    keep_alive: Duration,
    name: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A pool of workers running jobs; see the module docs. Dropping it ends
/// the workers once every job is done (stop them first).
pub struct WorkerPool {
    shared: Arc<Shared>,
    monitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("name", &self.shared.name)
            .field("core", &self.shared.core)
            .field("max", &self.shared.max)
            .finish_non_exhaustive()
    }
}

/// A job in the pool.
#[derive(Clone)]
pub struct TaskHandle {
    pool: Arc<Shared>,
    id: u64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is completed before it is released.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, id: u64) {
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        match task.place {
            Place::Ready | Place::Running { woken: true, .. } => {}
            Place::Running {
                woken: false,
                since,
            } => task.place = Place::Running { woken: true, since },
            Place::Waiting { .. } => {
                task.place = Place::Ready;
                state.ready.push_back((id, Instant::now()));
                state.wake_a_worker();
                self.monitor.notify_one();
            }
        }
    }

    /// Put job `id` back after a step that returned `next`.
    fn settle(&self, state: &mut State, id: u64, job: Box<dyn Job>, next: JobNext) {
        let now = Instant::now();
        let seq = state.next_seq;
        state.next_seq += 1;
        let Some(task) = state.tasks.get_mut(&id) else {
            return;
        };
        let woken = matches!(task.place, Place::Running { woken: true, .. });
        match next {
            JobNext::Done => {
                state.tasks.remove(&id);
                self.done.notify_all();
                if state.closing {
                    self.monitor.notify_one();
                }
                return;
            }
            JobNext::Now => {
                task.place = Place::Ready;
                state.ready.push_back((id, now));
            }
            JobNext::Wait(_) if woken || task.stop_asked => {
                task.place = Place::Ready;
                state.ready.push_back((id, now));
            }
            JobNext::Wait(wait) => {
                task.place = Place::Waiting { timer: seq };
                let at = now + wait;
                let earliest = state.timers.peek().map(|t| t.at.0);
                state.timers.push(Timer {
                    at: std::cmp::Reverse(at),
                    seq,
                    id,
                });
                if earliest.is_none_or(|e| at < e) {
                    self.monitor.notify_one();
                }
            }
        }
        task.job = Some(job);
        if task.place == Place::Ready {
            state.wake_a_worker();
        }
    }

    /// Move the jobs whose timers ran out to the ready queue; when the next
    /// timer is due.
    fn fire_timers(&self, state: &mut State) -> Option<Instant> {
        let now = Instant::now();
        while let Some(timer) = state.timers.peek() {
            if timer.at.0 > now {
                return Some(timer.at.0);
            }
            let Timer { seq, id, .. } = state.timers.pop().expect("peeked");
            if let Some(task) = state.tasks.get_mut(&id) {
                if task.place == (Place::Waiting { timer: seq }) {
                    task.place = Place::Ready;
                    state.ready.push_back((id, now));
                    state.wake_a_worker();
                }
            }
        }
        None
    }

    fn start_worker(self: &Arc<Self>, state: &mut State, extra: bool) -> Result<()> {
        let shared = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-worker", self.name))
            .spawn(move || shared.work_loop(extra))
            .context("starting a unit worker")?;
        state.workers += 1;
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(())
    }

    fn work_loop(self: Arc<Self>, extra: bool) {
        let mut state = self.state();
        loop {
            if let Some((id, _)) = state.ready.pop_front() {
                let Some(task) = state.tasks.get_mut(&id) else {
                    continue;
                };
                let Some(mut job) = task.job.take() else {
                    continue;
                };
                task.place = Place::Running {
                    woken: false,
                    since: Instant::now(),
                };
                let stopping = task.stop_asked;
                let name = task.name.clone();
                if !state.ready.is_empty() {
                    state.wake_a_worker();
                }
                drop(state);
                let next =
                    catch_unwind(AssertUnwindSafe(|| job.step(stopping))).unwrap_or_else(|_| {
                        tracing::error!(job = %name, "a job's step panicked; the job is dropped");
                        JobNext::Done
                    });
                state = self.state();
                self.settle(&mut state, id, job, next);
                continue;
            }
            if state.closing && state.tasks.is_empty() {
                break;
            }
            let me = state.next_worker;
            state.next_worker += 1;
            let parked = Arc::new(Condvar::new());
            state.idle.push((me, parked.clone()));
            let keep_alive = if extra {
                self.keep_alive
            } else {
                // Core workers never end; they look again now and then.
                Duration::from_secs(3600)
            };
            let (guard, result) = parked
                .wait_timeout(state, keep_alive)
                .unwrap_or_else(|p| p.into_inner());
            state = guard;
            // Still listed: nobody handed it work (it timed out, or woke
            // spuriously).
            let unclaimed = match state.idle.iter().position(|(id, _)| *id == me) {
                Some(at) => {
                    state.idle.remove(at);
                    true
                }
                None => {
                    state.waking -= 1;
                    false
                }
            };
            if extra && unclaimed && result.timed_out() && state.ready.is_empty() {
                break;
            }
        }
        state.workers -= 1;
    }

    /// Fire timers, and start workers for ready jobs that no worker took
    /// within [`SPAWN_AFTER`].
    fn monitor_loop(self: Arc<Self>) {
        let mut state = self.state();
        loop {
            if state.closing && state.tasks.is_empty() {
                state.wake_all_workers();
                break;
            }
            let next_timer = self.fire_timers(&mut state);
            let stalled = state
                .ready
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= SPAWN_AFTER);
            if stalled && state.waking == 0 && !state.idle.is_empty() {
                // Idle workers not yet woken for a waiting queue.
                let wanted = state.ready.len();
                state.wake_idle(wanted);
            } else if stalled && state.idle.is_empty() && state.workers < self.max {
                // A worker for each step blocked past BLOCKED_AFTER (not for
                // workers merely busy: short steps on a loaded machine queue
                // up too, and more threads would not help them).
                let blocked = state
                    .tasks
                    .values()
                    .filter(|t| {
                        matches!(t.place, Place::Running { since, .. } if since.elapsed() >= BLOCKED_AFTER)
                    })
                    .count();
                let wanted = state.ready.len().min(blocked).min(self.max - state.workers);
                for _ in 0..wanted {
                    if let Err(error) = self.start_worker(&mut state, true) {
                        tracing::warn!(error = format!("{error:#}"), "no extra unit worker");
                        break;
                    }
                }
            }
            let mut wait = next_timer.map_or(Duration::from_secs(1), |at| {
                at.saturating_duration_since(Instant::now())
            });
            if !state.ready.is_empty() {
                wait = wait.min(MONITOR_TICK);
            }
            state = self
                .monitor
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl WorkerPool {
    /// A pool named `name` (its threads' names) with `core` workers, growing
    /// to `max` while steps block.
    pub fn new(name: &str, core: usize, max: usize) -> Result<Self> {
        Self::with_keep_alive(name, core, max, EXTRA_WORKER_KEEP_ALIVE)
    }

    /// [`new`](Self::new), with extra workers ending after `keep_alive`
    /// without work.
    pub fn with_keep_alive(
        name: &str,
        core: usize,
        max: usize,
        keep_alive: Duration,
    ) -> Result<Self> {
        if core == 0 || core > MAX_UNIT_WORKERS {
            bail!("unit_workers is {core}; it must be between 1 and {MAX_UNIT_WORKERS}");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                tasks: HashMap::new(),
                ready: VecDeque::new(),
                timers: BinaryHeap::new(),
                next_id: 0,
                next_seq: 0,
                workers: 0,
                idle: Vec::new(),
                waking: 0,
                next_worker: 0,
                closing: false,
            }),
            monitor: Condvar::new(),
            done: Condvar::new(),
            core,
            max: max.max(core),
            keep_alive,
            name: name.to_string(),
            threads: Mutex::new(Vec::new()),
        });
        {
            let mut state = shared.state();
            for _ in 0..core {
                shared.start_worker(&mut state, false)?;
            }
        }
        let monitor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-monitor"))
                .spawn(move || shared.monitor_loop())
                .context("starting the unit workers' monitor")?
        };
        Ok(WorkerPool {
            shared,
            monitor: Some(monitor),
        })
    }

    /// Add a job, made by `make` from its waker; its first step comes at
    /// once.
    pub fn spawn(&self, name: &str, make: impl FnOnce(Waker) -> Box<dyn Job>) -> TaskHandle {
        let id = {
            let mut state = self.shared.state();
            let id = state.next_id;
            state.next_id += 1;
            id
        };
        let job = make(Waker {
            pool: Arc::downgrade(&self.shared),
            id,
        });
        let mut state = self.shared.state();
        state.tasks.insert(
            id,
            Task {
                name: name.to_string(),
                job: Some(job),
                place: Place::Ready,
                stop_asked: false,
            },
        );
        state.ready.push_back((id, Instant::now()));
        state.wake_a_worker();
        self.shared.monitor.notify_one();
        TaskHandle {
            pool: self.shared.clone(),
            id,
        }
    }

    /// Workers now (core and extra).
    pub fn workers(&self) -> usize {
        self.shared.state().workers
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.closing = true;
            self.shared.monitor.notify_all();
            state.wake_all_workers();
        }
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl TaskHandle {
    /// Ask the job to stop: its next step (at once) is told so.
    pub fn stop(&self) {
        {
            let mut state = self.pool.state();
            if let Some(task) = state.tasks.get_mut(&self.id) {
                task.stop_asked = true;
            }
        }
        self.pool.wake(self.id);
    }

    /// Wait until the job is done.
    pub fn join(&self) {
        let mut state = self.pool.state();
        while state.tasks.contains_key(&self.id) {
            state = self
                .pool
                .done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the job is done.
    pub fn is_done(&self) -> bool {
        !self.pool.state().tasks.contains_key(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its steps; waits `wait` between them; done after `steps`.
    struct Counter {
        steps: Arc<AtomicUsize>,
        limit: usize,
        wait: Duration,
        block: Duration,
    }

    impl Job for Counter {
        fn step(&mut self, stopping: bool) -> JobNext {
            let done = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(self.block);
            if stopping || done >= self.limit {
                JobNext::Done
            } else {
                JobNext::Wait(self.wait)
            }
        }
    }

    fn counter(limit: usize, wait: Duration, block: Duration) -> (Arc<AtomicUsize>, Counter) {
        let steps = Arc::new(AtomicUsize::new(0));
        let job = Counter {
            steps: steps.clone(),
            limit,
            wait,
            block,
        };
        (steps, job)
    }

    #[test]
    fn timers_step_a_job_until_it_is_done() {
        let pool = WorkerPool::new("test", 2, 2).unwrap();
        let (steps, job) = counter(5, Duration::from_millis(1), Duration::ZERO);
        let handle = pool.spawn("counter", |_| Box::new(job));
        handle.join();
        assert_eq!(steps.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_wake_ends_a_long_wait_and_stop_ends_the_job() {
        let pool = WorkerPool::new("test", 1, 1).unwrap();
        let (steps, job) = counter(usize::MAX, Duration::from_secs(3600), Duration::ZERO);
        let waker = Arc::new(Mutex::new(None));
        let handle = {
            let waker = waker.clone();
            pool.spawn("sleeper", move |w| {
                *waker.lock().unwrap() = Some(w);
                Box::new(job)
            })
        };
        // The first step runs at once, then the job waits an hour...
        while steps.load(Ordering::SeqCst) < 1 {
            std::thread::yield_now();
        }
        // ...unless woken.
        waker.lock().unwrap().as_ref().unwrap().wake();
        while steps.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        handle.stop();
        handle.join();
        assert_eq!(steps.load(Ordering::SeqCst), 3);
        assert!(handle.is_done());
    }

    /// A job that wakes itself during its step, then asks to wait an hour:
    /// the wake must not be lost.
    struct WakesItself {
        waker: Waker,
        steps: usize,
    }

    impl Job for WakesItself {
        fn step(&mut self, _stopping: bool) -> JobNext {
            self.steps += 1;
            if self.steps == 2 {
                return JobNext::Done;
            }
            self.waker.wake();
            JobNext::Wait(Duration::from_secs(3600))
        }
    }

    #[test]
    fn a_wake_during_a_step_is_not_lost() {
        let pool = WorkerPool::new("test", 1, 1).unwrap();
        let handle = pool.spawn("self-waking", |waker| {
            Box::new(WakesItself { waker, steps: 0 })
        });
        handle.join();
    }

    /// Blocks its step until `count` steps of its kind block side by side
    /// (or a minute passed); says whether they did.
    struct Rendezvous {
        met: Arc<(Mutex<usize>, Condvar)>,
        count: usize,
        all_met: Arc<AtomicUsize>,
    }

    impl Job for Rendezvous {
        fn step(&mut self, _stopping: bool) -> JobNext {
            let (arrived, all_here) = &*self.met;
            let mut arrived = arrived.lock().unwrap();
            *arrived += 1;
            all_here.notify_all();
            let (arrived, _) = all_here
                .wait_timeout_while(arrived, Duration::from_secs(60), |n| *n < self.count)
                .unwrap();
            if *arrived >= self.count {
                self.all_met.fetch_add(1, Ordering::SeqCst);
            }
            JobNext::Done
        }
    }

    /// Four steps that each block until all four run side by side: they
    /// finish only if the pool runs them on four workers at once.
    fn block_four_side_by_side(pool: &WorkerPool) {
        let met = Arc::new((Mutex::new(0), Condvar::new()));
        let all_met = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let job = Rendezvous {
                    met: met.clone(),
                    count: 4,
                    all_met: all_met.clone(),
                };
                pool.spawn("blocked", |_| Box::new(job))
            })
            .collect();
        for handle in &handles {
            handle.join();
        }
        assert_eq!(all_met.load(Ordering::SeqCst), 4);
        assert!(pool.workers() >= 4, "{} workers", pool.workers());
    }

    #[test]
    fn steps_that_block_get_extra_workers_beside_them() {
        // One core worker: four steps that each block until all four run
        // can only finish if the pool starts workers for them.
        let pool = WorkerPool::new("test", 1, 8).unwrap();
        block_four_side_by_side(&pool);
    }

    /// Steps every 20 ms, each step short: steady light work.
    struct Ticker;

    impl Job for Ticker {
        fn step(&mut self, stopping: bool) -> JobNext {
            if stopping {
                JobNext::Done
            } else {
                JobNext::Wait(Duration::from_millis(20))
            }
        }
    }

    #[test]
    fn extra_workers_end_under_steady_light_work() {
        let pool = WorkerPool::with_keep_alive("test", 1, 8, Duration::from_millis(100)).unwrap();
        block_four_side_by_side(&pool);
        let peak = pool.workers();
        // Light work keeps coming: work goes to the most recently idle
        // worker, so the others stay idle past their keep-alive and end
        // (handed round-robin, every one of them would stay busy enough).
        // (On a loaded machine a ready tick may wait past SPAWN_AFTER, and
        // the pool then wakes a second idle worker: at most the core and
        // one extra stay busy.)
        let tickers: Vec<_> = (0..1)
            .map(|_| pool.spawn("ticker", |_| Box::new(Ticker)))
            .collect();
        let started = Instant::now();
        while pool.workers() > 2 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let workers = pool.workers();
        for ticker in &tickers {
            ticker.stop();
            ticker.join();
        }
        assert!(
            workers <= 2,
            "{workers} workers still running of {peak} at the peak"
        );
    }

    struct Panics;

    impl Job for Panics {
        fn step(&mut self, _stopping: bool) -> JobNext {
            panic!("a job's bug");
        }
    }

    #[test]
    fn a_panicking_step_ends_its_job_not_the_worker() {
        let pool = WorkerPool::new("test", 1, 1).unwrap();
        pool.spawn("panics", |_| Box::new(Panics)).join();
        let (steps, job) = counter(2, Duration::ZERO, Duration::ZERO);
        pool.spawn("after", |_| Box::new(job)).join();
        assert_eq!(steps.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn out_of_range_sizes_are_refused() {
        assert!(WorkerPool::new("test", 0, 1).is_err());
        assert!(WorkerPool::new("test", MAX_UNIT_WORKERS + 1, MAX_UNIT_WORKERS + 1).is_err());
    }
}
