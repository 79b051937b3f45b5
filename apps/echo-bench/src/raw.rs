//! `echo-bench raw-send`: the sending half of the switch benchmark (the
//! receiving half is `echo raw-sink`; the frames are
//! `loadgen::rawframe`'s). Takes the vNIC from the network stack, waits
//! for the sink's hello to learn its MAC, then for each frame size sends
//! frames to it as fast as the TX ring allows: WARMUP_MS unmeasured, then
//! DURATION_MS measured, then the phase's end (with the count sent).

use core::time::Duration;
use libos::net::raw::{self, RawNic, SendError};
use libos::println;
use libos::task::sleep;
use libos::time::Instant;
use loadgen::rawframe::{self, HEADER, Header, Kind, WARMUP_PHASE};

/// Waits (up to 30 s) for the sink's hello; its MAC.
async fn find_sink(nic: &mut RawNic) -> Option<[u8; 6]> {
    let mut buf = alloc::vec![0u8; nic.max_frame()];
    let give_up = Instant::now().saturating_add(Duration::from_secs(30));
    while Instant::now() < give_up {
        while let Some(n) = nic.try_recv(&mut buf) {
            if let Some((src, Header { kind: Kind::Hello, .. })) = rawframe::parse(&buf[..n]) {
                return Some(src);
            }
        }
        sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Sends `phase`'s data frames of `len` bytes until `ms` have passed;
/// how many. Each is built in place in the TX ring and only its header
/// written (the payload is whatever the ring held): the benchmark
/// measures the switch, not the guests.
fn blast(nic: &mut RawNic, len: usize, dst: [u8; 6], phase: u8, ms: u64) -> Result<u64, SendError> {
    let src = nic.mac();
    let end = Instant::now().saturating_add(Duration::from_millis(ms));
    let mut sent = 0u64;
    while Instant::now() < end {
        nic.send_with(len, |frame| {
            rawframe::write(frame, dst, src, Header { kind: Kind::Data, phase, value: sent });
        })?;
        sent += 1;
    }
    nic.kick();
    Ok(sent)
}

/// Sends a control frame a few times (the sink ignores repeats), after
/// giving the sink time to empty its ring.
async fn tell(nic: &mut RawNic, dst: [u8; 6], h: Header) {
    sleep(Duration::from_millis(20)).await;
    let mut frame = [0u8; 64];
    rawframe::write(&mut frame, dst, nic.mac(), h);
    for _ in 0..4 {
        let _ = nic.send(&frame);
    }
    nic.kick();
    sleep(Duration::from_millis(20)).await;
}

pub async fn run(sizes: &[usize], ms: u64, warmup_ms: u64) -> i32 {
    let mut nic = match raw::take() {
        Ok(n) => n,
        Err(e) => {
            println!("raw-send: no vNIC: {e:?}");
            return 1;
        }
    };
    let Some(dst) = find_sink(&mut nic).await else {
        println!("raw-send: no hello from a sink within 30 s");
        return 1;
    };
    for (phase, &size) in sizes.iter().enumerate() {
        let phase = phase as u8;
        let refused = if size > nic.max_frame() {
            Some("larger than the vNIC's largest frame")
        } else if size < HEADER.max(60) {
            Some("shorter than 60 bytes")
        } else {
            None
        };
        if let Some(why) = refused {
            println!(
                "{{\"bench\":\"switch-send\",\"phase\":{phase},\"frame_bytes\":{size},\"max_frame\":{},\"refused\":\"{why}\"}}",
                nic.max_frame()
            );
            continue;
        }
        let before = nic.stats();
        let result = blast(&mut nic, size, dst, WARMUP_PHASE, warmup_ms).and_then(|_| {
            let start = Instant::now();
            let sent = blast(&mut nic, size, dst, phase, ms)?;
            Ok((sent, start.elapsed().as_nanos() as f64 / 1e9))
        });
        let (sent, secs) = match result {
            Ok(r) => r,
            Err(e) => {
                println!("raw-send: sending {size}-byte frames failed: {e:?}");
                return 1;
            }
        };
        tell(&mut nic, dst, Header { kind: Kind::End, phase, value: sent }).await;
        let full = nic.stats().tx_full - before.tx_full;
        println!(
            "{{\"bench\":\"switch-send\",\"phase\":{phase},\"frame_bytes\":{size},\"frames\":{sent},\"duration_ms\":{:.1},\
             \"frames_per_sec\":{:.1},\"tx_ring_full\":{full},\"ring_slots\":{}}}",
            secs * 1e3,
            if secs > 0.0 { sent as f64 / secs } else { 0.0 },
            nic.slots()
        );
    }
    tell(&mut nic, dst, Header { kind: Kind::Done, phase: 0, value: 0 }).await;
    0
}
