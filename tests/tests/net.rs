//! Networking between guests: the shared-ring vNICs, the switch, smoltcp in
//! the libos, and the echo guest.

use integration_tests::{Guest, MIB, Manifest, boot_smp};

/// The two boots here each run guests on two CPUs and the uplink; run them
/// one at a time so that neither is starved of host CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn line<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn ten_thousand_messages_echo_byte_exact_tenants_are_isolated_and_a_ring_liar_is_cut_off() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = boot_smp(
        r#"
        [[guest]]
        name = "echo"
        app = "echo"
        tenant = "a"
        memory = "4 MiB"
        args = ["serve", "7", "2"]

        [[guest]]
        name = "client"
        app = "echo"
        tenant = "a"
        memory = "4 MiB"
        args = ["client", "10.0.0.2", "10000"]

        [[guest]]
        name = "intruder"
        app = "echo"
        tenant = "b"
        memory = "4 MiB"
        args = ["probe", "10.0.0.2"]

        [[guest]]
        name = "neighbour"
        app = "echo"
        tenant = "a"
        memory = "4 MiB"
        args = ["probe", "10.0.0.2"]

        [[guest]]
        name = "liar"
        app = "hostile"
        tenant = "a"
        memory = "4 MiB"
        args = ["ring-lie"]
        "#,
        // The echo server exits after its two connections (client, neighbour).
        150,
        2,
    );
    let c = &out.console;
    assert!(line(c, "[hv] guest echo-0 started (image echo.hermit, memory 4 MiB, ip 10.0.0.2, tenant 0)").is_some(), "{c}");
    assert!(line(c, "echo-0| echo: listening on 10.0.0.2:7").is_some(), "{c}");
    let client = line(c, "client-0| client: ").unwrap_or_else(|| panic!("the client never finished:\n{c}"));
    assert!(client.starts_with("client-0| client: 10000 messages, 30007000 bytes echoed byte-exact in "), "{client}");
    assert!(c.contains("[hv] guest client-0 exited with code 0"), "{c}");
    // Tenant B cannot reach tenant A; tenant A can.
    assert_eq!(line(c, "intruder-0| "), Some("intruder-0| unreachable"), "{c}");
    assert_eq!(line(c, "neighbour-0| "), Some("neighbour-0| reachable"), "{c}");
    // The liar's vNIC is cut off with the reason; the echo pair was unaffected.
    let cut = line(c, "[hv] guest liar-0 vNIC disconnected: ").unwrap_or_else(|| panic!("the liar was not disconnected:\n{c}"));
    assert!(cut.contains("producer index 1000 is not within 16 of consumer index 0"), "{cut}");
    assert!(c.contains("[hv] guest liar-0 exited with code 0"), "{c}");
    assert!(c.contains("echo-0| echo: served 2 connections"), "{c}");
    // Every guest ends; if one does not, name it (this run once timed out
    // with all the lines above present).
    for g in ["echo-0", "client-0", "intruder-0", "neighbour-0", "liar-0"] {
        assert!(c.contains(&format!("[hv] guest {g} exited with code 0")), "{g} did not exit:\n{c}");
    }
    assert!(out.success(), "status {:?}:\n{c}", out.status);
}

#[test]
fn a_host_client_reaches_the_echo_guest_through_a_forwarded_port() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::io::{Read, Write};
    use std::time::Duration;
    let port = integration_tests::free_port();
    let mut manifest = Manifest::new([Guest::app("echo", "echo").tenant("a").memory(4 * MIB).port(port, 7).udp_port(port, 7)]);
    // QEMU's restricted network drops the guests' UDP, the echo's answers
    // included: UDP forwards need it open.
    manifest.restrict = false;
    let mut live = integration_tests::Live::start(manifest, 2);
    assert!(live.wait_for("echo-0| echo: listening on 10.0.0.2:7", Duration::from_secs(90)), "{}", live.console);
    assert!(live.console.contains("[hv] uplink: virtio-net"), "{}", live.console);

    // TCP: 64 KiB in one go, echoed back byte for byte.
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 + i / 256) as u8).collect();
    let mut conn = (0..30)
        .find_map(|_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(500));
                None
            })
        })
        .expect("connecting to the forwarded port");
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = {
        let mut w = conn.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data))
    };
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).expect("reading the echo");
    writer.join().unwrap().expect("writing");
    assert!(back == data, "the echo differs");

    // UDP.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let got = (0..5).find_map(|_| {
        udp.send_to(b"datagram via the uplink", ("127.0.0.1", port)).unwrap();
        udp.recv(&mut buf).ok()
    });
    assert_eq!(got.map(|n| &buf[..n]), Some(&b"datagram via the uplink"[..]));
}

