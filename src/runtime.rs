//! The peer's async runtime, and how many worker threads it runs.
//!
//! A peer's async work is mostly hand-offs: a request read, a Raft message
//! passed on, an answer written. The heavy work (the store, listings, files)
//! runs on tokio's blocking pool, which this count does not limit. Each extra
//! worker is woken to steal tasks it mostly finds gone, so a write crosses
//! threads (a futex wake and a context switch each) several times more: on 2
//! cores one worker took ~10–20% less CPU a pin than two, at one connection
//! and at 64 (README, session 18). So a peer takes half the CPUs for its
//! workers, at least one, and leaves the rest to the blocking pool and to the
//! IPFS daemon beside it.

use std::num::NonZeroUsize;

/// The variable tokio's own default reads; it overrides the count here too.
pub const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// A runtime that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The override is not a count: fix the variable or unset it.
    #[error("{WORKER_THREADS_ENV}={0:?}: want a whole number of threads above 0")]
    BadWorkerThreads(String),
    /// The threads could not be started (the system's limits).
    #[error("starting the async runtime: {0}")]
    Start(#[from] std::io::Error),
}

/// The multi-thread runtime a peer runs on, with [`worker_threads`] workers.
pub fn build() -> Result<tokio::runtime::Runtime, RuntimeError> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    // A value that is not UTF-8 is refused like any other bad one, not ignored.
    let env = std::env::var_os(WORKER_THREADS_ENV).map(|v| v.to_string_lossy().into_owned());
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(env.as_deref(), cpus)?)
        .enable_all()
        .build()?)
}

/// Worker threads for `cpus` CPUs: the override when given, else half the CPUs
/// (at least one).
pub fn worker_threads(env: Option<&str>, cpus: usize) -> Result<usize, RuntimeError> {
    match env {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(RuntimeError::BadWorkerThreads(v.to_string())),
        },
        None => Ok((cpus / 2).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_cpus_and_at_least_one() {
        assert_eq!(worker_threads(None, 1).unwrap(), 1);
        assert_eq!(worker_threads(None, 2).unwrap(), 1);
        assert_eq!(worker_threads(None, 3).unwrap(), 1);
        assert_eq!(worker_threads(None, 8).unwrap(), 4);
    }

    #[test]
    fn the_variable_overrides_and_a_bad_one_is_refused() {
        assert_eq!(worker_threads(Some("3"), 2).unwrap(), 3);
        assert_eq!(worker_threads(Some(" 2 "), 64).unwrap(), 2);
        for bad in ["0", "", "two", "-1", "1.5"] {
            assert!(
                matches!(
                    worker_threads(Some(bad), 4),
                    Err(RuntimeError::BadWorkerThreads(v)) if v == bad
                ),
                "{bad:?}"
            );
        }
    }
}
