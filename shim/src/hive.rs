//! The running hypervisor the shim drives: found through `HIVE_DIR` (its
//! instance directory, as `cargo xtask run --detach` makes it: `control.sock`,
//! `qmp.sock`, `instance.json`), reached through one multiplexed
//! [`Channel`] that is made on first use and again after it closed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi::control::{ErrorKind, ImageInfo, PROTOCOL_VERSION, Reason, Request, Response};
use abi::report::GuestRow;
use sha2::{Digest as _, Sha256};

use crate::channel::{Channel, ChannelError, Pushed};

/// The control sockets of the hypervisor in `dir`, as `run --detach`
/// makes them: `control.sock`, then `control-1.sock`, ... (a port each
/// of its virtio console; a hypervisor on COM2 has the first only).
pub fn control_sockets(dir: &Path) -> Vec<PathBuf> {
    (0..abi::control::CLIENTS_MAX).map(|i| dir.join(abi::control::socket_name(i))).collect()
}

/// The environment variable that names the hypervisor's instance directory.
pub const HIVE_DIR: &str = "HIVE_DIR";

/// How long the hypervisor may take to answer a request (an `image-end`
/// validates a whole image).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a new connection waits for the answer to `version`: a socket
/// takes one client at a time, and one that takes no lock file holding it
/// looks like a hypervisor that does not answer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// `sha256:` and the SHA-256 of `data` in hex: how the hypervisor names
/// an image.
pub fn digest(data: &[u8]) -> String {
    let mut s = String::from("sha256:");
    let _ = abi::control::write_hex(&mut s, &Sha256::digest(data));
    s
}

/// The name an image is uploaded under: its digest's first 16 hex digits
/// (so two images never share one).
pub fn upload_name(digest: &str) -> String {
    format!("oci-{}.hermit", digest.strip_prefix("sha256:").unwrap_or(digest).get(..16).unwrap_or("image"))
}

/// The instance directory from the environment, or why there is none.
pub fn dir_from_env() -> Result<PathBuf, String> {
    match std::env::var_os(HIVE_DIR) {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => Err(format!(
            "{HIVE_DIR} is not set: the hive runtime needs the instance directory of a running hypervisor \
             (`cargo xtask run --detach` makes target/run/detached) in containerd's environment"
        )),
    }
}

type OnPushed = Arc<dyn Fn(Pushed) + Send + Sync>;

/// What the shim knows of the hypervisor without asking again, learnt
/// when a connection is made (`list`, `stats`: each as long as the guests
/// are many). The names the shim hands out are added; another client
/// (`ctl start`) may take one meanwhile, which a `start` refused for it
/// says ([`Hive::learn_names`]).
#[derive(Clone, Debug, Default)]
struct Known {
    /// Every guest name the hypervisor has (it keeps ended guests').
    names: HashSet<String>,
    /// Its memory for guests (`stats`'s `total_bytes`).
    guest_bytes: u64,
}

/// How long a `list` answers `Stats` requests: the kubelet asks for every
/// container's at once, and each `list` is as long as the guests are many.
const LIST_FRESH: Duration = Duration::from_secs(1);

/// The hypervisor in `dir`.
pub struct Hive {
    dir: Result<PathBuf, String>,
    /// The connection, and the lock file that says its socket is taken.
    channel: Mutex<Option<(Arc<Channel>, File)>>,
    known: Mutex<Known>,
    rows: Mutex<Option<(Instant, Arc<Vec<GuestRow>>)>>,
    on_pushed: OnPushed,
    hello_timeout: Duration,
}

impl Hive {
    /// The hypervisor `dir` names (an error: why none can be used);
    /// `on_pushed` gets every pushed record of every connection, and
    /// [`Pushed::Closed`] when one ends. It runs on the reader thread and
    /// must not make requests itself.
    pub fn new(dir: Result<PathBuf, String>, on_pushed: OnPushed) -> Hive {
        Hive {
            dir,
            channel: Mutex::new(None),
            known: Mutex::new(Known::default()),
            rows: Mutex::new(None),
            on_pushed,
            hello_timeout: HELLO_TIMEOUT,
        }
    }

    /// The instance directory.
    pub fn dir(&self) -> Result<&Path, String> {
        self.dir.as_deref().map_err(Clone::clone)
    }

