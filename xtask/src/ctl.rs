//! A detached hypervisor and `cargo xtask ctl`, which talks to it.
//!
//! `cargo xtask run --detach` boots QEMU in the background with its files
//! in one instance directory (`target/run/detached/`, or `--dir DIR`, so
//! that several run side by side; `ctl --dir DIR`): `console.log` (the
//! console), `control.sock` (the hypervisor's control channel, COM2, as a
//! Unix socket), `qmp.sock` (QEMU's monitor, for host port forwards added
//! at run time), `bundle.bin`, and `instance.json` (QEMU's pid and the
//! paths). `ctl` sends one request line on the socket and reads one JSON
//! line back: an `abi::control::Response` (the protocol is in
//! `docs/control.md`, its types in `abi::control`), skipping the records
//! the hypervisor pushes on its own (`Response::is_pushed`).
//!
//! [`snapshot`] and [`restore`] move a guest between hypervisors: a
//! snapshot streams back as `snapshot_data` records, a restore goes up
//! in `image-data` chunks as an image upload does (`abi::snapshot` is
//! the file).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abi::control::{GuestEvent, Request, Response, StartOptions, Tenant, from_hex, good_tenant_name};
use abi::report::GuestRow;
use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::qemu::Prepared;
use crate::runner::{self, Options, Qemu, alive};

/// A host port forward `ctl start --port` added: 127.0.0.1:`host` (TCP)
/// to guest `guest` at `ip`:`port`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forward {
    pub guest: String,
    pub host: u16,
    pub ip: String,
    pub port: u16,
}

/// `HOST:GUEST`: a TCP host port and a guest port, 1 to 65535 each.
pub fn parse_port(s: &str) -> Result<(u16, u16)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p > 0);
    s.split_once(':')
        .and_then(|(h, g)| Some((port(h)?, port(g.strip_suffix("/tcp").unwrap_or(g))?)))
        .with_context(|| format!("--port {s:?}: HOST:GUEST, TCP ports 1 to 65535"))
}

/// A captured frame: wall-clock ns and the bytes.
pub type Frame = (u64, Vec<u8>);

/// An answer of the hypervisor: the typed [`Response`] (through `Deref`),
/// printed as the JSON line it came as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer(pub Response);

impl std::ops::Deref for Answer {
    type Target = Response;
    fn deref(&self) -> &Response {
        &self.0
    }
}

impl AsRef<Response> for Answer {
    fn as_ref(&self) -> &Response {
        &self.0
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(&self.0).map_err(|_| std::fmt::Error)?)
    }
}

/// Reads one answer line; an `error` answer becomes an error.
pub fn answer(line: &str) -> Result<Answer> {
    match serde_json::from_str(line.trim()).with_context(|| format!("not an answer of the control protocol: {line:?}"))? {
        Response::Error { error, kind, reason } => Err(Refused { error, kind, reason }.into()),
        r => Ok(Answer(r)),
    }
}

/// An `error` answer, as the error of a request (`anyhow`'s
/// `downcast_ref` finds it): its sentence, kind and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub error: String,
    pub kind: abi::control::ErrorKind,
    pub reason: Option<abi::control::Reason>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Refused {}

/// Reads lines until an answer (skipping pushed records); an `error`
/// answer becomes an error.
fn read_answer(reader: &mut impl BufRead) -> Result<Answer> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).context("no answer from the hypervisor")? == 0 {
            bail!("the hypervisor's channel closed before it answered");
        }
        let a = answer(&line)?;
        if !a.is_pushed() {
            return Ok(a);
        }
    }
}

/// `sha256:` and the SHA-256 of `data` in hex: how the hypervisor names
/// an image.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest;
    let mut s = String::from("sha256:");
    let _ = abi::control::write_hex(&mut s, &sha2::Sha256::digest(data));
    s
}

/// The tenant a `--tenant` word names: `none`, a number below 256, or a
/// name (`[A-Za-z0-9_-]`, the manifest's or a new one).
pub fn tenant(word: &str) -> Result<Tenant<'_>> {
    Ok(match word {
        "none" => Tenant::None,
        w if good_tenant_name(w) => Tenant::Named(w),
        w => match w.parse() {
            Ok(t) if t < abi::MAX_TENANTS => Tenant::Number(t),
            _ => bail!("tenant {w:?}: a number below {}, a name of [A-Za-z0-9_-], or none", abi::MAX_TENANTS),
        },
    })
}

/// What `ctl start` asks for.
#[derive(Clone, Debug)]
pub struct StartSpec<'a> {
    pub name: &'a str,
    /// The Hermit image file (uploaded unless its digest is loaded).
    pub image: &'a Path,
    /// The ELF inside it, if known: symbolizes backtraces in `ctl logs`.
    pub elf: Option<&'a Path>,
    pub memory: u64,
    /// `--tenant` ([`tenant`]); `None`: no vNIC.
    pub tenant: Option<&'a str>,
    pub options: StartOptions,
    pub args: &'a [String],
    /// Environment variables, `KEY=VALUE` each.
    pub env: &'a [String],
}

/// A connection to one of the control sockets, held until dropped.
pub struct Connection {
    pub stream: UnixStream,
    /// The socket's lock (see [`Instance::connect`]).
    _lock: fs::File,
}

/// The control sockets of the hypervisor detached in `dir`, one per
/// client at once: `control.sock`, `control-1.sock`, ...
pub fn control_sockets(dir: &Path) -> Vec<PathBuf> {
    (0..abi::control::CLIENTS_MAX).map(|i| dir.join(abi::control::socket_name(i))).collect()
}

/// The default instance directory.
pub fn default_dir() -> PathBuf {
    crate::workspace_root().join("target/run/detached")
}

