//! A private containerd for tests: its own root, state and sockets under a
//! directory of the test's, beside (never touching) the host's containerd.
//!
//! [`Containerd::start`] writes `DIR/config.toml` (the CRI plugin
//! disabled; [`Containerd::start_cri`] enables it, see [`Cri`]), starts
//! `containerd` with its log in `DIR/containerd.log`, and returns once it
//! answers `ctr version`. [`Containerd::ctr`] runs `ctr` against it.
//! Dropping it stops containerd (SIGTERM, then SIGKILL after 10 s),
//! unmounts whatever is still mounted under `DIR` (image mounts,
//! snapshots, containers' rootfs, pods' `/dev/shm`) and removes its root
//! and state, keeping the config and the log. Processes containerd
//! started (shims) outlive it, as they would a restart: a test that starts
//! containers stops them itself.
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

/// The CRI plugin's settings ([`Containerd::start_cri`]). Everything it
/// keeps (its root and state: pods' files, containers' FIFOs) is under
/// containerd's directory; CNI's configuration and plugin directories are
/// `DIR/cni/conf` and `DIR/cni/bin`, empty: only pods in the node's
/// network namespace can run (CNI is never called for them; the runtime
/// status says the network is not ready).
#[derive(Clone, Debug)]
pub struct Cri {
    /// The pod sandbox image: an image the test imports into the `k8s.io`
    /// namespace (there is no network to pull `pause` from).
    pub sandbox_image: String,
    /// Runtime handlers beside the default `runc`: (the handler a pod
    /// names, its `runtime_type`), e.g. `("hive", "io.containerd.hive.v1")`.
    pub runtimes: Vec<(String, String)>,
    /// The pod annotations (globs) those runtimes get in their containers'
    /// specs (`pod_annotations`), e.g. `hive.*`.
    pub pod_annotations: Vec<String>,
}

/// The CRI plugin's namespace in containerd: its images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";

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
        Self::start_config(dir, &options, None)
    }

    /// Like [`Containerd::start_with`], with the CRI plugin (the
    /// kubelet's API, on the same socket) set up as `cri` says.
    pub fn start_cri(dir: &Path, options: Options, cri: Cri) -> Result<Containerd> {
        Self::start_config(dir, &options, Some(&cri))
    }

    fn start_config(dir: &Path, options: &Options, cri: Option<&Cri>) -> Result<Containerd> {
        xtask::ensure_containerd()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let ttrpc = dir.join("containerd.sock.ttrpc");
        if ttrpc.as_os_str().len() > MAX_SOCKET_PATH {
            bail!("{}: too long for a Unix socket's path; give containerd a shorter directory", ttrpc.display());
        }
        let log = dir.join("containerd.log");
        fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut ctrd = Self::spawn(&dir, options, cri, "overlayfs")?;
        // The overlayfs snapshotter (ctr's default) needs overlay mounts
        // on the root's file system; where containerd skipped it, use the
        // native one (copies instead of mounts). The CRI plugin reads its
        // snapshotter from the configuration: start again with it there.
        let plugins = ctrd.ctr_ok(&["plugins", "ls"])?;
        let overlay_ok = plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == "io.containerd.snapshotter.v1" && f[1] == "overlayfs" && f[3] == "ok"
        });
        if !overlay_ok {
            eprintln!("containerd: the overlayfs snapshotter is not usable here; using native");
            if cri.is_some() {
                drop(ctrd);
                ctrd = Self::spawn(&dir, options, cri, "native")?;
            }
            ctrd.snapshotter = "native".to_string();
        }
        Ok(ctrd)
    }

    /// The configuration for `dir` (see the module doc).
    fn config(dir: &Path, cri: Option<&Cri>, snapshotter: &str) -> String {
        let quote = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string serializes");
        let plugins = match cri {
            None => "# Only what ctr needs: no CRI (it would also want CNI), the host's\n\
                     # containerd and kubelet untouched.\n\
                     disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
                .to_string(),
            Some(_) => String::new(),
        };
        let mut text = format!(
            "version = 2\nroot = {}\nstate = {}\n{plugins}\n\
             [grpc]\n  address = {}\n\n[ttrpc]\n  address = {}\n\n[debug]\n  level = \"info\"\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            quote(&dir.join("root")),
            quote(&dir.join("state")),
            quote(&dir.join("containerd.sock")),
            quote(&dir.join("containerd.sock.ttrpc")),
            quote(&dir.join("opt")),
        );
        if let Some(cri) = cri {
            let string = |s: &str| serde_json::to_string(s).expect("a string serializes");
            text += &format!(
                "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {}\n  \
                 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {}\n  conf_dir = {}\n\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = {}\n",
                string(&cri.sandbox_image),
                quote(&dir.join("cni/bin")),
                quote(&dir.join("cni/conf")),
                string(snapshotter),
            );
            // Runtimes given in the configuration replace the default's
            // list, in which `runc` is the default runtime: keep it, as on
            // a node (nothing here runs it).
            let runc = ("runc".to_string(), "io.containerd.runc.v2".to_string());
            for (handler, runtime_type) in std::iter::once(&runc).chain(&cri.runtimes) {
                text += &format!(
                    "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{}]\n  runtime_type = {}\n",
                    string(handler),
                    string(runtime_type)
                );
                if *handler != runc.0 && !cri.pod_annotations.is_empty() {
                    let globs: Vec<String> = cri.pod_annotations.iter().map(|g| string(g)).collect();
                    text += &format!("  pod_annotations = [{}]\n", globs.join(", "));
                }
            }
        }
        text
    }

    /// Writes the configuration and starts containerd; returns once it
    /// answers.
    fn spawn(dir: &Path, options: &Options, cri: Option<&Cri>, snapshotter: &str) -> Result<Containerd> {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(&config, Self::config(dir, cri, snapshotter)).with_context(|| format!("writing {}", config.display()))?;
        if cri.is_some() {
            for sub in ["cni/bin", "cni/conf"] {
                fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
            }
        }
        let _ = fs::remove_file(&socket);

        let log_path = dir.join("containerd.log");
        let log =
            fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
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
        let mut ctrd = Containerd { child, dir: dir.to_path_buf(), socket, snapshotter: snapshotter.to_string() };

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
                    return Ok(ctrd);
                }
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within {} s:\n{}", START_TIMEOUT.as_secs(), ctrd.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// The pids of the shim processes that serve (not those running `start`
/// or `delete` for containerd, which end at once).
pub fn shim_servers(binary: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| Path::new(a) == binary) && !args.iter().any(|a| a == "start" || a == "delete") {
            out.push(pid);
        }
    }
    out
}

