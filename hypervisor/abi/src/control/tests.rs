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
        (Response::version(), r#"{"protocol":3,"abi":4}"#),
        (
            Response::Guests { guests: vec![row] },
            r#"{"guests":[{"name":"w","tenant":7,"state":"stopped","cpu_ns":1,"memory_bytes":2,"sent_frames":3,"received_frames":4}]}"#,
        ),
        (Response::Guests { guests: vec![] }, r#"{"guests":[]}"#),
        (Response::Images { images: vec!["a.hermit".into(), "b".into()] }, r#"{"images":["a.hermit","b"]}"#),
        (Response::Receiving { receiving: "a.hermit".into() }, r#"{"receiving":"a.hermit"}"#),
        (Response::Image { image: "a.hermit".into() }, r#"{"image":"a.hermit"}"#),
        (Response::started("w", Some([10, 7, 0, 2])), r#"{"started":"w","ip":"10.7.0.2"}"#),
        (Response::started("w", None), r#"{"started":"w","ip":null}"#),
        (Response::Stopped { stopped: "w".into() }, r#"{"stopped":"w"}"#),
        (Response::Capturing { capturing: "tenant:1".into() }, r#"{"capturing":"tenant:1"}"#),
        (Response::frame(5, &[0, 0xab]), r#"{"wall_ns":5,"frame":"00ab"}"#),
        (Response::Captured { captured: 3, dropped: 1 }, r#"{"captured":3,"dropped":1}"#),
        (ControlError::NoUpload.into(), r#"{"error":"no upload in progress (image-begin first)","kind":"no_upload"}"#),
        (ControlError::Refused("a \"quoted\"\nname".into()).into(), r#"{"error":"a \"quoted\"\nname","kind":"refused"}"#),
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
    assert_eq!(ControlError::Request(RequestError::StartArgs).to_string(), "start: at most 16 arguments");
    assert_eq!(ControlError::RequestTimedOut.to_string(), "request timed out: no end of line within 5 s");
    assert_eq!(ControlError::UploadTimedOut.to_string(), "upload timed out: no image-data within 5 s; begin again");
    assert_eq!(ControlError::ImageRejected { name: "a".into(), why: "not an image".into() }.to_string(), "image a rejected: not an image");
}
