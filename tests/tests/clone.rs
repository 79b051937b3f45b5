//! Copy-on-write clones of a paused guest (issue 18): each clone goes on
//! where its template was, under its own name and address, with its own
//! randomness, while the template stays paused and may be stopped.

use std::time::{Duration, Instant};

use abi::control::{Reason, Response};
use abi::report::GuestState;
use integration_tests::{Detached, Guest, Manifest, workspace_root};

/// The console of `inst` once it holds `needle` (60 s at most).
fn wait_line(inst: &xtask::ctl::Instance, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let console = std::fs::read_to_string(inst.console()).unwrap_or_default();
        if console.contains(needle) {
            return console;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{console}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP SYN (without ACK) in Ethernet frame `f`: its IPv4 source and
/// initial sequence number.
fn syn(f: &[u8]) -> Option<([u8; 4], u32)> {
    let ip = f.get(14..)?;
    if f.get(12..14)? != [8, 0] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let tcp = ip.get(usize::from(ip[0] & 15) * 4..)?;
    let flags = *tcp.get(13)?;
    (flags & 0x12 == 0x02).then(|| (ip[12..16].try_into().unwrap(), u32::from_be_bytes(tcp[4..8].try_into().unwrap())))
}

#[test]
fn clones_of_a_paused_guest_go_on_under_their_own_identity() {
    let dir = workspace_root().join(format!("target/itest/detached-clone-{}", std::process::id()));
    // srv 10.0.0.2; the template 10.0.0.3 sleeps 8 s, then runs a client.
    let manifest = Manifest::new([
        Guest::app("srv", "echo").tenant("t").args(["serve"]),
        Guest::app("tpl", "echo").tenant("t").args(["later", "8000", "client", "10.0.0.2", "20"]),
    ]);
    let inst = Detached::start(&dir, manifest, false);
    let inst = &inst.0;
    wait_line(inst, "srv-0| echo: listening on 10.0.0.2:7");

    // Not paused: no clone.
    let e = inst.request("clone tpl-0 c").unwrap_err();
    let refused = e.downcast_ref::<xtask::ctl::Refused>().unwrap_or_else(|| panic!("{e:#}"));
    assert_eq!(refused.reason, Some(Reason::NotPaused), "{e:#}");

    xtask::ctl::pause(inst, "tpl-0").unwrap();
    // Everything the tenant sends from now on.
    let capture = {
        let inst = inst.clone();
        std::thread::spawn(move || inst.capture("tenant:0", 400, 20))
    };
    std::thread::sleep(Duration::from_millis(500));
    let cloned = inst.request("clone tpl-0 c 2").unwrap();
    assert_eq!(cloned.0, Response::Cloned { cloned: 2, first: "c-0".into(), ip: Some("10.0.0.4".into()), tenant: Some(0), error: None },);
    // The template can go: its clones keep its pages.
    inst.request("stop tpl-0").unwrap();
    wait_line(inst, "[hv] guest tpl-0 stopped");

    // Each clone wakes where the template slept, as itself.
    wait_line(inst, "c-0| later: c-0 at 10.0.0.4, generation 1");
    wait_line(inst, "c-1| later: c-1 at 10.0.0.5, generation 1");
    for c in ["c-0", "c-1"] {
        let console = wait_line(inst, &format!("[hv] guest {c} exited with code 0"));
        let line = console.lines().find(|l| l.starts_with(&format!("{c}| client: "))).unwrap_or_else(|| panic!("{console}"));
        assert!(line.contains("20 messages") && line.contains("echoed byte-exact"), "{line}");
    }
    let console = std::fs::read_to_string(inst.console()).unwrap();
    assert!(!console.contains("tpl-0| later"), "the template ran:\n{console}");

    // Their connections began with different sequence numbers, and nothing
    // left with the template's address.
    inst.request("stop srv-0").unwrap();
    let (frames, _) = capture.join().unwrap().unwrap();
    let syns: Vec<([u8; 4], u32)> = frames.iter().filter_map(|(_, f)| syn(f)).collect();
    let isn = |ip: [u8; 4]| syns.iter().find(|s| s.0 == ip).map(|s| s.1).unwrap_or_else(|| panic!("no SYN from {ip:?}: {syns:?}"));
    assert_ne!(isn([10, 0, 0, 4]), isn([10, 0, 0, 5]), "two clones drew the same initial sequence number");
    let from_template = frames.iter().filter(|(_, f)| f.len() > 30 && f.get(12..14) == Some(&[8, 0]) && f[26..30] == [10, 0, 0, 3]);
    assert_eq!(from_template.count(), 0, "a frame left with the template's address");
    let list = inst.list().unwrap();
    let state = |n: &str| list.iter().find(|g| g.name == n).map(|g| g.state);
    assert_eq!(
        (state("c-0"), state("c-1"), state("tpl-0")),
        (Some(GuestState::Exited), Some(GuestState::Exited), Some(GuestState::Stopped))
    );
}
