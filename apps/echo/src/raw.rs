//! `echo raw-sink`: the receiving half of the switch benchmark (the
//! sending half is `echo-bench raw-send`; the frames are
//! `loadgen::rawframe`'s). Takes the vNIC from the network stack,
//! broadcasts a hello every 100 ms until data arrives, then counts each
//! phase's data frames and bytes, from its first frame to its last, and
//! prints a line when the phase's end comes. Exits 0 at `Done`. It reads
//! each frame's header where it lies in the RX ring and copies nothing:
//! the benchmark measures the switch, not the guests.

use core::time::Duration;
use libos::net::raw::{self, RawNic};
use libos::println;
use libos::task::sleep;
use libos::time::Instant;
use loadgen::rawframe::{self, Header, Kind, WARMUP_PHASE};

/// One phase's count.
#[derive(Default)]
struct Tally {
    phase: Option<u8>,
    frames: u64,
    bytes: u64,
    frame_bytes: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    reported: bool,
}

impl Tally {
    fn data(&mut self, phase: u8, len: usize) {
        if self.phase != Some(phase) {
            *self = Tally { phase: Some(phase), frame_bytes: len, ..Tally::default() };
        }
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.frames += 1;
        self.bytes += len as u64;
    }

    fn end(&mut self, phase: u8, sent: u64, nic: &RawNic) {
        if self.reported && self.phase == Some(phase) {
            return;
        }
        if self.phase != Some(phase) {
            // Nothing of it arrived.
            *self = Tally { phase: Some(phase), ..Tally::default() };
        }
        self.reported = true;
        let secs = match (self.first, self.last) {
            (Some(f), Some(l)) => l.duration_since(f).as_nanos() as f64 / 1e9,
            _ => 0.0,
        };
        let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        println!(
            "{{\"bench\":\"switch\",\"phase\":{phase},\"frame_bytes\":{},\"frames\":{},\"bytes\":{},\"sent\":{sent},\"lost\":{},\
             \"duration_ms\":{:.1},\"frames_per_sec\":{:.1},\"gbytes_per_sec\":{:.4},\"ring_slots\":{},\"ring_errors\":{}}}",
            self.frame_bytes,
            self.frames,
            self.bytes,
            sent.saturating_sub(self.frames),
            secs * 1e3,
            per_sec(self.frames as f64),
            per_sec(self.bytes as f64) / 1e9,
            nic.slots(),
            nic.stats().ring_errors
        );
    }
}

/// What a frame said, read where it lies: its header and length.
fn header(frame: &[u8]) -> Option<(Header, usize)> {
    rawframe::parse(frame).map(|(_, h)| (h, frame.len()))
}

/// Counts a frame: whether it was data, and whether it was `Done`.
fn take(frame: Option<(Header, usize)>, tally: &mut Tally, nic: &RawNic) -> (bool, bool) {
    match frame {
        Some((Header { kind: Kind::Data, phase, .. }, len)) => {
            if phase != WARMUP_PHASE {
                tally.data(phase, len);
            }
            (true, false)
        }
        Some((Header { kind: Kind::End, phase, value }, _)) => {
            tally.end(phase, value, nic);
            (false, false)
        }
        Some((Header { kind: Kind::Done, .. }, _)) => (false, true),
        _ => (false, false),
    }
}

pub async fn run() -> i32 {
    let mut nic = match raw::take() {
        Ok(n) => n,
        Err(e) => {
            println!("raw-sink: no vNIC: {e:?}");
            return 1;
        }
    };
    let mut tally = Tally::default();
    let mut hello = [0u8; 64];
    rawframe::write(&mut hello, [0xff; 6], nic.mac(), Header { kind: Kind::Hello, phase: 0, value: 0 });
    println!("echo: raw sink, ring of {} slots, frames up to {} bytes", nic.slots(), nic.max_frame());
    // Say hello until the sender starts.
    let mut started = false;
    while !started {
        let _ = nic.try_send(&hello);
        nic.kick();
        sleep(Duration::from_millis(100)).await;
        while let Some(frame) = nic.try_recv_with(header) {
            let (data, done) = take(frame, &mut tally, &nic);
            if done {
                return 0;
            }
            started |= data;
        }
    }
    loop {
        let frame = nic.recv_with(header).await;
        if take(frame, &mut tally, &nic).1 {
            return 0;
        }
    }
}
