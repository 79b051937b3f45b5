//! Backpressure between guests: a frame whose receiver's RX ring is full
//! waits in its sender's TX ring instead of being dropped, for at most the
//! bounded wait (`net::backend::MAX_WAIT_NS`, 5 s). UDP shows it plainly:
//! nothing retransmits a lost datagram.

use integration_tests::boot_smp;
use integration_tests::records::guest_stats;

/// The two boots each run on two CPUs; one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn line<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console.lines().find(|l| l.starts_with(prefix))
}

/// A receiver that reads nothing for 2 s loses nothing: its sender pauses
/// and resumes. An echo session beside them is unaffected.
#[test]
fn a_receiver_that_stops_reading_for_two_seconds_loses_nothing() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One tenant: sink 10.0.0.2, burst .3, echo .4, client .5.
    let out = boot_smp(
        r#"
        [[guest]]
        name = "sink"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["udp-sink", "9000", "300", "2000"]

        [[guest]]
        name = "burst"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["udp-burst", "9000", "10.0.0.2:300"]

        [[guest]]
        name = "echo"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["serve", "7", "1"]

        [[guest]]
        name = "client"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["client", "10.0.0.4", "300"]
        "#,
        120,
        2,
    );
    let c = &out.console;
    assert_eq!(line(c, "sink-0| udp-sink: "), Some("sink-0| udp-sink: received 300 of 300, in order"), "{c}");
    assert!(line(c, "burst-0| udp-burst: sent 300 to 10.0.0.2 in ").is_some(), "{c}");
    let client = line(c, "client-0| client: ").unwrap_or_else(|| panic!("the client never finished:\n{c}"));
    assert!(client.contains("300 messages") && client.contains("echoed byte-exact"), "{client}");
    let stats = guest_stats(c);
    let of = |g: &str| stats.iter().find(|s| s.guest == g).unwrap_or_else(|| panic!("no record for {g}:\n{c}"));
    assert!(of("burst-0").tx_waits >= 1, "the sender never waited: the test did not fill the ring:\n{c}");
    assert_eq!(of("sink-0").rx_full_drops, 0, "{c}");
    for g in ["sink-0", "burst-0", "echo-0", "client-0"] {
        assert!(c.contains(&format!("[hv] guest {g} exited with code 0")), "{g} did not exit cleanly:\n{c}");
    }
}

/// A receiver that never reads (here: not for 12 s) costs its sender one
/// bounded wait: its frames are then dropped and counted, and the sender
/// goes on to another receiver long before the first one reads again.
#[test]
fn a_receiver_that_never_reads_costs_the_sender_one_bounded_wait() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // stuck 10.0.0.2, sink .3, burst .4.
    let out = boot_smp(
        r#"
        [[guest]]
        name = "stuck"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["udp-sink", "9000", "100", "12000"]

        [[guest]]
        name = "sink"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["udp-sink", "9000", "100", "0"]

        [[guest]]
        name = "burst"
        app = "echo"
        tenant = "bp"
        memory = "4 MiB"
        args = ["udp-burst", "9000", "10.0.0.2:100", "10.0.0.3:100"]
        "#,
        120,
        2,
    );
    let c = &out.console;
    let at = |needle: &str| c.find(needle).unwrap_or_else(|| panic!("no {needle:?}:\n{c}"));
    assert_eq!(line(c, "sink-0| udp-sink: "), Some("sink-0| udp-sink: received 100 of 100, in order"), "{c}");
    // The sender finished with the second receiver while the first still slept.
    assert!(at("burst-0| udp-burst: sent 100 to 10.0.0.3") < at("stuck-0| udp-sink: received "), "{c}");
    let stuck = line(c, "stuck-0| udp-sink: received ").unwrap_or_default();
    assert!(stuck.ends_with("of 100, with gaps"), "{stuck}");
    let stats = guest_stats(c);
    let of = |g: &str| stats.iter().find(|s| s.guest == g).unwrap_or_else(|| panic!("no record for {g}:\n{c}"));
    // It waited a few times (once per receiver while its ring pages were
    // made at its first frame, while the sink still read its first
    // datagrams, once for the bound), not once per frame the full ring
    // refused.
    let (waits, drops) = (of("burst-0").tx_waits, of("stuck-0").rx_full_drops);
    assert!(waits >= 1 && drops >= 5 * waits, "{waits} waits, {drops} frames dropped:\n{c}");
    assert_eq!(of("sink-0").rx_full_drops, 0, "{c}");
    assert!(c.contains("[hv] guest burst-0 exited with code 0") && c.contains("[hv] guest sink-0 exited with code 0"), "{c}");
}
