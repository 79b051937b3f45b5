//! IP source guard and ARP inspection in the switch, end to end: a guest
//! that claims a neighbour's IPv4 address (ARP and IPv4 with its own MAC)
//! intercepts nothing, neither inside a tenant of guests nor in the
//! uplink's tenant, where it would otherwise poison QEMU's ARP cache and
//! take the host's port forward to the neighbour.

use integration_tests::Live;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How long each attacker keeps at it: longer than the echo session and
/// the host's connections need, even under TCG.
const ATTACK_SECS: u64 = 30;

/// One TCP connection to the host's forward: 1 KiB out, the same back.
fn echo_through_forward(port: u16, n: u32) -> Result<(), String> {
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + n) as u8).collect();
    let mut conn = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    conn.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err("the echo differs".into());
    }
    Ok(())
}

#[test]
fn arp_and_ip_spoofers_intercept_nothing_in_a_tenant_or_through_the_uplink() {
    let port = integration_tests::free_port();
    // Tenant "h" comes first: tenant 0, the uplink's, with QEMU at 10.0.0.1.
    // "fwd" is 10.0.0.2 (reached from the host through port `port`),
    // "spoof-h" 10.0.0.3. Tenant "v" is tenant 1: "echo" is 10.1.0.2,
    // "spoof-v" 10.1.0.3, "client" 10.1.0.4.
    let m = format!(
        "[[guest]]\nname = \"fwd\"\napp = \"echo\"\ntenant = \"h\"\nmemory = \"4 MiB\"\nports = [\"{port}:7\"]\n\n\
         [[guest]]\nname = \"spoof-h\"\napp = \"hostile\"\ntenant = \"h\"\nmemory = \"1 MiB\"\nargs = [\"arp-spoof\", \"10.0.0.2\", \"{ATTACK_SECS}\"]\n\n\
         [[guest]]\nname = \"echo\"\napp = \"echo\"\ntenant = \"v\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\n\n\
         [[guest]]\nname = \"spoof-v\"\napp = \"hostile\"\ntenant = \"v\"\nmemory = \"1 MiB\"\nargs = [\"arp-spoof\", \"10.1.0.2\", \"{ATTACK_SECS}\"]\n\n\
         [[guest]]\nname = \"client\"\napp = \"echo\"\ntenant = \"v\"\nmemory = \"4 MiB\"\nargs = [\"client\", \"10.1.0.2\", \"2000\"]\n"
    );
    let mut live = Live::start(&m, 2);
    let started = Instant::now();
    let wait = |live: &mut Live, needle: &str, secs: u64| live.console.contains(needle) || live.wait_for(needle, Duration::from_secs(secs));
    assert!(wait(&mut live, "fwd-0| echo: listening on 10.0.0.2:7", 120), "{}", live.console);
    assert!(wait(&mut live, "spoof-h-0| spoof-h-0: trying arp-spoof", 60), "{}", live.console);

    // While the attackers run, the host reaches "fwd" through its forward,
    // a connection a second for 10 s, every one echoed.
    let mut forward: Vec<Result<(), String>> = Vec::new();
    std::thread::sleep(Duration::from_secs(1));
    for n in 0..10 {
        let t = Instant::now();
        forward.push(echo_through_forward(port, n));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    let forward_during = started.elapsed();
    // (Lines printed so far: the attack must not have ended before the
    // connections did.)
    let attack_ended_first = live.wait_for("[hv] guest spoof-h-0 exited", Duration::ZERO);

    // The echo session in tenant "v", and both attackers' ends.
    let client_done = wait(&mut live, "client-0| client: ", 240);
    let attackers_done =
        ["spoof-h-0", "spoof-v-0"].map(|g| wait(&mut live, &format!(r#""guest":"{g}","state":"exited""#), ATTACK_SECS + 120));
    if !client_done {
        // What the stuck pair was doing: their counters, for the report.
        live.send("stats\n");
        live.wait_for(r#""event":"machine""#, Duration::from_secs(20));
    }
    let c = live.console.clone();
    let line = |needle: &str| c.lines().find(|l| l.contains(needle)).unwrap_or("(none)");
    let client = line("client-0| client: ");
    let records = integration_tests::records::guest_stats(&c);
    let stats = |g: &str| records.iter().find(|s| s.guest == g && s.state == abi::report::GuestState::Exited);
    let spoofed = |g: &str| stats(g).map(|s| s.spoofed_frames);
    let report = |g: &str| line(&format!("{g}| {g}: arp-spoof sent "));
    // Frames the attacker received that were addressed to its victim.
    let intercepted = |g: &str| -> Option<u64> {
        let r = report(g);
        let (_, tail) = r.split_once("frames, ")?;
        tail.split_once(" IPv4 to ")?.0.parse().ok()
    };
    // Frames it sent: every one claimed the victim's address.
    let sent = |g: &str| -> Option<u64> {
        let r = report(g);
        let (arp, rest) = r.split_once(" arp-spoof sent ")?.1.split_once(" ARP and ")?;
        Some(arp.parse::<u64>().ok()? + rest.split_once(" IPv4 frames")?.0.parse::<u64>().ok()?)
    };
    // Every forgery was dropped by the switch as spoofed (or, had there
    // been a burst, by the sender's rate limits before it).
    let all_dropped =
        |g: &str| sent(g).is_some_and(|n| n > 0 && Some(n) == Some(spoofed(g).unwrap_or(0) + stats(g).map_or(0, |s| s.nic_limited)));
    let at = |needle: &str| c.find(needle).unwrap_or(usize::MAX);
    let summary = format!(
        "forward connections (done {forward_during:?} after boot, attack ended first: {attack_ended_first}): {forward:?}\nclient: {client}\n\
         spoof-h: {} (spoofed_frames {:?})\nspoof-v: {} (spoofed_frames {:?})\nattackers done: {attackers_done:?}, client done: {client_done}",
        report("spoof-h-0"),
        spoofed("spoof-h-0"),
        report("spoof-v-0"),
        spoofed("spoof-v-0"),
    );
    eprintln!("{summary}");

    // Inside tenant "v": the echo pair completes byte-exact, the attacker
    // saw none of the victim's traffic and its forgeries were counted.
    assert!(client.starts_with("client-0| client: 2000 messages") && client.contains("echoed byte-exact"), "{summary}\n{c}");
    assert!(at("client-0| client: ") < at("[hv] guest spoof-v-0 exited"), "the session outlasted the attack:\n{summary}");
    assert_eq!(intercepted("spoof-v-0"), Some(0), "{summary}\n{c}");
    assert!(spoofed("spoof-v-0").is_some_and(|n| n > 0), "{summary}\n{c}");
    assert!(all_dropped("spoof-v-0"), "{summary}\n{c}");
    // In the uplink's tenant: every host connection reached "fwd", not the
    // attacker, and QEMU's traffic for 10.0.0.2 never went to it.
    assert!(forward.iter().all(Result::is_ok), "{summary}\n{c}");
    assert_eq!(intercepted("spoof-h-0"), Some(0), "{summary}\n{c}");
    assert!(spoofed("spoof-h-0").is_some_and(|n| n > 0), "{summary}\n{c}");
    assert!(all_dropped("spoof-h-0"), "{summary}\n{c}");
    // The connections were made while the attack ran, and it ended cleanly.
    assert!(!attack_ended_first, "{summary}");
    assert!(
        c.contains("[hv] guest spoof-h-0 exited with code 0") && c.contains("[hv] guest spoof-v-0 exited with code 0"),
        "{summary}\n{c}"
    );
}
