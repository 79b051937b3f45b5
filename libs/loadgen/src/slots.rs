//! The connections of a run, by id. A phase takes every open one out, runs
//! them as tasks, and each task puts its connection back if it is still
//! good; one that failed is dropped (closed) and its slot stays empty, so
//! the next phase runs without it. Shared by the tasks of one executor.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Connection slots, shared by a run's tasks (clones share them).
pub struct Slots<C>(Rc<RefCell<Vec<Option<C>>>>);

impl<C> Clone for Slots<C> {
    fn clone(&self) -> Self {
        Slots(self.0.clone())
    }
}

impl<C> Slots<C> {
    /// Slots holding `connections` (a `None` is one that could not be made).
    pub fn new(connections: Vec<Option<C>>) -> Slots<C> {
        Slots(Rc::new(RefCell::new(connections)))
    }

    /// How many slots are empty.
    pub fn empty(&self) -> usize {
        self.0.borrow().iter().filter(|c| c.is_none()).count()
    }

    /// Takes every open connection out, with its id.
    pub fn take_all(&self) -> Vec<(usize, C)> {
        self.0.borrow_mut().iter_mut().enumerate().filter_map(|(id, slot)| Some((id, slot.take()?))).collect()
    }

    /// Puts connection `id` back (it stays open for the next phase).
    pub fn put_back(&self, id: usize, connection: C) {
        if let Some(slot) = self.0.borrow_mut().get_mut(id) {
            *slot = Some(connection);
        }
    }

    /// Drops (closes) every connection.
    pub fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn a_phase_takes_them_all_and_only_good_ones_come_back() {
        let slots = Slots::new(vec![Some('a'), None, Some('c'), Some('d')]);
        assert_eq!(slots.empty(), 1);
        let task_view = slots.clone();
        let taken = slots.take_all();
        assert_eq!(taken, [(0, 'a'), (2, 'c'), (3, 'd')]);
        assert_eq!(slots.empty(), 4);
        // 'c' failed: it is not put back.
        task_view.put_back(0, 'a');
        task_view.put_back(3, 'd');
        assert_eq!(slots.take_all(), [(0, 'a'), (3, 'd')]);
        slots.put_back(9, 'z'); // no such slot: ignored
        slots.clear();
        assert!(slots.take_all().is_empty());
        assert_eq!(slots.empty(), 0);
    }
}
