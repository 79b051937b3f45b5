//! The kubelet's side of Kubernetes on this hypervisor: a private
//! containerd with its CRI plugin on and the hive runtime as its handler
//! `hive`, spoken to in CRI v1 over its Unix socket (what the kubelet
//! does), runs a pod whose container is a guest of a detached hypervisor.
//!
//! The pod uses the node's network namespace, so no CNI plugin runs, and
//! images are imported with `ctr` into the CRI's namespace instead of
//! pulled (there is no network here); everything else is the kubelet's
//! sequence: RunPodSandbox, CreateContainer, StartContainer,
//! ContainerStatus, the CRI log file, StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use abi::control::{Request, Response};
use abi::report::GuestState;
use hyper_util::rt::TokioIo;
use integration_tests::containerd::{CRI_NAMESPACE, Containerd, Cri, Options, pkg, shim_on_path, shim_servers, until};
use integration_tests::{Detached, Guest, Manifest, workspace_root};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// The runtime handler a pod names (a RuntimeClass's `handler`).
const HANDLER: &str = "hive";
const RUNTIME: &str = "io.containerd.hive.v1";

/// The kubelet's end: CRI v1 clients on containerd's socket, each call
/// run to completion on a single-threaded runtime.
struct Kubelet {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl Kubelet {
    fn connect(socket: &Path) -> Kubelet {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let socket = socket.to_path_buf();
        // The URI is a placeholder: every connection is to the socket.
        let channel = rt
            .block_on(Endpoint::try_from("http://[::]").expect("a valid URI").connect_with_connector(service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
            })))
            .expect("connecting to containerd's socket");
        Kubelet { rt, channel }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call; its answer, or the gRPC status as an error.
    fn call<T>(&self, f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, tonic::Status> {
        self.rt.block_on(f).map(tonic::Response::into_inner)
    }
}

/// One line of a CRI log file: `TIMESTAMP STREAM TAG TEXT` (TAG `F` for
/// a full line, `P` for part of one).
#[derive(Debug)]
struct LogLine {
    stream: String,
    tag: String,
    text: String,
}

fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (Some(time), Some(stream), Some(tag), Some(text)) = (f.next(), f.next(), f.next(), f.next()) else {
                panic!("not a CRI log line: {l:?}");
            };
            // RFC 3339 with nanoseconds, as the kubelet writes and reads it.
            let t = time.as_bytes();
            assert!(t.len() >= 20 && t[4] == b'-' && t[10] == b'T' && (time.ends_with('Z') || time.contains('+')), "timestamp {time:?}");
            assert!(stream == "stdout" || stream == "stderr", "stream {stream:?} in {l:?}");
            assert!(tag == "F" || tag == "P", "tag {tag:?} in {l:?}");
            LogLine { stream: stream.into(), tag: tag.into(), text: text.into() }
        })
        .collect()
}

