//! Our side of `bench net`'s streaming rows: bulk TCP (`echo-bench bulk` →
//! `echo sink`), the switch ceiling with raw frames (`echo-bench raw-send`
//! → `echo raw-sink`) and its yardstick, a memcpy loop in a guest (`bench
//! memcpy`). The guests get [`NetSettings::stream_ring_slots`] slots per
//! ring, [`NetSettings::stream_memory_mib`] of memory and no NIC rate
//! limits: these rows measure the data path, not the limiter.

use super::net::Measured;
use super::*;

/// Per-second limits that let the data path run flat out (0: none);
/// broadcasts and console bytes keep their defaults.
pub(super) fn unlimited() -> abi::bundle::Limits {
    abi::bundle::Limits { nic_packets: 0, nic_bytes: 0, notifications: 0, ..Default::default() }
}

impl Bench {
    fn stream_guest(&self, st: &NetSettings, name: &str, app: &str) -> Guest {
        Guest::app(name, app).tenant("bench").memory(st.stream_memory_mib * MIB).ring_slots(st.stream_ring_slots).limits(unlimited())
    }

    /// echo-bench bulk → echo sink: one result per
    /// [`NetSettings::bulk_connections`].
    pub(super) fn ours_bulk(&self, st: &NetSettings) -> Result<(Vec<String>, Vec<Measured>)> {
        let port = linux::BULK_PORT;
        let manifest = Manifest::new([
            self.stream_guest(st, "echo", "echo").args(["sink".to_string(), port.to_string()]),
            self.stream_guest(st, "echo-bench", "echo-bench").args([
                "bulk".to_string(),
                "10.0.0.2".to_string(),
                port.to_string(),
                st.bulk_list(),
                st.bulk_bytes.to_string(),
            ]),
        ]);
        let timeout = Duration::from_secs(120 + st.bulk_connections.len() as u64 * 150);
        let mut lines = GuestLines::default();
        let mut results = Vec::new();
        let (args, console) =
            self.ours_live(&format!("echo-bench bulk → echo sink, {} connections", st.bulk_list()), manifest, timeout, |line| {
                if let Some((who, v)) = lines.push_json(line)
                    && who == "echo-bench-0"
                    && v["bench"] == "bulk"
                {
                    progress(&format!("  ours bulk, {} conns: {}", v["connections"], describe_bulk(&v)));
                    results.push(v);
                }
                if guest_ended(line, "echo-bench-0") || guest_ended(line, "echo-0") { Reply::Stop } else { Reply::Continue }
            })?;
        let why = format!(
            "echo-bench bulk printed no result for it{}; console tail:\n{}",
            if console.timed_out { " (timed out)" } else { "" },
            console.tail(15)
        );
        Ok((args, by_connections(&st.bulk_connections, &results, &why)))
    }

