//! A packet capture (`ctl capture`): what it takes, and the frames taken
//! and not yet handed to the control channel.
//!
//! Rules:
//! - A capture is a target ([`CaptureTarget`]: a guest's frames both ways,
//!   or what a tenant's guests send and the host's frames for tenant 0),
//!   a count and a deadline.
//! - Its backlog is bounded ([`CAPTURE_BACKLOG`] frames and
//!   [`CAPTURE_BACKLOG_BYTES`] bytes: a frame between guests may be 64
//!   KiB): the control channel is slow, and a frame that finds the backlog
//!   full is counted in `dropped`, never waited for.
//! - A frame is recorded once, where it crosses the back end: when a
//!   guest's TX drain takes it, when it is put into a guest's RX ring, or
//!   when it comes from the host. A frame from the host that waits for
//!   room in a guest's ring is recorded for that guest when it goes in,
//!   not while it waits.
//! - Its lock is the last in the back end's lock order (`net::backend`);
//!   the back end looks at the `capturing` flag first and takes the lock
//!   only while a capture runs.

use abi::ring::MAX_FRAME;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// What a capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureTarget {
    /// Frames a guest (by id) sends or receives.
    Guest(usize),
    /// Frames the guests of a tenant send, and the host's for tenant 0.
    Tenant(u32),
}

/// Frames a capture holds before it drops (the control channel is slow).
pub const CAPTURE_BACKLOG: usize = 256;
/// Bytes of frames a capture holds before it drops.
pub const CAPTURE_BACKLOG_BYTES: usize = 1 << 20;

/// A capture: its target, the frames taken and not yet handed out.
#[derive(Default)]
pub struct Capture {
    pub target: Option<CaptureTarget>,
    /// (monotonic ns, frame), at most [`CAPTURE_BACKLOG`].
    pub frames: VecDeque<(u64, Vec<u8>)>,
    /// Frames taken (recorded or dropped), at most `max`.
    pub taken: u32,
    pub max: u32,
    pub until_ns: u64,
    /// Frames taken that found the backlog full.
    pub dropped: u64,
    /// Bytes of the frames in `frames`.
    pub bytes: usize,
}

impl Capture {
    /// Takes a frame seen at `now_ns`, if a capture runs and has not its
    /// count yet.
    pub fn push(&mut self, now_ns: u64, frame: &[u8]) {
        if self.target.is_none() || self.taken >= self.max {
            return;
        }
        if self.has_room(frame.len()) {
            self.bytes += frame.len();
            self.frames.push_back((now_ns, frame.to_vec()));
        }
    }

    /// Counts a frame taken; whether the backlog has room for `len` bytes
    /// more (if not, it is counted as dropped).
    fn has_room(&mut self, len: usize) -> bool {
        self.taken += 1;
        let room = self.frames.len() < CAPTURE_BACKLOG && self.bytes + len <= CAPTURE_BACKLOG_BYTES;
        self.dropped += u64::from(!room);
        room
    }

    /// Takes the `len`-byte frame `fill` writes if the capture wants frames
    /// for a target that `wants` says yes to and has room; `fill` runs only
    /// then.
    pub fn tap(&mut self, now_ns: u64, wants: impl Fn(CaptureTarget) -> bool, len: usize, fill: impl FnOnce(&mut [u8])) {
        if self.target.is_none_or(|t| !wants(t)) || self.taken >= self.max {
            return;
        }
        let len = len.min(MAX_FRAME);
        if self.has_room(len) {
            let mut buf = alloc::vec![0u8; len];
            fill(&mut buf);
            self.bytes += len;
            self.frames.push_back((now_ns, buf));
        }
    }

    /// The next frame taken, if any.
    pub fn pop(&mut self) -> Option<(u64, Vec<u8>)> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.1.len();
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_bounded_and_counts_what_it_drops() {
        let mut c = Capture { target: Some(CaptureTarget::Guest(1)), max: 1000, ..Default::default() };
        for i in 0..CAPTURE_BACKLOG + 10 {
            c.push(i as u64, &[i as u8; 60]);
        }
        assert_eq!(c.frames.len(), CAPTURE_BACKLOG);
        assert_eq!((c.taken as usize, c.dropped), (CAPTURE_BACKLOG + 10, 10));
        assert_eq!(c.frames[5], (5, alloc::vec![5u8; 60]));
    }

    #[test]
    fn the_backlog_is_bounded_in_bytes_too() {
        let mut c = Capture { target: Some(CaptureTarget::Guest(1)), max: 1000, ..Default::default() };
        for i in 0..20 {
            c.tap(i, |_| true, 65_000, |b| b[0] = i as u8);
        }
        assert_eq!((c.frames.len(), c.dropped, c.bytes), (16, 4, 16 * 65_000));
        assert_eq!(c.pop().map(|(t, f)| (t, f.len(), f[0])), Some((0, 65_000, 0)));
        assert_eq!(c.bytes, 15 * 65_000);
        c.tap(99, |_| true, 1000, |_| {});
        assert_eq!(c.frames.len(), 16);
    }

    #[test]
    fn a_capture_stops_at_its_count_and_takes_only_its_target() {
        let mut c = Capture { target: Some(CaptureTarget::Tenant(2)), max: 3, ..Default::default() };
        let mut filled = 0;
        for t in [CaptureTarget::Tenant(1), CaptureTarget::Guest(2), CaptureTarget::Tenant(2)] {
            c.tap(
                7,
                |x| x == t,
                14,
                |buf| {
                    filled += 1;
                    buf.fill(1);
                },
            );
        }
        // Only the tenant-2 tap wanted it; `fill` ran only for that one.
        assert_eq!((c.frames.len(), filled), (1, 1));
        for _ in 0..5 {
            c.push(8, &[0; 14]);
        }
        assert_eq!((c.taken, c.frames.len(), c.dropped), (3, 3, 0));
        let mut idle = Capture::default();
        idle.push(0, &[0; 14]);
        assert_eq!((idle.taken, idle.frames.len()), (0, 0));
    }
}
