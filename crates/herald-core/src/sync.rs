//! Locking that survives a panic elsewhere.
//!
//! Herald's mutexes guard maps and registries whose every update is a single insert or remove:
//! a thread that panicked while holding one cannot have left it half-updated. Poisoning would
//! only turn one panic into a panic on every later request, so the lock is taken anyway.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if an earlier holder panicked.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let mutex = std::sync::Arc::new(Mutex::new(vec![1]));
        let m = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        lock(&mutex).push(2);
        assert_eq!(*lock(&mutex), vec![1, 2]);
    }
}