    /// QEMU's pid, from `instance.json` (0 if it cannot be read).
    pub fn qemu_pid(&self) -> u32 {
        let Ok(dir) = self.dir() else { return 0 };
        std::fs::read_to_string(dir.join("instance.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0)
    }

    /// QEMU's monitor socket.
    pub fn qmp_socket(&self) -> Result<PathBuf, String> {
        Ok(self.dir()?.join("qmp.sock"))
    }

    /// The connection, made now if there is none or it closed.
    pub fn channel(&self) -> Result<Arc<Channel>, String> {
        let mut slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ch, _)) = slot.as_ref().filter(|(c, _)| !c.is_closed()) {
            return Ok(ch.clone());
        }
        // The old socket's lock goes with the old connection.
        *slot = None;
        let (ch, held) = self.connect()?;
        let ch = Arc::new(ch);
        let names = match ch.request(&Request::List).map_err(|e| e.to_string())? {
            Response::Guests { guests } => guests.into_iter().map(|g| g.name).collect(),
            other => return Err(format!("list was answered {other:?}")),
        };
        let guest_bytes = match ch.request(&Request::Stats).map_err(|e| e.to_string())? {
            Response::Stats { machine, .. } => machine.total_bytes,
            other => return Err(format!("stats was answered {other:?}")),
        };
        *lock(&self.known) = Known { names, guest_bytes };
        *slot = Some((ch.clone(), held));
        Ok(ch)
    }

    /// Learns the guests' names again (a `start` was refused because
    /// another client took the name).
    pub fn learn_names(&self) -> Result<(), String> {
        let names = match self.request(&Request::List)? {
            Response::Guests { guests } => guests.into_iter().map(|g| g.name),
            other => return Err(format!("list was answered {other:?}")),
        };
        lock(&self.known).names.extend(names);
        Ok(())
    }

    /// The hypervisor's memory for guests: no guest may have a larger limit.
    pub fn guest_bytes(&self) -> Result<u64, String> {
        self.channel()?;
        Ok(lock(&self.known).guest_bytes)
    }

    /// A name for a new guest: `base`, or the first of `base-2`, `base-3`,
    /// ... that no guest has had ([`crate::plan::numbered`]); taken from
    /// then on.
    pub fn new_name(&self, base: &str) -> Result<String, String> {
        self.channel()?;
        let mut known = lock(&self.known);
        let name = (0..).map(|n| crate::plan::numbered(base, n)).find(|n| !known.names.contains(n)).ok_or("no free name")?;
        known.names.insert(name.clone());
        Ok(name)
    }

