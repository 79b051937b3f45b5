//! The hostile-guest suite: every attack of `apps/hostile` in one boot,
//! beside victims that must keep serving (an echo pair under load and a
//! ticker that must keep its rhythm), on a hypervisor whose own memory must
//! not grow.

use abi::report::{GUEST_STATS_PREFIX, GuestState, GuestStats, MACHINE_PREFIX, MachineStats};
use abi::stop::{Access, HypercallError as H, Instruction as I, StopReason as R};
use integration_tests::{Guest, KIB, Live, MIB, Manifest};
use std::time::Duration;
use xtask::manifest::Limits;

/// Attacks that must get the attacker stopped, and the reason it must be
/// stopped for (matched on the `stop_reason` of its `guest_stats` record,
/// not on the sentence, which is for people).
#[allow(clippy::type_complexity)]
const STOPPED: &[(&str, fn(&R) -> bool)] = &[
    ("pagefault", |r| matches!(r, R::PageFault { access: Access::Write, address: 0x7000_dead_0000, protected: false, .. })),
    ("kernel-read", |r| matches!(r, R::PageFault { access: Access::Read, address: 0xffff_ffff_8000_0000, protected: false, .. })),
    // The tests force page-table isolation: the direct map (every tenant's
    // memory) is not even mapped in a guest's tables, so the fault is on an
    // unmapped address, not a protected one.
    ("direct-map-write", |r| matches!(r, R::PageFault { access: Access::Write, address: 0xffff_8000_0010_0000, protected: false, .. })),
    ("write-text", |r| matches!(r, R::PageFault { access: Access::Write, protected: true, .. })),
    ("bad-stack", |r| matches!(r, R::PageFault { access: Access::Write, address: 0x8, protected: false, .. })),
    ("hlt", |r| matches!(r, R::PrivilegedInstruction { instruction: I::Hlt, .. })),
    ("cli", |r| matches!(r, R::PrivilegedInstruction { instruction: I::Cli, .. })),
    ("wrmsr", |r| matches!(r, R::PrivilegedInstruction { instruction: I::Wrmsr, .. })),
    ("cr3", |r| matches!(r, R::PrivilegedInstruction { instruction: I::MovToControlRegister, .. })),
    ("debug-regs", |r| matches!(r, R::PrivilegedInstruction { instruction: I::MovDebugRegister, .. })),
    ("in", |r| matches!(r, R::PrivilegedInstruction { instruction: I::PortIo, .. })),
    ("out", |r| matches!(r, R::PrivilegedInstruction { instruction: I::PortIo, .. })),
    ("lgdt", |r| matches!(r, R::PrivilegedInstruction { instruction: I::SystemTable, .. })),
    ("int", |r| matches!(r, R::InterruptNotAllowed { vector: 0x80, .. })),
    ("divide", |r| matches!(r, R::Exception { vector: 0, .. })),
    ("ud2", |r| matches!(r, R::Exception { vector: 6, .. })),
    ("stack", |r| matches!(r, R::StackOverflow { .. })),
    ("bad-pointer", |r| matches!(r, R::BadHypercall(H::ConsoleWriteBuffer { address: 0xffff_ffff_8000_0000, length: 0x10, .. }))),
    ("wrap-pointer", |r| matches!(r, R::BadHypercall(H::ConsoleWriteBuffer { address: 0xffff_ffff_ffff_fff7, length: 0x40, .. }))),
    ("huge-length", |r| matches!(r, R::BadHypercall(H::ConsoleWriteLength { length: 0x100_0000_0000, max: 4096 }))),
    ("bad-hypercall", |r| matches!(r, R::BadHypercall(H::UnknownNumber { number: 0xdead }))),
    ("hypercall-garbage", |r| matches!(r, R::BadHypercall(H::UnknownNumber { .. }))),
    ("discard-text", |r| matches!(r, R::BadHypercall(H::Discard { .. }))),
    ("oom", |r| matches!(r, R::OutOfMemory { limit_bytes: 262_144, .. })),
    // Exits with RFLAGS.DF and AC set (apps/hostile/src/flags.rs). Where
    // the CPU decides the vector (TCG and hardware differ for icebp and a
    // non-canonical stack), any reason is accepted: what matters is that
    // the hypervisor stopped the guest and kept running.
    ("df-ud2", |r| matches!(r, R::Exception { vector: 6, .. })),
    ("df-divide", |r| matches!(r, R::Exception { vector: 0, .. })),
    ("df-hlt", |r| matches!(r, R::PrivilegedInstruction { instruction: I::Hlt, .. })),
    ("df-int3", |r| matches!(r, R::InterruptNotAllowed { vector: 3, .. })),
    ("df-icebp", |_| true),
    ("df-pagefault", |r| matches!(r, R::PageFault { access: Access::Write, address: 0x7000_dead_0000, protected: false, .. })),
    ("df-x87", |r| matches!(r, R::Exception { vector: 16, .. })),
    ("df-stack-segment", |_| true),
    ("df-noncanonical", |r| matches!(r, R::GeneralProtection { .. })),
];

