//! Host port forwards through QEMU's monitor (QMP): `run --detach` has
//! QEMU open `DIR/qmp.sock`, and a forward is added and removed with the
//! human monitor's `hostfwd_add` / `hostfwd_remove` on the uplink's user
//! network (netdev `uplink`). Each command takes its own connection (QEMU's
//! QMP socket serves one client at a time, and forwards are rare).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// The uplink's netdev id in QEMU (xtask's `uplink_args`).
pub const NETDEV: &str = "uplink";

/// `hostfwd_add`'s argument: host 127.0.0.1:`host` to `ip`:`guest` (TCP).
pub fn add_command(host: u16, ip: &str, guest: u16) -> String {
    format!("hostfwd_add {NETDEV} tcp:127.0.0.1:{host}-{ip}:{guest}")
}

/// `hostfwd_remove`'s argument for the forward of host port `host`.
pub fn remove_command(host: u16) -> String {
    format!("hostfwd_remove {NETDEV} tcp:127.0.0.1:{host}")
}

/// Runs one human-monitor command on the QMP socket at `socket`; the
/// monitor's output, which is empty when the command succeeded, becomes
/// an error otherwise.
pub fn human(socket: &Path, command: &str) -> Result<(), String> {
    let s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "connecting to QEMU's monitor at {} ({e}); a hypervisor started before the shim existed has none: restart it",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    // The greeting, then capabilities negotiation, then the command.
    read_return(&mut r, false)?;
    send(&mut w, &json!({"execute": "qmp_capabilities"}))?;
    read_return(&mut r, true)?;
    send(&mut w, &json!({"execute": "human-monitor-command", "arguments": {"command-line": command}}))?;
    match read_return(&mut r, true)? {
        Value::String(out) if out.trim().is_empty() => Ok(()),
        Value::String(out) => Err(format!("QEMU: {command}: {}", out.trim())),
        other => Err(format!("QEMU: {command}: unexpected answer {other}")),
    }
}

fn send(w: &mut UnixStream, v: &Value) -> Result<(), String> {
    writeln!(w, "{v}").map_err(|e| format!("writing to QEMU's monitor: {e}"))
}

/// Reads lines until the greeting (`want_return` false) or a `return` or
/// `error` answer, skipping asynchronous events.
fn read_return(r: &mut impl BufRead, want_return: bool) -> Result<Value, String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| format!("reading QEMU's monitor: {e}"))? == 0 {
            return Err("QEMU's monitor closed the connection".into());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("QEMU's monitor said something that is not JSON ({e})"))?;
        if !want_return && v.get("QMP").is_some() {
            return Ok(v);
        }
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = v.get("error") {
            return Err(format!("QEMU: {}", err.get("desc").and_then(Value::as_str).unwrap_or("error")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn commands_name_the_uplink() {
        assert_eq!(add_command(8080, "10.0.0.5", 7), "hostfwd_add uplink tcp:127.0.0.1:8080-10.0.0.5:7");
        assert_eq!(remove_command(8080), "hostfwd_remove uplink tcp:127.0.0.1:8080");
    }

    /// A fake QEMU monitor: greets, accepts capabilities, answers the
    /// command with `output`.
    fn fake(output: &'static str) -> (std::path::PathBuf, std::thread::JoinHandle<String>) {
        let path = std::env::temp_dir().join(format!("hive-qmp-{}-{}.sock", std::process::id(), output.len()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP":{{"version":{{}},"capabilities":[]}}}}"#).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writeln!(w, r#"{{"return":{{}}}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(w, r#"{{"event":"NIC_RX_FILTER_CHANGED","data":{{}}}}"#).unwrap();
            writeln!(w, "{}", json!({ "return": output })).unwrap();
            line
        });
        (path, t)
    }

    #[test]
    fn a_command_succeeds_on_empty_output_and_fails_on_any_other() {
        let (path, t) = fake("");
        human(&path, "hostfwd_add uplink tcp:127.0.0.1:1-10.0.0.2:7").unwrap();
        let sent: Value = serde_json::from_str(&t.join().unwrap()).unwrap();
        assert_eq!(sent["arguments"]["command-line"], "hostfwd_add uplink tcp:127.0.0.1:1-10.0.0.2:7");
        let (path, t) = fake("Could not set up host forwarding rule 'tcp:127.0.0.1:1-10.0.0.2:7'\r\n");
        let e = human(&path, "hostfwd_add x").unwrap_err();
        assert!(e.contains("Could not set up host forwarding"), "{e}");
        t.join().unwrap();
        assert!(human(Path::new("/nonexistent/qmp.sock"), "x").unwrap_err().contains("monitor"));
    }
}
