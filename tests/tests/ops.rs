//! Operating a host: debugging with gdb (the control plane's other parts are
//! still to come, see issue 8).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use abi::control::{ControlError, Reason, RequestError, Response};
use abi::report::{GUEST_STATS_PREFIX, GuestRow, GuestState, GuestStats};
use abi::stop::StopReason;
use integration_tests::{Detached, Guest, Manifest, free_port, workspace_root};
use xtask::ctl::StartSpec;

/// A guest of `image` with no vNIC and no arguments.
fn spec<'a>(name: &'a str, image: &'a std::path::Path, memory: u64) -> StartSpec<'a> {
    StartSpec { name, image, elf: None, memory, tenant: None, options: Default::default(), args: &[], env: &[] }
}

/// A GDB remote-protocol packet: `$data#checksum`.
fn packet(data: &str) -> Vec<u8> {
    let sum = data.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${data}#{sum:02x}").into_bytes()
}

#[test]
fn run_gdb_starts_paused_with_a_gdbstub_and_says_how_to_attach() {
    xtask::ensure_qemu().unwrap();
    let port = free_port();
    let cfg = xtask::RunConfig {
        manifest: xtask::ManifestSource::Built(Manifest::new([Guest::app("hello", "hello")])),
        exit_when_idle: true,
        gdb: Some(port),
        ..xtask::RunConfig::default()
    };
    let prepared = xtask::prepare(&cfg).unwrap();
    assert!(prepared.summary.contains(&format!("target remote 127.0.0.1:{port}")), "{}", prepared.summary);
    assert!(prepared.summary.contains("add-symbol-file ") && prepared.summary.contains("release/hello"), "{}", prepared.summary);

    let mut qemu = xtask::runner::Qemu::spawn(&prepared.qemu_args, xtask::runner::Options::default()).unwrap();
    // Paused: the hypervisor prints nothing until a debugger continues it.
    assert!(qemu.next_line(Duration::from_secs(2)).is_none(), "the machine ran before gdb attached");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut gdb = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("no gdbstub on port {port}: {e}"),
        }
    };
    gdb.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Why is it stopped? A paused machine answers with a stop reply (S/T).
    gdb.write_all(&packet("?")).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.contains(&b'#') {
        let n = gdb.read(&mut buf).expect("a reply from the gdbstub");
        assert!(n > 0, "gdbstub closed");
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert!(reply.contains("$T") || reply.contains("$S"), "not a stop reply: {reply:?}");
    // Nothing ran yet; continuing boots the hypervisor and its guest.
    gdb.write_all(&packet("c")).unwrap();
    let ran = qemu.wait_for(|l| l == "[hv] guest hello-0 exited with code 0", Duration::from_secs(120)).is_some();
    assert!(ran, "the machine did not run after continue");
}

/// A hypervisor detached with `manifest` (2 CPUs, mitigations forced) in
/// its own directory `target/itest/detached-NAME-PID`, shut down when
/// dropped.
fn detached(name: &str, manifest: Manifest) -> (Detached, std::path::PathBuf) {
    let dir = workspace_root().join(format!("target/itest/detached-{name}-{}", std::process::id()));
    (Detached::start(&dir, manifest, true), dir)
}

