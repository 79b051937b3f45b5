//! Operating a host: debugging with gdb (the control plane's other parts are
//! still to come, see issue 8).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::{free_port, workspace_root};

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
        manifest: xtask::ManifestSource::Text {
            text: "[[guest]]\nname = \"hello\"\napp = \"hello\"\n".into(),
            base_dir: workspace_root().to_path_buf(),
        },
        exit_when_idle: true,
        gdb: Some(port),
        ..xtask::RunConfig::default()
    };
    let prepared = xtask::prepare(&cfg).unwrap();
    assert!(prepared.summary.contains(&format!("target remote 127.0.0.1:{port}")), "{}", prepared.summary);
    assert!(prepared.summary.contains("add-symbol-file ") && prepared.summary.contains("release/hello"), "{}", prepared.summary);

    let mut qemu = xtask::qemu_command(&prepared)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = qemu.stdout.take().unwrap();
    let (tx, console) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Paused: the hypervisor prints nothing until a debugger continues it.
    assert!(console.recv_timeout(Duration::from_secs(2)).is_err(), "the machine ran before gdb attached");
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
    let ran = std::iter::from_fn(|| console.recv_timeout(Duration::from_secs(60)).ok()).any(|l| l == "[hv] guest hello-0 exited with code 0");
    assert!(ran, "the machine did not run after continue");
    let _ = qemu.kill();
    let _ = qemu.wait();
}
