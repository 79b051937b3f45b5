//! The benchmarks run end to end on their short setting and write
//! well-formed JSON with both sides' figures; the load-generator guests
//! report sane figures against their servers. (Nothing is timed here:
//! figures come from `cargo xtask bench`, see README.)

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use xtask::bench::{BenchArgs, Which, guest_json, report_path};

/// The tests here boot QEMU machines that compete for the CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(which: Which) -> Value {
    let args = BenchArgs { which, quick: true, accel: xtask::Accel::Auto, smp: 1, memory: "512M".into(), linux_append: None };
    let path = report_path(which);
    let _ = std::fs::remove_file(&path);
    xtask::bench::run(&args).unwrap_or_else(|e| panic!("bench {which:?} failed: {e:#}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} = {x}");
    x
}

fn has_http_app() -> bool {
    xtask::apps().expect("listing apps").iter().any(|a| a == "http")
}

// One test, so the two benchmarks never run side by side and disturb each other.
/// The benchmarks build and boot the same peer files and compete for the
/// CPUs: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn hypercall_and_boot_benchmarks_measure_both_sides_and_write_json() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let h = run(Which::Hypercall);
    assert_eq!(h["bench"], "hypercall");
    for row in ["null_call", "block_pending", "clock"] {
        let r = &h["rows"][row];
        let ours = positive(&r["ours"]["cycles_per_call"], &format!("{row}: our cycles per call"));
        let linux = positive(&r["linux"]["cycles_per_call"], &format!("{row}: Linux cycles per call"));
        let ratio = positive(&r["ratio"], &format!("{row}: ratio"));
        assert!((ratio - ours / linux).abs() < 0.01 * ratio + 0.01, "{row}: ratio {ratio} != {ours} / {linux}");
    }
    assert_eq!(h["ratio"], h["rows"]["null_call"]["ratio"], "the goal row is the null call");

    let b = run(Which::Boot);
    assert_eq!(b["bench"], "boot");
    let rows = b["ours"].as_array().expect("ours is a list of runs");
    assert!(!rows.is_empty());
    for row in rows {
        positive(&row["guests"], "guests");
        positive(&row["per_guest_us"], "per guest");
    }
    positive(&b["linux"]["median_us"], "Linux fork+exec median");
}

/// A load generator's line: non-zero figures, well-formed latencies, no errors.
fn check_load(v: &Value, rate_key: &str, what: &str) {
    assert_eq!(v["errors"], 0, "{what}: {v}");
    positive(&v[rate_key], &format!("{what} {rate_key}"));
    positive(&v["duration_ms"], &format!("{what} duration"));
    let lat = &v["latency_us"];
    let p50 = positive(&lat["p50"], &format!("{what} p50"));
    let p99 = positive(&lat["p99"], &format!("{what} p99"));
    let max = positive(&lat["max"], &format!("{what} max"));
    assert!(p50 <= p99 && p99 <= max, "{what}: {lat}");
}

