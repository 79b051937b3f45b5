//! UDP modes that exercise the vNIC's backpressure: a sender that sends
//! numbered datagrams as fast as its socket takes them, and a sink that
//! stops reading for a while and then counts what arrived.

use alloc::vec;
use core::time::Duration;
use libos::net::{Ipv4, UdpSocket};
use libos::println;
use libos::time::Instant;

/// Bytes of each datagram.
const DATAGRAM: usize = 512;

/// `udp-burst PORT IP:N [IP:N ...]`: after 1 s (for the sinks to bind)
/// sends N numbered datagrams to each target in turn, waiting for room
/// rather than dropping, then prints
/// `udp-burst: sent N to IP ...` per target.
pub async fn burst(port: u16, targets: &[(Ipv4, u32)]) -> i32 {
    let Ok(mut sock) = UdpSocket::bind(port) else {
        println!("udp-burst: cannot bind port {port}");
        return 1;
    };
    let mut buf = vec![0u8; DATAGRAM];
    // Give the sinks time to bind (guests start within milliseconds).
    libos::task::sleep(Duration::from_secs(1)).await;
    for &(ip, n) in targets {
        let start = Instant::now();
        for i in 0..n {
            buf[..4].copy_from_slice(&i.to_le_bytes());
            if let Err(e) = sock.send(&buf, ip, port).await {
                println!("udp-burst: send to {ip} failed at {i}: {e:?}");
                return 1;
            }
        }
        println!("udp-burst: sent {n} to {ip} in {} ms", start.elapsed().as_millis());
    }
    // Let the last datagrams leave before the guest ends.
    libos::task::sleep(Duration::from_millis(200)).await;
    0
}

/// `udp-sink PORT N PAUSE_MS`: once the first datagram came, reads
/// nothing for PAUSE_MS (it blocks without looking at its vNIC, whose ring
/// fills), then counts datagrams until it has N or none came for 10 s;
/// prints `udp-sink: received K of N, in order` (all of them, in order)
/// or `with gaps`.
pub async fn sink(port: u16, n: u32, pause_ms: u64) -> i32 {
    let Ok(mut sock) = UdpSocket::bind(port) else {
        println!("udp-sink: cannot bind port {port}");
        return 1;
    };
    let mut buf = vec![0u8; 2048];
    let mut got = 0u32;
    let mut in_order = true;
    let mut paused = false;
    while got < n {
        let recv = libos::task::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await;
        let Some(Ok((len, _, _))) = recv else { break };
        let i = u32::from_le_bytes(buf[..4].try_into().unwrap_or_default());
        in_order &= len == DATAGRAM && i == got;
        got += 1;
        if !paused {
            paused = true;
            // A blocking sleep: the executor does not run, the RX ring is
            // not read.
            libos::time::sleep(Duration::from_millis(pause_ms));
        }
    }
    let whole = got == n && in_order;
    println!("udp-sink: received {got} of {n}, {}", if whole { "in order" } else { "with gaps" });
    if whole { 0 } else { 1 }
}