/// `cargo xtask ctl`, with `--dir DIR` unless `dir` is the default: how a
/// person talks to the hypervisor detached in `dir`.
pub fn ctl_command(dir: &Path) -> String {
    match dir == default_dir() {
        true => "cargo xtask ctl".to_string(),
        false => format!("cargo xtask ctl --dir {}", dir.display()),
    }
}

/// A detached instance: where its files are, and the connection its
/// requests share.
#[derive(Clone, Debug)]
pub struct Instance {
    pub dir: PathBuf,
    pub pid: u32,
    /// One connection for every `request` of this instance (and its
    /// clones), so that a program making many requests holds one port
    /// instead of taking and leaving one per request.
    shared: std::sync::Arc<std::sync::Mutex<Option<Shared>>>,
}

/// The connection `Instance::request` reuses.
struct Shared {
    conn: Connection,
    reader: BufReader<UnixStream>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Instance {
    /// The instance recorded in `dir`, if its QEMU still runs.
    pub fn open(dir: &Path) -> Result<Instance> {
        let text = fs::read_to_string(dir.join("instance.json")).with_context(|| {
            let with = if dir == default_dir() { String::new() } else { format!(" --dir {}", dir.display()) };
            format!("no detached hypervisor in {} (start one with `cargo xtask run --detach{with}`)", dir.display())
        })?;
        let v: Value = serde_json::from_str(&text).context("instance.json is not JSON")?;
        let pid = v["pid"].as_u64().context("instance.json has no pid")? as u32;
        if !alive(pid) {
            bail!("the detached hypervisor (QEMU pid {pid}) is no longer running; its console is {}", dir.join("console.log").display());
        }
        Ok(Instance { dir: dir.to_path_buf(), pid, shared: Default::default() })
    }

    /// The first control socket (any client may use it).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// A connection to a control socket no other cooperating client holds
    /// (each is a port of its own on the hypervisor's virtio console; a
    /// lock file beside each says who has it): the other ports first, so
    /// that `control.sock` stays free for clients that take no lock; if
    /// every port is taken, waits for `control-1.sock`'s.
    pub fn connect(&self) -> Result<Connection> {
        let sockets = control_sockets(&self.dir);
        let order: Vec<usize> = (1..sockets.len()).chain([0]).collect();
        let lock = |i: usize| -> Result<fs::File> {
            let path = sockets[i].with_extension("lock");
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        };
        let mut held = None;
        for &i in &order {
            let f = lock(i)?;
            if f.try_lock().is_ok() {
                held = Some((i, f));
                break;
            }
        }
        let (i, f) = match held {
            Some(h) => h,
            None => {
                let i = order[0];
                let f = lock(i)?;
                f.lock().context("waiting for a control socket")?;
                (i, f)
            }
        };
        let stream = UnixStream::connect(&sockets[i]).with_context(|| format!("connecting to {}", sockets[i].display()))?;
        Ok(Connection { stream, _lock: f })
    }

    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The host tap device its uplink is on (`run --detach --tap NAME`), if
    /// any: such an uplink has no host port forwards.
    pub fn uplink_tap(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&fs::read_to_string(self.dir.join("instance.json")).ok()?).ok()?;
        v["tap"].as_str().map(String::from)
    }

    /// Sends one request line and returns the answer; `{"error":..}`
    /// answers become errors.
    pub fn request(&self, line: &str) -> Result<Answer> {
        self.with_shared(|conn, reader| {
            (&conn.stream).write_all(format!("{line}\n").as_bytes())?;
            read_answer(reader)
        })
    }

