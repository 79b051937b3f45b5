//! `containerd-shim-hive-v1`: the containerd runtime `io.containerd.hive.v1`,
//! which runs each container as a guest of a running hypervisor (see
//! `shim/README.md`).
//!
//! containerd runs `containerd-shim-hive-v1 start` for every container and
//! connects to the address it prints. One shim process serves them all:
//! `start` derives the address from a fixed key (the containerd socket and
//! namespace, which containerd-shim hashes in, and `HIVE_DIR`), not from
//! the container id, and only spawns the server when nothing answers there
//! (containerd-shim's `spawn`: a second server finding the address served
//! leaves at once). So a 90 KiB guest does not carry a shim process of
//! its own.
#![forbid(unsafe_code)]

mod channel;
mod hive;
mod plan;
mod qmp;
mod rootfs;
mod service;

use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

/// The runtime's name in containerd (`ctr run --runtime`, a RuntimeClass's
/// handler config).
pub const RUNTIME: &str = "io.containerd.hive.v1";

/// The key every container of a namespace shares, so they share a shim.
fn grouping() -> String {
    let dir = std::env::var_os(hive::HIVE_DIR).map(std::path::PathBuf::from).unwrap_or_default();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    format!("hive:{}", dir.display())
}

struct Shim {
    namespace: String,
    socket: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim { namespace: args.namespace.clone(), socket: args.socket.clone(), exit: Arc::new(ExitSignal::default()) }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let (_pid, address) = containerd_shim::spawn(opts, &grouping(), Vec::new())?;
        containerd_shim::synchronous::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // containerd cleans up after a shim that died: its guests ended
        // with the connection (see README: exit statuses).
        Ok(DeleteResponse {
            exit_status: plan::EXIT_KILLED,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // The server outlives the bundle it was started in: keep the
        // address file (read at exit to remove the socket) beside the
        // socket instead.
        let dir = service::state_dir(&self.socket);
        if std::fs::create_dir_all(&dir).is_ok() && std::env::set_current_dir(&dir).is_ok() {
            let _ = containerd_shim::synchronous::util::write_address(&self.socket);
        }
        // (A `start` finding a server at the address gets here too, and
        // leaves without serving.)
        log::debug!("task service of {RUNTIME} for namespace {} (pid {})", self.namespace, std::process::id());
        service::Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

fn main() {
    containerd_shim::run::<Shim>(RUNTIME, None);
}
