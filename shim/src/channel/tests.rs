//! The channel against a scripted fake hypervisor on the other end of a
//! Unix socket pair.

use super::*;
use abi::control::{EventKind, GuestEvent, Reason, StartOptions, Tenant};
use abi::report::GuestState;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;

/// A channel on one end of a socket pair; the other end, read line by
/// line; and what the callback got.
fn pair(timeout: Duration) -> (Channel, BufReader<UnixStream>, UnixStream, Receiver<Pushed>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let closer = ours.try_clone().unwrap();
    let ch = Channel::new(
        ours.try_clone().unwrap(),
        ours,
        move || {
            let _ = closer.shutdown(std::net::Shutdown::Both);
        },
        timeout,
        move |p| {
            let _ = tx.send(p);
        },
    );
    (ch, BufReader::new(theirs.try_clone().unwrap()), theirs, rx)
}

fn read_line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

fn ended(guest: &str, code: i32) -> String {
    let e =
        GuestEvent { event: EventKind::Ended, guest: guest.into(), state: GuestState::Exited, exit_code: Some(code), stop_reason: None };
    serde_json::to_string(&Response::Event(e)).unwrap()
}

#[test]
fn answers_go_to_the_request_and_pushed_records_to_the_callback() {
    let (ch, mut from_shim, mut to_shim, pushed) = pair(Duration::from_secs(10));
    let hv = std::thread::spawn(move || {
        assert_eq!(read_line(&mut from_shim), "version\n");
        // Records pushed before and between the answer's bytes' line.
        writeln!(to_shim, r#"{{"console":"a","line":"{{\"protocol\":9,\"abi\":9}}"}}"#).unwrap();
        writeln!(to_shim, "{}", ended("a", 3)).unwrap();
        writeln!(to_shim, r#"{{"protocol":5,"abi":4}}"#).unwrap();
        assert_eq!(read_line(&mut from_shim), "stop nobody\n");
        writeln!(to_shim, r#"{{"lines_dropped":2}}"#).unwrap();
        writeln!(to_shim, r#"{{"error":"no guest nobody","kind":"refused","reason":"not_found"}}"#).unwrap();
        (from_shim, to_shim)
    });
    assert_eq!(ch.request(&Request::Version).unwrap(), Response::Version { protocol: 5, abi: 4 });
    let e = ch.request(&Request::Stop("nobody")).unwrap_err();
    assert_eq!(e, ChannelError::Refused { sentence: "no guest nobody".into(), kind: ErrorKind::Refused, reason: Some(Reason::NotFound) });
    let _keep = hv.join().unwrap();
    assert_eq!(pushed.recv().unwrap(), Pushed::Record(Response::Console { console: "a".into(), line: r#"{"protocol":9,"abi":9}"#.into() }));
    assert!(matches!(pushed.recv().unwrap(), Pushed::Record(Response::Event(e)) if e.guest == "a" && e.exit_code == Some(3)));
    assert_eq!(pushed.recv().unwrap(), Pushed::Record(Response::LinesDropped { lines_dropped: 2 }));
}

#[test]
fn requests_from_many_threads_each_get_their_own_answer() {
    let (ch, mut from_shim, mut to_shim, _pushed) = pair(Duration::from_secs(10));
    let ch = Arc::new(ch);
    let hv = std::thread::spawn(move || {
        // Answer each `stop NAME` with its own name, with a pushed record
        // before every answer.
        for _ in 0..40 {
            let line = read_line(&mut from_shim);
            let name = line.trim().strip_prefix("stop ").unwrap().to_string();
            writeln!(to_shim, "{}", ended(&name, 0)).unwrap();
            writeln!(to_shim, "{}", serde_json::to_string(&Response::Stopped { stopped: name }).unwrap()).unwrap();
        }
        (from_shim, to_shim)
    });
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ch = ch.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let name = format!("g{t}-{i}");
                    assert_eq!(ch.request(&Request::Stop(&name)).unwrap(), Response::Stopped { stopped: name });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _keep = hv.join().unwrap();
}

#[test]
fn an_upload_is_one_uninterrupted_sequence() {
    let (ch, mut from_shim, mut to_shim, _pushed) = pair(Duration::from_secs(10));
    let ch = Arc::new(ch);
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let expect = data.clone();
    let hv = std::thread::spawn(move || {
        assert_eq!(read_line(&mut from_shim), "image-begin x.hermit 10000\n");
        writeln!(to_shim, r#"{{"receiving":"x.hermit"}}"#).unwrap();
        let mut got = Vec::new();
        loop {
            let line = read_line(&mut from_shim);
            match abi::control::parse(line.trim()).unwrap() {
                Request::ImageData(bytes) => got.extend(bytes),
                Request::ImageEnd => break,
                other => panic!("{other:?} inside an upload"),
            }
        }
        assert_eq!(got, expect);
        writeln!(to_shim, r#"{{"image":"x.hermit","digest":"sha256:ab"}}"#).unwrap();
        // The request another thread sent meanwhile comes after.
        assert_eq!(read_line(&mut from_shim), "list\n");
        writeln!(to_shim, r#"{{"guests":[]}}"#).unwrap();
        (from_shim, to_shim)
    });
    let up = {
        let ch = ch.clone();
        std::thread::spawn(move || ch.upload("x.hermit", &data))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ch.request(&Request::List).unwrap(), Response::Guests { guests: vec![] });
    assert_eq!(up.join().unwrap().unwrap(), Some("sha256:ab".to_string()));
    let _keep = hv.join().unwrap();
}

#[test]
fn no_answer_in_time_closes_the_connection_and_a_closed_peer_fails_requests() {
    let (ch, mut from_shim, to_shim, pushed) = pair(Duration::from_millis(200));
    assert_eq!(ch.request(&Request::List).unwrap_err(), ChannelError::TimedOut);
    assert_eq!(read_line(&mut from_shim), "list\n");
    assert_eq!(pushed.recv_timeout(Duration::from_secs(5)).unwrap(), Pushed::Closed);
    assert!(ch.is_closed());
    assert_eq!(ch.request(&Request::List).unwrap_err(), ChannelError::Closed);
    drop(to_shim);

    // The hypervisor goes away while a request waits.
    let (ch, mut from_shim, to_shim, pushed) = pair(Duration::from_secs(10));
    let hv = std::thread::spawn(move || {
        read_line(&mut from_shim);
        drop(to_shim);
        drop(from_shim);
    });
    assert_eq!(ch.request(&Request::Images).unwrap_err(), ChannelError::Closed);
    hv.join().unwrap();
    assert_eq!(pushed.recv_timeout(Duration::from_secs(5)).unwrap(), Pushed::Closed);
}

#[test]
fn lines_that_are_not_the_protocol_are_skipped_and_long_requests_refused() {
    let (ch, mut from_shim, mut to_shim, _pushed) = pair(Duration::from_secs(10));
    let hv = std::thread::spawn(move || {
        read_line(&mut from_shim);
        to_shim.write_all(b"[hv] noise\n\xff\xfe\n\n{\"tenants\":[]}\n").unwrap();
        (from_shim, to_shim)
    });
    assert_eq!(ch.request(&Request::Tenants).unwrap(), Response::Tenants { tenants: vec![] });
    let _keep = hv.join().unwrap();
    let long = "x".repeat(LINE_MAX);
    let req = Request::Start {
        name: "a",
        image: "sha256:00",
        memory: 1,
        tenant: Tenant::None,
        options: StartOptions::default(),
        args: vec![long.as_str().into()],
        env: Vec::new(),
    };
    assert_eq!(ch.request(&req).unwrap_err(), ChannelError::TooLong);
}

#[test]
fn unanswered_requests_do_not_wait_and_their_records_reach_the_callback() {
    let (ch, mut from_shim, mut to_shim, pushed) = pair(Duration::from_secs(10));
    ch.notify(&Request::Wait("w")).unwrap();
    assert_eq!(read_line(&mut from_shim), "wait w\n");
    writeln!(to_shim, "{}", ended("w", 7)).unwrap();
    assert!(matches!(pushed.recv_timeout(Duration::from_secs(5)).unwrap(), Pushed::Record(Response::Event(e)) if e.exit_code == Some(7)));
    // The next request still gets its own answer.
    let hv = std::thread::spawn(move || {
        assert_eq!(read_line(&mut from_shim), "images\n");
        writeln!(to_shim, r#"{{"images":[],"loaded":[]}}"#).unwrap();
        (from_shim, to_shim)
    });
    assert_eq!(ch.request(&Request::Images).unwrap(), Response::Images { images: vec![], loaded: vec![] });
    let _keep = hv.join().unwrap();
}