/// An attacker's rate limits, from the defaults.
type LimitsOf = fn(Limits) -> Limits;

/// Attacks the hypervisor contains without stopping the attacker (it exits
/// 0 by itself), with a vNIC in the victims' tenant where `net`, and its
/// rate limits.
const CONTAINED: &[(&str, bool, LimitsOf)] = &[
    ("ring-lie", true, |l| l),
    ("ring-rewind", true, |l| l),
    ("ring-bad-length", true, |l| l),
    // Limits set low enough that a flood exceeds them however slow the host
    // makes it (the defaults are tested in the host tests of `limit`).
    ("nic-flood", true, |l| Limits { nic_broadcasts: 100, ..l }),
    ("kick-storm", true, |l| Limits { notifications: 1000, ..l }),
    ("console-flood", false, |l| Limits { console_bytes: 8 * KIB, ..l }),
    ("mov-ss-syscall", false, |l| l),
    // Each checks that every fresh page it was given reads zero.
    ("df-resume", false, |l| l),
    ("df-forge", false, |l| l),
    // Hypercalls with vector registers full and control words changed:
    // after each, every register is zero or the caller's own value and
    // both control words are kept; interrupts keep everything.
    ("fpu-clobber", false, |l| l),
    // Hypercalls with every SSE and x87 exception unmasked and one
    // pending: the hypervisor must not fault.
    ("fpu-unmasked", false, |l| l),
];

/// Attacks that never end; they must only cost their share of the CPU.
const FOREVER: &[&str] = &["spin", "yield-storm", "block-storm", "block-forever"];