/// `run --tap`: the uplink on a host tap device (in a network namespace of
/// its own, see `xtask::tap`). Sixteen clients in that namespace connect to
/// the echo guest's own address at once (a burst QEMU's user network takes
/// only two of at a time) and each gets its line back.
#[test]
fn host_clients_reach_the_echo_guest_at_its_address_through_a_tap_uplink() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::time::Duration;
    let mut tap = match xtask::tap::HostTap::create() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: the tap uplink test {why}");
            return;
        }
    };
    let manifest = Manifest::new([Guest::app("echo", "echo").tenant("a").memory(16 * MIB).args(["serve", "7", "16"])]);
    let name = tap.name().to_string();
    let mut live = integration_tests::Live::start_with(manifest, 2, |cfg| cfg.tap = Some(name));
    assert!(live.wait_for("echo-0| echo: listening on 10.0.0.2:7", Duration::from_secs(90)), "{}", live.console);
    tap.attach().unwrap();
    // Each client: connect, send its line, read the echo (bash's /dev/tcp).
    let script = "for i in $(seq 0 15); do \
           ( exec 3<>/dev/tcp/10.0.0.2/7 && printf 'line %s through the tap\\n' $i >&3 && head -n 1 <&3 ) & \
         done; wait";
    let out = tap.command("timeout").args(["60", "bash", "-c", script]).output().expect("running the clients");
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..16 {
        assert!(
            text.lines().any(|l| l == format!("line {i} through the tap")),
            "client {i}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(live.wait_for("echo-0| echo: served 16 connections", Duration::from_secs(30)), "{}", live.console);
}

/// Guests whose rings take 64 KiB frames (`ring_slots = 64`) exchange a
/// 60 KiB UDP datagram (one frame: the libos does not fragment) and TCP
/// segments larger than an Ethernet frame, with no checksum computed by
/// either; a guest with the default rings (16 KiB frames) talks TCP with
/// both.
#[test]
fn a_60_kib_datagram_crosses_between_guests_in_one_frame() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = boot_smp(
        r#"
        [[guest]]
        name = "echo"
        app = "echo"
        memory = "8 MiB"
        net = true
        ring_slots = 64
        args = ["serve", "7", "2"]

        [[guest]]
        name = "big"
        app = "echo"
        memory = "8 MiB"
        net = true
        ring_slots = 64
        args = ["udp-big", "10.0.0.2", "61440", "300"]

        [[guest]]
        name = "small"
        app = "echo"
        memory = "8 MiB"
        net = true
        args = ["client", "10.0.0.2", "300"]
        "#,
        150,
        2,
    );
    let c = &out.console;
    assert!(line(c, "big-0| udp-big: 61440 bytes echoed whole in one datagram").is_some(), "{c}");
    assert!(line(c, "big-0| client: 300 messages").is_some(), "{c}");
    assert!(line(c, "small-0| client: 300 messages").is_some(), "{c}");
    assert!(line(c, "echo-0| echo: served 2 connections").is_some(), "{c}");
    let stats = |g: &str| {
        let l = c.lines().find(|l| l.starts_with(abi::report::GUEST_STATS_PREFIX) && l.contains(&format!(r#""guest":"{g}""#))).unwrap();
        serde_json::from_str::<abi::report::GuestStats>(l).unwrap()
    };
    for g in ["echo-0", "big-0", "small-0"] {
        let s = stats(g);
        assert_eq!((s.ring_errors, s.oversize_frames, s.bad_checksums), (0, 0, 0), "{g}: {s:?}");
    }
}