    /// Closes the shared connection, freeing its port (the next request
    /// connects again).
    pub fn disconnect(&self) {
        *self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Runs `f` on the shared connection (made if there is none); a
    /// failure drops it, so the next request connects again.
    fn with_shared<T>(&self, f: impl FnOnce(&Connection, &mut BufReader<UnixStream>) -> Result<T>) -> Result<T> {
        let mut shared = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.is_none() {
            let conn = self.connect()?;
            conn.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            let reader = BufReader::new(conn.stream.try_clone()?);
            *shared = Some(Shared { conn, reader });
        }
        let Some(sh) = shared.as_mut() else { bail!("no connection") };
        let out = f(&sh.conn, &mut sh.reader);
        if out.as_ref().is_err_and(|e| e.downcast_ref::<std::io::Error>().is_some() || e.to_string().contains("no answer")) {
            *shared = None;
        }
        out
    }

    /// Sends `lines` on one connection and hands every answer and pushed
    /// record to `on` until it returns true (no timeout: a stream lasts as
    /// long as what it follows).
    pub fn stream(&self, lines: &[String], mut on: impl FnMut(&Response) -> Result<bool>) -> Result<()> {
        let conn = self.connect()?;
        let mut s = &conn.stream;
        for l in lines {
            s.write_all(format!("{l}\n").as_bytes())?;
        }
        for line in BufReader::new(s).lines() {
            if on(&answer(&line.context("reading the control channel")?)?.0)? {
                return Ok(());
            }
        }
        bail!("the hypervisor's channel closed")
    }

    /// Waits for guest `name` to end and returns how it did.
    pub fn wait(&self, name: &str) -> Result<GuestEvent> {
        let mut end = None;
        self.stream(&[Request::Wait(name).to_string()], |r| {
            Ok(match r {
                Response::Event(e) if e.guest == name && e.event == abi::control::EventKind::Ended => {
                    end = Some(e.clone());
                    true
                }
                _ => false,
            })
        })?;
        end.context("no end record")
    }

    /// The guests, as `list` answers.
    pub fn list(&self) -> Result<Vec<GuestRow>> {
        match self.request(&Request::List.to_string())?.0 {
            Response::Guests { guests } => Ok(guests),
            other => bail!("list was answered {other:?}"),
        }
    }

    /// QEMU's monitor socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// Runs `f` on the host port forwards `ctl start --port` recorded (in
    /// `forwards.json`, under `forwards.lock`: several `ctl`s may run at
    /// once) and records what it leaves.
    fn with_forwards<T>(&self, f: impl FnOnce(&mut Vec<Forward>) -> Result<T>) -> Result<T> {
        let lock = fs::File::options().create(true).truncate(false).write(true).open(self.dir.join("forwards.lock"))?;
        lock.lock().context("waiting for forwards.lock")?;
        let path = self.dir.join("forwards.json");
        let mut forwards: Vec<Forward> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let out = f(&mut forwards);
        crate::pack::write_atomically(&path, serde_json::to_string_pretty(&forwards)?.as_bytes())?;
        out
    }

    /// Forwards each host port (127.0.0.1, TCP) of `ports` to its guest
    /// port at `ip`, guest `guest`'s address: all, or none and an error.
    pub fn forward(&self, guest: &str, ip: &str, ports: &[(u16, u16)]) -> Result<()> {
        let qmp = self.qmp_socket();
        self.with_forwards(|recorded| {
            let mut added: Vec<u16> = Vec::new();
            for &(host, port) in ports {
                if let Err(e) = crate::qmp::human(&qmp, &crate::qmp::add_command(host, ip, port)) {
                    for h in added {
                        let _ = crate::qmp::human(&qmp, &crate::qmp::remove_command(h));
                    }
                    recorded.retain(|f| f.guest != guest);
                    bail!("forwarding host port {host} to guest {guest}: {e}");
                }
                added.push(host);
                recorded.push(Forward { guest: guest.to_string(), host, ip: ip.to_string(), port });
            }
            Ok(())
        })
    }

    /// Removes the forwards of guests that have ended (or are gone): QEMU
    /// keeps a forward, and its host port, until it is removed. Every
    /// `ctl` that talks to the instance does this first, so a guest's
    /// forwards go when it ends, or at the next `ctl` after that.
    pub fn unforward_ended(&self) -> Result<()> {
        if !self.dir.join("forwards.json").exists() {
            return Ok(());
        }
        let live: std::collections::HashSet<String> = self
            .list()?
            .into_iter()
            .filter(|g| !matches!(g.state, abi::report::GuestState::Exited | abi::report::GuestState::Stopped))
            .map(|g| g.name)
            .collect();
        let qmp = self.qmp_socket();
        self.with_forwards(|recorded| {
            recorded.retain(|f| {
                let keep = live.contains(&f.guest);
                if !keep {
                    let _ = crate::qmp::human(&qmp, &crate::qmp::remove_command(f.host));
                }
                keep
            });
            Ok(())
        })
    }

    /// Captures up to `count` frames of `what` (a guest, or `tenant:N`)
    /// for at most `secs` seconds: (wall-clock ns, frame) each, and how many
    /// the hypervisor had to drop.
    pub fn capture(&self, what: &str, count: u32, secs: u32) -> Result<(Vec<Frame>, u64)> {
        let conn = self.connect()?;
        let mut s = &conn.stream;
        s.set_read_timeout(Some(Duration::from_secs(u64::from(secs) + 30)))?;
        s.write_all(format!("{}\n", Request::Capture { what, count, secs }).as_bytes())?;
        let mut frames = Vec::new();
        for line in BufReader::new(s).lines() {
            match answer(&line.context("the capture ended early")?)?.0 {
                // Pushed records for what another client watches.
                Response::Event(_) | Response::Console { .. } | Response::LinesDropped { .. } => {}
                Response::Frame { wall_ns, frame } => {
                    frames.push((wall_ns, from_hex(&frame, usize::MAX / 2).context("a frame is not hex")?))
                }
                Response::Captured { dropped, .. } => return Ok((frames, dropped)),
                _ => {}
            }
        }
        bail!("the capture ended early")
    }

    /// Sends requests on one connection and returns the answers of those
    /// `answered` says get one (`image-data` lines get none); the first
    /// `error` answer becomes the error.
    pub fn requests(&self, lines: &[(String, bool)]) -> Result<Vec<Answer>> {
        self.with_shared(|conn, reader| {
            let mut out = Vec::new();
            for (line, answered) in lines {
                (&conn.stream).write_all(format!("{line}\n").as_bytes())?;
                if *answered {
                    out.push(read_answer(reader)?);
                }
            }
            Ok(out)
        })
    }

    /// Makes sure the hypervisor has the Hermit image at `path` (uploaded
    /// unless an image with its digest is loaded, under its file name, or
    /// with the digest in the name if another image has that name) and
    /// returns its digest.
    pub fn ensure_image(&self, path: &Path) -> Result<String> {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let sum = digest(&data);
        let loaded = match self.request(&Request::Images.to_string())?.0 {
            Response::Images { loaded, .. } => loaded,
            other => bail!("images was answered {other:?}"),
        };
        if loaded.iter().any(|i| i.digest == sum) {
            return Ok(sum);
        }
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).context("the image has no file name")?;
        let name = if loaded.iter().any(|i| i.name == file) {
            let stem = file.strip_suffix(".hermit").unwrap_or(&file);
            format!("{stem}-{}.hermit", &sum[7..19])
        } else {
            file
        };
        let begin = Request::ImageBegin { name: &name, len: data.len() }.to_string();
        let answer = self
            .upload(&begin, &data, &Request::ImageEnd.to_string(), Duration::from_secs(60))
            .with_context(|| format!("sending {}", path.display()))?;
        match answer.0 {
            Response::Image { digest: Some(d), .. } if d == sum => Ok(sum),
            other => bail!("the upload of {} was answered {other:?}", path.display()),
        }
    }

