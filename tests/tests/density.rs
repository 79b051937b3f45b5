//! Density: thousands of networked guests on one machine, what each costs,
//! and that memory comes back.

use integration_tests::{Guest, KIB, Live, MIB, Manifest, boot_smp};
use std::time::Duration;

/// The JSON object on a console line that starts with `{`.
fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn lines_with<'a>(console: &'a str, needle: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    console.lines().filter(move |l| l.contains(needle))
}

/// Free guest memory at boot, in KiB, from `[hv] ... K KiB free for guests`,
/// less what the uplink keeps for its queues (`[hv] uplink: ..., K KiB of queues`).
fn free_at_boot_kib(console: &str) -> u64 {
    let line = lines_with(console, " KiB free for guests").next().expect("the boot line");
    let part = line.split(", ").find(|p| p.contains(" KiB free for guests")).unwrap();
    let free: u64 = part.split(' ').next().unwrap().parse().unwrap();
    let uplink = lines_with(console, "[hv] uplink: virtio-net ")
        .next()
        .map_or(0, |l| l.rsplit(", ").next().unwrap().trim_end_matches(" KiB of queues").parse::<u64>().unwrap());
    free - uplink
}

#[test]
fn two_thousand_echo_guests_boot_share_their_image_and_a_sample_answers() {
    const N: u64 = 2000;
    let manifest = Manifest::new([
        Guest::app("e", "echo").count(N as u32).memory(160 * KIB).ring_slots(4).net(),
        Guest::app("check", "echo").memory(MIB).net().args(["check".to_string(), N.to_string(), "10".into()]),
    ]);
    let mut live = Live::start_with_memory(&manifest, 2, Some("1G"));
    assert!(live.wait_for("check-0| check: ", Duration::from_secs(240)), "the checker never reported:\n{}", live.console);
    let report = lines_with(&live.console, "check-0| check: ").next().unwrap().to_string();
    assert!(report.contains(": 10/10 answered"), "{report}\n{}", live.console);
    assert!(lines_with(&live.console, "created 2001 guests").next().is_some(), "{}", live.console);

    live.send("stats\n");
    assert!(live.wait_for(r#"{"event":"machine""#, Duration::from_secs(60)), "no machine line after stats:\n{}", live.console);
    let stats: Vec<serde_json::Value> = lines_with(&live.console, r#""event":"guest_stats""#)
        .map(json)
        .filter(|v| v["guest"].as_str().unwrap().starts_with("e-"))
        .collect();
    // `stats` lists the guests waiting at that moment: all, less any that
    // another CPU is running right then.
    assert!(stats.len() as u64 >= N - 1, "every echo guest is alive and waiting: {} listed", stats.len());
    let field = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let charged: u64 = stats.iter().map(|v| field(v, "memory_bytes")).sum();
    for v in &stats {
        // What an idle echo guest costs (README "Density"): well under 100 KiB.
        assert!(field(v, "memory_bytes") <= 100 * 1024, "{v}");
        assert_eq!(field(v, "memory_bytes"), field(v, "private_bytes") + field(v, "table_bytes"), "{v}");
        assert_eq!(field(v, "ring_bytes"), 2 * 4 * 2048, "{v}");
        // The image's read-only pages and the time page are mapped, not charged.
        assert!(field(v, "shared_bytes") >= 64 * 1024, "{v}");
    }
    // Shared means shared: the machine's used memory is the guests' charges
    // plus one copy of the image, not one per guest.
    let machine = json(lines_with(&live.console, r#"{"event":"machine""#).last().unwrap());
    let used = field(&machine, "total_bytes") - field(&machine, "free_bytes");
    let shared = field(&stats[0], "shared_bytes");
    assert!(used >= charged, "used {used} < charged {charged}");
    assert!(used <= charged + 4 * shared + (4 << 20), "used {used} bytes for {charged} charged: the image is not shared");
}

#[test]
fn a_guest_that_allocates_without_bound_is_stopped_while_its_neighbours_answer() {
    let out = boot_smp(
        "[[guest]]\nname = \"echo\"\napp = \"echo\"\nmemory = \"1 MiB\"\nnet = true\nargs = [\"serve\", \"7\", \"5\"]\n\n\
         [[guest]]\nname = \"hog\"\napp = \"hostile\"\nmemory = \"4 MiB\"\nargs = [\"oom\"]\n\n\
         [[guest]]\nname = \"check\"\napp = \"echo\"\nmemory = \"1 MiB\"\nnet = true\nargs = [\"check\", \"1\", \"5\"]\n",
        120,
        2,
    );
    let c = &out.console;
    assert!(out.success(), "{c}");
    let stopped = lines_with(c, "[hv] guest hog-0 stopped: ").next().unwrap_or_else(|| panic!("hog not stopped:\n{c}"));
    assert!(stopped.contains("out of memory") && stopped.contains("4096 KiB limit"), "{stopped}");
    let hog = json(lines_with(c, r#""guest":"hog-0""#).next().unwrap());
    assert!(hog["memory_bytes"].as_u64().unwrap() <= 4 << 20, "{hog}");
    assert!(lines_with(c, "check-0| check: 5/5 answered").next().is_some(), "{c}");
    assert!(lines_with(c, "[hv] guest echo-0 exited with code 0").next().is_some(), "{c}");
    let last = lines_with(c, "[hv] no guests left: ").next().unwrap();
    assert!(last.ends_with(&format!("; {} KiB free", free_at_boot_kib(c))), "memory was not all returned: {last}");
}

#[test]
fn creating_and_destroying_thousands_of_networked_guests_returns_every_frame() {
    // 3,000 guests with vNICs, created, run to their end and destroyed.
    let out =
        boot_smp("[[guest]]\nname = \"h\"\napp = \"hello\"\ncount = 3000\nmemory = \"128 KiB\"\nring_slots = 2\nnet = true\n", 300, 2);
    let c = &out.console;
    assert!(out.success(), "{}", &c[c.len().saturating_sub(3000)..]);
    let last = lines_with(c, "[hv] no guests left: ").next().unwrap();
    assert!(last.starts_with("[hv] no guests left: 3000 exited, 0 stopped, 0 not started; "), "{last}");
    assert!(last.ends_with(&format!("; {} KiB free", free_at_boot_kib(c))), "memory was not all returned: {last}");
    assert!(lines_with(c, "[hv] h: 3000/3000 guests created").next().is_some(), "progress lines: {}", &c[..c.len().min(3000)]);
}