/// Kills the shim servers of `binary` still running when dropped (a test
/// that failed half-way; containerd's children outlive it).
pub struct Reap(pub PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in shim_servers(&self.0) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// `cargo xtask pkg APP --oci DIR/APP.tar [-- ARGS]`: the image's
/// reference and the tarball.
pub fn pkg(app: &str, dir: &Path, args: Option<&[&str]>) -> (String, PathBuf) {
    let out = dir.join(format!("{app}.tar"));
    let args: Option<Vec<String>> = args.map(|a| a.iter().map(|s| s.to_string()).collect());
    let p = xtask::oci::pkg(&xtask::App::Workspace(app.into()), args.as_deref(), Some(&out), None)
        .unwrap_or_else(|e| panic!("pkg {app}: {e:#}"));
    (p.oci.expect("an OCI image").reference, out)
}

/// The shim, built and alone in `DIR/bin` (the directory to put on
/// containerd's `PATH`): that directory, and the shim's path in a [`Reap`]
/// that kills its servers when dropped.
pub fn shim_on_path(dir: &Path) -> (PathBuf, Reap) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let shim = bin.join(xtask::SHIM_BINARY);
    fs::copy(xtask::build_shim().unwrap(), &shim).unwrap();
    (bin, Reap(shim))
}

/// `f`'s first `Some`, polled every 300 ms; fails the test after `secs`.
pub fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cri_plugin_is_configured_only_when_asked_for() {
        let dir = Path::new("/t/my \"dir\"");
        let plain: toml::Table = toml::from_str(&Containerd::config(dir, None, "overlayfs")).unwrap();
        assert_eq!(plain["disabled_plugins"].as_array().unwrap()[0].as_str(), Some("io.containerd.grpc.v1.cri"));
        assert_eq!(plain["root"].as_str(), Some("/t/my \"dir\"/root"));
        assert!(!plain["plugins"].as_table().unwrap().contains_key("io.containerd.grpc.v1.cri"));

        let cri = Cri {
            sandbox_image: "localhost/hive/hello:latest".into(),
            runtimes: vec![("hive".into(), "io.containerd.hive.v1".into())],
            pod_annotations: vec!["hive.*".into()],
        };
        let text: toml::Table = toml::from_str(&Containerd::config(dir, Some(&cri), "native")).unwrap();
        assert!(!text.contains_key("disabled_plugins"));
        let plugin = &text["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(plugin["sandbox_image"].as_str(), Some("localhost/hive/hello:latest"));
        assert_eq!(plugin["cni"]["conf_dir"].as_str(), Some("/t/my \"dir\"/cni/conf"));
        assert_eq!(plugin["containerd"]["snapshotter"].as_str(), Some("native"));
        let runtimes = &plugin["containerd"]["runtimes"];
        assert_eq!(runtimes["hive"]["runtime_type"].as_str(), Some("io.containerd.hive.v1"));
        assert_eq!(runtimes["hive"]["pod_annotations"][0].as_str(), Some("hive.*"));
        // The default runtime stays declared, or the plugin refuses to load.
        assert_eq!(runtimes["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount_path(r"/a\040b/c\011d\134e"), PathBuf::from("/a b/c\td\\e"));
        assert_eq!(unescape_mount_path(r"/plain\09"), PathBuf::from(r"/plain\09"));
    }
}