    /// Uploads `data` (an image or a snapshot) on the shared connection:
    /// `begin`, which must be answered `receiving`, then the chunks as
    /// `image-data` lines (not answered), streamed a line at a time, then
    /// `end`; its answer. Each answer is waited for `wait` at most. A
    /// failure half-way leaves answers behind: the next request connects
    /// again.
    fn upload(&self, begin: &str, data: &[u8], end: &str, wait: Duration) -> Result<Answer> {
        let out = self.with_shared(|conn, reader| {
            conn.stream.set_read_timeout(Some(wait))?;
            let got = (|| {
                let mut s = &conn.stream;
                s.write_all(format!("{begin}\n").as_bytes())?;
                match read_answer(reader)?.0 {
                    Response::Receiving { .. } => {}
                    other => bail!("{} was answered {other:?}", begin.split(' ').next().unwrap_or(begin)),
                }
                let mut line = String::with_capacity(12 + 2 * abi::control::CHUNK_MAX);
                for chunk in data.chunks(abi::control::CHUNK_MAX) {
                    line.clear();
                    line.push_str("image-data ");
                    abi::control::write_hex(&mut line, chunk)?;
                    line.push('\n');
                    s.write_all(line.as_bytes())?;
                }
                s.write_all(format!("{end}\n").as_bytes())?;
                read_answer(reader)
            })();
            conn.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            got
        });
        if out.is_err() {
            self.disconnect();
        }
        out
    }

    /// The `start` request line for `spec` (its image given by `digest`).
    pub fn start_line(spec: &StartSpec<'_>, digest: &str) -> Result<String> {
        let tenant = spec.tenant.map(tenant).transpose()?.unwrap_or(Tenant::None);
        let args = spec.args.iter().map(|s| std::borrow::Cow::Borrowed(s.as_str())).collect();
        let env = spec.env.iter().map(|s| std::borrow::Cow::Borrowed(s.as_str())).collect();
        Ok(Request::Start { name: spec.name, image: digest, memory: spec.memory, tenant, options: spec.options, args, env }.to_string())
    }

    /// Starts a guest as `spec` says (its image sent first if the
    /// hypervisor does not have it). Returns the answer.
    pub fn start(&self, spec: &StartSpec<'_>) -> Result<Answer> {
        let digest = self.ensure_image(spec.image)?;
        let answer = self.request(&Self::start_line(spec, &digest)?)?;
        if let Some(elf) = spec.elf {
            self.update(|v| v["elfs"][spec.name] = Value::from(elf.display().to_string()))?;
        }
        Ok(answer)
    }

    fn update(&self, f: impl FnOnce(&mut Value)) -> Result<()> {
        let path = self.dir.join("instance.json");
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
        f(&mut v);
        crate::pack::write_atomically(&path, serde_json::to_string_pretty(&v)?.as_bytes())
    }

    /// Stops QEMU ([`runner::terminate`]).
    pub fn shutdown(&self) -> Result<()> {
        runner::terminate(self.pid)
    }
}

