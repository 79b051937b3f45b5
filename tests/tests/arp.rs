//! Proxy ARP in the switch, end to end: in a tenant of several guests a
//! guest resolves its neighbour and talks TCP to it, and the host reaches
//! a guest through its forwarded port, while a guest nobody talks to
//! receives no frame at all: every ARP request (the guests' for each
//! other, QEMU's for the forwarded guest) was answered by the switch and
//! passed on to the guest asked for only, and none was flooded.

use integration_tests::Live;
use std::time::Duration;

#[test]
fn the_switch_answers_arp_and_floods_no_request_to_the_tenant() {
    let port = integration_tests::free_port();
    // Tenant "h", the uplink's: "fwd" is 10.0.0.2 (forwarded from the
    // host). Tenant "v": "srv" 10.1.0.2, "idle" 10.1.0.3 (nobody talks to
    // it), "client" 10.1.0.4 (echoes with "srv"). (In the uplink's tenant
    // QEMU's IPv6 router advertisements are flooded to every guest, so a
    // silent neighbour is watched in a tenant of its own.)
    let m = format!(
        "[[guest]]\nname = \"fwd\"\napp = \"echo\"\ntenant = \"h\"\nmemory = \"4 MiB\"\nports = [\"{port}:7\"]\n\n\
         [[guest]]\nname = \"srv\"\napp = \"echo\"\ntenant = \"v\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\n\n\
         [[guest]]\nname = \"idle\"\napp = \"echo\"\ntenant = \"v\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\n\n\
         [[guest]]\nname = \"client\"\napp = \"echo\"\ntenant = \"v\"\nmemory = \"4 MiB\"\nargs = [\"client\", \"10.1.0.2\", \"200\"]\n"
    );
    let mut live = Live::start(&m, 1);
    let wait = |live: &mut Live, needle: &str, secs: u64| {
        let seen = live.console.contains(needle) || live.wait_for(needle, Duration::from_secs(secs));
        assert!(seen, "no {needle:?} in:\n{}", live.console);
    };
    wait(&mut live, "idle-0| echo: listening on 10.1.0.3:7", 120);
    wait(&mut live, "fwd-0| echo: listening on 10.0.0.2:7", 120);
    // The guests' pair: the client resolves "srv" and echoes over TCP.
    wait(&mut live, "client-0| client: ", 240);
    // The host through the forward: QEMU asks who has 10.0.0.2 first.
    let echoed: Vec<_> = (0..3u8).map(|n| integration_tests::echo(port, &[b'a' + n; 64])).collect();
    // (The boot printed a machine record already: wait for the next one.)
    live.send("stats\n");
    assert!(live.wait_for(r#""event":"machine""#, Duration::from_secs(30)), "no stats:\n{}", live.console);

    let c = live.console.clone();
    let stats = |g: &str| integration_tests::records::last_guest_stats(&c, g).unwrap_or_else(|| panic!("no stats for {g}:\n{c}"));
    let machine = integration_tests::records::machine_stats(&c).pop().expect("a machine record");
    let (fwd, srv, idle, client) = (stats("fwd-0"), stats("srv-0"), stats("idle-0"), stats("client-0"));
    let summary = format!(
        "echoed {echoed:?}\nmachine arp_answered {} (host's {})\n{}",
        machine.arp_answered,
        machine.uplink_arp_answered,
        [&fwd, &srv, &idle, &client]
            .map(|s| format!(
                "{}: sent {} received {} arp_answered {} wakeups {}",
                s.guest, s.sent_frames, s.received_frames, s.arp_answered, s.wakeups
            ))
            .join("\n")
    );
    eprintln!("{summary}");
    let client_line = c.lines().find(|l| l.contains("client-0| client: ")).unwrap_or("");
    assert!(client_line.contains("echoed byte-exact"), "{summary}\n{c}");
    for (n, e) in echoed.iter().enumerate() {
        assert_eq!(e.as_deref().ok(), Some(&[b'a' + n as u8; 64][..]), "{summary}");
    }
    // The client asked for "srv" and was answered by the switch, which
    // passed the request on to "srv" alone. "srv" had received nothing
    // yet, so its ring pages were not made: the request found it full and
    // woke it to make them, and "srv" asked the switch for the client's
    // MAC once itself (answered too). QEMU's question for "fwd" was
    // answered by the switch too.
    assert!(client.arp_answered >= 1, "{summary}");
    assert!(srv.arp_answered <= 1, "{summary}");
    assert!(machine.uplink_arp_answered >= 1, "{summary}");
    assert!(machine.arp_answered >= client.arp_answered + machine.uplink_arp_answered, "{summary}");
    // And no request went anywhere else: the guest nobody talks to got no
    // frame (with flooding it got every broadcast request of the tenant).
    assert_eq!(idle.received_frames, 0, "{summary}");
    assert!(fwd.received_frames > 0 && srv.received_frames > 0, "{summary}");
}
