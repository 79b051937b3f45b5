//! The shim v2 task service: containerd's requests for every container of
//! a namespace, served by one process (see `main.rs` for how `start`
//! finds it), on one connection to the hypervisor ([`Hive`]).
//!
//! Locking: the task table ([`Tasks`]) is never held across a request to
//! the hypervisor, because the reader thread takes it to route pushed
//! records while a request waits for its answer. Events for containerd
//! and QEMU monitor commands go through one worker thread, so the reader
//! never blocks on them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use abi::control::{EventKind, Reason, Request, Response, StartOptions};
use containerd_shim::api;
use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message as _, MessageField};
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use oci_spec::runtime::Spec;

use crate::channel::{ChannelError, Pushed};
use crate::hive::Hive;
use crate::plan::{self, Ending, GuestPlan, Plan, Port};
use crate::{qmp, rootfs};

/// The type URL containerd reads cgroups v1 metrics by (`ctr task metrics`).
const METRICS_V1: &str = "io.containerd.cgroups.v1.Metrics";

fn error(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

/// What runs for a container.
#[derive(Debug)]
enum Kind {
    /// A pod's sandbox: only a tenant's name; nothing runs.
    Sandbox { tenant: String },
    /// A guest on the hypervisor.
    Guest { name: String, digest: String, plan: GuestPlan },
}

/// One container.
#[derive(Debug)]
struct Task {
    bundle: String,
    kind: Kind,
    status: Status,
    pid: u32,
    /// containerd's FIFO paths, for `State`.
    stdin: String,
    stdout: String,
    stderr: String,
    /// The FIFOs, open until the guest ends (then readers see their end).
    out: Option<File>,
    err: Option<File>,
    input: Option<File>,
    /// How it ended, and when.
    exit: Option<(u32, Timestamp)>,
    /// Whether containerd heard it start (an end pushed before that is
    /// told after it).
    started: bool,
    /// Host port forwards in place.
    forwards: Vec<Port>,
}

#[derive(Default)]
struct Tasks {
    by_id: HashMap<String, Task>,
    /// Guest name to container id, for the pushed records.
    by_guest: HashMap<String, String>,
}

/// Work for the worker thread.
enum Job {
    Publish(Event),
    /// Remove these host port forwards (the guest ended).
    Unforward(Vec<Port>),
    /// The connection closed: follow the running guests on a new one.
    Resubscribe,
}

enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
}

/// What the task service and the reader thread share.
pub struct Shared {
    tasks: Mutex<Tasks>,
    ended: Condvar,
    hive: Hive,
    jobs: Mutex<Sender<Job>>,
    exit: Arc<ExitSignal>,
    /// `Create`s under way (their task is not in the table yet): the
    /// shim does not shut down under them.
    creating: AtomicUsize,
}

/// The task service containerd talks to.
#[derive(Clone)]
pub struct Service(Arc<Shared>);

impl Service {
    /// The service for `namespace`, publishing events with `publisher`;
    /// `exit` is signalled when containerd asks it to shut down and no
    /// container is left.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        let (jobs, rx) = mpsc::channel::<Job>();
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            let on_pushed = Arc::new(move |p: Pushed| {
                if let Some(s) = weak.upgrade() {
                    s.pushed(p);
                }
            });
            Shared {
                tasks: Mutex::new(Tasks::default()),
                ended: Condvar::new(),
                hive: Hive::new(crate::hive::dir_from_env(), on_pushed),
                jobs: Mutex::new(jobs),
                exit,
                creating: AtomicUsize::new(0),
            }
        });
        let qmp = shared.hive.qmp_socket();
        let namespace = namespace.to_string();
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("hive-events".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Publish(e) => publish(&publisher, &namespace, e),
                        Job::Unforward(ports) => {
                            for p in ports {
                                if let Err(e) = qmp.as_ref().map_err(Clone::clone).and_then(|s| qmp::human(s, &qmp::remove_command(p.host)))
                                {
                                    log::warn!("removing the forward of host port {}: {e}", p.host);
                                }
                            }
                        }
                        Job::Resubscribe => {
                            if let Some(s) = weak.upgrade() {
                                s.resubscribe();
                            }
                        }
                    }
                }
            })
            .expect("spawning the events thread");
        Service(shared)
    }
}