#[test]
fn net_benchmark_measures_our_guests_and_the_linux_peer_and_writes_json() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n = run(Which::Net);
    assert_eq!(n["bench"], "net");
    let not_measured = n["not_measured"].as_array().expect("not_measured is a list");
    // Our side: echo-bench against echo, every setting.
    let echo = n["ours"]["echo"].as_array().expect("ours.echo is a list");
    let settings = n["settings"]["echo"]["connections"].as_array().expect("settings");
    assert_eq!(echo.len(), settings.len());
    for (v, c) in echo.iter().zip(settings) {
        assert_eq!(v["bench"], "echo", "{v}");
        assert_eq!(&v["connections"], c);
        check_load(v, "round_trips_per_sec", "ours echo");
        positive(&v["round_trips"], "ours echo round trips");
        positive(&v["bytes_per_sec"], "ours echo bytes/s");
    }
    if has_http_app() {
        let http = &n["ours"]["http"];
        check_load(http, "requests_per_sec", "ours http");
        positive(&http["status"]["200"], "ours http 200s");
        let host = &n["ours"]["host_http"];
        if host.get("not_measured").is_none() {
            positive(&host["requests_per_sec"], "host wrk -> ours");
        }
        let steady = &n["ours"]["host_load"];
        if steady.get("not_measured").is_none() {
            positive(&steady["requests_per_sec"], "host client -> ours");
            assert_eq!(steady["errors"], 0, "host client -> ours: {steady}");
        }
        // Through a tap: a figure, or why not (no root, no /dev/net/tun).
        let tap = &n["ours"]["host_tap"];
        match tap.get("not_measured") {
            Some(why) => assert!(
                not_measured.iter().any(|x| x["side"] == "ours" && x["what"] == "host_tap" && x["reason"] == *why),
                "ours host_tap: {why} is missing from not_measured"
            ),
            None => {
                positive(&tap["requests_per_sec"], "host wrk via a tap -> ours");
                assert_eq!(tap["errors"], 0, "host wrk via a tap -> ours: {tap}");
            }
        }
    }
    // The Linux side: a figure, or a reason in not_measured.
    for (key, m) in [
        ("echo", &n["linux"]["echo"][0]),
        ("http", &n["linux"]["http"]),
        ("host_http", &n["linux"]["host_http"]),
        ("host_tap", &n["linux"]["host_tap"]),
    ] {
        match m.get("not_measured") {
            Some(why) => assert!(
                not_measured.iter().any(|x| x["side"] == "linux" && x["reason"] == *why),
                "linux {key}: {why} is missing from not_measured"
            ),
            None => {
                let rate = m["round_trips_per_sec"].as_f64().or(m["requests_per_sec"].as_f64());
                assert!(rate.is_some_and(|r| r > 0.0), "linux {key}: {m}");
            }
        }
    }
    // The streaming rows: a figure or a reason, on every side and setting.
    for (side, key) in [("ours", "bulk"), ("linux", "bulk"), ("ours", "switch"), ("ours", "memcpy")] {
        let rows = n[side][key].as_array().unwrap_or_else(|| panic!("{side}.{key} is a list"));
        assert!(!rows.is_empty(), "{side}.{key}");
        for m in rows {
            match m.get("not_measured") {
                Some(why) => assert!(not_measured.iter().any(|x| x["reason"] == *why), "{side} {key}: {why} is missing from not_measured"),
                None => {
                    let rate = m["mbytes_per_sec"].as_f64().or(m["gbytes_per_sec"].as_f64());
                    assert!(rate.is_some_and(|r| r > 0.0), "{side} {key}: {m}");
                }
            }
        }
    }
    for goal in
        ["bulk_1_conn", "switch_65535", "host_http_p99", "host_http_max", "host_load_p99", "host_load_max", "host_tap_p99", "host_tap_max"]
    {
        assert!(n["goal"][goal].is_object(), "goal {goal}: {}", n["goal"]);
    }
    // Ratios are ours / linux where both were measured.
    let ours = n["ours"]["echo"][0]["round_trips_per_sec"].as_f64().unwrap();
    if let Some(linux) = n["linux"]["echo"][0]["round_trips_per_sec"].as_f64() {
        let ratio = n["ratio"][format!("echo_{}_conn", settings[0]).as_str()]
            .as_f64()
            .or_else(|| n["ratio"][format!("echo_{}_conns", settings[0]).as_str()].as_f64())
            .expect("a ratio for the first echo setting");
        assert!((ratio - ours / linux).abs() < 0.01 * ratio + 0.01, "ratio {ratio} != {ours} / {linux}");
    }
}

