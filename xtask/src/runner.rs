//! The QEMU runner: the one way xtask, its benchmarks and the integration
//! tests start a machine (our hypervisor or the Linux peer) and talk to it.
//!
//! [`Qemu::spawn`] echoes the command (`$ qemu-system-x86_64 ...`) and
//! starts it with the console (QEMU's stdout, `-serial stdio`) read line by
//! line on a thread; [`Qemu::next_line`] and [`Qemu::wait_for`] take those
//! lines, [`Qemu::send`] types on the console (QEMU's stdin),
//! [`Qemu::drive`] runs the machine to its end feeding each line to a
//! callback, and [`Qemu::finish`] collects what it produced.
//!
//! The rules, the same for every caller:
//! - **Kill on drop.** A [`Qemu`] kills its process (SIGKILL) and reaps it
//!   when it is dropped, whether the caller is done, returned an error or a
//!   test panicked. The only QEMU that outlives its handle is one given
//!   away with [`Qemu::detach`] (`run --detach`); [`terminate`] stops such
//!   a process by its pid (SIGTERM, then SIGKILL after [`TERMINATE_GRACE`]).
//! - **One deadline.** [`Options::timeout`] is measured from the spawn.
//!   Every wait ends at it at the latest; once it has passed QEMU is killed
//!   and the result says `timed_out`. Without one, only the caller's own
//!   waits (each with its timeout) and the process's end bound a run.
//! - **Lines.** A console line is its text without the line end (`\n` and
//!   a `\r` before it), invalid UTF-8 replaced, with the time it arrived
//!   after the spawn. After QEMU ends, the lines still in the pipe are
//!   read to the end, so none is lost.
//! - **Exit.** QEMU's status is reported as is (`None` if it was killed);
//!   what it means for our hypervisor is [`crate::check_exit`]'s business.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cmd::echo;
use crate::qemu::QEMU;

/// How long [`terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// How often a wait without console lines looks at the process.
const POLL: Duration = Duration::from_millis(20);

/// Where QEMU's console input comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Input {
    /// Nothing (stdin closed).
    #[default]
    None,
    /// [`Qemu::send`] types on the console.
    Piped,
    /// This process's stdin (`cargo xtask run`: the user types).
    Inherit,
}

/// Where QEMU's own messages (its stderr) go.
#[derive(Debug, Default)]
pub enum Errors {
    /// Kept, for [`RunOutput::stderr`] and error messages.
    #[default]
    Capture,
    /// This process's stderr.
    Inherit,
    /// A file (a detached QEMU's `qemu.err`).
    File(File),
}

/// How to start QEMU.
#[derive(Debug, Default)]
pub struct Options {
    pub input: Input,
    pub errors: Errors,
    /// Kill QEMU this long after the spawn (see the module's rules).
    pub timeout: Option<Duration>,
    /// The console is not on QEMU's stdout (`-serial file:...`): no lines
    /// are read and stdout goes nowhere.
    pub no_console: bool,
    /// Lines are handed on ([`Qemu::drive`]), not kept: for interactive
    /// runs that may last for days.
    pub stream: bool,
}

/// What a line callback of [`Qemu::drive`] wants done next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Keep going.
    Continue,
    /// Type these bytes on the console.
    Type(Vec<u8>),
    /// Stop QEMU now (a normal end for a machine that runs until stopped).
    Stop,
}

/// What a QEMU run produced.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// QEMU's exit code; `None` if it was killed (timeout, [`Reply::Stop`],
    /// a signal).
    pub status: Option<i32>,
    /// Everything the machine wrote on its console, a `\n` after each line
    /// (for our hypervisor, with guests' backtraces symbolized).
    pub console: String,
    /// The console lines, each with when it arrived after the spawn.
    pub lines: Vec<(Duration, String)>,
    /// QEMU's own messages (errors about its command line, ...), if captured.
    pub stderr: String,
    /// QEMU was killed at the deadline.
    pub timed_out: bool,
    /// The caller stopped QEMU ([`Reply::Stop`]).
    pub stopped: bool,
    /// From the spawn to the end.
    pub elapsed: Duration,
}