fn publish(publisher: &RemotePublisher, namespace: &str, e: Event) {
    let (topic, msg): (&str, Box<dyn containerd_shim::protos::protobuf::MessageDyn>) = match e {
        Event::Create(e) => ("/tasks/create", Box::new(e)),
        Event::Start(e) => ("/tasks/start", Box::new(e)),
        Event::Exit(e) => ("/tasks/exit", Box::new(e)),
        Event::Delete(e) => ("/tasks/delete", Box::new(e)),
    };
    if let Err(e) = publisher.publish(Context::default(), topic, namespace, msg) {
        log::warn!("publishing {topic}: {e}");
    }
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job(&self, job: Job) {
        let _ = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    }

    fn exit_event(id: &str, t: &Task) -> Event {
        let (status, at) = t.exit.clone().unwrap_or_default();
        Event::Exit(TaskExit {
            container_id: id.to_string(),
            id: id.to_string(),
            pid: t.pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    /// Records that task `id` ended (`ending`): wakes its waiters, closes
    /// its FIFOs, removes its forwards and tells containerd (now, or once
    /// it has heard the task start).
    fn end(&self, tasks: &mut Tasks, id: &str, ending: Ending) {
        let Some(t) = tasks.by_id.get_mut(id) else { return };
        if t.exit.is_some() {
            return;
        }
        t.exit = Some((ending.exit_status(), now()));
        t.status = Status::Stopped;
        t.out = None;
        t.err = None;
        t.input = None;
        if !t.forwards.is_empty() {
            self.job(Job::Unforward(std::mem::take(&mut t.forwards)));
        }
        if t.started {
            self.job(Job::Publish(Self::exit_event(id, t)));
        }
        self.ended.notify_all();
    }

    /// A record the hypervisor pushed (on the reader thread).
    fn pushed(&self, p: Pushed) {
        let mut tasks = self.tasks();
        match p {
            Pushed::Record(Response::Console { console, line }) => {
                let Some(t) = tasks.by_guest.get(&console).cloned().and_then(|id| tasks.by_id.get_mut(&id)) else { return };
                // The hypervisor's own lines about the guest to stderr.
                let to = if line.starts_with("[hv] ") { t.err.as_mut().or(t.out.as_mut()) } else { t.out.as_mut() };
                if let Some(f) = to {
                    // A FIFO nobody reads fills up: the line is dropped
                    // rather than the reader blocked.
                    let _ = f.write_all(format!("{line}\n").as_bytes());
                }
            }
            Pushed::Record(Response::Event(e)) if e.event == EventKind::Ended => {
                if let Some(id) = tasks.by_guest.get(&e.guest).cloned() {
                    log::info!("guest {} of container {id} ended: {:?}", e.guest, Ending::of(&e));
                    self.end(&mut tasks, &id, Ending::of(&e));
                }
            }
            Pushed::Record(Response::LinesDropped { lines_dropped }) => {
                log::warn!("the hypervisor dropped {lines_dropped} console lines");
            }
            Pushed::Record(_) => {}
            Pushed::Closed => {
                // Records pushed while no client is connected are lost:
                // connect again and ask for the running guests' anew.
                log::warn!("the hypervisor's control channel closed");
                self.job(Job::Resubscribe);
            }
        }
    }

    /// After the connection closed: a new one follows every running
    /// guest's console and end again (`console`, `wait`); a guest the
    /// hypervisor does not know (it restarted), or every one when it
    /// cannot be reached, is taken as ended ([`Ending::Lost`]).
    fn resubscribe(&self) {
        let running: Vec<(String, String)> = self
            .tasks()
            .by_id
            .iter()
            .filter(|(_, t)| t.status == Status::Running)
            .filter_map(|(id, t)| match &t.kind {
                Kind::Guest { name, .. } => Some((id.clone(), name.clone())),
                Kind::Sandbox { .. } => None,
            })
            .collect();
        if running.is_empty() {
            return;
        }
        // Not in a tight loop if the new connection closes at once too.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let ch = self.hive.channel();
        for (id, name) in running {
            let followed = ch.as_ref().map_err(Clone::clone).and_then(|ch| {
                ch.request(&Request::Console(&name)).map_err(|e| e.to_string())?;
                // At once if it ended meanwhile.
                ch.notify(&Request::Wait(&name)).map_err(|e| e.to_string())
            });
            if let Err(e) = followed {
                log::warn!("guest {name} of container {id} is taken as ended: {e}");
                self.end(&mut self.tasks(), &id, Ending::Lost);
            }
        }
    }

    fn create(&self, req: &api::CreateTaskRequest) -> Result<Task, (Code, String)> {
        let bad = |e: String| (Code::FAILED_PRECONDITION, e);
        let bundle = Path::new(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| (Code::INVALID_ARGUMENT, format!("reading the bundle's config.json: {e}")))?;
        let plan = plan::plan(&req.id, &spec).map_err(|e| (Code::INVALID_ARGUMENT, e.0))?;
        let (kind, pid) = match plan {
            Plan::Sandbox { tenant } => (Kind::Sandbox { tenant }, std::process::id()),
            Plan::Guest(plan) => {
                let guest_bytes = self.hive.guest_bytes().map_err(bad)?;
                if plan.memory > guest_bytes {
                    return Err(bad(format!(
                        "memory limit {} bytes is more than the hypervisor's {guest_bytes} bytes for guests",
                        plan.memory
                    )));
                }
                let mounts: Vec<rootfs::Mount> = req
                    .rootfs
                    .iter()
                    .map(|m| rootfs::Mount { kind: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
                    .collect();
                let image = rootfs::read_image(&mounts, bundle).map_err(bad)?;
                let digest = self.hive.ensure_image(&image).map_err(|e| bad(format!("the hypervisor refused the image: {e}")))?;
                let name = self.hive.new_name(&plan::guest_name(&req.id)).map_err(bad)?;
                (Kind::Guest { name, digest, plan }, self.hive.qemu_pid())
            }
        };
        let fifo = |path: &str| -> Result<Option<File>, (Code, String)> {
            if path.is_empty() {
                return Ok(None);
            }
            // `ctr run --log-uri file:///PATH`: the output goes to a file.
            if let Some(file) = path.strip_prefix("file://") {
                return OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .map(Some)
                    .map_err(|e| (Code::INVALID_ARGUMENT, format!("opening the log file {file}: {e}")));
            }
            if path.contains("://") {
                return Err((Code::INVALID_ARGUMENT, format!("log URI {path}: the hive runtime writes to FIFOs and file:// URIs only")));
            }
            // Read and write, non-blocking: opening never waits for a
            // reader, and a full FIFO drops lines instead of blocking.
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map(Some)
                .map_err(|e| (Code::INTERNAL, format!("opening {path}: {e}")))
        };
        Ok(Task {
            bundle: req.bundle.clone(),
            kind,
            status: Status::Created,
            pid,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            out: fifo(&req.stdout)?,
            err: fifo(&req.stderr)?,
            input: fifo(&req.stdin)?,
            exit: None,
            started: false,
            forwards: Vec::new(),
        })
    }

    /// Starts task `id`'s guest; returns its pid.
    fn start(&self, id: &str) -> Result<u32, (Code, String)> {
        let mut tasks = self.tasks();
        let t = tasks.by_id.get_mut(id).ok_or((Code::NOT_FOUND, format!("no task {id}")))?;
        if t.status != Status::Created {
            return Err((Code::FAILED_PRECONDITION, format!("task {id} was started already")));
        }
        let pid = t.pid;
        let (name, digest, plan) = match &t.kind {
            Kind::Sandbox { .. } => {
                t.status = Status::Running;
                t.started = true;
                self.job(Job::Publish(Event::Start(TaskStart { container_id: id.to_string(), pid, ..Default::default() })));
                return Ok(pid);
            }
            Kind::Guest { name, digest, plan } => (name.clone(), digest.clone(), plan.clone()),
        };
        let mut name = name;
        // Route its records from its first instruction on (and refuse a
        // second Start while the first waits for its answer).
        if tasks.by_guest.contains_key(&name) {
            return Err((Code::FAILED_PRECONDITION, format!("task {id} is being started")));
        }
        tasks.by_guest.insert(name.clone(), id.to_string());
        drop(tasks);

        let options = StartOptions { weight: plan.weight, cap: plan.cap, watch: true, ..StartOptions::default() };
        let start = |name: &str| {
            let args = plan.args.iter().map(|s| s.as_str().into()).collect();
            let env = plan.env.iter().map(|s| s.as_str().into()).collect();
            let req = Request::Start { name, image: &digest, memory: plan.memory, tenant: plan.tenant.as_tenant(), options, args, env };
            self.hive.channel().map_err(ChannelError::Connect).and_then(|ch| ch.request(&req))
        };
        let mut started = start(&name);
        // Another client may have taken the name since the shim learnt
        // the names: once, with a fresh one.
        if let Err(e @ ChannelError::Refused { reason: Some(Reason::Exists), .. }) = &started {
            // Without the names, the fresh one may be taken too: then
            // that start is refused as well.
            self.hive.learn_names().ok();
            log::info!("guest name {name} was taken ({e}); trying another");
            let base = plan::guest_name(id);
            let fresh = self.hive.new_name(&base).map_err(|e| (Code::FAILED_PRECONDITION, e))?;
            let mut tasks = self.tasks();
            tasks.by_guest.remove(&name);
            tasks.by_guest.insert(fresh.clone(), id.to_string());
            if let Some(Task { kind: Kind::Guest { name: n, .. }, .. }) = tasks.by_id.get_mut(id) {
                n.clone_from(&fresh);
            }
            drop(tasks);
            name = fresh;
            started = start(&name);
        }
        let ip = match started {
            Ok(Response::Started { ip, .. }) => ip,
            Ok(other) => Err((Code::INTERNAL, format!("start was answered {other:?}")))?,
            Err(e) => {
                self.tasks().by_guest.remove(&name);
                return Err((Code::FAILED_PRECONDITION, format!("starting guest {name}: {e}")));
            }
        };
        // Host ports, now that the guest has its address.
        let mut forwards = Vec::new();
        if !plan.ports.is_empty() {
            let added = ip.ok_or_else(|| "the guest has no address".to_string()).and_then(|ip| {
                let socket = self.hive.qmp_socket()?;
                for p in &plan.ports {
                    qmp::human(&socket, &qmp::add_command(p.host, &ip, p.guest))?;
                    forwards.push(*p);
                }
                Ok(())
            });
            if let Err(e) = added {
                let _ = self.hive.request(&Request::Stop(&name));
                self.job(Job::Unforward(forwards));
                return Err((Code::FAILED_PRECONDITION, format!("forwarding host ports to guest {name}: {e}")));
            }
        }

        let mut tasks = self.tasks();
        let Some(t) = tasks.by_id.get_mut(id) else {
            return Err((Code::NOT_FOUND, format!("task {id} was deleted while it started")));
        };
        t.started = true;
        self.job(Job::Publish(Event::Start(TaskStart { container_id: id.to_string(), pid, ..Default::default() })));
        if t.exit.is_some() {
            // It ended before the answer came: its forwards go at once.
            self.job(Job::Unforward(forwards));
            self.job(Job::Publish(Self::exit_event(id, t)));
        } else {
            t.status = Status::Running;
            t.forwards = forwards;
        }
        Ok(pid)
    }

    fn kill(&self, id: &str, signal: u32) -> Result<(), (Code, String)> {
        let mut tasks = self.tasks();
        let t = tasks.by_id.get(id).ok_or((Code::NOT_FOUND, format!("no task {id}")))?;
        if signal == 0 || t.exit.is_some() {
            return Ok(());
        }
        let name = match (&t.kind, t.status) {
            (Kind::Guest { name, .. }, Status::Running) => name.clone(),
            // A sandbox, or a guest not started: nothing runs; it ends now.
            _ => {
                self.end(&mut tasks, id, Ending::Killed);
                return Ok(());
            }
        };
        drop(tasks);
        let ch = self.hive.channel().map_err(|e| (Code::UNAVAILABLE, e))?;
        match ch.request(&Request::Stop(&name)) {
            Ok(_) => Ok(()),
            // It ended meanwhile (its event says how), the one way a
            // guest the shim started and saw no end of can be refused.
            Err(ChannelError::Refused { reason: Some(Reason::Ended), .. }) => Ok(()),
            Err(e) => Err((Code::FAILED_PRECONDITION, format!("stopping guest {name}: {e}"))),
        }
    }

    fn delete(&self, id: &str) -> Result<api::DeleteResponse, (Code, String)> {
        let mut tasks = self.tasks();
        let t = tasks.by_id.get(id).ok_or((Code::NOT_FOUND, format!("no task {id}")))?;
        if t.status == Status::Running {
            return Err((Code::FAILED_PRECONDITION, format!("task {id} is running: kill it first")));
        }
        let t = tasks.by_id.remove(id).expect("looked up above");
        // A waiter on a task deleted before it ran hears it is gone.
        self.ended.notify_all();
        let (tenant, guest) = match &t.kind {
            Kind::Guest { name, .. } => {
                tasks.by_guest.remove(name);
                (None, Some(name.clone()))
            }
            Kind::Sandbox { tenant } => (Some(tenant.clone()), None),
        };
        drop(tasks);
        if let Some(name) = guest
            && let Err(e) = self.hive.forget(&name)
        {
            // Its record stays until the hypervisor needs the room.
            log::warn!("guest {name} not forgotten: {e}");
        }
        if !t.forwards.is_empty() {
            self.job(Job::Unforward(t.forwards.clone()));
        }
        if let Some(tenant) = tenant {
            // Forget the pod's tenant (refused while guests of it run;
            // unknown if none of its containers ever started: fine).
            let _ = self.hive.channel().map(|ch| ch.request(&Request::TenantRemove(&tenant)));
        }
        let (status, at) = t.exit.clone().unwrap_or_else(|| (0, now()));
        self.job(Job::Publish(Event::Delete(TaskDelete {
            container_id: id.to_string(),
            id: id.to_string(),
            pid: t.pid,
            exit_status: status,
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        })));
        Ok(api::DeleteResponse { pid: t.pid, exit_status: status, exited_at: MessageField::some(at), ..Default::default() })
    }

    fn stats(&self, id: &str) -> Result<Any, (Code, String)> {
        let (name, limit) = {
            let tasks = self.tasks();
            let t = tasks.by_id.get(id).ok_or((Code::NOT_FOUND, format!("no task {id}")))?;
            match &t.kind {
                Kind::Guest { name, plan, .. } => (Some(name.clone()), plan.memory),
                Kind::Sandbox { .. } => (None, 0),
            }
        };
        let row = match &name {
            Some(n) => self.hive.list().map_err(|e| (Code::UNAVAILABLE, e))?.iter().find(|g| &g.name == n).cloned(),
            None => None,
        };
        let (cpu_ns, memory) = row.map_or((0, 0), |r| (r.cpu_ns, r.memory_bytes));
        let metrics = Metrics {
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry { usage: memory, limit, max: memory, ..Default::default() }),
                rss: memory,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage { total: cpu_ns, user: cpu_ns, ..Default::default() }),
                ..Default::default()
            }),
            pids: MessageField::some(PidsStat { current: u64::from(name.is_some()), limit: 1, ..Default::default() }),
            ..Default::default()
        };
        let value = metrics.write_to_bytes().map_err(|e| (Code::INTERNAL, e.to_string()))?;
        Ok(Any { type_url: METRICS_V1.to_string(), value, ..Default::default() })
    }
}

/// One `Create` under way, for as long as it lives.
struct Creating<'a>(&'a AtomicUsize);