#[test]
fn load_generators_count_round_trips_and_requests_without_errors() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let http = has_http_app();
    let mut manifest = String::from(
        r#"
        [[guest]]
        name = "echo"
        app = "echo"
        tenant = "t"
        memory = "16 MiB"
        args = ["serve", "7"]

        [[guest]]
        name = "eb"
        app = "echo-bench"
        tenant = "t"
        memory = "16 MiB"
        args = ["10.0.0.2", "7", "1,4", "3000", "100x"]

        [[guest]]
        name = "usage"
        app = "echo-bench"
        tenant = "t"
        args = ["10.0.0.2", "7"]
        "#,
    );
    if http {
        manifest += r#"
        [[guest]]
        name = "http"
        app = "http"
        tenant = "t"
        memory = "32 MiB"
        args = ["80", "300"]

        [[guest]]
        name = "load"
        app = "http-load"
        tenant = "t"
        memory = "16 MiB"
        args = ["10.0.0.5", "80", "/", "3", "50x", "200"]

        [[guest]]
        name = "load404"
        app = "http-load"
        tenant = "t"
        memory = "16 MiB"
        args = ["10.0.0.5", "80", "/nothing-here", "2", "20x"]
        "#;
    }
    let mut live = integration_tests::Live::start(&manifest, 2);
    let ends: Vec<&str> = if http { vec!["eb-0", "usage-0", "load-0", "load404-0"] } else { vec!["eb-0", "usage-0"] };
    let mut ended = Vec::new();
    while ended.len() < ends.len() {
        assert!(live.wait_for("[hv] guest ", Duration::from_secs(120)), "timed out:\n{}", live.console);
        for g in &ends {
            if !ended.contains(g) && live.console.contains(&format!("[hv] guest {g} exited with code")) {
                ended.push(g);
            }
        }
    }
    let c = &live.console;
    assert!(c.contains("[hv] guest eb-0 exited with code 0"), "{c}");
    assert!(c.contains("usage-0| usage: echo-bench IP PORT"), "{c}");
    assert!(c.contains("[hv] guest usage-0 exited with code 2"), "{c}");
    let lines = guest_json(c);
    let echo: Vec<&Value> = lines.iter().filter(|(g, _)| g == "eb-0").map(|(_, v)| v).collect();
    assert_eq!(echo.len(), 2, "{c}");
    for (v, conns) in echo.iter().zip([1, 4]) {
        assert_eq!(v["bench"], "echo");
        assert_eq!(v["connections"], conns);
        assert_eq!(v["message_bytes"], 3000);
        // A count run: exactly 100 round trips per connection.
        assert_eq!(v["round_trips"], 100 * conns, "{v}");
        check_load(v, "round_trips_per_sec", "echo-bench");
    }
    if http {
        assert!(c.contains("[hv] guest load-0 exited with code 0"), "{c}");
        let load = lines.iter().find(|(g, _)| g == "load-0").map(|(_, v)| v).unwrap_or_else(|| panic!("{c}"));
        assert_eq!(load["requests"], 150, "{load}");
        assert_eq!(load["status"]["200"], 150, "{load}");
        check_load(load, "requests_per_sec", "http-load");
        // Each response: a head and a 300-byte body.
        assert!(load["bytes_per_sec"].as_f64().unwrap() > 300.0 * load["requests_per_sec"].as_f64().unwrap());
        let nf = lines.iter().find(|(g, _)| g == "load404-0").map(|(_, v)| v).unwrap_or_else(|| panic!("{c}"));
        assert_eq!(nf["status"]["404"], 40, "{nf}");
        assert_eq!(nf["errors"], 0, "{nf}");
    }
}