/// Why `guest` was stopped: the `stop_reason` of its last `guest_stats`
/// record on the console (printed when it ends; waited for).
fn stopped_for(inst: &xtask::ctl::Instance, guest: &str) -> StopReason {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = std::fs::read_to_string(inst.console()).unwrap_or_default();
        let ended = console
            .lines()
            .filter(|l| l.starts_with(GUEST_STATS_PREFIX))
            .map(|l| serde_json::from_str::<GuestStats>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .rfind(|s| s.guest == guest && s.state == GuestState::Stopped);
        if let Some(reason) = ended.and_then(|s| s.stop_reason) {
            return reason;
        }
        assert!(Instant::now() < deadline, "no record of {guest} stopped in:\n{console}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn echo(port: u16, msg: &[u8]) -> Vec<u8> {
    integration_tests::echo(port, msg).expect("the echo through the forwarded port")
}

#[test]
fn a_detached_hypervisor_is_listed_measured_and_stopped_guest_by_guest_through_ctl() {
    let port = free_port();
    let (inst, dir) = detached(
        "ctl",
        Manifest::new([Guest::app("a", "echo").tenant("a").port(port, 7), Guest::app("b", "echo").tenant("b"), Guest::app("h", "hello")]),
    );
    let ctl = |req: &str| inst.0.request(req);
    let guest =
        |list: &[GuestRow], name: &str| list.iter().find(|g| g.name == name).cloned().unwrap_or_else(|| panic!("no {name} in {list:?}"));

    let list = inst.0.list().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!((guest(&list, "a-0").tenant, guest(&list, "b-0").tenant), (Some(0), Some(1)), "{list:?}");

    // Traffic flows to a-0 from the host, and its counters move.
    assert_eq!(echo(port, b"hello through the uplink"), b"hello through the uplink");
    let a = guest(&inst.0.list().unwrap(), "a-0");
    assert!(a.sent_frames > 0 && a.received_frames > 0, "{a:?}");
    // A capture of a-0 while the host talks to it: a real pcap reader
    // finds the TCP segments to port 7 with our payload in them.
    let capture = {
        let inst = inst.0.clone();
        std::thread::spawn(move || inst.capture("a-0", 200, 4))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo(port, b"captured hello"), b"captured hello");
    let (frames, dropped) = capture.join().unwrap().unwrap();
    assert_eq!(dropped, 0);
    let file = dir.join("a.pcap");
    std::fs::write(&file, xtask::ctl::pcap(&frames)).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&file).unwrap()).expect("a pcap header");
    let (mut to_port_7, mut from_port_7, mut payload) = (0, 0, false);
    while let Some(pkt) = reader.next_packet() {
        let d = pkt.expect("a pcap record").data;
        // Ethernet / IPv4 / TCP
        if d.len() < 54 || d[12..14] != [0x08, 0x00] || d[23] != 6 {
            continue;
        }
        let ihl = (d[14] & 0xf) as usize * 4;
        let tcp = &d[14 + ihl..];
        let (sport, dport) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
        to_port_7 += usize::from(dport == 7 && d[30..34] == [10, 0, 0, 2]);
        from_port_7 += usize::from(sport == 7);
        payload |= d.windows(14).any(|w| w == b"captured hello");
    }
    assert!(to_port_7 >= 3 && from_port_7 >= 3 && payload, "{to_port_7} to, {from_port_7} from port 7, payload {payload}");
    assert!(ctl("capture nope 1 1").unwrap_err().to_string().contains("no guest or tenant nope"));

    // Metrics: served as Prometheus text, and they move with traffic.
    let metrics = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inst = inst.0.clone();
        std::thread::spawn(move || xtask::metrics::serve_on(&inst, listener));
        move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200") && head.contains(xtask::metrics::CONTENT_TYPE), "{head}");
            let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
            let sample = |name: &str, guest: &str| {
                scrape.samples.iter().find(|s| s.metric == name && s.labels.get("guest") == Some(guest)).map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
            };
            (
                sample("hive_guest_sent_frames_total", "a-0"),
                sample("hive_guest_memory_bytes", "a-0"),
                sample("hive_guest_cpu_seconds_total", "a-0"),
            )
        }
    };
    let (sent_before, memory, cpu) = metrics();
    assert!(memory.is_some_and(|m| m > 0.0) && cpu.is_some_and(|c| c > 0.0), "{memory:?} {cpu:?}");
    assert_eq!(echo(port, b"counted"), b"counted");
    let (sent_after, _, _) = metrics();
    assert!(sent_after.unwrap() > sent_before.unwrap(), "{sent_before:?} -> {sent_after:?}");

    let Response::Stats { guests, machine } = ctl("stats").unwrap().0 else { panic!("stats answered otherwise") };
    assert!(machine.total_bytes > 0 && machine.live >= 2, "{machine:?}");
    // Every guest waiting in the table has its record (h-0 has ended).
    assert!(guests.iter().all(|g| g.guest != "h-0" && g.memory_bytes > 0), "{guests:?}");
    assert_eq!(*ctl("version").unwrap(), Response::Version { protocol: abi::control::PROTOCOL_VERSION, abi: abi::ABI_VERSION });

    // Bad requests are refused with a reason, and nothing else happens.
    assert_eq!(ctl("stop nope").unwrap_err().to_string(), "no guest nope");
    assert_eq!(ctl("stop h-0").unwrap_err().to_string(), "guest h-0 has already ended");
    assert_eq!(ctl("format c:").unwrap_err().to_string(), RequestError::Unknown.to_string());

    // Stop b-0; a-0 keeps serving.
    assert_eq!(*ctl("stop b-0").unwrap(), Response::Stopped { stopped: "b-0".into() });
    let deadline = Instant::now() + Duration::from_secs(20);
    while guest(&inst.0.list().unwrap(), "b-0").state != GuestState::Stopped {
        assert!(Instant::now() < deadline, "b-0 was not stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(echo(port, b"still here"), b"still here");
    assert_eq!(guest(&inst.0.list().unwrap(), "a-0").state, GuestState::Waiting);
    assert_eq!(stopped_for(&inst.0, "b-0"), StopReason::Operator);
    let logs = xtask::ctl::logs(&inst.0, "b-0").unwrap();
    assert!(logs.contains("b-0| echo: listening on 10.1.0.2:7"), "{logs}");
    assert!(logs.contains(&format!("[hv] guest b-0 stopped: {}", StopReason::Operator)), "{logs}");
    assert!(logs.contains("libos::rt::start at "), "the stop's crash report is symbolized: {logs}");
}

#[test]
fn guests_started_on_a_running_hypervisor_serve_their_tenant_and_bad_starts_are_refused() {
    let (inst, _dir) = detached("start", Manifest::new([Guest::app("h", "hello")]));
    let echo_image = xtask::build_apps(&["echo"]).unwrap().remove(0);
    let elf = xtask::app_elf("echo");
    let start = |name: &str, tenant: &str, args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        inst.0.start(&StartSpec {
            name,
            image: &echo_image,
            elf: Some(&elf),
            memory: 2 << 20,
            tenant: Some(tenant),
            options: Default::default(),
            args: &args,
            env: &[],
        })
    };
    let wait_line = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let console = std::fs::read_to_string(inst.0.console()).unwrap_or_default();
            if console.contains(needle) {
                return console;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{console}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // The hello guest of the manifest has come and gone; the hypervisor
    // keeps running for more.
    wait_line("[hv] guest h-0 exited with code 0");
    assert_eq!(*start("a", "x", &[]).unwrap(), Response::Started { started: "a".into(), ip: Some("10.0.0.2".into()), tenant: Some(0) });
    assert_eq!(*start("b", "y", &[]).unwrap(), Response::Started { started: "b".into(), ip: Some("10.1.0.2".into()), tenant: Some(1) });
    // A checker in a's tenant echoes with it through the switch.
    start("c", "x", &["check", "1", "3"]).unwrap();
    wait_line("c| check: 3/3 answered");
    wait_line("[hv] guest c exited with code 0");
    let list = inst.0.list().unwrap();
    let names: Vec<&str> = list.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["h-0", "a", "b", "c"], "{list:?}");

    // Bad starts: a duplicate name, an image that fails validation, more
    // memory than the machine has. Each is refused with the reason.
    assert_eq!(start("a", "x", &[]).unwrap_err().to_string(), "a guest named a exists already");
    let junk = integration_tests::temp_file("junk.hermit", b"not a hermit image");
    let e = inst.0.start(&spec("j", &junk, 2 << 20)).unwrap_err();
    assert!(format!("{e:#}").contains("rejected: not a tar archive"), "{e:#}");
    // A gzip bomb (60 MiB of zeros, about 60 KB uploaded) is refused by its
    // declared size; it once took the hypervisor down with every guest.
    let bomb = {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 60 << 20]).unwrap();
        integration_tests::temp_file("bomb.hermit", &gz.finish().unwrap())
    };
    let e = inst.0.start(&spec("bomb", &bomb, 2 << 20)).unwrap_err();
    assert!(format!("{e:#}").contains("rejected: the hypervisor has no room to unpack it"), "{e:#}");
    let e = inst.0.start(&spec("big", &echo_image, 64 << 30)).unwrap_err();
    assert!(e.to_string().contains("guest big not started"), "{e}");

    // Stop a; b keeps serving its own tenant.
    inst.0.request("stop a").unwrap();
    start("d", "y", &["check", "1", "3"]).unwrap();
    wait_line("d| check: 3/3 answered");
    assert_eq!(stopped_for(&inst.0, "a"), StopReason::Operator);
}

