//! The hostile-guest suite: every attack of `apps/hostile` in one boot,
//! beside victims that must keep serving (an echo pair under load and a
//! ticker that must keep its rhythm), on a hypervisor whose own memory must
//! not grow.

use std::time::Duration;

use integration_tests::{Guest, KIB, Live, MIB, Manifest};
use xtask::manifest::Limits;

/// Attacks that must get the attacker stopped, and the start of the reason.
const STOPPED: &[(&str, &str)] = &[
    ("pagefault", "page fault: write to unmapped address 0x7000dead0000"),
    ("kernel-read", "page fault: read to unmapped address 0xffffffff80000000"),
    // The tests force page-table isolation: the direct map (every tenant's
    // memory) is not even mapped in a guest's tables, so the fault is on an
    // unmapped address, not a protected one.
    ("direct-map-write", "page fault: write to unmapped address 0xffff800000100000"),
    ("write-text", "page fault: write to protected address"),
    ("bad-stack", "page fault: write to unmapped address 0x8 "),
    ("hlt", "privileged instruction hlt"),
    ("cli", "privileged instruction cli"),
    ("wrmsr", "privileged instruction wrmsr"),
    ("cr3", "privileged instruction mov to control register"),
    ("debug-regs", "privileged instruction mov debug register"),
    ("in", "privileged instruction in/out (port I/O)"),
    ("out", "privileged instruction in/out (port I/O)"),
    ("lgdt", "privileged instruction system table instruction"),
    ("int", "int 0x80 is not allowed"),
    ("divide", "divide error"),
    ("ud2", "invalid opcode"),
    ("stack", "stack overflow"),
    ("bad-pointer", "bad hypercall console_write: buffer 0xffffffff80000000+0x10"),
    ("wrap-pointer", "bad hypercall console_write: buffer 0xfffffffffffffff7+0x40"),
    ("huge-length", "bad hypercall console_write: length 0x10000000000 exceeds 4096"),
    ("bad-hypercall", "bad hypercall: unknown number 0xdead"),
    ("hypercall-garbage", "bad hypercall: unknown number 0x"),
    ("discard-text", "bad hypercall discard: 0x"),
    ("oom", "out of memory"),
    // Exits with RFLAGS.DF and AC set (apps/hostile/src/flags.rs). Where
    // the CPU decides the vector (TCG and hardware differ for icebp and a
    // non-canonical stack), any reason is accepted: what matters is that
    // the hypervisor stopped the guest and kept running.
    ("df-ud2", "invalid opcode"),
    ("df-divide", "divide error"),
    ("df-hlt", "privileged instruction hlt"),
    ("df-int3", "int 0x3 is not allowed"),
    ("df-icebp", ""),
    ("df-pagefault", "page fault: write to unmapped address 0x7000dead0000"),
    ("df-x87", "x87 floating-point exception"),
    ("df-stack-segment", ""),
    ("df-noncanonical", "general protection fault"),
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
];

/// Attacks that never end; they must only cost their share of the CPU.
const FOREVER: &[&str] = &["spin", "yield-storm", "block-storm", "block-forever"];

fn json(line: &str) -> serde_json::Value {
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
    assert!(live.wait_for(r#"{"event":"machine""#, Duration::from_secs(60)), "no stats:\n{}", live.console);
    let c = live.console.clone();
    let line = |needle: &str| c.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{c}"));
    // Records are lines of their own; a guest's text always has its `NAME| ` in front.
    let stats = |guest: &str| {
        let start = format!(r#"{{"event":"guest_stats","guest":"{guest}""#);
        json(c.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no stats for {guest}:\n{c}")))
    };

    for (attack, reason) in STOPPED {
        let l = line(&format!("[hv] guest a-{attack}-0 stopped: "));
        assert!(l.contains(reason), "{attack}: {l}");
        // The attack really started (the guest printed before attacking).
        line(&format!("a-{attack}-0| a-{attack}-0: trying {attack}"));
        assert!(!c.contains(&format!("a-{attack}-0: survived")), "{attack} was not stopped");
    }
    line("[hv] guest a-ring-lie-0 vNIC disconnected: vNIC TX ring: producer index 1000 is not within 16 of consumer index 0");
    line("[hv] guest a-ring-rewind-0 vNIC disconnected: vNIC TX ring: producer index 0 is not within 16 of consumer index 2");
    assert_eq!(stats("a-ring-bad-length-0")["ring_errors"], 2, "both bad lengths counted, the vNIC kept");
    assert!(!c.contains("a-ring-bad-length-0 vNIC disconnected"));
    let flood = stats("a-nic-flood-0");
    assert!(flood["nic_limited"].as_u64().unwrap() > 0, "the broadcast flood was not limited: {flood}");
    line("a-nic-flood-0| a-nic-flood-0: flooded ");
    let kicks = stats("a-kick-storm-0");
    assert!(kicks["kicks_ignored"].as_u64().unwrap() > 0, "{kicks}");
    line("[hv] guest a-console-flood-0 console over its limit of 8192 bytes/s: dropping");
    assert!(stats("a-console-flood-0")["console_dropped"].as_u64().unwrap() > 0);
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
    let machines: Vec<serde_json::Value> = c.lines().filter(|l| l.starts_with(r#"{"event":"machine""#)).map(json).collect();
    let (first, last) = (&machines[0], machines.last().unwrap());
    let used = |v: &serde_json::Value| v["hv_heap_used_bytes"].as_u64().unwrap();
    assert!(used(last) <= used(first) + 64 * 1024, "hypervisor heap grew from {} to {} bytes", used(first), used(last));
    assert_eq!(last["stopped"], STOPPED.len() as u64, "{last}");
}
