//! Snapshots (issue 18): a guest saved on one hypervisor goes on where it
//! was when restored on another, under a new name and address; a damaged
//! snapshot, or one of an image the hypervisor has not loaded, is refused
//! with its reason and harms nothing.
//!
//! Each test runs its own detached hypervisors, each in its own directory
//! (`run --detach --dir`'s way).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use abi::control::{ErrorKind, Request, Response};
use abi::report::GuestState;
use integration_tests::{Detached, Guest, Manifest, workspace_root};
use xtask::ctl::{Instance, Refused, StartSpec};

/// A hypervisor detached with `manifest` (2 CPUs, mitigations forced) in
/// `target/itest/snapshot-NAME-PID`, shut down when dropped.
fn detached(name: &str, manifest: Manifest) -> Detached {
    let dir: PathBuf = workspace_root().join(format!("target/itest/snapshot-{name}-{}", std::process::id()));
    Detached::start(&dir, manifest, true)
}

/// The console of `inst` once `done` says so of it (60 s at most).
fn wait_for(inst: &Instance, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let console = std::fs::read_to_string(inst.console()).unwrap_or_default();
        if done(&console) {
            return console;
        }
        assert!(Instant::now() < deadline, "no {what} in:\n{console}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The console of `inst` once it holds `needle` (60 s at most).
fn wait_line(inst: &Instance, needle: &str) -> String {
    wait_for(inst, &format!("{needle:?}"), |c| c.contains(needle))
}

/// The counts guest `guest` (the worker's `counter` mode) has printed on
/// `inst`'s console, in order.
fn counts(inst: &Instance, guest: &str) -> Vec<u64> {
    let console = std::fs::read_to_string(inst.console()).unwrap_or_default();
    let prefix = format!("{guest}| counter: ");
    console.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix)?.trim().parse().ok()).collect()
}