    /// echo-bench raw-send → echo raw-sink: per
    /// [`NetSettings::switch_frame_bytes`], the sink's count (with the
    /// sender's line under `"sender"`), or why not.
    pub(super) fn ours_switch(&self, st: &NetSettings) -> Result<(Vec<String>, Vec<Measured>)> {
        let sizes: Vec<String> = st.switch_frame_bytes.iter().map(|s| s.to_string()).collect();
        let manifest = Manifest::new([
            self.stream_guest(st, "echo", "echo").args(["raw-sink"]),
            self.stream_guest(st, "echo-bench", "echo-bench").args([
                "raw-send".to_string(),
                sizes.join(","),
                st.switch_ms.to_string(),
                st.warmup_ms.to_string(),
            ]),
        ]);
        let timeout = Duration::from_secs(120 + sizes.len() as u64 * ((st.switch_ms + st.warmup_ms) / 1000 + 20));
        let mut lines = GuestLines::default();
        let (mut sink, mut sender) = (Vec::new(), Vec::new());
        let (args, console) =
            self.ours_live(&format!("raw frames {} B through the switch", sizes.join(", ")), manifest, timeout, |line| {
                if let Some((who, v)) = lines.push_json(line) {
                    if who == "echo-0" && v["bench"] == "switch" {
                        progress(&format!("  ours switch, {} B frames: {}", v["frame_bytes"], describe_switch(&v)));
                        sink.push(v);
                    } else if who == "echo-bench-0" && v["bench"] == "switch-send" {
                        if let Some(why) = v["refused"].as_str() {
                            progress(&format!("  ours switch, {} B frames: refused ({why}, {} bytes)", v["frame_bytes"], v["max_frame"]));
                        }
                        sender.push(v);
                    }
                }
                // The sink ends when the sender says it is done; a sender that
                // failed ends without that.
                if guest_ended(line, "echo-0") || (guest_ended(line, "echo-bench-0") && sender.len() < st.switch_frame_bytes.len()) {
                    Reply::Stop
                } else {
                    Reply::Continue
                }
            })?;
        let ended = format!(
            "the raw sink printed no count for it{}; console tail:\n{}",
            if console.timed_out { " (timed out)" } else { "" },
            console.tail(15)
        );
        let results = (0..st.switch_frame_bytes.len())
            .map(|phase| {
                let sent = sender.iter().find(|v| v["phase"].as_u64() == Some(phase as u64));
                if let Some(v) = sent.filter(|v| v["refused"].is_string()) {
                    return Err(format!(
                        "echo-bench raw-send refused {}-byte frames: {} ({} bytes)",
                        st.switch_frame_bytes[phase],
                        v["refused"].as_str().unwrap_or(""),
                        v["max_frame"]
                    ));
                }
                let mut got = sink.iter().find(|v| v["phase"].as_u64() == Some(phase as u64)).cloned().ok_or_else(|| ended.clone())?;
                got["sender"] = sent.cloned().unwrap_or(Value::Null);
                Ok(got)
            })
            .collect();
        Ok((args, results))
    }

    /// `bench memcpy` in one guest: per switch frame size, GB/s.
    pub(super) fn ours_memcpy(&self, st: &NetSettings) -> Result<(Vec<String>, Vec<Measured>)> {
        let sizes: Vec<String> = st.switch_frame_bytes.iter().map(|s| s.to_string()).collect();
        let manifest = Manifest::new([Guest::app("memcpy", "bench").memory(st.stream_memory_mib * MIB).args([
            "memcpy".to_string(),
            sizes.join(","),
            st.memcpy_ms.to_string(),
        ])]);
        let timeout = Duration::from_secs(120 + sizes.len() as u64 * (st.memcpy_ms / 1000 + 5));
        let ours = self.ours(&format!("memcpy of {} B", sizes.join(", ")), manifest, timeout)?;
        let got: Vec<Value> = guest_json(&ours.out.console).into_iter().filter(|(_, v)| v["bench"] == "memcpy").map(|(_, v)| v).collect();
        let results = st
            .switch_frame_bytes
            .iter()
            .map(|&s| {
                got.iter()
                    .find(|v| v["bytes"].as_u64() == Some(s as u64))
                    .cloned()
                    .ok_or_else(|| format!("bench memcpy printed no result for {s} bytes"))
            })
            .collect();
        for v in &got {
            progress(&format!("  ours memcpy, {} B: {:.2} GB/s", v["bytes"], v["gbytes_per_sec"].as_f64().unwrap_or(0.0)));
        }
        Ok((ours.qemu_args, results))
    }
}

/// The result of each connection count among `results`, or `why` not.
pub(super) fn by_connections(counts: &[usize], results: &[Value], why: &str) -> Vec<Measured> {
    counts
        .iter()
        .map(|&c| results.iter().find(|v| v["connections"].as_u64() == Some(c as u64)).cloned().ok_or_else(|| why.to_string()))
        .collect()
}

pub(super) fn describe_bulk(v: &Value) -> String {
    format!(
        "{:.1} MB/s ({:.3} Gbit/s), {} MiB in {:.0} ms, {} errors",
        v["mbytes_per_sec"].as_f64().unwrap_or(0.0),
        v["gbits_per_sec"].as_f64().unwrap_or(0.0),
        v["bytes"].as_u64().unwrap_or(0) >> 20,
        v["duration_ms"].as_f64().unwrap_or(0.0),
        v["errors"]
    )
}

pub(super) fn describe_switch(v: &Value) -> String {
    format!(
        "{:.0} frames/s, {:.3} GB/s, {} of {} sent lost",
        v["frames_per_sec"].as_f64().unwrap_or(0.0),
        v["gbytes_per_sec"].as_f64().unwrap_or(0.0),
        v["lost"],
        v["sent"]
    )
}
