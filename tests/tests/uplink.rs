//! The uplink under attack: a guest that keeps its RX ring full must not
//! hold up the host's frames for the other guests of its tenant; what of
//! the host the guests may reach through it; and the uplink on the other
//! NIC the hypervisor drives, an Intel 82574L (e1000e).

use integration_tests::Live;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The boots here run one at a time so that neither is starved of host CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

/// The last `guest_stats` record of `guest`.
fn stats(console: &str, guest: &str) -> abi::report::GuestStats {
    integration_tests::records::last_guest_stats(console, guest).unwrap_or_else(|| panic!("no stats for {guest}:\n{console}"))
}

#[test]
fn a_guest_with_a_full_rx_ring_does_not_stall_the_hosts_traffic_to_its_neighbours() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let dropped = stats(&live.console, "stall-0").uplink_dropped;
    assert!(dropped > 0, "the attacker's frames were not dropped");
    live.send("stats\n");
    assert!(live.wait_for(r#""guest":"echo-0""#, Duration::from_secs(30)), "no stats:\n{}", live.console);
    assert_eq!(stats(&live.console, "echo-0").uplink_dropped, 0);
    println!("the attacker's full ring cost it {dropped} frames");
}

#[test]
fn the_uplink_interrupts_and_is_never_polled_without_an_interrupt() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = integration_tests::free_port();
    let mut live = Live::start(
        &format!("[[guest]]\nname = \"echo\"\napp = \"echo\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\nports = [\"{port}:7\"]\n"),
        2,
    );
    let seen = live.wait_for("echo-0| echo: listening on 10.0.0.2:7", Duration::from_secs(120));
    assert!(seen, "the echo guest did not listen:\n{}", live.console);
    assert!(live.console.contains("[hv] uplink interrupts: MSI-X"), "the uplink is not interrupt-driven:\n{}", live.console);
    for n in 0..5 {
        probe(port, n).unwrap_or_else(|e| panic!("probe {n}: {e}\n{}", live.console));
    }
    live.send("stats\n");
    assert!(live.wait_for(abi::report::MACHINE_PREFIX, Duration::from_secs(30)), "no machine record:\n{}", live.console);
    let m = integration_tests::records::machine_stats(&live.console).pop().unwrap();
    assert!(live.console.contains(r#""guest":"echo-0""#) || live.wait_for(r#""guest":"echo-0""#, Duration::from_secs(30)));
    let sent = stats(&live.console, "echo-0").sent_frames;
    println!(
        "after 5 echoes: {} uplink interrupts, {} polls without one, {} notifications to the device ({sent} frames from the guest)",
        m.uplink_interrupts, m.uplink_polls, m.uplink_notifies
    );
    // Each probe's frames from the host came with an interrupt; CPU 0 never
    // looked at the device on its own.
    assert!(m.uplink_interrupts >= 5, "{m:?}");
    assert_eq!(m.uplink_polls, 0, "{m:?}");
    // With the event index (QEMU offers it) the device, never short of
    // receive buffers here, is told of them once, at the start, not after
    // every poll; of frames to send at most once per frame (the guest's,
    // and the switch's ARP answers to QEMU).
    assert!(m.uplink_notifies <= 1 + sent + m.uplink_arp_answered, "{m:?}");
}

/// A TCP echo service on the host's 127.0.0.1; returns its port and the
/// count of connections it accepted.
fn host_echo_service() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a host service");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut back = conn.try_clone().expect("cloning a socket");
                let _ = std::io::copy(&mut &conn, &mut back);
            });
        }
    });
    (port, accepted)
}

