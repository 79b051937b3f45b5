//! A receiver that other CPUs deliver to while its owner may end: a guest's
//! RX side, reached by senders on any CPU, whose guest may be stopped and
//! destroyed (its ring and event pages freed, perhaps reused as page
//! tables) on another.
//!
//! The rule: every delivery runs under the gate's lock and only while the
//! gate is open ([`Gate::with`]); ending the owner closes the gate under
//! the same lock ([`Gate::close`]) before anything is freed. So once
//! `close` has returned, no delivery is running and none will start, and
//! the owner's memory may go.

use core::sync::atomic::{AtomicBool, Ordering};
use spin::{Mutex, MutexGuard};

pub struct Gate<T> {
    inner: Mutex<T>,
    closed: AtomicBool,
}

impl<T> Gate<T> {
    pub const fn new(value: T) -> Self {
        Self { inner: Mutex::new(value), closed: AtomicBool::new(false) }
    }

    /// Runs `f` on the receiver under its lock, if the gate is open.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = self.inner.lock();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(f(&mut guard))
    }

    /// The receiver under its lock and whether the gate is open, for a
    /// caller that must act in both cases (count a drop, say).
    pub fn lock(&self) -> (MutexGuard<'_, T>, bool) {
        let guard = self.inner.lock();
        let open = !self.closed.load(Ordering::Acquire);
        (guard, open)
    }

    /// Closes the gate (under the lock, so no delivery is running);
    /// returns whether it was open.
    pub fn close(&self) -> bool {
        let _guard = self.inner.lock();
        !self.closed.swap(true, Ordering::AcqRel)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    #[test]
    fn a_closed_gate_runs_nothing() {
        let g = Gate::new(0u32);
        assert_eq!(g.with(|v| *v += 1), Some(()));
        assert!(g.close() && !g.close() && g.is_closed());
        assert_eq!(g.with(|v| *v += 1), None);
        let (v, open) = g.lock();
        assert_eq!((*v, open), (1, false));
    }

    /// A guest destroyed while other CPUs deliver to it: deliverers write
    /// into its "event page" as fast as they can; the owner closes the
    /// gate and then "frees" the page (poisons it). No write may land after
    /// the poison, and every delivery that ran counted before the close.
    #[test]
    fn no_delivery_runs_after_close_returns() {
        for round in 0..200 {
            let gate = Arc::new(Gate::new(()));
            let page = Arc::new(AtomicU64::new(0));
            let delivered = Arc::new(AtomicUsize::new(0));
            const FREED: u64 = u64::MAX;
            let deliverers: Vec<_> = (0..3)
                .map(|_| {
                    let (gate, page, delivered) = (gate.clone(), page.clone(), delivered.clone());
                    std::thread::spawn(move || {
                        while gate
                            .with(|()| {
                                // Raising an event: the page must still be the guest's.
                                let old = page.fetch_or(2, Ordering::AcqRel);
                                assert_ne!(old, FREED, "a delivery wrote into a freed event page");
                                delivered.fetch_add(1, Ordering::Relaxed);
                            })
                            .is_some()
                        {}
                    })
                })
                .collect();
            // Let the deliverers run a little (longer in some rounds).
            while delivered.load(Ordering::Relaxed) < 10 + round % 7 * 100 {
                std::hint::spin_loop();
            }
            assert!(gate.close());
            let at_close = delivered.load(Ordering::Relaxed);
            // Destroy the guest: its event page is gone.
            assert_ne!(page.swap(FREED, Ordering::AcqRel), FREED);
            for d in deliverers {
                d.join().unwrap();
            }
            assert_eq!(delivered.load(Ordering::Relaxed), at_close, "deliveries ran after close returned");
            assert_eq!(page.load(Ordering::Acquire), FREED);
        }
    }
}
