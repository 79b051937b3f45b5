use super::*;
use crate::report::GuestState;
use alloc::string::ToString;
use alloc::vec;

/// Every answer as the hypervisor wrote it before it had types: the typed
/// answers print the same bytes and read back to the same values.
#[test]
fn answers_print_as_they_always_did_and_read_back() {
    let row = GuestRow {
        name: "w".into(),
        tenant: Some(7),
        state: GuestState::Stopped,
        cpu_ns: 1,
        memory_bytes: 2,
        sent_frames: 3,
        received_frames: 4,
    };
    let cases: &[(Response, &str)] = &[
        (Response::version(), r#"{"protocol":7,"abi":10}"#),
        (
            Response::Snapshot { snapshot: "e".into(), bytes: 9, digest: "sha256:ab".into() },
            r#"{"snapshot":"e","bytes":9,"digest":"sha256:ab"}"#,
        ),
        (Response::SnapshotData { snapshot_data: "00ff".into() }, r#"{"snapshot_data":"00ff"}"#),
        (
            Response::Restored { restored: "e2".into(), ip: Some("10.1.0.2".into()), tenant: Some(1) },
            r#"{"restored":"e2","ip":"10.1.0.2","tenant":1}"#,
        ),
        (
            ControlError::SnapshotRejected { name: "e2".into(), why: "the snapshot is truncated".into() }.into(),
            r#"{"error":"snapshot for e2 rejected: the snapshot is truncated","kind":"snapshot_rejected"}"#,
        ),
        (Response::Pausing { pausing: "t".into() }, r#"{"pausing":"t"}"#),
        (Response::Resumed { resumed: "t".into() }, r#"{"resumed":"t"}"#),
        (
            Response::Cloned { cloned: 2, first: "c-0".into(), ip: Some("10.0.0.4".into()), tenant: Some(0), error: None },
            r#"{"cloned":2,"first":"c-0","ip":"10.0.0.4","tenant":0}"#,
        ),
        (
            Response::Cloned { cloned: 1, first: "c".into(), ip: None, tenant: None, error: Some("out of memory".into()) },
            r#"{"cloned":1,"first":"c","ip":null,"tenant":null,"error":"out of memory"}"#,
        ),
        (
            Response::Guests { guests: vec![row] },
            r#"{"guests":[{"name":"w","tenant":7,"state":"stopped","cpu_ns":1,"memory_bytes":2,"sent_frames":3,"received_frames":4}]}"#,
        ),
        (Response::Guests { guests: vec![] }, r#"{"guests":[]}"#),
        (
            Response::Images {
                images: vec!["a.hermit".into()],
                loaded: vec![ImageInfo { name: "a.hermit".into(), digest: "sha256:00".into(), bytes: 5, guests: 2 }],
            },
            r#"{"images":["a.hermit"],"loaded":[{"name":"a.hermit","digest":"sha256:00","bytes":5,"guests":2}]}"#,
        ),
        (Response::Receiving { receiving: "a.hermit".into() }, r#"{"receiving":"a.hermit"}"#),
        (Response::Image { image: "a.hermit".into(), digest: Some("sha256:00".into()) }, r#"{"image":"a.hermit","digest":"sha256:00"}"#),
        (Response::ImageRemoved { image_removed: "a.hermit".into() }, r#"{"image_removed":"a.hermit"}"#),
        (Response::started("w", Some([10, 7, 0, 2]), Some(7)), r#"{"started":"w","ip":"10.7.0.2","tenant":7}"#),
        (Response::started("w", None, None), r#"{"started":"w","ip":null,"tenant":null}"#),
        (
            Response::Tenants { tenants: vec![TenantRow { name: Some("acme".into()), id: 1, guests: 3 }] },
            r#"{"tenants":[{"name":"acme","id":1,"guests":3}]}"#,
        ),
        (Response::TenantRemoved { tenant_removed: "acme".into() }, r#"{"tenant_removed":"acme"}"#),
        (Response::Watching { watching: "events".into() }, r#"{"watching":"events"}"#),
        (
            Response::Event(GuestEvent {
                event: EventKind::Ended,
                guest: "w".into(),
                state: GuestState::Exited,
                exit_code: Some(3),
                stop_reason: None,
            }),
            r#"{"event":"ended","guest":"w","state":"exited","exit_code":3,"stop_reason":null}"#,
        ),
        (
            Response::Event(GuestEvent {
                event: EventKind::Ended,
                guest: "w".into(),
                state: GuestState::Stopped,
                exit_code: None,
                stop_reason: Some(StopReason::Operator),
            }),
            r#"{"event":"ended","guest":"w","state":"stopped","exit_code":null,"stop_reason":"operator"}"#,
        ),
        (Response::Console { console: "w".into(), line: "hi \"x\"".into() }, r#"{"console":"w","line":"hi \"x\""}"#),
        (Response::LinesDropped { lines_dropped: 9 }, r#"{"lines_dropped":9}"#),
        (Response::Stopped { stopped: "w".into() }, r#"{"stopped":"w"}"#),
        (Response::Capturing { capturing: "tenant:1".into() }, r#"{"capturing":"tenant:1"}"#),
        (Response::frame(5, &[0, 0xab]), r#"{"wall_ns":5,"frame":"00ab"}"#),
        (Response::Captured { captured: 3, dropped: 1 }, r#"{"captured":3,"dropped":1}"#),
        (ControlError::NoUpload.into(), r#"{"error":"no upload in progress (image-begin or restore-begin first)","kind":"no_upload"}"#),
        (ControlError::Refused(String::from("a \"quoted\"\nname").into()).into(), r#"{"error":"a \"quoted\"\nname","kind":"refused"}"#),
        (
            ControlError::Refused(Refusal::new(Reason::NotFound, "no guest x".into())).into(),
            r#"{"error":"no guest x","kind":"refused","reason":"not_found"}"#,
        ),
    ];
    for (answer, wire) in cases {
        assert_eq!(serde_json::to_string(answer).unwrap(), *wire);
        assert_eq!(&serde_json::from_str::<Response>(wire).unwrap(), answer, "{wire}");
    }
}

#[test]
fn a_stats_answer_holds_the_console_records() {
    let answer = Response::Stats {
        guests: vec![GuestStats { guest: "a".into(), state: GuestState::Running, ..Default::default() }],
        machine: MachineStats { cpu_idle_ns: vec![1, 2], ..Default::default() },
    };
    let wire = serde_json::to_string(&answer).unwrap();
    assert!(wire.starts_with(r#"{"guests":[{"event":"guest_stats","guest":"a","state":"running","#), "{wire}");
    assert!(wire.contains(r#""machine":{"event":"machine","uptime_ns":0,"#), "{wire}");
    assert_eq!(serde_json::from_str::<Response>(&wire).unwrap(), answer);
}

#[test]
fn errors_read_as_they_always_did() {
    assert_eq!(ControlError::Request(RequestError::StartArgs).to_string(), "start, clone, restore-begin: at most 16 arguments");
    assert_eq!(ControlError::RequestTimedOut.to_string(), "request timed out: no end of line within 5 s");
    assert_eq!(ControlError::UploadTimedOut.to_string(), "upload timed out: no image-data within 5 s; begin again");
    assert_eq!(ControlError::ImageRejected { name: "a".into(), why: "not an image".into() }.to_string(), "image a rejected: not an image");
}

#[test]
fn protocol_3_answers_still_read() {
    // A protocol 3 hypervisor's answers lack the fields 4 added.
    assert_eq!(
        serde_json::from_str::<Response>(r#"{"images":["a"]}"#).unwrap(),
        Response::Images { images: vec!["a".into()], loaded: vec![] }
    );
    assert_eq!(serde_json::from_str::<Response>(r#"{"image":"a"}"#).unwrap(), Response::Image { image: "a".into(), digest: None });
    assert_eq!(serde_json::from_str::<Response>(r#"{"started":"w","ip":null}"#).unwrap(), Response::started("w", None, None));
}

#[test]
fn pushed_records_are_told_from_answers() {
    let ended = r#"{"event":"ended","guest":"w","state":"exited","exit_code":0,"stop_reason":null}"#;
    for wire in [ended, r#"{"console":"w","line":"x"}"#, r#"{"lines_dropped":1}"#, r#"{"wall_ns":5,"frame":"00"}"#] {
        assert!(serde_json::from_str::<Response>(wire).unwrap().is_pushed(), "{wire}");
    }
    for wire in [r#"{"stopped":"w"}"#, r#"{"watching":"w"}"#, r#"{"guests":[]}"#] {
        assert!(!serde_json::from_str::<Response>(wire).unwrap().is_pushed(), "{wire}");
    }
    // A console record of the accounting is not an event record.
    assert!(serde_json::from_str::<GuestEvent>(r#"{"event":"guest_stats","guest":"w","state":"exited"}"#).is_err());
}