impl<'a> Creating<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Creating(n)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A `(code, message)` error to ttrpc's.
fn rpc<T>(r: Result<T, (Code, String)>) -> TtrpcResult<T> {
    r.map_err(|(code, msg)| {
        log::warn!("{msg}");
        error(code, msg)
    })
}

fn no_exec(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() { Ok(()) } else { Err(error(Code::UNIMPLEMENTED, "a guest runs no other processes (exec)")) }
}

impl containerd_shim::Task for Service {
    fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.0.hive.qemu_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        if self.0.tasks().by_id.contains_key(&req.id) {
            return Err(error(Code::ALREADY_EXISTS, format!("task {} exists already", req.id)));
        }
        // Counted until the task is in the table (or refused).
        let _creating = Creating::new(&self.0.creating);
        let task = rpc(self.0.create(&req))?;
        let pid = task.pid;
        if let Kind::Guest { name, digest, plan } = &task.kind {
            log::info!("container {} is guest {name}: image {digest}, {plan:?}", req.id);
        }
        let mut tasks = self.0.tasks();
        if tasks.by_id.contains_key(&req.id) {
            return Err(error(Code::ALREADY_EXISTS, format!("task {} exists already", req.id)));
        }
        tasks.by_id.insert(req.id.clone(), task);
        drop(tasks);
        self.0.job(Job::Publish(Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                ..Default::default()
            }),
            pid,
            ..Default::default()
        })));
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        log::info!("start {}", req.id);
        no_exec(&req.exec_id)?;
        let pid = rpc(self.0.start(&req.id))?;
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let tasks = self.0.tasks();
        let t = tasks.by_id.get(&req.id).ok_or_else(|| error(Code::NOT_FOUND, format!("no task {}", req.id)))?;
        let status = match t.status {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        };
        let (exit_status, exited_at) = t.exit.clone().map_or((0, MessageField::none()), |(s, at)| (s, MessageField::some(at)));
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.clone(),
            pid: t.pid,
            status: status.into(),
            stdin: t.stdin.clone(),
            stdout: t.stdout.clone(),
            stderr: t.stderr.clone(),
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!("kill {} (signal {})", req.id, req.signal);
        no_exec(&req.exec_id)?;
        rpc(self.0.kill(&req.id, req.signal))?;
        Ok(api::Empty::default())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {}", req.id);
        no_exec(&req.exec_id)?;
        rpc(self.0.delete(&req.id))
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        no_exec(&req.exec_id)?;
        let mut tasks = self.0.tasks();
        loop {
            let t = tasks.by_id.get(&req.id).ok_or_else(|| error(Code::NOT_FOUND, format!("no task {}", req.id)))?;
            if let Some((exit_status, at)) = t.exit.clone() {
                return Ok(api::WaitResponse { exit_status, exited_at: MessageField::some(at), ..Default::default() });
            }
            tasks = self.0.ended.wait(tasks).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let tasks = self.0.tasks();
        let t = tasks.by_id.get(&req.id).ok_or_else(|| error(Code::NOT_FOUND, format!("no task {}", req.id)))?;
        let processes =
            if t.exit.is_none() { vec![containerd_shim::protos::api::ProcessInfo { pid: t.pid, ..Default::default() }] } else { vec![] };
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let any = rpc(self.0.stats(&req.id))?;
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // A guest reads no stdin: closing it changes nothing.
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // One shim serves every container: it ends with the last.
        if self.0.tasks().by_id.is_empty() && self.0.creating.load(Ordering::Acquire) == 0 {
            log::info!("no container left: shutting down");
            self.0.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

/// Where the shim keeps its files for the socket `socket` (its address
/// and log): beside the socket.
pub fn state_dir(socket: &str) -> PathBuf {
    PathBuf::from(format!("{}.d", socket.strip_prefix("unix://").unwrap_or(socket)))
}