/// The streaming guests of `bench net` (bulk TCP, raw frames through the
/// switch, memcpy): every byte is counted and accounted for, a frame size
/// the vNIC does not carry is refused, and a misused mode says how to use it.
#[test]
fn bulk_raw_frame_and_memcpy_guests_account_for_every_byte() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The raw pair has the default rings: their largest frame is
    // `max_frame(16)` (16,380 bytes); 64 KiB is more than they carry.
    let max = abi::ring::max_frame(abi::ring::SLOTS_DEFAULT);
    let too_big = 64 << 10;
    let manifest = format!(
        r#"
        [[guest]]
        name = "sink"
        app = "echo"
        tenant = "bulk"
        memory = "32 MiB"
        ring_slots = 64
        args = ["sink", "9", "65536"]

        [[guest]]
        name = "bulk"
        app = "echo-bench"
        tenant = "bulk"
        memory = "32 MiB"
        ring_slots = 64
        args = ["bulk", "10.0.0.2", "9", "1,3", "3000000", "100000"]

        [[guest]]
        name = "rawsink"
        app = "echo"
        tenant = "raw"
        memory = "16 MiB"
        args = ["raw-sink"]

        [[guest]]
        name = "rawsend"
        app = "echo-bench"
        tenant = "raw"
        memory = "16 MiB"
        args = ["raw-send", "{max},{too_big},60", "300", "100"]

        [[guest]]
        name = "memcpy"
        app = "bench"
        memory = "16 MiB"
        args = ["memcpy", "1514,65536", "50"]

        [[guest]]
        name = "usage"
        app = "echo-bench"
        args = ["bulk", "10.0.0.2"]
        "#
    );
    let mut live = integration_tests::Live::start(manifest.as_str(), 2);
    let ends = ["bulk-0", "rawsink-0", "rawsend-0", "memcpy-0", "usage-0"];
    while !ends.iter().all(|g| live.console.contains(&format!("[hv] guest {g} exited with code"))) {
        assert!(live.wait_for("[hv] guest ", Duration::from_secs(180)), "timed out:\n{}", live.console);
    }
    let c = &live.console;
    for g in ["bulk-0", "rawsink-0", "rawsend-0", "memcpy-0"] {
        assert!(c.contains(&format!("[hv] guest {g} exited with code 0")), "{g}:\n{c}");
    }
    assert!(c.contains("usage-0| usage: echo-bench bulk IP PORT"), "{c}");
    let lines = guest_json(c);
    let of = |who: &str, bench: &str| -> Vec<Value> {
        lines.iter().filter(|(g, v)| g == who && v["bench"] == bench).map(|(_, v)| v.clone()).collect()
    };
    // Bulk: 3,000,000 bytes per run, split over the connections, each
    // connection's count confirmed by the sink.
    let bulk = of("bulk-0", "bulk");
    assert_eq!(bulk.len(), 2, "{c}");
    for (v, conns) in bulk.iter().zip([1u64, 3]) {
        assert_eq!(v["connections"], conns, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["bytes"], 3_000_000, "{v}");
        assert_eq!(v["bytes_per_connection"], 3_000_000 / conns, "{v}");
        positive(&v["mbytes_per_sec"], "bulk MB/s");
        let (mb, gbit) = (v["mbytes_per_sec"].as_f64().unwrap(), v["gbits_per_sec"].as_f64().unwrap());
        assert!((gbit - mb * 8.0 / 1e3).abs() < 1e-3 + 1e-3 * gbit, "{v}");
    }
    // Raw frames: what arrived plus what was lost is what was sent; the
    // oversized size is refused, the rest measured.
    let sent = of("rawsend-0", "switch-send");
    let got = of("rawsink-0", "switch");
    assert_eq!(sent.len(), 3, "{c}");
    assert_eq!(sent[1]["frame_bytes"], too_big);
    assert_eq!(sent[1]["max_frame"], max);
    assert!(sent[1]["refused"].is_string(), "{}", sent[1]);
    assert_eq!(got.len(), 2, "{c}");
    for (s, g) in [(&sent[0], &got[0]), (&sent[2], &got[1])] {
        assert_eq!(g["phase"], s["phase"], "{g}");
        assert_eq!(g["frame_bytes"], s["frame_bytes"], "{g}");
        assert_eq!(g["sent"], s["frames"], "{g} {s}");
        let frames = positive(&g["frames"], "raw frames received") as u64;
        assert_eq!(frames + g["lost"].as_u64().unwrap(), s["frames"].as_u64().unwrap(), "{g}");
        assert_eq!(g["bytes"].as_u64().unwrap(), frames * s["frame_bytes"].as_u64().unwrap(), "{g}");
        assert_eq!(g["ring_errors"], 0, "{g}");
    }
    let memcpy = of("memcpy-0", "memcpy");
    assert_eq!(memcpy.iter().map(|v| v["bytes"].as_u64().unwrap()).collect::<Vec<_>>(), [1514, 65536], "{c}");
    for v in &memcpy {
        positive(&v["gbytes_per_sec"], "memcpy GB/s");
        positive(&v["copies"], "memcpy copies");
    }
}

#[test]
fn latency_benchmark_measures_both_sides_and_writes_json() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let l = run(Which::Latency);
    assert_eq!(l["bench"], "latency");
    assert_eq!(l["settings"]["spinners"], 2, "2 spinners per CPU, 1 CPU");
    for side in ["ours", "linux"] {
        let sleep = &l[side]["sleep"];
        assert_eq!((sleep["bench"].as_str(), sleep["iterations"].as_u64()), (Some("sleep-lateness"), Some(200)), "{side}: {sleep}");
        let (p50, p99, max) = (&sleep["lateness_us"]["p50"], &sleep["lateness_us"]["p99"], &sleep["lateness_us"]["max"]);
        let (p50, p99, max) = (p50.as_f64().unwrap(), p99.as_f64().unwrap(), max.as_f64().unwrap());
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{side}: lateness quantiles out of order: {sleep}");
        for echo in ["echo", "echo_spinners"] {
            check_load(&l[side][echo], "round_trips_per_sec", &format!("{side} {echo}"));
        }
    }
    let goal = &l["goal"]["lateness_p99_at_most_linux"];
    assert_eq!(goal["met"].as_bool(), Some(goal["ours_us"].as_f64() <= goal["linux_us"].as_f64()), "{goal}");
}