/// The counts of `guest` once it has printed `at_least` (60 s at most).
fn wait_count(inst: &Instance, guest: &str, at_least: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = counts(inst, guest);
        if c.last().is_some_and(|&k| k >= at_least) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{guest} did not count to {at_least} (it printed {c:?}); console:\n{}",
            std::fs::read_to_string(inst.console()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter moves: snapshot on A, stop there, restore on B under a new
/// name; it counts on from where it was, not from 1. B has not loaded the
/// worker image: the restore uploads it from `target/guests/`.
#[test]
fn a_counter_saved_on_one_hypervisor_counts_on_from_where_it_was_on_another() {
    let a = detached("count-a", Manifest::new([Guest::app("c", "worker").args(["counter", "100", "100000"])]));
    let a = &a.0;
    wait_count(a, "c-0", 5);

    let t = Instant::now();
    let snap = xtask::ctl::snapshot(a, "c-0").unwrap_or_else(|e| panic!("snapshot: {e:#}"));
    let snapshot_time = t.elapsed();
    // Paused: nothing more comes (the last line may still be on its way).
    std::thread::sleep(Duration::from_millis(500));
    let before = counts(a, "c-0");
    let last = *before.last().unwrap();
    let parsed = abi::snapshot::Snapshot::parse(&snap).unwrap_or_else(|e| panic!("the hypervisor's own snapshot: {e}"));
    assert_eq!((parsed.name, parsed.image_name), ("c-0", "worker.hermit"));
    assert!(parsed.args().any(|a| a == "counter"), "{:?}", parsed.args().collect::<Vec<_>>());
    a.request(&Request::Stop("c-0").to_string()).unwrap();
    wait_line(a, "[hv] guest c-0 stopped");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counts(a, "c-0"), before, "the paused guest counted on");

    let b = detached("count-b", Manifest::new([Guest::app("h", "hello")]));
    let b = &b.0;
    let t = Instant::now();
    let restored = xtask::ctl::restore(b, &snap, "moved", None).unwrap_or_else(|e| panic!("restore: {e:#}"));
    let restore_time = t.elapsed();
    assert_eq!((restored.name.as_str(), restored.ip.as_deref()), ("moved", None), "no vNIC: {restored:?}");
    eprintln!(
        "snapshot of a counter: {} bytes, taken in {} ms, restored in {} ms (with its image's upload)",
        snap.len(),
        snapshot_time.as_millis(),
        restore_time.as_millis()
    );

    let after = wait_count(b, "moved", last + 10);
    let first = after[0];
    eprintln!("the counter printed up to {last} on A, and from {first} on B");
    assert!(first > last && first <= last + 3, "A counted to {last}; the restored guest began at {first}: {after:?}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "it counts one by one: {after:?}");
    let list = b.list().unwrap();
    let moved = list.iter().find(|g| g.name == "moved").unwrap_or_else(|| panic!("{list:?}"));
    assert!(matches!(moved.state, GuestState::Waiting | GuestState::Running), "{list:?}");
}

/// An echo server moves into a new tenant on B; a client started there
/// echoes with it at the address the restore gave it (not its old one).
#[test]
fn an_echo_server_restored_in_a_new_tenant_serves_at_its_new_address() {
    let a = detached("echo-a", Manifest::new([Guest::app("e", "echo").tenant("t").args(["serve"])]));
    let a = &a.0;
    wait_line(a, "e-0| echo: listening on 10.0.0.2:7");
    let t = Instant::now();
    let snap = xtask::ctl::snapshot(a, "e-0").unwrap_or_else(|e| panic!("snapshot: {e:#}"));
    let snapshot_time = t.elapsed();
    a.request(&Request::Stop("e-0").to_string()).unwrap();

    // B's tenant 0 is another's: the restored server's new tenant is 1.
    let b = detached("echo-b", Manifest::new([Guest::app("h", "hello").tenant("here")]));
    let b = &b.0;
    let t = Instant::now();
    let restored = xtask::ctl::restore(b, &snap, "e2", Some("moved")).unwrap_or_else(|e| panic!("restore: {e:#}"));
    eprintln!(
        "snapshot of an echo server: {} bytes, taken in {} ms, restored in {} ms (with its image's upload)",
        snap.len(),
        snapshot_time.as_millis(),
        t.elapsed().as_millis()
    );
    let ip = restored.ip.clone().unwrap_or_else(|| panic!("restored without an address: {restored:?}"));
    let Response::Tenants { tenants } = b.request(&Request::Tenants.to_string()).unwrap().0 else { panic!("tenants answered otherwise") };
    let moved = tenants.iter().find(|t| t.name.as_deref() == Some("moved")).unwrap_or_else(|| panic!("{tenants:?}"));
    assert_eq!(restored.tenant, Some(moved.id), "{restored:?} {tenants:?}");
    assert!(ip.starts_with(&format!("10.{}.0.", moved.id)) && moved.id != 0, "{restored:?} {tenants:?}");

    let echo = xtask::build_apps(&["echo"]).unwrap().remove(0);
    let args: Vec<String> = ["client", ip.as_str(), "20"].iter().map(|s| s.to_string()).collect();
    let spec = StartSpec {
        name: "cl",
        image: &echo,
        elf: None,
        memory: 2 << 20,
        tenant: Some("moved"),
        options: Default::default(),
        args: &args,
        env: &[],
    };
    b.start(&spec).unwrap_or_else(|e| panic!("starting the client: {e:#}"));
    let console = wait_for(b, "end of cl", |c| c.contains("[hv] guest cl exited") || c.contains("[hv] guest cl stopped"));
    let line = console.lines().find(|l| l.starts_with("cl| client: ")).unwrap_or_else(|| panic!("{console}"));
    assert!(line.contains("client: 20 messages") && line.contains("echoed byte-exact"), "{line}\n{console}");
    assert!(console.contains("[hv] guest cl exited with code 0"), "{console}");
}

/// Uploads `file` as a snapshot for guest `name` with the raw requests
/// (no check, no image upload on the client's side): what the hypervisor
/// answers `restore-end`.
fn raw_restore(inst: &Instance, name: &str, file: &[u8]) -> xtask::Result<Response> {
    let mut lines = vec![(Request::RestoreBegin { name, len: file.len(), tenant: None, args: None }.to_string(), true)];
    for chunk in file.chunks(abi::control::CHUNK_MAX) {
        lines.push((Request::ImageData(chunk.to_vec()).to_string(), false));
    }
    lines.push((Request::RestoreEnd.to_string(), true));
    Ok(inst.requests(&lines)?.pop().map(|a| a.0).unwrap_or(Response::Watching { watching: String::new() }))
}

/// The sentence of a `snapshot_rejected` refusal, or a panic.
fn rejected(what: &str, got: xtask::Result<Response>) -> String {
    let e = match got {
        Ok(r) => panic!("{what} was restored: {r:?}"),
        Err(e) => e,
    };
    let refused = e.downcast_ref::<Refused>().unwrap_or_else(|| panic!("{what}: not a refusal: {e:#}"));
    assert_eq!(refused.kind, ErrorKind::SnapshotRejected, "{what}: {e:#}");
    refused.error.clone()
}

/// A truncated snapshot, an altered one, and one of an image the
/// hypervisor has not loaded are refused with their reason, by the client
/// before anything is sent and by the hypervisor when sent anyway; its
/// guests run on.
#[test]
fn a_damaged_snapshot_or_one_of_an_image_not_loaded_is_refused_and_harms_nothing() {
    use sha2::Digest;
    let b = detached(
        "bad",
        Manifest::new([Guest::app("w", "worker").args(["counter", "100", "100000"]), Guest::app("s", "echo").tenant("t").args(["serve"])]),
    );
    let b = &b.0;
    wait_line(b, "s-0| echo: listening on 10.0.0.2:7");
    wait_count(b, "w-0", 3);
    let snap = xtask::ctl::snapshot(b, "w-0").unwrap_or_else(|e| panic!("snapshot: {e:#}"));
    b.request(&Request::Resume("w-0").to_string()).unwrap();

    let truncated = &snap[..snap.len() - 100];
    let mut flipped = snap.clone();
    flipped[snap.len() / 2] ^= 0x10;
    // Of another image: the image digest (after magic, version, ABI and
    // length) changed, the file's digest made right again.
    let mut foreign = snap.clone();
    foreign[24..56].copy_from_slice(&[0x5a; 32]);
    let body = foreign.len() - 32;
    let sum = sha2::Sha256::digest(&foreign[..body]);
    foreign[body..].copy_from_slice(&sum);
    assert!(abi::snapshot::Snapshot::parse(&foreign).is_ok(), "a valid snapshot of an image nobody has");

    // The client says why without a round trip.
    use abi::snapshot::Error;
    let e = xtask::ctl::restore(b, truncated, "bad1", None).unwrap_err();
    assert_eq!(e.to_string(), Error::Truncated.to_string());
    let e = xtask::ctl::restore(b, &flipped, "bad2", None).unwrap_err();
    assert_eq!(e.to_string(), Error::Altered.to_string());
    let e = xtask::ctl::restore(b, &foreign, "bad3", None).unwrap_err().to_string();
    assert!(e.starts_with("the snapshot needs image worker.hermit (sha256:5a5a"), "{e}");

    // The hypervisor, sent them anyway, refuses each with its reason.
    let why = rejected("a truncated snapshot", raw_restore(b, "bad1", truncated));
    assert!(why.starts_with("snapshot for bad1 rejected: ") && why.contains("truncated"), "{why}");
    let why = rejected("an altered snapshot", raw_restore(b, "bad2", &flipped));
    assert!(why.starts_with("snapshot for bad2 rejected: ") && why.contains("altered"), "{why}");
    let why = rejected("a snapshot of an image not loaded", raw_restore(b, "bad3", &foreign));
    assert!(why.starts_with("snapshot for bad3 rejected: ") && why.contains("image"), "{why}");

    // Nothing was made, and B's guests run on.
    let list = b.list().unwrap();
    assert!(list.iter().all(|g| !g.name.starts_with("bad")), "{list:?}");
    for g in ["w-0", "s-0"] {
        let row = list.iter().find(|r| r.name == g).unwrap_or_else(|| panic!("no {g} in {list:?}"));
        assert!(matches!(row.state, GuestState::Waiting | GuestState::Running), "{list:?}");
    }
    let now = *counts(b, "w-0").last().unwrap();
    wait_count(b, "w-0", now + 5);
}