/// Starts `p` (prepared with `detach: Some(dir)`) in the background, and
/// gives its QEMU away ([`Qemu::detach`]) once the hypervisor answers; if
/// it never does, QEMU is killed.
pub fn detach(p: &Prepared, dir: &Path) -> Result<Instance> {
    if let Ok(old) = Instance::open(dir) {
        bail!("a detached hypervisor already runs in {} (QEMU pid {}); `{} shutdown` stops it", dir.display(), old.pid, ctl_command(dir));
    }
    let _ = fs::remove_file(dir.join("control.sock"));
    let _ = fs::remove_file(dir.join("qmp.sock"));
    // A new QEMU has none of the old one's forwards.
    let _ = fs::remove_file(dir.join("forwards.json"));
    let errors = runner::errors_file(&dir.join("qemu.err"))?;
    let qemu = Qemu::spawn(&p.qemu_args, Options { errors, no_console: true, ..Options::default() })?;
    let inst = Instance { dir: dir.to_path_buf(), pid: qemu.pid(), shared: Default::default() };
    let info = serde_json::json!({
        "pid": inst.pid,
        "control": inst.socket(),
        "console": inst.console(),
        "elfs": p.elfs.iter().map(|(n, e)| (n.clone(), e.display().to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        "tap": p.tap,
    });
    crate::pack::write_atomically(&dir.join("instance.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
    // Wait until the hypervisor answers (QEMU makes the socket at once,
    // and holds what a client writes until the hypervisor's driver is up).
    // Each try is a fresh connection given 10 s, so one lost request
    // cannot use up the whole wait; a retry is said, being a sign of one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = || -> Result<()> {
        let conn = inst.connect()?;
        conn.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&conn.stream).write_all(b"list\n")?;
        read_answer(&mut BufReader::new(&conn.stream)).map(drop)
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match probe() {
            Ok(()) => {
                if attempt > 1 {
                    eprintln!("note: the detached hypervisor answered at try {attempt}");
                }
                qemu.detach();
                return Ok(inst);
            }
            Err(_) if Instant::now() < deadline && alive(inst.pid) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                let console = fs::read_to_string(inst.console()).unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(20).collect();
                bail!(
                    "the detached hypervisor does not answer (try {attempt}): {e:#}\n{}\nits console ends:\n{}",
                    fs::read_to_string(dir.join("qemu.err")).unwrap_or_default(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            }
        }
    }
}

/// A pcap file (nanosecond timestamps, Ethernet) of `frames`.
pub fn pcap(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic for nanosecond resolution, version 2.4, no zone, no sigfigs,
    // snap length, link type 1 (Ethernet).
    out.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (ns, f) in frames {
        let secs = (ns / 1_000_000_000) as u32;
        let nanos = (ns % 1_000_000_000) as u32;
        for v in [secs, nanos, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

/// Pauses guest `name` and waits (10 s at most) until `list` says it has
/// (it pauses at its next exit); the answer to `pause`.
pub fn pause(inst: &Instance, name: &str) -> Result<Answer> {
    let asked = inst.request(&Request::Pause(name).to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let Response::Guests { guests } = inst.request(&Request::List.to_string())?.0 else { bail!("list was not answered with guests") };
        match guests.iter().find(|g| g.name == name).map(|g| g.state) {
            Some(abi::report::GuestState::Paused) => return Ok(asked),
            Some(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
            Some(state) => bail!("guest {name} did not pause within 10 s (it is {state:?})"),
            None => bail!("guest {name} is gone"),
        }
    }
}

/// How long `snapshot` and `restore` wait for any one line of the
/// hypervisor: it builds a snapshot, or a guest from one, before it
/// answers, which for a large guest takes a while under TCG.
const SNAPSHOT_LINE_WAIT: Duration = Duration::from_secs(120);

/// Pauses guest `name` (waiting until it has), then has the hypervisor
/// send its snapshot (`snapshot NAME`: the answer, then `snapshot_data`
/// records until its `bytes` have come, on the one connection) and checks
/// it against the digest the hypervisor gave. The guest stays paused.
/// Errors with the hypervisor's sentence if it refuses.
pub fn snapshot(inst: &Instance, name: &str) -> Result<Vec<u8>> {
    pause(inst, name)?;
    let out = inst.with_shared(|conn, reader| {
        conn.stream.set_read_timeout(Some(SNAPSHOT_LINE_WAIT))?;
        (&conn.stream).write_all(format!("{}\n", Request::Snapshot(name)).as_bytes())?;
        let got = read_snapshot(reader, name);
        conn.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        got
    });
    // A stream cut short leaves records behind: the next request starts
    // on a fresh connection.
    if out.is_err() {
        inst.disconnect();
    }
    out
}

/// Reads the answer to `snapshot NAME` and the data that follows it.
fn read_snapshot(reader: &mut impl BufRead, name: &str) -> Result<Vec<u8>> {
    let (bytes, want) = match read_answer(reader)?.0 {
        Response::Snapshot { bytes, digest, .. } => (bytes, digest),
        other => bail!("snapshot {name} was answered {other:?}"),
    };
    let len = usize::try_from(bytes).ok().filter(|&b| b <= abi::control::SNAPSHOT_BYTES_MAX);
    let len = len.with_context(|| format!("the snapshot of {name} is said to be {bytes} bytes, more than a restore takes"))?;
    let mut data = Vec::with_capacity(len);
    let mut line = String::new();
    while data.len() < len {
        line.clear();
        if reader.read_line(&mut line).context("reading the snapshot")? == 0 {
            bail!("the hypervisor's channel closed after {} of the snapshot's {len} bytes", data.len());
        }
        match answer(&line)?.0 {
            Response::SnapshotData { snapshot_data } => {
                let chunk =
                    from_hex(&snapshot_data, abi::control::CHUNK_MAX).context("a snapshot_data record is not hex of 4096 bytes at most")?;
                if data.len() + chunk.len() > len {
                    bail!("the snapshot of {name} ran past its {len} bytes");
                }
                data.extend_from_slice(&chunk);
            }
            r if r.is_pushed() => {}
            other => bail!("the snapshot of {name} broke off after {} of {len} bytes: {other:?}", data.len()),
        }
    }
    let got = digest(&data);
    if got != want {
        bail!("the snapshot of {name} arrived altered: its SHA-256 is {got}, the hypervisor said {want}");
    }
    Ok(data)
}

/// What `restore` made: the guest, its address if it has a vNIC, and its
/// tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub name: String,
    pub ip: Option<String>,
    pub tenant: Option<u32>,
}

/// Makes guest `name` from `snapshot` (in `tenant`, a `--tenant` word, or
/// the snapshot's): it goes on where the saved guest was. The file is
/// checked here first, so a bad one is refused with its reason before
/// anything is sent; its image is uploaded if the hypervisor has not
/// loaded it and a local file has its digest (see [`restore_with`]).
pub fn restore(inst: &Instance, snapshot: &[u8], name: &str, tenant: Option<&str>) -> Result<Restored> {
    restore_with(inst, snapshot, name, tenant, None, &[])
}

/// [`restore`] with `args` instead of the saved arguments (if given),
/// looking for the snapshot's image among `images` before
/// `target/guests/` (where `build-app` writes them).
pub fn restore_with(
    inst: &Instance,
    snapshot: &[u8],
    name: &str,
    tenant: Option<&str>,
    args: Option<&[String]>,
    images: &[&Path],
) -> Result<Restored> {
    let snap = abi::snapshot::Snapshot::parse(snapshot).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenant = tenant.map(self::tenant).transpose()?;
    let mut want = String::from("sha256:");
    abi::control::write_hex(&mut want, &snap.state.image_digest)?;
    let loaded = match inst.request(&Request::Images.to_string())?.0 {
        Response::Images { loaded, .. } => loaded,
        other => bail!("images was answered {other:?}"),
    };
    if !loaded.iter().any(|i| i.digest == want) {
        let Some(file) = image_file(snap.image_name, &want, images) else {
            bail!(
                "the snapshot needs image {} ({want}), which this hypervisor has not loaded and no local file matches (in \
                 target/guests/); give its file to `cargo xtask ctl restore ... --image FILE`, or load it with `cargo xtask ctl \
                 start NAME --image FILE`",
                snap.image_name
            );
        };
        inst.ensure_image(&file)?;
    }
    let args = args.map(|a| a.iter().map(|s| s.as_str().into()).collect());
    let begin = Request::RestoreBegin { name, len: snapshot.len(), tenant, args }.to_string();
    match inst.upload(&begin, snapshot, &Request::RestoreEnd.to_string(), SNAPSHOT_LINE_WAIT)?.0 {
        Response::Restored { restored, ip, tenant } => Ok(Restored { name: restored, ip, tenant }),
        other => bail!("restore-end was answered {other:?}"),
    }
}

/// A local Hermit image file whose digest is `want` (`sha256:HEX`):
/// one of `given`, or in `target/guests/` (`build-app`'s), looked for
/// under the name the hypervisor gave it first.
fn image_file(image_name: &str, want: &str, given: &[&Path]) -> Option<PathBuf> {
    let guests = crate::workspace_root().join("target/guests");
    let mut candidates: Vec<PathBuf> = given.iter().map(|p| p.to_path_buf()).collect();
    if abi::control::good_name(image_name) && !image_name.starts_with('.') {
        candidates.push(guests.join(image_name));
        // An upload under a taken name carries part of its digest
        // (`ensure_image`): `echo-0123456789ab.hermit`.
        if let Some((stem, _)) = image_name.strip_suffix(".hermit").and_then(|s| s.rsplit_once('-')) {
            candidates.push(guests.join(format!("{stem}.hermit")));
        }
    }
    let mut all: Vec<PathBuf> = fs::read_dir(&guests).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    all.sort();
    candidates.extend(all.into_iter().filter(|p| p.extension().is_some_and(|e| e == "hermit")));
    candidates.into_iter().find(|p| p.is_file() && fs::read(p).is_ok_and(|data| digest(&data) == want))
}

/// `ctl list -o table`: one row per guest of a `list` answer.
pub fn table(list: impl AsRef<Response>) -> String {
    let mut out =
        format!("{:<24} {:>6} {:<8} {:>12} {:>12} {:>10} {:>10}\n", "NAME", "TENANT", "STATE", "CPU ms", "MEMORY KiB", "SENT", "RECEIVED");
    let guests = match list.as_ref() {
        Response::Guests { guests } => &guests[..],
        _ => &[],
    };
    for g in guests {
        // The state as it is on the wire (`waiting`, `running`, ...).
        let state = serde_json::to_value(g.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        out += &format!(
            "{:<24} {:>6} {:<8} {:>12.1} {:>12} {:>10} {:>10}\n",
            g.name,
            g.tenant.map_or("-".to_string(), |t| t.to_string()),
            state,
            g.cpu_ns as f64 / 1e6,
            g.memory_bytes / 1024,
            g.sent_frames,
            g.received_frames,
        );
    }
    out
}

/// `ctl logs NAME`: the guest's console lines and the hypervisor's lines
/// about it, from the console log (backtraces symbolized).
pub fn logs(inst: &Instance, name: &str) -> Result<String> {
    let console = fs::read_to_string(inst.console()).with_context(|| format!("reading {}", inst.console().display()))?;
    let elfs: Vec<(String, PathBuf)> = fs::read_to_string(inst.dir.join("instance.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["elfs"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), PathBuf::from(v.as_str().unwrap_or("")))).collect()))
        .unwrap_or_default();
    let mine: String = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(&format!("{name}| ")) || l.starts_with(&format!("[hv] guest {name} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(crate::symbolize::Symbolizer::new(elfs).annotate_all(&mine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_knows_whether_its_uplink_is_a_tap() {
        let dir = crate::workspace_root().join(format!("target/ctl-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let inst = Instance { dir: dir.clone(), pid: 0, shared: Default::default() };
        for (json, tap) in
            [(r#"{"pid":1,"tap":"tap7"}"#, Some("tap7")), (r#"{"pid":1,"tap":null}"#, None), (r#"{"pid":1}"#, None), ("{", None)]
        {
            fs::write(dir.join("instance.json"), json).unwrap();
            assert_eq!(inst.uplink_tap().as_deref(), tap, "{json}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pcap_files_have_the_global_header_and_one_record_per_frame() {
        let p = pcap(&[(1_500_000_007, vec![0xab; 60]), (2_000_000_000, vec![1, 2, 3])]);
        assert_eq!(p.len(), 24 + 16 + 60 + 16 + 3);
        assert_eq!(&p[..4], &0xa1b2_3c4du32.to_le_bytes());
        assert_eq!(u32::from_le_bytes(p[20..24].try_into().unwrap()), 1, "Ethernet");
        assert_eq!(u32::from_le_bytes(p[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(p[28..32].try_into().unwrap()), 500_000_007);
        assert_eq!(u32::from_le_bytes(p[32..36].try_into().unwrap()), 60);
    }

    #[test]
    fn answers_are_typed_and_errors_are_errors() {
        let a = answer("{\"started\":\"w\",\"ip\":\"10.7.0.2\",\"tenant\":7}\n").unwrap();
        assert_eq!(*a, Response::Started { started: "w".into(), ip: Some("10.7.0.2".into()), tenant: Some(7) });
        assert_eq!(a.to_string(), r#"{"started":"w","ip":"10.7.0.2","tenant":7}"#, "printed as it came");
        assert_eq!(answer(r#"{"error":"no guest w","kind":"refused"}"#).unwrap_err().to_string(), "no guest w");
        // A protocol 2 hypervisor sends no kind: still an error.
        assert_eq!(answer(r#"{"error":"no guest w"}"#).unwrap_err().to_string(), "no guest w");
        assert!(answer("[hv] not an answer").is_err());
    }

    #[test]
    fn pushed_records_are_skipped_while_waiting_for_an_answer() {
        let wire = concat!(
            r#"{"console":"w","line":"{\"stopped\":\"x\"}"}"#,
            "\n",
            r#"{"event":"started","guest":"w","state":"waiting","exit_code":null,"stop_reason":null}"#,
            "\n",
            r#"{"stopped":"x"}"#,
            "\n"
        );
        let a = read_answer(&mut std::io::Cursor::new(wire)).unwrap();
        assert_eq!(*a, Response::Stopped { stopped: "x".into() });
        assert!(read_answer(&mut std::io::Cursor::new(r#"{"lines_dropped":1}"#)).is_err(), "no answer: an error, not a hang");
    }

    #[test]
    fn tenants_are_words_numbers_or_none() {
        assert_eq!(tenant("acme").unwrap(), Tenant::Named("acme"));
        assert_eq!(tenant("Bench-2").unwrap(), Tenant::Named("Bench-2"));
        assert_eq!(tenant("7").unwrap(), Tenant::Number(7));
        assert_eq!(tenant("none").unwrap(), Tenant::None);
        assert!(tenant("256").is_err() && tenant("a.b").is_err() && tenant("").is_err());
        assert_eq!(digest(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A valid snapshot of guest `c` of an image whose file is `image`.
    fn snapshot_file(image: &[u8], image_name: &str) -> Vec<u8> {
        use abi::snapshot::{FPU_BYTES, FPU_MXCSR_OFFSET, RIP, State, Writer};
        use sha2::Digest;
        let mut fpu = [0u8; FPU_BYTES];
        fpu[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        let mut regs = [0u64; 21];
        regs[RIP] = 0x20_1000;
        let state = State {
            abi: abi::ABI_VERSION,
            image_digest: sha2::Sha256::digest(image).into(),
            settings: Default::default(),
            clock_ns: 5_000_000_000,
            blocked: true,
            regs,
            fpu,
        };
        let mut w = Writer::new(&state, image_name, "c", &["counter", "100"], &[], 3).unwrap();
        for (i, va) in [0x20_0000u64, 0x20_1000, 0x30_0000].into_iter().enumerate() {
            w.page(va, i != 1, i == 1, &[i as u8 + 1; 4096]);
        }
        w.finish().unwrap()
    }

    /// A stand-in hypervisor on `control-1.sock` of a fresh directory (the
    /// socket `connect` tries first): it answers each request line with
    /// what `on` returns, and hands back every line it got when the
    /// client leaves.
    fn fake_hypervisor(
        tag: &str,
        mut on: impl FnMut(&str) -> Vec<String> + Send + 'static,
    ) -> (Instance, std::thread::JoinHandle<Vec<String>>) {
        let dir = std::env::temp_dir().join(format!("xtask-ctl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("control-1.sock")).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            for line in BufReader::new(&stream).lines() {
                let line = line.unwrap();
                for answer in on(&line) {
                    (&stream).write_all(format!("{answer}\n").as_bytes()).unwrap();
                }
                got.push(line);
            }
            got
        });
        (Instance { dir, pid: std::process::id(), shared: Default::default() }, server)
    }

    #[test]
    fn a_snapshot_is_paused_for_streamed_and_checked() {
        let file = snapshot_file(b"an image", "worker.hermit");
        for (tag, tamper) in [("snap-ok", false), ("snap-bad", true)] {
            let (sent, sum) = (file.clone(), digest(&file));
            let (inst, server) = fake_hypervisor(tag, move |line| {
                match line {
                "pause c" => vec![r#"{"pausing":"c"}"#.into()],
                "list" => vec![
                    r#"{"guests":[{"name":"c","tenant":null,"state":"paused","cpu_ns":1,"memory_bytes":4096,"sent_frames":0,"received_frames":0}]}"#
                        .into(),
                ],
                "snapshot c" => {
                    let mut out = vec![format!(r#"{{"snapshot":"c","bytes":{},"digest":"{sum}"}}"#, sent.len())];
                    for (i, chunk) in sent.chunks(abi::control::CHUNK_MAX).enumerate() {
                        let mut chunk = chunk.to_vec();
                        if tamper && i == 1 {
                            chunk[7] ^= 1;
                        }
                        let mut hex = String::new();
                        abi::control::write_hex(&mut hex, &chunk).unwrap();
                        out.push(format!(r#"{{"snapshot_data":"{hex}"}}"#));
                        // Another client's pushed records may come between.
                        out.push(r#"{"console":"x","line":"hello"}"#.into());
                    }
                    out
                }
                _ => vec![r#"{"error":"no","kind":"refused"}"#.into()],
            }
            });
            let got = snapshot(&inst, "c");
            inst.disconnect();
            assert_eq!(server.join().unwrap(), ["pause c", "list", "snapshot c"]);
            match tamper {
                false => assert_eq!(got.unwrap(), file),
                true => assert!(got.unwrap_err().to_string().contains("arrived altered"), "{tag}"),
            }
        }
    }

    #[test]
    fn a_refused_snapshot_says_the_hypervisor_s_reason() {
        let (inst, server) = fake_hypervisor("snap-refused", |line| {
            match line {
            "pause c" => vec![r#"{"pausing":"c"}"#.into()],
            "list" => vec![
                r#"{"guests":[{"name":"c","tenant":null,"state":"paused","cpu_ns":1,"memory_bytes":4096,"sent_frames":0,"received_frames":0}]}"#
                    .into(),
            ],
            _ => vec![r#"{"error":"no room for a snapshot of c","kind":"refused","reason":"no_room"}"#.into()],
        }
        });
        let e = snapshot(&inst, "c").unwrap_err();
        inst.disconnect();
        server.join().unwrap();
        assert_eq!(e.to_string(), "no room for a snapshot of c");
        assert_eq!(e.downcast_ref::<Refused>().and_then(|r| r.reason), Some(abi::control::Reason::NoRoom));
    }

    #[test]
    fn a_restore_checks_the_file_then_uploads_it_in_chunks() {
        let image = b"the worker image".to_vec();
        let file = snapshot_file(&image, "worker.hermit");
        let image_digest = digest(&image);
        let (inst, server) = fake_hypervisor("restore", move |line| match line.split_whitespace().next() {
            Some("images") => vec![format!(
                r#"{{"images":["worker.hermit"],"loaded":[{{"name":"worker.hermit","digest":"{image_digest}","bytes":16,"guests":0}}]}}"#
            )],
            Some("restore-begin") => vec![r#"{"receiving":"c2"}"#.into()],
            Some("image-data") => vec![],
            Some("restore-end") => vec![r#"{"restored":"c2","ip":"10.1.0.2","tenant":1}"#.into()],
            _ => vec![r#"{"error":"no","kind":"refused"}"#.into()],
        });
        let r = restore(&inst, &file, "c2", Some("acme")).unwrap();
        inst.disconnect();
        assert_eq!(r, Restored { name: "c2".into(), ip: Some("10.1.0.2".into()), tenant: Some(1) });
        let got = server.join().unwrap();
        assert_eq!(got[..2], ["images".to_string(), format!("restore-begin c2 {} acme", file.len())]);
        assert_eq!(got.last().map(String::as_str), Some("restore-end"));
        let data: Vec<u8> = got[2..got.len() - 1]
            .iter()
            .flat_map(|l| from_hex(l.strip_prefix("image-data ").unwrap(), abi::control::CHUNK_MAX).unwrap())
            .collect();
        assert_eq!(data, file, "the file, in order, in chunks of 4096 bytes at most");
    }

    #[test]
    fn a_restore_uploads_the_image_first_when_the_hypervisor_lacks_it() {
        let image = b"a worker image not loaded there".to_vec();
        let file = snapshot_file(&image, "worker-0123456789ab.hermit");
        let dir = std::env::temp_dir().join(format!("xtask-ctl-image-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.hermit");
        fs::write(&path, &image).unwrap();
        let (image_digest, len) = (digest(&image), image.len());
        let (inst, server) = fake_hypervisor("restore-upload", move |line| match line.split_whitespace().next() {
            Some("images") => vec![r#"{"images":[],"loaded":[]}"#.into()],
            Some("image-begin") => vec![r#"{"receiving":"w.hermit"}"#.into()],
            Some("image-end") => vec![format!(r#"{{"image":"w.hermit","digest":"{image_digest}"}}"#)],
            Some("restore-begin") => vec![r#"{"receiving":"c2"}"#.into()],
            Some("image-data") => vec![],
            Some("restore-end") => vec![r#"{"restored":"c2","ip":null,"tenant":null}"#.into()],
            _ => vec![r#"{"error":"no","kind":"refused"}"#.into()],
        });
        let r = restore_with(&inst, &file, "c2", None, None, &[&path]).unwrap();
        inst.disconnect();
        assert_eq!(r, Restored { name: "c2".into(), ip: None, tenant: None });
        let got = server.join().unwrap();
        let words: Vec<&str> = got.iter().filter_map(|l| l.split_whitespace().next()).filter(|w| *w != "image-data").collect();
        assert_eq!(words, ["images", "images", "image-begin", "image-end", "restore-begin", "restore-end"]);
        assert_eq!(got[2], format!("image-begin w.hermit {len}"));
        assert_eq!(got.iter().find(|l| l.starts_with("restore-begin")).unwrap(), &format!("restore-begin c2 {}", file.len()));
    }

    #[test]
    fn a_bad_snapshot_or_one_of_an_unknown_image_is_refused_here() {
        let file = snapshot_file(b"an image nobody has", "gone.hermit");
        // Refused before anything is sent: no hypervisor is asked.
        let nowhere = Instance { dir: std::env::temp_dir().join("xtask-ctl-nowhere"), pid: 0, shared: Default::default() };
        let e = restore(&nowhere, &file[..file.len() - 1], "c2", None).unwrap_err();
        assert_eq!(e.to_string(), abi::snapshot::Error::Truncated.to_string());
        let mut flipped = file.clone();
        flipped[5000] ^= 1;
        assert_eq!(restore(&nowhere, &flipped, "c2", None).unwrap_err().to_string(), abi::snapshot::Error::Altered.to_string());

        // Its image is not loaded and no local file has its digest.
        let (inst, server) = fake_hypervisor("restore-noimage", |line| match line {
            "images" => vec![r#"{"images":[],"loaded":[]}"#.into()],
            _ => vec![r#"{"error":"no","kind":"refused"}"#.into()],
        });
        let e = restore(&inst, &file, "c2", None).unwrap_err().to_string();
        inst.disconnect();
        assert_eq!(server.join().unwrap(), ["images"], "nothing uploaded");
        assert!(e.starts_with("the snapshot needs image gone.hermit (sha256:") && e.contains("--image FILE"), "{e}");
    }

    #[test]
    fn the_table_has_a_row_per_guest() {
        let v: Answer = answer(
            r#"{"guests":[{"name":"a-0","tenant":0,"state":"waiting","cpu_ns":1500000,"memory_bytes":90112,"sent_frames":3,"received_frames":4},
                          {"name":"h-0","tenant":null,"state":"exited","cpu_ns":0,"memory_bytes":0,"sent_frames":0,"received_frames":0}]}"#,
        )
        .unwrap();
        let t = table(&v);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.lines().nth(1).unwrap().starts_with("a-0") && t.contains("  1.5 ") && t.contains(" 88 "), "{t}");
        assert!(t.lines().nth(2).unwrap().contains(" - ") && t.contains("exited"), "{t}");
    }
}