/// A control client that sends half a request, or begins an upload and
/// goes quiet, costs the hypervisor nothing: CPU 0 never waits for its
/// bytes (it once spun 20 ms per loop pass, and a ticker there ran seconds
/// late), and after 5 s the request is dropped with an error. Numbers out
/// of range are refused without harm (a tenant of 4 billion once sized a
/// table and killed the hypervisor).
#[test]
fn a_quiet_or_lying_control_client_costs_nothing_and_is_answered() {
    use std::os::unix::net::UnixStream;
    // The ticker is guest 0: it lives on CPU 0, the one that reads the channel.
    let (inst, dir) = detached("quiet", Manifest::new([Guest::app("tick", "worker").args(["tick", "10", "1200"])]));
    let mut s = UnixStream::connect(inst.0.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    let mut answer = || -> Response { serde_json::from_str(&lines.next().expect("an answer").unwrap()).unwrap() };
    let error = |e: ControlError| Response::from(e);

    let t = Instant::now();
    s.write_all(b"lis").unwrap();
    assert_eq!(answer(), error(ControlError::RequestTimedOut));
    assert!(t.elapsed() >= Duration::from_secs(5), "dropped too early");

    s.write_all(b"image-begin x.hermit 100000\n").unwrap();
    assert_eq!(answer(), Response::Receiving { receiving: "x.hermit".into() });
    s.write_all(b"image-data 00ff\n").unwrap();
    assert_eq!(answer(), error(ControlError::UploadTimedOut));
    s.write_all(b"image-end\n").unwrap();
    assert_eq!(answer(), error(ControlError::NoUpload));

    for (bad, why) in [
        ("start x hello.hermit 4096 4000000000", RequestError::StartTenant),
        ("start x hello.hermit 0 1", RequestError::StartMemory),
        ("image-begin y 99999999999", RequestError::ImageBeginLength),
        ("capture x 99999999999 1", RequestError::CaptureUsage),
    ] {
        s.write_all(format!("{bad}\n").as_bytes()).unwrap();
        assert_eq!(answer(), error(ControlError::Request(why)), "{bad}");
    }
    // A client on another port that asks and never reads its answers:
    // they wait in its port, then are dropped; nobody else waits for it.
    let mut deaf = UnixStream::connect(dir.join("control-3.sock")).unwrap();
    for _ in 0..3000 {
        deaf.write_all(b"stats\n").unwrap();
    }
    s.write_all(b"list\n").unwrap();
    let Response::Guests { guests } = answer() else { panic!("list answered otherwise") };
    assert_eq!(guests[0].name, "tick-0");
    drop(s);

    // The ticker kept its period through all of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        let console = std::fs::read_to_string(inst.0.console()).unwrap_or_default();
        if let Some(l) = console.lines().find(|l| l.starts_with("tick-0| ticked 1200 times")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "the ticker did not finish:\n{console}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let late_us: u64 = line.rsplit("most ").next().unwrap().trim_end_matches(" us").parse().unwrap();
    assert!(late_us < 500_000, "the ticker was {late_us} us late beside a quiet control client: {line}");
    drop(deaf);
}

/// Clients that connect, ask, read and leave at once, on every port at
/// the same time, are each answered, and only with their own answer. A
/// port's bytes and its clients' comings and goings reach the hypervisor
/// in different virtio queues; a request from a client that connected
/// right after another left was once read before its arrival and dropped.
/// Requests alternate, so an answer given to the wrong client shows.
#[test]
fn clients_that_come_and_go_at_once_are_each_answered_with_their_own_answer() {
    use std::os::unix::net::UnixStream;
    const CYCLES: usize = 1000;
    // Guests that keep both CPUs busy: CPU 0 then looks at the channel
    // between their slices, not in a tight idle loop, as on a full host.
    let busy = |name| Guest::app(name, "worker").args(["busy", "600000"]);
    let (inst, dir) = detached("churn", Manifest::new([busy("a"), busy("b")]));
    // Every port is the test's: ctl's own connection goes.
    inst.0.disconnect();
    let sockets = xtask::ctl::control_sockets(&dir);
    assert_eq!(sockets.len(), abi::control::CLIENTS_MAX);
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|path| {
            std::thread::spawn(move || {
                for i in 0..CYCLES {
                    let mut s = UnixStream::connect(&path).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(if i % 2 == 0 { b"version\n" } else { b"tenants\n" }).unwrap();
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line).unwrap_or_else(|e| panic!("{}: cycle {i} unanswered: {e}", path.display()));
                    let answer: Response = serde_json::from_str(&line).unwrap_or_else(|e| panic!("cycle {i}: {e}: {line:?}"));
                    match (i % 2, &answer) {
                        (0, Response::Version { .. }) | (1, Response::Tenants { .. }) => {}
                        _ => panic!("{}: cycle {i} got another's answer: {line}", path.display()),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // And the hypervisor is none the worse: a fresh client is served.
    assert!(matches!(*inst.0.request("version").unwrap(), Response::Version { .. }));
}

/// A hypervisor is not used up by the guests it ran: more guests than it
/// has room for start and end one after another (the records of ended
/// guests give way, the longest ended first), and `rm` forgets an ended
/// guest at once so that its name can be used again.
#[test]
fn more_guests_than_there_is_room_for_come_and_go_and_removed_names_are_free() {
    // The room a detached hypervisor has beyond its manifest's guests
    // (`hypervisor::machine::SPARE_GUESTS`).
    const ROOM: usize = 1024;
    const GUESTS: usize = ROOM + 76;
    let (inst, _dir) = detached("reuse", Manifest::new([Guest::app("h", "hello")]));
    let hello = xtask::build_apps(&["hello"]).unwrap().remove(0);
    let digest = inst.0.ensure_image(&hello).unwrap();
    let start = |name: &str| {
        let line = xtask::ctl::Instance::start_line(&spec(name, &hello, 1 << 20), &digest).unwrap();
        inst.0.request(&line)
    };
    let t = Instant::now();
    for i in 0..GUESTS {
        let name = format!("g{i}");
        start(&name).unwrap_or_else(|e| panic!("guest {i} of {GUESTS} not started: {e:#}"));
        assert_eq!(inst.0.wait(&name).unwrap().exit_code, Some(0), "{name}");
    }
    eprintln!("{GUESTS} guests started and ended one after another in {:.1} s", t.elapsed().as_secs_f64());
    let names: Vec<String> = inst.0.list().unwrap().into_iter().map(|g| g.name).collect();
    assert!(names.len() <= ROOM + 1, "{} records kept", names.len());
    assert!(!names.contains(&"h-0".to_string()) && !names.contains(&"g0".to_string()), "the longest ended gave way first");
    assert_eq!(names.last().map(String::as_str), Some(format!("g{}", GUESTS - 1).as_str()));

    // `remove`: an ended guest is forgotten, and its name is free again; a
    // name nobody has is refused.
    let last = format!("g{}", GUESTS - 1);
    let reason = |e: anyhow::Error| e.downcast_ref::<xtask::ctl::Refused>().and_then(|r| r.reason);
    assert_eq!(start(&last).map_err(reason).unwrap_err(), Some(Reason::Exists));
    assert_eq!(*inst.0.request(&format!("remove {last}")).unwrap(), Response::Removed { removed: last.clone() });
    assert_eq!(inst.0.request(&format!("wait {last}")).map_err(reason).unwrap_err(), Some(Reason::NotFound));
    start(&last).unwrap();
    assert_eq!(inst.0.wait(&last).unwrap().exit_code, Some(0));
    let e = inst.0.request("remove nobody").unwrap_err();
    assert_eq!(e.to_string(), "no guest nobody");
    assert_eq!(reason(e), Some(Reason::NotFound));
}

/// `ctl start --port`: a guest started at run time serves a host port
/// through QEMU's monitor; when it has ended its forward goes (and its host
/// port is free for the next guest); a port QEMU cannot forward is an
/// error, and the guest is not left half-started.
#[test]
fn host_ports_forward_to_guests_started_at_run_time_until_they_end() {
    let (inst, _dir) = detached("ports", Manifest::new([Guest::app("h", "hello")]));
    let echo_image = xtask::build_apps(&["echo"]).unwrap().remove(0);
    let port = free_port();
    let start = |name: &str| {
        let started = inst.0.start(&StartSpec { tenant: Some("0"), ..spec(name, &echo_image, 4 << 20) }).unwrap();
        let Response::Started { ip: Some(ip), .. } = &*started else { panic!("{started:?}") };
        // A connection before it listens is refused (reset), as anywhere.
        let deadline = Instant::now() + Duration::from_secs(60);
        let listening = format!("{name}| echo: listening");
        while !std::fs::read_to_string(inst.0.console()).unwrap_or_default().contains(&listening) {
            assert!(Instant::now() < deadline, "{name} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        ip.clone()
    };
    let ip = start("e1");
    inst.0.forward("e1", &ip, &[(port, 7)]).unwrap();
    assert_eq!(echo(port, b"through the forward"), b"through the forward");
    // The same host port again: QEMU refuses, nothing is recorded.
    let e = inst.0.forward("e2", "10.0.0.9", &[(port, 7)]).unwrap_err();
    assert!(format!("{e:#}").contains("Could not set up host forwarding"), "{e:#}");

    inst.0.request("stop e1").unwrap();
    inst.0.wait("e1").unwrap();
    inst.0.unforward_ended().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the forward of an ended guest is gone");
    let ip = start("e2");
    inst.0.forward("e2", &ip, &[(port, 7)]).unwrap();
    assert_eq!(echo(port, b"the port again"), b"the port again");
    let recorded = std::fs::read_to_string(inst.0.dir.join("forwards.json")).unwrap();
    let recorded: Vec<xtask::ctl::Forward> = serde_json::from_str(&recorded).unwrap();
    assert_eq!(recorded, [xtask::ctl::Forward { guest: "e2".into(), host: port, ip, port: 7 }]);
}

/// Protocol 4 end to end on a running hypervisor: images named by digest
/// (loaded once, a rebuilt one never mistaken for the old, removed when no
/// guest runs it), a start with options that streams the guest's console
/// and its exit code to the client, `wait`, `events`, and tenants the
/// hypervisor keeps by name (the manifest's too).
#[test]
fn images_by_digest_watched_starts_waits_and_named_tenants() {
    use abi::control::{EventKind, GuestEvent, StartOptions};
    let port = free_port();
    let (inst, dir) = detached("proto4", Manifest::new([Guest::app("e", "echo").tenant("acme").port(port, 7)]));
    let inst = &inst.0;
    let hello = xtask::build_apps(&["hello"]).unwrap().remove(0);
    let echo_img = xtask::build_apps(&["echo"]).unwrap().remove(0);
    let loaded = || match inst.request("images").unwrap().0 {
        Response::Images { loaded, .. } => loaded,
        other => panic!("{other:?}"),
    };
    let before = loaded().len();

    // A watched start: the greeting and the end come on the same
    // connection, the exit code with it.
    // Arguments and variables with spaces and `%` travel escaped.
    let args = ["one".to_string(), "two words".to_string(), "100%".to_string(), "exit=7".to_string()];
    let env = ["GREETING=hello world".to_string(), "EMPTY=".to_string()];
    let watched = StartSpec {
        args: &args,
        env: &env,
        options: StartOptions { watch: true, weight: Some(300), cap: Some(50), ..Default::default() },
        ..spec("w", &hello, 2 << 20)
    };
    let digest = inst.ensure_image(&hello).unwrap();
    assert_eq!(digest, xtask::ctl::digest(&std::fs::read(&hello).unwrap()));
    let (mut lines, mut end) = (Vec::new(), None);
    inst.stream(&[xtask::ctl::Instance::start_line(&watched, &digest).unwrap()], |r| {
        Ok(match r {
            Response::Console { console, line } if console == "w" => {
                lines.push(line.clone());
                false
            }
            Response::Event(e) if e.guest == "w" && e.event == EventKind::Ended => {
                end = Some(e.clone());
                true
            }
            _ => false,
        })
    })
    .unwrap();
    assert!(lines.iter().any(|l| l == r#"Hello from w! args: ["one", "two words", "100%", "exit=7"]"#), "{lines:?}");
    assert!(lines.iter().any(|l| l == r#"env: ["GREETING=hello world", "EMPTY="]"#), "{lines:?}");
    assert_eq!(end.map(|e| (e.state, e.exit_code)), Some((GuestState::Exited, Some(7))));
    // `wait` on an ended guest answers at once.
    assert_eq!(inst.wait("w").unwrap().exit_code, Some(7));

    // The same image again is not sent again; a rebuilt one with the same
    // file name is loaded beside it, under its digest.
    inst.start(&spec("w2", &hello, 2 << 20)).unwrap();
    assert_eq!(loaded().len(), before + 1, "{:?}", loaded());
    // "Rebuilt": the same kernel, whose hermit.toml now gives default
    // arguments that make it exit 4 (the old image's exit 0).
    let rebuilt = {
        let elf = std::fs::read(xtask::app_elf("hello")).unwrap();
        let toml = "version = \"1\"\nkernel = \"hello\"\n\n[input]\nkernel_args = []\napp_args = [\"rebuilt\", \"exit=4\"]\n";
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, data) in [("hermit.toml", toml.as_bytes()), ("hello", &elf[..])] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    };
    let rebuilt_path = dir.join("hello.hermit");
    std::fs::write(&rebuilt_path, &rebuilt).unwrap();
    inst.start(&spec("w3", &rebuilt_path, 2 << 20)).unwrap();
    // Answered when it ends, or at once if it has.
    let end3 = inst.wait("w3").unwrap();
    assert_eq!(end3.exit_code, Some(4), "the rebuilt image ran, not the old one");
    let images = loaded();
    let new = images.iter().find(|i| i.digest == xtask::ctl::digest(&rebuilt)).expect("the rebuilt image is loaded");
    assert!(new.name.starts_with("hello-") && new.name.ends_with(".hermit"), "{images:?}");
    assert_eq!(
        inst.request(&format!("image-remove {}", new.digest)).unwrap().0,
        Response::ImageRemoved { image_removed: new.name.clone() }
    );
    assert_eq!(loaded().len(), before + 1);

    // An image in use is not removed.
    let e = inst.request("image-remove echo.hermit").unwrap_err().to_string();
    assert!(e.contains("in use by 1 guest"), "{e}");

    // Tenants: the manifest's `acme` is tenant 0 by name; a guest started in
    // it reaches e-0 through the switch; `tenants` counts both.
    let checker = ["check".to_string(), "1".to_string(), "3".to_string()];
    let a = inst.start(&StartSpec { tenant: Some("acme"), args: &checker, ..spec("c", &echo_img, 4 << 20) }).unwrap();
    assert_eq!(*a, Response::Started { started: "c".into(), ip: Some("10.0.0.3".into()), tenant: Some(0) });
    let end = inst.wait("c").unwrap();
    assert_eq!((end.state, end.exit_code), (GuestState::Exited, Some(0)), "{end:?}");
    let Response::Tenants { tenants } = inst.request("tenants").unwrap().0 else { panic!() };
    assert_eq!(tenants[0], abi::control::TenantRow { name: Some("acme".into()), id: 0, guests: 1 });
    assert!(inst.request("tenant-remove acme").unwrap_err().to_string().contains("still has 1 guest"));

    // Events: a start and an end, pushed as they happen.
    let mut seen: Vec<GuestEvent> = Vec::new();
    let start_line = xtask::ctl::Instance::start_line(&spec("ev", &hello, 2 << 20), &digest).unwrap();
    inst.stream(&["events".to_string(), start_line], |r| {
        if let Response::Event(e) = r {
            seen.push(e.clone());
        }
        Ok(seen.iter().any(|e| e.guest == "ev" && e.event == EventKind::Ended))
    })
    .unwrap();
    let ev: Vec<_> = seen.iter().filter(|e| e.guest == "ev").map(|e| e.event).collect();
    assert_eq!(ev, [EventKind::Started, EventKind::Ended]);
    // Several clients at once (a port each): one waits on the first
    // socket, taking no lock, while `ctl` starts the guest it waits for
    // through another; a third streams events meanwhile.
    let waiter = std::os::unix::net::UnixStream::connect(inst.socket()).unwrap();
    (&waiter).write_all(b"events\n").unwrap();
    let mut lines = BufReader::new(&waiter).lines();
    assert_eq!(lines.next().unwrap().unwrap(), r#"{"watching":"events"}"#);
    let args5 = ["exit=5".to_string()];
    inst.start(&StartSpec { args: &args5, ..spec("w5", &hello, 2 << 20) }).unwrap();
    assert_eq!(inst.wait("w5").unwrap().exit_code, Some(5));
    let seen: Vec<GuestEvent> = lines.by_ref().take(2).map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert_eq!(
        seen.iter().map(|e| (e.guest.as_str(), e.event, e.exit_code)).collect::<Vec<_>>(),
        [("w5", EventKind::Started, None), ("w5", EventKind::Ended, Some(5))]
    );
    drop(lines);
    drop(waiter);
    // The echo guest kept serving through all of it.
    assert_eq!(echo(port, b"still serving"), b"still serving");
}
