//! Locking shared across modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, poisoned or not: a poisoned lock only means another thread
/// panicked while holding it, and the data under these locks stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
