//! Structured logging through the host's `tracing`, tagged by the host with
//! the processor's name. Natively (tests, benchmarks) messages go nowhere.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Send one log line to the host.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    {
        use crate::bindings::logstream::processor::host_log;
        let level = match level {
            Level::Trace => host_log::Level::Trace,
            Level::Debug => host_log::Level::Debug,
            Level::Info => host_log::Level::Info,
            Level::Warn => host_log::Level::Warn,
            Level::Error => host_log::Level::Error,
        };
        host_log::log(level, message);
    }
    #[cfg(not(target_family = "wasm"))]
    let _ = (level, message);
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Report panics through the host's log at error level, so the host can say
/// *why* a processor trapped (a panic in wasm is an `unreachable` trap and
/// stderr goes nowhere). Idempotent.
pub fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(Level::Error, &format!("panic: {info}"));
        }));
    });
}
