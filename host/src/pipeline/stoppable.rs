//! A named background thread that runs until its owner drops it: the drop
//! sets the thread's stop flag, wakes it from `park_timeout` and joins it,
//! so a host's helper threads (heartbeat, elector, checkpoint watch) never
//! outlive what they serve.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running thread, stopped and joined when dropped. Its body must check
/// the stop flag it is given at least as often as it parks.
pub struct StoppableThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// Start `body` on a thread called `name`, with the stop flag.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&stop))?
        };
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Wake the thread if it is parked (new work need not wait for its
    /// next tick).
    pub fn unpark(&self) {
        if let Some(handle) = &self.handle {
            handle.thread().unpark();
        }
    }

    /// Set the stop flag and wake the thread from `park_timeout`, without
    /// waiting for it (an owner of several stops them all, then joins them
    /// by dropping them).
    pub fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.unpark();
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        self.ask_to_stop();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
