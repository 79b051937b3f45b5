//! A table entry that any CPU fills, reads and empties: the per-guest
//! tables, whose entries are reused when a guest's record is forgotten.
//!
//! A reader takes a counted reference ([`Slot::get`]), so emptying or
//! refilling the entry never frees what a reader still holds; it only
//! means the next reader finds the new value. Readers hold the entry's
//! lock for the length of a reference-count increment.

use alloc::sync::Arc;
use spin::RwLock;

pub struct Slot<T>(RwLock<Option<Arc<T>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(RwLock::new(None))
    }
}

impl<T> Slot<T> {
    /// What the entry holds now.
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().clone()
    }

    /// Fills it (replacing what it held); returns the new value.
    pub fn set(&self, value: T) -> Arc<T> {
        let v = Arc::new(value);
        *self.0.write() = Some(v.clone());
        v
    }

    /// Empties it; returns what it held.
    pub fn take(&self) -> Option<Arc<T>> {
        self.0.write().take()
    }

    /// What one entry costs in its table (a held value costs its own size
    /// and two counters more).
    pub const BYTES: usize = core::mem::size_of::<Self>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_what_it_took_while_the_entry_is_reused() {
        let s = Slot::default();
        assert!(s.get().is_none());
        s.set(1u32);
        let held = s.get().unwrap();
        assert_eq!(s.take().as_deref(), Some(&1));
        assert!(s.get().is_none());
        s.set(2);
        assert_eq!((*held, *s.get().unwrap()), (1, 2));
    }
}
