//! The uplink under attack: a guest that keeps its RX ring full must not
//! hold up the host's frames for the other guests of its tenant.

use integration_tests::Live;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one probe may take, connect to last byte of the echo.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One probe of the echo guest through the forwarded port: connect, send a
/// line, read it back. Returns how long it took.
fn probe(port: u16, n: u32) -> Result<Duration, String> {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT)).and_then(|()| s.set_write_timeout(Some(PROBE_TIMEOUT))).map_err(|e| e.to_string())?;
    let msg = format!("probe {n} through the uplink\n");
    s.write_all(msg.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).map_err(|e| format!("read after {} ms: {e}", start.elapsed().as_millis()))?;
    if back != msg.as_bytes() {
        return Err(format!("echo differs: {:?}", String::from_utf8_lossy(&back)));
    }
    Ok(start.elapsed())
}

/// The last `guest_stats` line of `guest`.
fn stats(console: &str, guest: &str) -> serde_json::Value {
    let l = console.lines().filter(|l| l.starts_with(r#"{"event":"guest_stats""#) && l.contains(&format!(r#""guest":"{guest}""#))).last();
    serde_json::from_str(l.unwrap_or_else(|| panic!("no stats for {guest}:\n{console}"))).unwrap()
}

#[test]
fn a_guest_with_a_full_rx_ring_does_not_stall_the_hosts_traffic_to_its_neighbours() {
    let port = integration_tests::free_port();
    // The echo server is 10.0.0.2 with a forwarded port; the attacker, in
    // the same tenant, lets its RX ring fill and asks QEMU (the gateway)
    // for its MAC every 20 ms, so QEMU's answers keep coming for a full ring.
    let mut live = Live::start(
        &format!(
            "[[guest]]\nname = \"echo\"\napp = \"echo\"\ntenant = \"a\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\nports = [\"{port}:7\"]\n\n\
             [[guest]]\nname = \"stall\"\napp = \"hostile\"\ntenant = \"a\"\nmemory = \"1 MiB\"\nring_slots = 4\nargs = [\"rx-stall\", \"20\"]\n"
        ),
        1,
    );
    let wait = |live: &mut Live, needle: &str| {
        let seen = live.console.contains(needle) || live.wait_for(needle, Duration::from_secs(120));
        assert!(seen, "no {needle:?} in:\n{}", live.console);
    };
    wait(&mut live, "echo-0| echo: listening on 10.0.0.2:7");
    wait(&mut live, "stall-0| stall-0: trying rx-stall");

    // Probe every half second for the attacker's whole life, and a little
    // after; every probe must be answered.
    let exited = "[hv] guest stall-0 exited with code 0";
    let began = Instant::now();
    let (mut answered, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
    let mut after_exit = None;
    for n in 0.. {
        match probe(port, n) {
            Ok(t) => {
                answered += 1;
                slowest = slowest.max(t);
            }
            Err(e) => failed.push(format!("probe {n} at {:.1} s: {e}", began.elapsed().as_secs_f64())),
        }
        if after_exit.is_none() && (live.console.contains(exited) || live.wait_for(exited, Duration::from_millis(500))) {
            after_exit = Some(n);
        }
        if after_exit.is_some_and(|e| n >= e + 4) || began.elapsed() > Duration::from_secs(90) {
            break;
        }
        if after_exit.is_some() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let c = &live.console;
    assert!(after_exit.is_some(), "the attacker did not end in 90 s:\n{c}");
    let stall = c.lines().find(|l| l.starts_with("stall-0| stall-0: sent ")).unwrap_or_else(|| panic!("the attack did not run:\n{c}"));
    println!("{answered} probes answered, slowest {} ms; {} failed; {stall}", slowest.as_millis(), failed.len());
    for f in &failed {
        println!("{f}");
    }
    assert!(failed.is_empty(), "{} of {} probes failed:\n{}\n{c}", failed.len(), answered as usize + failed.len(), failed.join("\n"));
    // About one probe per 0.6 s over the attack's 20 s.
    assert!(answered >= 20, "too few probes during the attack: {answered}");

    // What the attacker's full ring could not take was dropped and counted
    // against it; the echo guest lost nothing.
    wait(&mut live, r#""guest":"stall-0""#);
    let dropped = stats(&live.console, "stall-0")["uplink_dropped"].as_u64().expect("uplink_dropped");
    assert!(dropped > 0, "the attacker's frames were not dropped");
    live.send("stats\n");
    assert!(live.wait_for(r#""guest":"echo-0""#, Duration::from_secs(30)), "no stats:\n{}", live.console);
    assert_eq!(stats(&live.console, "echo-0")["uplink_dropped"], 0);
    println!("the attacker's full ring cost it {dropped} frames");
}