fn record<T: serde::de::DeserializeOwned>(line: &str) -> T {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn every_attack_is_stopped_or_contained_while_the_victims_keep_serving() {
    // Victims first: the echo server is 10.0.0.2 in tenant "v".
    let mut guests = vec![
        Guest::app("echo", "echo").tenant("v").memory(4 * MIB).args(["serve", "7"]),
        Guest::app("client", "echo").tenant("v").memory(4 * MIB).args(["client", "10.0.0.2", "2000"]),
        Guest::app("tick", "worker").memory(MIB).args(["tick", "10", "500"]),
        Guest::app("secret", "hostile").memory(MIB).args(["keep-secret", "15"]),
    ];
    let attacker = |attack: &str| Guest::app(&format!("a-{attack}"), "hostile").args([attack]);
    for (attack, _) in STOPPED {
        // Enough memory that the stack reaches its guard page before the limit.
        let memory = if *attack == "stack" { 2 * MIB } else { 256 * KIB };
        guests.push(attacker(attack).memory(memory));
    }
    for (attack, net, limits) in CONTAINED {
        // The flag attacks fault in a megabyte of fresh pages.
        let mut g = attacker(attack).memory(if attack.starts_with("df-") { 2 * MIB } else { MIB });
        if *net {
            g = g.tenant("v");
        }
        g.limits = limits(g.limits);
        guests.push(g);
    }
    for attack in FOREVER {
        guests.push(attacker(attack).memory(256 * KIB));
    }

    let mut live = Live::start(Manifest::new(guests), 2);
    let wait = |live: &mut Live, needle: &str| {
        let seen = live.console.contains(needle) || live.wait_for(needle, Duration::from_secs(240));
        assert!(seen, "no {needle:?} in:\n{}", live.console);
    };
    // The victims finish their work...
    wait(&mut live, "client-0| client: 2000 messages");
    wait(&mut live, "tick-0| ticked 500 times");
    wait(&mut live, "[hv] guest secret-0 exited with code 0");
    // ... and every finite attack has ended.
    for (attack, _) in STOPPED {
        wait(&mut live, &format!("[hv] guest a-{attack}-0 stopped: "));
    }
    for (attack, _, _) in CONTAINED {
        wait(&mut live, &format!("[hv] guest a-{attack}-0 exited with code 0"));
    }
    live.send("stats\n");
    // A new machine line (one was printed at creation) ends the listing.
    assert!(live.wait_for(MACHINE_PREFIX, Duration::from_secs(60)), "no stats:\n{}", live.console);
    let c = live.console.clone();
    let line = |needle: &str| c.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{c}"));
    // Records are lines of their own; a guest's text always has its `NAME| ` in front.
    let records: Vec<GuestStats> = c.lines().filter(|l| l.starts_with(GUEST_STATS_PREFIX)).map(record).collect();
    let stats = |guest: &str| records.iter().find(|s| s.guest == guest).unwrap_or_else(|| panic!("no stats for {guest}:\n{c}"));

    for (attack, expected) in STOPPED {
        let s = stats(&format!("a-{attack}-0"));
        let reason = s.stop_reason.as_ref().unwrap_or_else(|| panic!("{attack}: no stop reason in {s:?}"));
        assert!(s.state == GuestState::Stopped && expected(reason), "{attack}: stopped for {reason:?}");
        // People read the reason on the console.
        line(&format!("[hv] guest a-{attack}-0 stopped: {reason}"));
        // The attack really started (the guest printed before attacking).
        line(&format!("a-{attack}-0| a-{attack}-0: trying {attack}"));
        assert!(!c.contains(&format!("a-{attack}-0: survived")), "{attack} was not stopped");
    }
    for (attack, _, _) in CONTAINED {
        let s = stats(&format!("a-{attack}-0"));
        assert_eq!((s.state, s.exit_code, &s.stop_reason), (GuestState::Exited, Some(0), &None), "{attack}");
    }
    line("[hv] guest a-ring-lie-0 vNIC disconnected: vNIC TX ring: producer index 1000 is not within 16 of consumer index 0");
    line("[hv] guest a-ring-rewind-0 vNIC disconnected: vNIC TX ring: producer index 0 is not within 16 of consumer index 2");
    assert_eq!(stats("a-ring-bad-length-0").ring_errors, 2, "both bad lengths counted, the vNIC kept");
    assert!(!c.contains("a-ring-bad-length-0 vNIC disconnected"));
    let flood = stats("a-nic-flood-0");
    assert!(flood.nic_limited > 0, "the broadcast flood was not limited: {flood:?}");
    line("a-nic-flood-0| a-nic-flood-0: flooded ");
    let kicks = stats("a-kick-storm-0");
    assert!(kicks.kicks_ignored > 0, "{kicks:?}");
    line("[hv] guest a-console-flood-0 console over its limit of 8192 bytes/s: dropping");
    assert!(stats("a-console-flood-0").console_dropped > 0);
    line("a-mov-ss-syscall-0| a-mov-ss-syscall-0: mov ss + syscall returned 0");
    // Exits with DF and AC set gave the guest only zeroed pages and fresh
    // page tables, and the victim's memory never changed.
    line("a-df-resume-0| a-df-resume-0: df-resume: hypercall returned 0, spun 200 ms, 256 fresh pages all zero");
    line("a-df-forge-0| a-df-forge-0: df-forge: sprayed and gave back 262144 bytes; ");
    line("secret-0| secret-0: secret intact after ");
    for attack in FOREVER {
        assert!(!c.contains(&format!("[hv] guest a-{attack}-0 stopped")), "{attack} should still be running");
    }

    // The victims kept serving: byte-exact echoes, and a ticker never more
    // than a bounded delay late despite spinners, storms and floods.
    let client = line("client-0| client: 2000 messages");
    assert!(client.contains("echoed byte-exact"), "{client}");
    let tick = line("tick-0| ticked 500 times, late by at most ");
    let late_us: u64 = tick.rsplit("most ").next().unwrap().trim_end_matches(" us").parse().unwrap();
    assert!(late_us < 500_000, "the ticker was {late_us} us late: {tick}");

    // The hypervisor's own memory did not grow: its heap now holds no more
    // than with every guest just created (attackers' records are gone).
    let machines: Vec<MachineStats> = c.lines().filter(|l| l.starts_with(MACHINE_PREFIX)).map(record).collect();
    let (first, last) = (&machines[0], machines.last().unwrap());
    let (before, after) = (first.hv_heap_used_bytes, last.hv_heap_used_bytes);
    assert!(after <= before + 64 * 1024, "hypervisor heap grew from {before} to {after} bytes");
    assert_eq!(last.stopped, STOPPED.len() as u64, "{last:?}");
}
