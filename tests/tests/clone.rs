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

/// `warm = true`: instance 0 boots and pauses when it first blocks (its
/// server listening), the others are its clones, then it goes on; every
/// instance answers echo at its own address. `from`: clones of another
/// entry's instance 0, which stays paused; a machine that ends when idle
/// stops it once nothing else is left.
#[test]
fn a_warm_entry_starts_as_one_boot_and_clones_that_all_serve() {
    use integration_tests::Live;
    // check 10.0.0.2; e-0 .3 (the template) and e-1..e-19 .4...
    let manifest = Manifest::new([
        Guest::app("check", "echo").tenant("t").args(["check", "20", "20", "7", "1"]),
        Guest::app("e", "echo").tenant("t").memory(256 * 1024).ring_slots(4).count(20).warm(),
    ]);
    let mut live = Live::start(manifest, 2);
    assert!(live.wait_for("check-0| check: ", Duration::from_secs(120)), "{}", live.console);
    let c = &live.console;
    assert!(c.contains("check-0| check: 20/20 answered"), "{c}");
    assert!(c.contains("[hv] guest e-1 cloned from e-0 (image echo.hermit, ip 10.0.0.4, tenant 0)"), "{c}");
    assert!(c.contains("[hv] 19 clones of e-0 made in "), "{c}");
    assert_eq!(c.matches("| echo: listening").count(), 1, "the clones booted instead of going on from e-0:\n{c}");
    // The template went on: `stats` lists it among the waiting, not paused.
    live.send("stats\n");
    assert!(live.wait_for("\"event\":\"machine\"", Duration::from_secs(30)));
    let zero = integration_tests::records::guest_stats(&live.console).into_iter().rev().find(|s| s.guest == "e-0");
    let zero = zero.unwrap_or_else(|| panic!("no stats for e-0:\n{}", live.console));
    assert!(zero.shared_bytes > zero.private_bytes, "e-0's pages are shared with its clones: {zero:?}");

    // Clones of a client: each runs it once, under its own name; the
    // template stays paused and is stopped at the end.
    let manifest = Manifest::new([
        Guest::app("srv", "echo").tenant("t").args(["serve", "7", "2"]),
        Guest::app("tpl", "echo").tenant("t").args(["later", "500", "client", "10.0.0.2", "5"]),
    ]);
    let tpl = manifest.guests[1].clone();
    let manifest = Manifest::new(manifest.guests.into_iter().chain([Guest::clones("c", &tpl, 2)]));
    let out = integration_tests::boot_smp(manifest, 120, 2);
    let c = &out.console;
    for g in ["c-0", "c-1"] {
        assert!(c.contains(&format!("{g}| later: {g} at ")), "{c}");
        assert!(c.contains(&format!("[hv] guest {g} exited with code 0")), "{c}");
    }
    assert!(!c.contains("tpl-0| later"), "the template went on:\n{c}");
    assert!(c.contains("[hv] guest tpl-0 stopped: stopped by the operator"), "{c}");
}

/// A clone that writes to every page it shares with its template (and
/// then allocates without bound) is charged for each copy and stopped
/// `out of memory` at its limit; a sibling that only reads, and the
/// template resumed (its own writes copy too), still find every byte as
/// it was. Every write here lands in a page table the clones share with
/// the template until it is copied.
#[test]
fn a_clone_that_writes_all_it_shares_stops_at_its_limit_alone() {
    let dir = workspace_root().join(format!("target/itest/detached-cow-{}", std::process::id()));
    let manifest = Manifest::new([Guest::app("h", "hostile").memory(2 << 20).args(["cow-hog", "5000", "768"])]);
    let inst = Detached::start(&dir, manifest, false);
    let inst = &inst.0;
    wait_line(inst, "h-0| cow-hog: h-0 ready");
    xtask::ctl::pause(inst, "h-0").unwrap();
    for name in ["sib", "sib-hog"] {
        let cloned = inst.request(&format!("clone h-0 {name}")).unwrap();
        assert!(matches!(&cloned.0, Response::Cloned { cloned: 1, .. }), "{cloned:?}");
    }
    inst.request("resume h-0").unwrap();
    let console = wait_line(inst, "[hv] guest sib-hog stopped: out of memory");
    assert!(console.contains("sib-hog| cow-hog: sib-hog writes to every page it shares"), "{console}");
    for g in ["sib", "h-0"] {
        let console = wait_line(inst, &format!("[hv] guest {g} exited with code "));
        assert!(console.contains(&format!("{g}| cow-hog: {g} pattern intact")), "{console}");
        assert!(console.contains(&format!("[hv] guest {g} exited with code 0")), "{console}");
    }
    let list = inst.list().unwrap();
    let state = |n: &str| list.iter().find(|g| g.name == n).map(|g| g.state);
    assert_eq!(
        (state("sib-hog"), state("sib"), state("h-0")),
        (Some(GuestState::Stopped), Some(GuestState::Exited), Some(GuestState::Exited))
    );
}