impl RunOutput {
    /// True if our hypervisor reported success through `isa-debug-exit`.
    pub fn success(&self) -> bool {
        self.status == Some(abi::debug_exit::qemu_status(abi::debug_exit::SUCCESS))
    }

    /// The last `n` console lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

/// A running QEMU (see the module's rules).
pub struct Qemu {
    /// `None` once detached.
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Duration, String)>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
    start: Instant,
    deadline: Option<Instant>,
    /// Every line taken so far, in order.
    seen: Vec<(Duration, String)>,
    status: Option<ExitStatus>,
    timed_out: bool,
    /// Lines are not kept in `seen` ([`Options::stream`]).
    stream: bool,
}

impl Qemu {
    /// Echoes and starts `qemu-system-x86_64 ARGS`.
    pub fn spawn(args: &[String], options: Options) -> Result<Qemu> {
        Qemu::start(QEMU, args, options)
    }

    /// [`Qemu::spawn`] of any program (the tests use a shell).
    fn start(program: &str, args: &[String], options: Options) -> Result<Qemu> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.stdin(match options.input {
            Input::None => Stdio::null(),
            Input::Piped => Stdio::piped(),
            Input::Inherit => Stdio::inherit(),
        });
        cmd.stdout(if options.no_console { Stdio::null() } else { Stdio::piped() });
        let capture = matches!(options.errors, Errors::Capture);
        cmd.stderr(match options.errors {
            Errors::Capture => Stdio::piped(),
            Errors::Inherit => Stdio::inherit(),
            Errors::File(f) => Stdio::from(f),
        });
        echo(&cmd);
        let start = Instant::now();
        let mut child = cmd.spawn().context("starting QEMU (is qemu-system-x86 installed?)")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let reader = child.stdout.take().map(|stdout| {
            thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    if tx.send((start.elapsed(), line_text(&buf))).is_err() {
                        break;
                    }
                    buf.clear();
                }
            })
        });
        let stderr = child.stderr.take().filter(|_| capture).map(|mut e| {
            thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        Ok(Qemu {
            child: Some(child),
            stdin,
            lines,
            reader,
            stderr,
            start,
            deadline: options.timeout.map(|t| start + t),
            seen: Vec::new(),
            status: None,
            timed_out: false,
            stream: options.stream,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Time since the spawn.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The console lines taken so far.
    pub fn seen(&self) -> &[(Duration, String)] {
        &self.seen
    }

    /// Types `bytes` on the console (needs [`Input::Piped`]).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().context("QEMU's console input is not piped")?;
        stdin.write_all(bytes).and_then(|()| stdin.flush()).context("writing to QEMU's console")
    }

    /// True (and the status kept) once QEMU has ended; kills it at the deadline.
    fn ended(&mut self) -> Result<bool> {
        if self.status.is_some() || self.timed_out {
            return Ok(true);
        }
        let Some(child) = self.child.as_mut() else { return Ok(true) };
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            self.status = Some(status);
            return Ok(true);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.kill();
            self.timed_out = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next console line, waiting at most `timeout` (and never past the
    /// deadline); `None` if none came, or QEMU ended and every line is taken.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let until = Instant::now() + timeout;
        let until = self.deadline.map_or(until, |d| d.min(until));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(POLL)) {
                Ok((t, line)) => {
                    self.seen.push((t, line.clone()));
                    return Some(line);
                }
                // The reader hung up: QEMU ended and every line is taken.
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    // Kills QEMU at the deadline; its last lines still come.
                    let _ = self.ended();
                    if left.is_zero() {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes console lines until one satisfies `found` (returned), at most
    /// `timeout`; `None` if none did.
    pub fn wait_for(&mut self, mut found: impl FnMut(&str) -> bool, timeout: Duration) -> Option<String> {
        let until = Instant::now() + timeout;
        loop {
            let line = self.next_line(until.saturating_duration_since(Instant::now()))?;
            if found(&line) {
                return Some(line);
            }
            if Instant::now() >= until {
                return None;
            }
        }
    }

    /// Runs until QEMU ends, the deadline passes, or `on_line` says
    /// [`Reply::Stop`]; `on_line` sees every console line with its time
    /// (and may take its time: lines keep being read meanwhile). Lines that
    /// arrive after a stop are dropped.
    pub fn drive(mut self, mut on_line: impl FnMut(Duration, &str) -> Reply) -> Result<RunOutput> {
        let mut stopped = false;
        loop {
            match self.lines.recv_timeout(POLL) {
                Ok((t, line)) => {
                    let reply = on_line(t, &line);
                    if !self.stream {
                        self.seen.push((t, line));
                    }
                    match reply {
                        Reply::Continue => {}
                        Reply::Type(bytes) => {
                            let _ = self.send(&bytes);
                        }
                        Reply::Stop => {
                            stopped = true;
                            self.kill();
                            // What came after the stop is not part of the run.
                            if let Some(r) = self.reader.take() {
                                let _ = r.join();
                            }
                            self.lines.try_iter().for_each(drop);
                            break;
                        }
                    }
                    // A machine that never stops talking still ends at the deadline.
                    if self.deadline.is_some_and(|d| Instant::now() >= d) && self.ended()? {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The console closed: QEMU is ending.
                    self.wait_exit()?;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.ended()? {
                        break;
                    }
                }
            }
        }
        if !stopped {
            // The last lines, after QEMU ended (nothing can be typed now).
            let before = self.seen.len();
            self.drain_lines();
            for (t, line) in &self.seen[before..] {
                on_line(*t, line);
            }
        }
        let mut out = self.finish()?;
        out.stopped = stopped;
        Ok(out)
    }

    /// Waits for QEMU to end (killing it at the deadline).
    fn wait_exit(&mut self) -> Result<()> {
        while !self.ended()? {
            thread::sleep(POLL);
        }
        Ok(())
    }

    fn drain_lines(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.seen.extend(self.lines.try_iter());
    }

    /// Kills QEMU (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            // Killed by us, the status has no exit code.
            if let Ok(status) = child.wait()
                && self.status.is_none()
            {
                self.status = Some(status);
            }
        }
        self.stdin = None;
    }

    /// Waits for QEMU to end (killing it at the deadline) and returns what
    /// it produced: every console line (those taken before too), its status
    /// and its messages.
    pub fn finish(mut self) -> Result<RunOutput> {
        self.wait_exit()?;
        self.kill();
        self.drain_lines();
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let lines = std::mem::take(&mut self.seen);
        Ok(RunOutput {
            status: self.status.and_then(|s| s.code()),
            console: lines.iter().map(|(_, l)| format!("{l}\n")).collect(),
            lines,
            stderr,
            timed_out: self.timed_out,
            stopped: false,
            elapsed: self.start.elapsed(),
        })
    }

    /// Gives the process away: it keeps running after this handle is gone
    /// (stop it with [`terminate`]). Returns its pid.
    pub fn detach(mut self) -> u32 {
        let pid = self.pid();
        self.child = None;
        pid
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A console line's text: without `\n` and a `\r` before it.
fn line_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    String::from_utf8_lossy(raw).into_owned()
}

/// True if process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stops a detached QEMU by its pid: SIGTERM, then SIGKILL if it still
/// runs after [`TERMINATE_GRACE`]. Returns once it is gone (or after the
/// SIGKILL's own grace).
pub fn terminate(pid: u32) -> Result<()> {
    let signal = |sig: &str| crate::run(Command::new("kill").args([sig, &pid.to_string()]));
    if !alive(pid) {
        return Ok(());
    }
    signal("-TERM")?;
    for grace in [TERMINATE_GRACE, Duration::from_secs(5)] {
        let deadline = Instant::now() + grace;
        while alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if !alive(pid) {
            return Ok(());
        }
        let _ = signal("-KILL");
    }
    anyhow::bail!("QEMU (pid {pid}) did not stop")
}

/// A file for a detached QEMU's messages.
pub fn errors_file(path: &Path) -> Result<Errors> {
    Ok(Errors::File(File::create(path).with_context(|| format!("creating {}", path.display()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell running `script` under the runner's rules.
    fn sh(script: &str, options: Options) -> Qemu {
        Qemu::start("sh", &["-c".to_string(), script.to_string()], options).unwrap()
    }

    #[test]
    fn lines_lose_their_line_ends_and_none_is_lost_at_the_end() {
        let out = sh(r"printf 'one\r\ntwo\n\377 three\nlast'; echo oops >&2; exit 3", Options::default()).finish().unwrap();
        let lines: Vec<&str> = out.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["one", "two", "\u{fffd} three", "last"]);
        assert_eq!(out.console, "one\ntwo\n\u{fffd} three\nlast\n");
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stderr, "oops\n");
        assert!(!out.timed_out && !out.stopped);
    }

    #[test]
    fn the_deadline_kills_and_says_so() {
        let start = Instant::now();
        let mut q = sh("echo up; exec sleep 30", Options { timeout: Some(Duration::from_millis(500)), ..Options::default() });
        let pid = q.pid();
        // A wait longer than the deadline ends at it.
        assert_eq!(q.wait_for(|l| l == "never", Duration::from_secs(20)), None);
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
        let out = q.finish().unwrap();
        assert!(out.timed_out);
        assert_eq!(out.status, None);
        assert_eq!(out.console, "up\n");
        assert!(!alive(pid));
    }

    #[test]
    fn dropping_the_handle_kills_the_process() {
        let q = sh("exec sleep 30", Options::default());
        let pid = q.pid();
        assert!(alive(pid));
        let t = Instant::now();
        drop(q);
        assert!(!alive(pid));
        assert!(t.elapsed() < Duration::from_secs(5), "the drop waited for the process: {:?}", t.elapsed());
    }

    #[test]
    fn typing_on_the_console_and_waiting_for_a_line() {
        let mut q = sh("while read -r l; do echo \"got $l\"; done", Options { input: Input::Piped, ..Options::default() });
        q.send(b"a\nb\n").unwrap();
        assert_eq!(q.wait_for(|l| l.ends_with('b'), Duration::from_secs(10)).as_deref(), Some("got b"));
        assert_eq!(q.next_line(Duration::from_millis(100)), None);
        // Without piped input, sending is an error, not a hang.
        assert!(sh("true", Options::default()).send(b"x").is_err());
    }

    #[test]
    fn drive_types_replies_and_stops_on_request() {
        let q =
            sh("echo ask; read -r l; echo \"said $l\"; echo more; exec sleep 30", Options { input: Input::Piped, ..Options::default() });
        let pid = q.pid();
        let out = q
            .drive(|_, line| match line {
                "ask" => Reply::Type(b"hi\n".to_vec()),
                "said hi" => Reply::Stop,
                _ => Reply::Continue,
            })
            .unwrap();
        assert!(out.stopped && !out.timed_out);
        assert_eq!(out.status, None);
        assert_eq!(out.console, "ask\nsaid hi\n");
        assert!(!alive(pid));
    }

    #[test]
    fn a_detached_process_outlives_its_handle_until_terminated() {
        let q = sh("exec sleep 30", Options { no_console: true, ..Options::default() });
        let pid = q.detach();
        assert!(alive(pid));
        // (Reaped by nobody here: a zombie counts as gone.)
        terminate(pid).unwrap();
        assert!(!alive(pid));
    }
}