#[test]
fn a_pod_runs_through_the_cri_as_a_guest() {
    let dir = workspace_root().join(format!("target/itest/cri-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The images (hello is the pod's sandbox image: it never runs; echo
    // serves port 9 unless the container's arguments say otherwise), and
    // the shim alone in a directory for containerd's PATH.
    let (hello, hello_tar) = pkg("hello", &dir, None);
    let (echo_ref, echo_tar) = pkg("echo", &dir, Some(&["serve", "9"]));
    let (bin, shim) = shim_on_path(&dir);

    let hv_dir = dir.join("hv");
    let hv = Detached::start(&hv_dir, Manifest::new([Guest::app("base", "echo").tenant("base")]), false);
    let console = || std::fs::read_to_string(hv.0.console()).unwrap_or_default();

    let ctrd = Containerd::start_cri(
        &dir.join("containerd"),
        Options { path: vec![bin.clone()], env: vec![("HIVE_DIR".into(), hv_dir.clone().into())] },
        Cri { sandbox_image: hello.clone(), runtimes: vec![(HANDLER.into(), RUNTIME.into())], pod_annotations: vec!["hive.*".into()] },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for tar in [&hello_tar, &echo_tar] {
        ctrd.ctr_ok(&["-n", CRI_NAMESPACE, "images", "import", tar.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let fail = |what: &str| -> String { format!("{what}\n--- console:\n{}\n--- containerd:\n{}", console(), ctrd.log()) };

    let k = Kubelet::connect(ctrd.socket());
    let version = k.call(k.runtime().version(VersionRequest::default())).unwrap_or_else(|e| panic!("{}", fail(&format!("Version: {e}"))));
    assert_eq!((version.runtime_name.as_str(), version.runtime_api_version.as_str()), ("containerd", "v1"), "{version:?}");
    // The CRI sees the imported images (from its namespace's events).
    until("the CRI to see the echo image", 30, || {
        let status =
            k.call(k.images().image_status(ImageStatusRequest {
                image: Some(ImageSpec { image: echo_ref.clone(), ..Default::default() }),
                verbose: false,
            }));
        status.ok()?.image
    });

    // The pod: in the node's network namespace (no CNI), on the hive handler.
    let logs = dir.join("pods/default_echo-pod_uid-1");
    let port = integration_tests::free_port();
    std::fs::create_dir_all(logs.join("echo")).unwrap();
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata { name: "echo-pod".into(), uid: "uid-1".into(), namespace: "default".into(), attempt: 0 }),
        hostname: "echo-pod".into(),
        log_directory: logs.to_string_lossy().into_owned(),
        labels: HashMap::from([("app".into(), "echo".into())]),
        // Host port `port` to the pod's container `web` (containerd hands
        // `hive.*` pod annotations to the runtime: `pod_annotations`).
        annotations: HashMap::from([("hive.ports.web".into(), format!("{port}:7"))]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node.into(),
                    pid: NamespaceMode::Container.into(),
                    ipc: NamespaceMode::Pod.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = k
        .call(k.runtime().run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: HANDLER.into() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("RunPodSandbox: {e}"))))
        .pod_sandbox_id;
    let pod_status = k.call(k.runtime().pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: sandbox.clone(), verbose: false }));
    let state = pod_status.ok().and_then(|s| s.status).map(|s| s.state);
    assert_eq!(state, Some(PodSandboxState::SandboxReady.into()), "{}", fail("the pod is not ready"));
    assert!(!console().contains(&format!("guest {sandbox}")), "a sandbox runs no guest");

    // The container: echo serving port 7, with a memory limit, CPU shares
    // and a quota, as the kubelet turns `resources.limits` into them.
    let memory: u64 = 8 << 20;
    let container = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "echo".into(), attempt: 0 }),
        image: Some(ImageSpec { image: echo_ref.clone(), ..Default::default() }),
        args: vec!["serve".into(), "7".into()],
        log_path: "echo/0.log".into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory as i64,
                cpu_shares: 512,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // CreateContainer in the pod, then StartContainer; its id.
    let run = |config: ContainerConfig| -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let id = k
            .call(k.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            }))
            .unwrap_or_else(|e| panic!("{}", fail(&format!("CreateContainer {name}: {e}"))))
            .container_id;
        k.call(k.runtime().start_container(StartContainerRequest { container_id: id.clone() }))
            .unwrap_or_else(|e| panic!("{}", fail(&format!("StartContainer {name}: {e}"))));
        id
    };
    let id = run(container);
    let status = |k: &Kubelet| -> ContainerStatus {
        k.call(k.runtime().container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false }))
            .unwrap_or_else(|e| panic!("{}", fail(&format!("ContainerStatus: {e}"))))
            .status
            .expect("a status")
    };
    let running = status(&k);
    assert_eq!(running.state, i32::from(ContainerState::ContainerRunning), "{}", fail(&format!("{running:?}")));
    assert!(running.started_at > 0, "{running:?}");
    // One shim process serves the sandbox and the container.
    assert_eq!(shim_servers(&shim.0).len(), 1, "{}", fail("more than one shim server"));
    let log_path = PathBuf::from(&running.log_path);
    assert_eq!(log_path, logs.join("echo/0.log"));

    // The guest: the container id is its name, in the pod's tenant (a
    // vNIC), with the container's memory limit; the shim made the
    // shares and the quota its weight and cap.
    let started = until("the guest to start", 60, || {
        console().lines().find(|l| l.starts_with(&format!("[hv] guest {id} started"))).map(str::to_string)
    });
    assert!(started.contains("memory 8 MiB") && started.contains(", tenant "), "{started}");
    // The hypervisor's side, through a control socket of ctl's beside the
    // shim's: the guest lives in the pod's tenant (named by the shim), with
    // the container's memory limit.
    let guests = hv.0.list().unwrap_or_else(|e| panic!("{}", fail(&format!("list: {e:#}"))));
    let row = guests.iter().find(|g| g.name == id).unwrap_or_else(|| panic!("no guest {id} in {guests:?}"));
    assert!(matches!(row.state, GuestState::Waiting | GuestState::Running), "{row:?}");
    let tenants = match hv.0.request(&Request::Tenants.to_string()).map(|a| a.0) {
        Ok(Response::Tenants { tenants }) => tenants,
        other => panic!("tenants: {other:?}"),
    };
    let tenant = tenants.iter().find(|t| Some(t.id) == row.tenant).and_then(|t| t.name.clone());
    assert!(tenant.as_deref().is_some_and(|n| n.starts_with(&format!("pod-{}", &sandbox[..16]))), "{row:?} in {tenants:?}");
    // `stats` has the guests that are not on a CPU at that instant.
    let limit = until("the guest in stats", 30, || match hv.0.request(&Request::Stats.to_string()).map(|a| a.0) {
        Ok(Response::Stats { guests, .. }) => guests.iter().find(|g| g.guest == id).map(|g| g.memory_limit),
        other => panic!("stats: {other:?}"),
    });
    assert_eq!(limit, memory);
    let planned = ctrd.log().lines().find(|l| l.contains(&format!("container {id} is guest {id}:"))).map(str::to_string);
    let planned = planned.unwrap_or_else(|| panic!("{}", fail("the shim's plan is not in containerd's log")));
    let planned = planned.replace('\\', "");
    assert!(planned.contains("weight: Some(50), cap: Some(50)"), "{planned}");
    assert!(planned.contains(r#"args: ["serve", "7"]"#), "{planned}");
    assert!(planned.contains(&format!(r#"tenant: Named("pod-{}"#, &sandbox[..16])), "{planned}");

    // Its console through containerd into the kubelet's log file.
    let lines = until("echo's greeting in the CRI log", 60, || {
        let lines = parse_log(&std::fs::read_to_string(&log_path).unwrap_or_default());
        lines.iter().any(|l| l.text.starts_with("echo: listening on")).then_some(lines)
    });
    let listening = lines.iter().find(|l| l.text.starts_with("echo: listening on")).unwrap();
    assert_eq!((listening.stream.as_str(), listening.tag.as_str()), ("stdout", "F"), "{lines:?}");
    // On port 7 (the container's arguments, not the image's) at its
    // address in the pod's tenant.
    assert!(listening.text.starts_with("echo: listening on 10.") && listening.text.contains(":7 "), "{lines:?}");

    // Its CPU and memory, as the kubelet's summary API reads them.
    let stats = k
        .call(k.runtime().container_stats(ContainerStatsRequest { container_id: id.clone() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("ContainerStats: {e}"))))
        .stats
        .expect("stats");
    let working_set = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
    assert!(working_set.is_some_and(|w| w > 0 && w < memory), "{}", fail(&format!("working set {working_set:?}")));
    assert!(stats.cpu.and_then(|c| c.usage_core_nano_seconds).is_some_and(|v| v.value > 0), "no CPU time");

    // A second container, the one the pod's `hive.ports.web` names: its
    // guest is in tenant 0 (the uplink's) and serves the host through the
    // forwarded port while `echo` keeps its pod's tenant.
    std::fs::create_dir_all(logs.join("web")).unwrap();
    let web = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "web".into(), attempt: 0 }),
        image: Some(ImageSpec { image: echo_ref.clone(), ..Default::default() }),
        args: vec!["serve".into(), "7".into()],
        log_path: "web/0.log".into(),
        ..Default::default()
    };
    let web = run(web);
    let back = until("the echo through the pod's forwarded port", 60, || integration_tests::echo(port, b"hello, pod").ok());
    assert_eq!(back, b"hello, pod");
    k.call(k.runtime().stop_container(StopContainerRequest { container_id: web.clone(), timeout: 10 }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("StopContainer web: {e}"))));
    k.call(k.runtime().remove_container(RemoveContainerRequest { container_id: web.clone() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("RemoveContainer web: {e}"))));

    // StopContainer: the guest is stopped; the container has exited as a
    // killed process does.
    k.call(k.runtime().stop_container(StopContainerRequest { container_id: id.clone(), timeout: 10 }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("StopContainer: {e}"))));
    let exited = status(&k);
    assert_eq!(exited.state, i32::from(ContainerState::ContainerExited), "{}", fail(&format!("{exited:?}")));
    assert_eq!(exited.exit_code, 137, "{exited:?}");
    assert!(exited.finished_at >= exited.started_at, "{exited:?}");
    assert!(console().contains(&format!("[hv] guest {id} stopped: stopped by the operator")), "{}", console());
    // The hypervisor's lines about the guest go to its stderr.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let said = parse_log(&log)
        .into_iter()
        .any(|l| l.stream == "stderr" && l.text.starts_with(&format!("[hv] guest {id} stopped: stopped by the operator")));
    assert!(said, "{log}");

    // Remove it, then the pod.
    k.call(k.runtime().remove_container(RemoveContainerRequest { container_id: id.clone() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("RemoveContainer: {e}"))));
    k.call(k.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("StopPodSandbox: {e}"))));
    k.call(k.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() }))
        .unwrap_or_else(|e| panic!("{}", fail(&format!("RemovePodSandbox: {e}"))));

    // Nothing of ours is left: no container, no pod, no shim; the
    // hypervisor stopped the guest, and forgot it when it was removed.
    let containers = k.call(k.runtime().list_containers(ListContainersRequest::default())).unwrap().containers;
    assert!(containers.is_empty(), "{containers:?}");
    let pods = k.call(k.runtime().list_pod_sandbox(ListPodSandboxRequest::default())).unwrap().items;
    assert!(pods.is_empty(), "{pods:?}");
    let tasks = ctrd.ctr_ok(&["-n", CRI_NAMESPACE, "tasks", "ls", "-q"]).unwrap();
    assert!(tasks.trim().is_empty(), "{tasks}");
    until("the shim to end with its last container", 30, || shim_servers(&shim.0).is_empty().then_some(()));
    // The control channel is free again: `list` answers.
    let guests = hv.0.list().unwrap_or_else(|e| panic!("{}", fail(&format!("list: {e:#}"))));
    assert!(console().contains(&format!("[hv] guest {id} stopped: stopped by the operator")), "{}", fail("the guest was not stopped"));
    assert!(guests.iter().all(|g| g.name != id), "a removed container's guest is forgotten: {guests:?}");
    let running: Vec<&str> =
        guests.iter().filter(|g| g.state == GuestState::Running || g.state == GuestState::Waiting).map(|g| g.name.as_str()).collect();
    assert_eq!(running, vec!["base-0"], "only the manifest's guest runs");
}