    /// Has the hypervisor forget ended guest `name` (its record, its room,
    /// its name: a container id used again gets its own name back). A
    /// guest that never started, or is gone already, is no error.
    pub fn forget(&self, name: &str) -> Result<(), String> {
        match self.channel()?.request(&Request::Remove(name)) {
            Ok(_) | Err(ChannelError::Refused { reason: Some(Reason::NotFound), .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        lock(&self.known).names.remove(name);
        Ok(())
    }

    /// A control socket no cooperating client holds, locked: like `ctl`,
    /// the numbered ports first so `control.sock` stays free for clients
    /// that take no lock; a hypervisor on COM2 has `control.sock` only.
    fn free_socket(dir: &Path) -> Result<(PathBuf, File), String> {
        let sockets = control_sockets(dir);
        let mut seen = false;
        for socket in sockets.iter().skip(1).chain(sockets.first()) {
            if !socket.exists() {
                continue;
            }
            seen = true;
            let path = socket.with_extension("lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            if file.try_lock().is_ok() {
                return Ok((socket.clone(), file));
            }
        }
        Err(if seen {
            format!("every control socket in {} is held by another client ({HIVE_DIR})", dir.display())
        } else {
            format!("no hypervisor's control socket in {} ({HIVE_DIR}): is it running? (`cargo xtask run --detach`)", dir.display())
        })
    }

    fn connect(&self) -> Result<(Channel, File), String> {
        let dir = self.dir()?;
        let (socket, held) = Self::free_socket(dir)?;
        let where_ = || format!("the hypervisor's control channel {} ({HIVE_DIR}={})", socket.display(), dir.display());
        let stream = UnixStream::connect(&socket)
            .map_err(|e| format!("cannot reach {} ({e}): is it running? (`cargo xtask run --detach`)", where_()))?;
        // Say hello on the raw stream first, with a deadline.
        stream.set_read_timeout(Some(self.hello_timeout)).map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        writeln!(writer, "{}", Request::Version).map_err(|e| format!("writing to {}: {e}", where_()))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let protocol = loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err(format!("{} closed the connection", where_())),
                Err(_) => {
                    return Err(format!(
                        "{} does not answer within {:.1} s (does another client that takes no lock file, such as socat, hold it?)",
                        where_(),
                        self.hello_timeout.as_secs_f32()
                    ));
                }
                Ok(_) => {}
            }
            match serde_json::from_str::<Response>(line.trim()) {
                Ok(Response::Version { protocol, .. }) => break protocol,
                Ok(r) if r.is_pushed() => (self.on_pushed)(Pushed::Record(r)),
                Ok(Response::Error { error, .. }) => return Err(format!("{} answered version with: {error}", where_())),
                _ => {}
            }
        };
        if protocol < PROTOCOL_VERSION {
            return Err(format!("{} speaks control protocol {protocol}; the shim needs {PROTOCOL_VERSION}", where_()));
        }
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        let closer = stream.try_clone().map_err(|e| e.to_string())?;
        let on_pushed = self.on_pushed.clone();
        log::info!("connected to {}", where_());
        let ch = Channel::new(
            reader,
            writer,
            move || {
                let _ = closer.shutdown(std::net::Shutdown::Both);
            },
            ANSWER_TIMEOUT,
            move |p| on_pushed(p),
        );
        Ok((ch, held))
    }

    /// Sends `req` on the connection.
    pub fn request(&self, req: &Request<'_>) -> Result<Response, String> {
        self.channel()?.request(req).map_err(|e| e.to_string())
    }

    /// Makes sure the hypervisor has the image `data` (uploaded unless one
    /// with its digest is loaded) and returns its digest. An image the
    /// hypervisor rejects (not a Hermit image, another ABI) is an error
    /// with its reason.
    pub fn ensure_image(&self, data: &[u8]) -> Result<String, String> {
        let sum = digest(data);
        let ch = self.channel()?;
        let loaded = self.loaded(&ch)?;
        if loaded.iter().any(|i| i.digest == sum) {
            return Ok(sum);
        }
        let name = upload_name(&sum);
        let got = match ch.upload(&name, data) {
            // Every image slot is taken: unload the shim's own uploads that
            // no guest runs, then try once more.
            Err(ChannelError::Refused { kind: ErrorKind::NoImageSlot, .. }) => {
                for old in self.loaded(&ch)?.iter().filter(|i| i.guests == 0 && i.name.starts_with("oci-")) {
                    let _ = ch.request(&Request::ImageRemove(&old.digest));
                }
                ch.upload(&name, data)
            }
            other => other,
        };
        match got {
            Ok(Some(d)) if d == sum => Ok(sum),
            Ok(other) => Err(format!("the hypervisor loaded the upload as {other:?}, not {sum}")),
            Err(ChannelError::Refused { sentence, .. }) => Err(sentence),
            Err(e) => Err(e.to_string()),
        }
    }

    fn loaded(&self, ch: &Channel) -> Result<Vec<ImageInfo>, String> {
        match ch.request(&Request::Images).map_err(|e| e.to_string())? {
            Response::Images { loaded, .. } => Ok(loaded),
            other => Err(format!("images was answered {other:?}")),
        }
    }

    /// Every guest, as `list` answered at most [`LIST_FRESH`] ago.
    pub fn list(&self) -> Result<Arc<Vec<GuestRow>>, String> {
        if let Some((at, rows)) = lock(&self.rows).as_ref()
            && at.elapsed() < LIST_FRESH
        {
            return Ok(rows.clone());
        }
        let rows = match self.request(&Request::List)? {
            Response::Guests { guests } => Arc::new(guests),
            other => return Err(format!("list was answered {other:?}")),
        };
        *lock(&self.rows) = Some((Instant::now(), rows.clone()));
        Ok(rows)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_upload_names() {
        let d = digest(b"abc");
        assert_eq!(d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let n = upload_name(&d);
        assert_eq!(n, "oci-ba7816bf8f01cfea.hermit");
        assert!(abi::control::good_name(&n));
    }

    #[test]
    fn no_dir_and_no_hypervisor_are_clear_errors() {
        let hive = Hive::new(Err("HIVE_DIR is not set".into()), Arc::new(|_| {}));
        assert_eq!(hive.channel().err().unwrap(), "HIVE_DIR is not set");
        assert_eq!(hive.qemu_pid(), 0);
        let hive = Hive::new(Ok(PathBuf::from("/nonexistent/hive")), Arc::new(|_| {}));
        let e = hive.channel().err().unwrap();
        assert!(e.contains("/nonexistent/hive") && e.contains("run --detach"), "{e}");
    }

    #[test]
    fn a_channel_held_by_another_client_is_named_as_such() {
        // A socket that accepts and never answers, like QEMU's while
        // another client holds the channel.
        let dir = std::env::temp_dir().join(format!("hive-shim-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("control.sock"));
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("control.sock")).unwrap();
        let mut hive = Hive::new(Ok(dir.clone()), Arc::new(|_| {}));
        hive.hello_timeout = Duration::from_millis(300);
        let e = hive.channel().err().unwrap();
        assert!(e.contains("does not answer") && e.contains("another client"), "{e}");

        // A numbered port is taken first, unless a cooperating client
        // holds its lock; with every one locked, nothing is tried.
        let _one = std::os::unix::net::UnixListener::bind(dir.join("control-1.sock")).unwrap();
        assert_eq!(Hive::free_socket(&dir).unwrap().0, dir.join("control-1.sock"));
        let held = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("control-1.lock")).unwrap();
        held.lock().unwrap();
        let (socket, zero) = Hive::free_socket(&dir).unwrap();
        assert_eq!(socket, dir.join("control.sock"));
        let e = Hive::free_socket(&dir).err().unwrap();
        assert!(e.contains("held by another client"), "{e}");
        drop(zero);
        assert_eq!(Hive::free_socket(&dir).unwrap().0, dir.join("control.sock"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
