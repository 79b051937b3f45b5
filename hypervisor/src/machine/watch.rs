//! What the control channel is watching (`events`, `wait NAME`, `console
//! NAME`, `start ... watch`): the records pushed to it as things happen
//! on any CPU, queued here and written by CPU 0 between guests.
//!
//! Rules:
//! - A record is queued by the CPU where it happens (a guest's console
//!   line where the guest runs, its end where it ends) and written by CPU 0
//!   in the order queued, so a guest's last console line comes before its
//!   `ended` event.
//! - Console lines are dropped past [`PUSHED_LINES_MAX`] waiting and
//!   counted (a `lines_dropped` record says how many); events are never
//!   dropped: at most one `started` and one `ended` per guest.
//! - The lock is a leaf: nothing else is taken while it is held (the heap
//!   aside).

use abi::control::{EventKind, GuestEvent, PUSHED_LINES_MAX, Response};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// The watched set and the records waiting for the channel.
#[derive(Default)]
pub(super) struct Watch {
    /// `events`: every guest's start and end.
    events: bool,
    /// Guests someone `wait`s for.
    waits: Vec<usize>,
    /// Records to write, and whether each is a console line (droppable).
    queue: VecDeque<(String, bool)>,
    /// Console lines in `queue`.
    lines: usize,
    /// Console lines dropped since the last `lines_dropped` record.
    dropped: u64,
}

impl Watch {
    /// Subscribes to every guest's start and end.
    pub(super) fn watch_events(&mut self) {
        self.events = true;
    }

    /// Someone waits for guest `id` to end.
    pub(super) fn wait_for(&mut self, id: usize) {
        if !self.waits.contains(&id) {
            self.waits.push(id);
        }
    }

    /// Queues a started event if `events` is on.
    pub(super) fn started(&mut self, name: &str) {
        if self.events {
            let event = GuestEvent {
                event: EventKind::Started,
                guest: name.into(),
                state: abi::report::GuestState::Waiting,
                exit_code: None,
                stop_reason: None,
            };
            self.push(&Response::Event(event), false);
        }
    }

    /// Queues guest `id`'s end if anyone watches it (`events`, a `wait`, or
    /// its console stream: `console_watched`).
    pub(super) fn ended(&mut self, id: usize, event: &GuestEvent, console_watched: bool) {
        let waited = self.waits.iter().position(|&w| w == id).map(|i| self.waits.swap_remove(i)).is_some();
        if self.events || waited || console_watched {
            self.push(&Response::Event(event.clone()), false);
        }
    }

    /// Queues one console line of guest `name`.
    pub(super) fn console(&mut self, name: &str, line: &str) {
        if self.lines >= PUSHED_LINES_MAX {
            self.dropped += 1;
            return;
        }
        self.push(&Response::Console { console: name.into(), line: line.into() }, true);
    }

    fn push(&mut self, record: &Response, line: bool) {
        self.queue.push_back((crate::control::json_line(record), line));
        self.lines += usize::from(line);
    }

    /// The next record to write, a `lines_dropped` record first if lines
    /// were dropped.
    pub(super) fn next(&mut self) -> Option<String> {
        if self.dropped > 0 {
            let n = core::mem::take(&mut self.dropped);
            return Some(crate::control::json_line(&Response::LinesDropped { lines_dropped: n }));
        }
        let (record, line) = self.queue.pop_front()?;
        self.lines -= usize::from(line);
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::report::GuestState;

    fn ended(name: &str) -> GuestEvent {
        GuestEvent { event: EventKind::Ended, guest: name.into(), state: GuestState::Exited, exit_code: Some(0), stop_reason: None }
    }

    fn drain(w: &mut Watch) -> Vec<String> {
        core::iter::from_fn(|| w.next()).collect()
    }

    #[test]
    fn only_what_is_watched_is_queued_in_order() {
        let mut w = Watch::default();
        w.started("a");
        w.ended(1, &ended("a"), false);
        assert_eq!(w.next(), None, "nobody watches");
        w.wait_for(2);
        w.console("b", "last words");
        w.ended(2, &ended("b"), false);
        w.ended(2, &ended("b"), false);
        assert_eq!(
            drain(&mut w),
            [
                r#"{"console":"b","line":"last words"}"#,
                r#"{"event":"ended","guest":"b","state":"exited","exit_code":0,"stop_reason":null}"#
            ],
            "the wait is answered once, after the guest's last line"
        );
        w.watch_events();
        w.started("c");
        assert_eq!(drain(&mut w), [r#"{"event":"started","guest":"c","state":"waiting","exit_code":null,"stop_reason":null}"#]);
    }

    #[test]
    fn lines_past_the_bound_are_counted_and_events_kept() {
        let mut w = Watch::default();
        for i in 0..PUSHED_LINES_MAX + 5 {
            w.console("a", &alloc::format!("{i}"));
        }
        w.ended(0, &ended("a"), true);
        let out = drain(&mut w);
        assert_eq!(out[0], r#"{"lines_dropped":5}"#);
        assert_eq!(out.len(), 1 + PUSHED_LINES_MAX + 1);
        assert!(out[PUSHED_LINES_MAX + 1].contains(r#""event":"ended""#));
        // Room again once written.
        w.console("a", "x");
        assert_eq!(drain(&mut w), [r#"{"console":"a","line":"x"}"#]);
    }
}
