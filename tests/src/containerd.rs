//! A private containerd for tests: its own root, state and sockets under a
//! directory of the test's, beside (never touching) the host's containerd.
//!
//! [`Containerd::start`] writes `DIR/config.toml` (the CRI plugin
//! disabled), starts `containerd` with its log in `DIR/containerd.log`,
//! and returns once it answers `ctr version`. [`Containerd::ctr`] runs
//! `ctr` against it. Dropping it stops containerd (SIGTERM, then SIGKILL
//! after 10 s), unmounts whatever is still mounted under `DIR` (image
//! mounts, snapshots, containers' rootfs) and removes its root and state,
//! keeping the config and the log. Processes containerd started (shims)
//! outlive it, as they would a restart: a test that starts containers
//! stops them itself.
//!
//! containerd needs root (it mounts snapshots); `cargo xtask test` runs the
//! tests as root and installs containerd like QEMU
//! ([`xtask::ensure_containerd`]).

use std::ffi::OsString;
use std::fs;
use std::io::Read as _;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How long `start` waits for containerd to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `ctr` command may take before it is killed.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What a test adds to containerd's environment.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directories put in front of containerd's `PATH`: where it finds
    /// shims (`containerd-shim-NAME-v1`).
    pub path: Vec<PathBuf>,
    /// More variables for containerd (and so for the shims it starts).
    pub env: Vec<(OsString, OsString)>,
}

/// A running private containerd; see the module doc.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    snapshotter: String,
}

impl Containerd {
    /// Starts containerd with everything under `dir` (created if missing).
    pub fn start(dir: &Path) -> Result<Containerd> {
        Self::start_with(dir, Options::default())
    }

    /// Like [`Containerd::start`], with `options` in containerd's environment.
    pub fn start_with(dir: &Path, options: Options) -> Result<Containerd> {
        xtask::ensure_containerd()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let ttrpc = dir.join("containerd.sock.ttrpc");
        if ttrpc.as_os_str().len() > MAX_SOCKET_PATH {
            bail!("{}: too long for a Unix socket's path; give containerd a shorter directory", ttrpc.display());
        }
        let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string serializes");
        let config = dir.join("config.toml");
        let text = format!(
            "version = 2\nroot = {}\nstate = {}\n\
             # Only what ctr needs: no CRI (it would also want CNI), the host's\n\
             # containerd and kubelet untouched.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = {}\n\n[ttrpc]\n  address = {}\n\n[debug]\n  level = \"info\"\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            quote(&dir.join("root")),
            quote(&dir.join("state")),
            quote(&socket),
            quote(&ttrpc),
            quote(&dir.join("opt")),
        );
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let _ = fs::remove_file(&socket);

        let log_path = dir.join("containerd.log");
        let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(xtask::install::CONTAINERD);
        cmd.arg("--config").arg(&config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if !options.path.is_empty() {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let path = std::env::join_paths(options.path.iter().cloned().chain(std::env::split_paths(&old))).context("joining PATH")?;
            cmd.env("PATH", path);
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        xtask::echo(&cmd);
        let child = cmd.spawn().context("starting containerd")?;
        let mut ctrd = Containerd { child, dir, socket, snapshotter: "overlayfs".to_string() };

        // Wait for the socket (ctr waits 10 s on one that is not there yet),
        // then for an answer.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = ctrd.child.try_wait()? {
                bail!("containerd exited at start ({status}):\n{}", ctrd.log_tail());
            }
            if ctrd.socket.exists() {
                let out = ctrd.ctr(&["--connect-timeout", "5s", "version"])?;
                if out.status.success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within {} s:\n{}", START_TIMEOUT.as_secs(), ctrd.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        // The overlayfs snapshotter (ctr's default) needs overlay mounts
        // on the root's file system; where containerd skipped it, use the
        // native one (copies instead of mounts).
        let plugins = ctrd.ctr_ok(&["plugins", "ls"])?;
        let overlay_ok = plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == "io.containerd.snapshotter.v1" && f[1] == "overlayfs" && f[3] == "ok"
        });
        if !overlay_ok {
            eprintln!("containerd: the overlayfs snapshotter is not usable here; using native");
            ctrd.snapshotter = "native".to_string();
        }
        Ok(ctrd)
    }

    /// containerd's gRPC socket (`ctr --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory everything lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshotter `ctr` uses (`overlayfs`, or `native` where overlay
    /// mounts do not work); set as `CONTAINERD_SNAPSHOTTER` for every
    /// [`Containerd::ctr`].
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("(last lines of {})\n{tail}", self.dir.join("containerd.log").display())
    }

    /// Runs `ctr --address SOCKET ARGS` and returns what it did, whether
    /// it succeeded or not; killed after [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(xtask::install::CTR);
        cmd.arg("--address").arg(&self.socket).args(args).env("CONTAINERD_SNAPSHOTTER", &self.snapshotter);
        xtask::echo(&cmd);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting ctr")?;
        // Read both pipes while waiting: a blob on stdout fills a pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).map(|_| buf)
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stderr.read_to_end(&mut buf).map(|_| buf)
        });
        let deadline = Instant::now() + CTR_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`ctr {}` took more than {} s; killed", args.join(" "), CTR_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out.join().expect("reader thread").context("reading ctr's output")?;
        let stderr = err.join().expect("reader thread").context("reading ctr's errors")?;
        Ok(Output { status, stdout, stderr })
    }

    /// Like [`Containerd::ctr`], failing (with ctr's stderr and the end of
    /// containerd's log) unless it succeeds; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!("`ctr {}` failed ({}): {}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim(), self.log_tail());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The mount points under our directory, deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> =
            info.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape_mount_path).filter(|p| p.starts_with(&self.dir)).collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        mounts
    }
}

/// A mount point as `/proc/self/mountinfo` writes it: space, tab, newline
/// and backslash as octal escapes (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM lets containerd close its databases; SIGKILL if it hangs.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for mount in self.mounts() {
            let ok = Command::new("umount").arg(&mount).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&mount).status();
            }
        }
        let left = self.mounts();
        if !left.is_empty() {
            eprintln!("containerd: still mounted, not removing its root: {left:?}");
            return;
        }
        for sub in ["root", "state", "opt"] {
            let _ = fs::remove_dir_all(self.dir.join(sub));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount_path(r"/a\040b/c\011d\134e"), PathBuf::from("/a b/c\td\\e"));
        assert_eq!(unescape_mount_path(r"/plain\09"), PathBuf::from(r"/plain\09"));
    }
}