#[test]
fn guests_reach_a_host_service_only_when_the_manifest_opts_in() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let line = |out: &integration_tests::RunOutput, prefix: &str| -> String {
        let c = &out.console;
        c.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in:\n{c}\n{}", out.stderr)).to_string()
    };

    // By default (QEMU's restrict=on) the gateway does not lead to the
    // host's loopback: a guest's connection to a service there gets no
    // answer, and the service sees no connection. (With restrict=off, the
    // default before, it did.)
    let (port, accepted) = host_echo_service();
    let out = integration_tests::boot(
        &format!(
            "[[guest]]\nname = \"denied\"\napp = \"echo\"\ntenant = \"a\"\nmemory = \"4 MiB\"\nargs = [\"probe\", \"10.0.0.1\", \"{port}\"]\n"
        ),
        150,
    );
    assert_eq!(line(&out, "denied-0| "), "denied-0| unreachable");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a guest reached the host's loopback on the restricted network");
    assert!(out.success(), "status {:?}:\n{}\n{}", out.status, out.console, out.stderr);

    // With the explicit opt-out, `[host] restrict = false`, the guests reach
    // the host's loopback through the gateway: two guests' clients at once,
    // each on its own connection to the service (not one shared by both),
    // each echoed byte-exact.
    let (port, accepted) = host_echo_service();
    let out = integration_tests::boot(
        &format!(
            "[host]\nrestrict = false\n\n\
             [[guest]]\nname = \"allowed\"\napp = \"echo\"\ntenant = \"a\"\ncount = 2\nmemory = \"4 MiB\"\nargs = [\"client\", \"10.0.0.1\", \"50\", \"{port}\"]\n"
        ),
        150,
    );
    for i in 0..2 {
        let client = line(&out, &format!("allowed-{i}| client: "));
        assert!(client.contains("50 messages") && client.contains("echoed byte-exact"), "{client}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one host connection per guest connection");
    assert!(out.success(), "status {:?}:\n{}\n{}", out.status, out.console, out.stderr);
}

/// Sends `msg` to 127.0.0.1:`port` from one thread while this one reads
/// the echo back (a message larger than the sockets' buffers would
/// otherwise stall both ends).
fn echo_big(port: u16, msg: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    let len = msg.len();
    let writer = std::thread::spawn(move || w.write_all(&msg));
    let mut back = vec![0u8; len];
    (&s).read_exact(&mut back)?;
    writer.join().expect("the writer")?;
    Ok(back)
}

#[test]
fn the_uplink_runs_on_an_e1000e_when_the_machine_has_one() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = integration_tests::free_port();
    let mut live = Live::start_with_nic(
        &format!("[[guest]]\nname = \"echo\"\napp = \"echo\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\nports = [\"{port}:7\"]\n"),
        1,
        xtask::Nic::E1000e,
    );
    let listening = "echo-0| echo: listening on 10.0.0.2:7";
    assert!(live.wait_for(listening, Duration::from_secs(120)), "no {listening:?} in:\n{}", live.console);
    let uplink = live.console.lines().find(|l| l.starts_with("[hv] uplink: ")).unwrap_or_else(|| panic!("no uplink:\n{}", live.console));
    assert!(uplink.starts_with("[hv] uplink: e1000e 52:54:00:12:34:56, tenant 0, "), "{uplink}");

    // A line, then enough to go round both descriptor rings (256 each)
    // several times, byte-exact.
    let msg = b"hello through the e1000e";
    assert_eq!(integration_tests::echo(port, msg).expect("the echo through the forwarded port"), msg);
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let started = Instant::now();
    let back = echo_big(port, big.clone()).expect("1 MiB through the forwarded port");
    assert!(back == big, "the 1 MiB echo differs");
    println!("{uplink}\n1 MiB echoed through the e1000e in {} ms", started.elapsed().as_millis());

    // Its frames came with MSI-X interrupts; CPU 0 never polled it.
    assert!(live.console.contains("[hv] uplink interrupts: MSI-X entry 0 of "), "{}", live.console);
    live.send("stats\n");
    assert!(live.wait_for(abi::report::MACHINE_PREFIX, Duration::from_secs(30)), "no machine record:\n{}", live.console);
    let m = integration_tests::records::machine_stats(&live.console).pop().unwrap();
    println!("{} uplink interrupts, {} polls without one", m.uplink_interrupts, m.uplink_polls);
    assert!(m.uplink_interrupts >= 10, "{m:?}");
    assert_eq!(m.uplink_polls, 0, "{m:?}");
}
