//! Containers as guests: a private containerd with the hive shim
//! (`containerd-shim-hive-v1`) on its `PATH` runs OCI images of our apps
//! on a detached hypervisor, through `ctr`.

use std::path::Path;

use integration_tests::containerd::{Containerd, Options, pkg, shim_on_path, shim_servers, until};
use integration_tests::{Detached, Guest, Manifest, echo, free_port, workspace_root};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const RUNTIME: &str = "io.containerd.hive.v1";

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// An OCI image layout tarball named `reference` whose one layer holds
/// `junk` at the Hermit image's path (what `pkg` refuses to make).
fn junk_image(reference: &str, junk: &[u8], out: &Path) {
    let tar_of = |files: &[(&str, &[u8])]| {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, path, *data).unwrap();
        }
        t.into_inner().unwrap()
    };
    let layer = tar_of(&[(abi::oci::IMAGE_LAYER_PATH, junk)]);
    let config = serde_json::to_vec(&json!({
        "architecture": abi::oci::ARCHITECTURE, "os": abi::oci::OS,
        "config": { "Entrypoint": [abi::oci::IMAGE_PATH] },
        "rootfs": { "type": "layers", "diff_ids": [sha(&layer)] }
    }))
    .unwrap();
    let descriptor = |media: &str, blob: &[u8]| json!({ "mediaType": media, "digest": sha(blob), "size": blob.len() });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)]
    }))
    .unwrap();
    let mut m = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    m["platform"] = json!({ "architecture": abi::oci::ARCHITECTURE, "os": abi::oci::OS });
    m["annotations"] = json!({ abi::oci::ANNOTATION_CONTAINERD_IMAGE_NAME: reference, "org.opencontainers.image.ref.name": reference });
    let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [m] })).unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{:x}", Sha256::digest(b));
    let (c, l, mf) = (blob(&config), blob(&layer), blob(&manifest));
    let layout = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&c, &config),
        (&l, &layer),
        (&mf, &manifest),
    ]);
    std::fs::write(out, layout).unwrap();
}

/// `ctr task ls`: (task, status) pairs.
fn tasks(ctrd: &Containerd) -> Vec<(String, String)> {
    let out = ctrd.ctr_ok(&["task", "ls"]).unwrap();
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect()
}

#[test]
fn containers_run_as_guests_of_one_hypervisor_through_one_shim() {
    let dir = workspace_root().join(format!("target/itest/shim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The images, and the shim alone in a directory for containerd's PATH.
    let (hello, hello_tar) = pkg("hello", &dir, None);
    let (echo_ref, echo_tar) = pkg("echo", &dir, Some(&["serve", "7"]));
    let bad_tar = dir.join("bad.tar");
    junk_image("localhost/hive/bad:latest", b"this is no Hermit image", &bad_tar);
    let (bin, shim) = shim_on_path(&dir);

    // A hypervisor with the uplink (a guest in tenant 0) for forwards.
    let hv_dir = dir.join("hv");
    let hv = Detached::start(&hv_dir, Manifest::new([Guest::app("base", "echo").tenant("base")]), false);
    let console = || std::fs::read_to_string(hv.0.console()).unwrap_or_default();

    let ctrd = Containerd::start_with(
        &dir.join("containerd"),
        Options { path: vec![bin.clone()], env: vec![("HIVE_DIR".into(), hv_dir.clone().into())] },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for tar in [&hello_tar, &echo_tar, &bad_tar] {
        ctrd.ctr_ok(&["images", "import", tar.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let fail = |what: &str| -> String { format!("{what}\n--- console:\n{}\n--- containerd:\n{}", console(), ctrd.log()) };

    // An echo server with a port forward, memory and CPU settings.
    let port = free_port();
    let web_log = dir.join("web.log");
    let out = ctrd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            &format!("hive.ports={port}:7"),
            "--memory-limit",
            "8388608",
            "--cpu-shares",
            "512",
            "--log-uri",
            &format!("file://{}", web_log.display()),
            &echo_ref,
            "web",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", fail(&format!("ctr run -d echo: {}", String::from_utf8_lossy(&out.stderr))));
    let back = until("the echo through the forwarded port", 120, || echo(port, b"hello, guest").ok());
    assert_eq!(back, b"hello, guest");
    assert!(tasks(&ctrd).contains(&("web".into(), "RUNNING".into())), "{:?}", tasks(&ctrd));
    let servers = shim_servers(&shim.0);
    assert_eq!(servers.len(), 1, "{}", fail(&format!("shim servers: {servers:?}")));

    // Its memory and CPU, as cgroups v1 metrics.
    let metrics = ctrd.ctr_ok(&["task", "metrics", "web"]).unwrap();
    let value = |key: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or_else(|| panic!("no {key} in:\n{metrics}"))
    };
    assert_eq!(value("memory.limit_in_bytes"), 8 << 20, "{metrics}");
    let used = value("memory.usage_in_bytes");
    assert!(used > 0 && used < 8 << 20, "{metrics}");

    // ctl still reaches the hypervisor beside the shim (another socket):
    // web is a guest of tenant 0 (its forward's), weighted by its shares.
    let list = hv.0.list().unwrap();
    let web = list.iter().find(|g| g.name == "web").unwrap_or_else(|| panic!("no guest web in {list:?}"));
    assert_eq!(web.tenant, Some(0), "{web:?}");

    // hello with arguments: its greeting on ctr's stdout, its exit code
    // as ctr's, served by the same shim.
    let out = ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, &hello, "hello1", "greet", "me"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", fail(&format!("ctr run hello: {stdout} {}", String::from_utf8_lossy(&out.stderr))));
    assert!(stdout.contains(r#"Hello from hello1! args: ["greet", "me"]"#), "{stdout}");
    let out = ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, &hello, "hello2", "exit=3"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", fail(&format!("ctr run hello exit=3: {}", String::from_utf8_lossy(&out.stderr))));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from hello2!"));
    // The same container id again: `--rm` deleted the first, whose guest
    // the hypervisor forgot, so the guest has its name again. Its
    // environment and an argument with spaces reach it.
    let out = ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, "--env", "GREETING=hi there", &hello, "hello1", "once again"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#"Hello from hello1! args: ["once again"]"#), "{}", fail(&format!("hello1 again: {stdout}")));
    assert!(stdout.contains(r#""GREETING=hi there""#), "{}", fail(&format!("hello1's environment: {stdout}")));
    assert_eq!(console().matches("[hv] guest hello1 started").count(), 2, "{}", fail("hello1 was not started as hello1 twice"));
    assert_eq!(shim_servers(&shim.0), servers, "one shim serves every container");

    // A layer with junk where the Hermit image should be: Create fails
    // with the hypervisor's reason, and the echo server keeps serving.
    let out = ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, "localhost/hive/bad:latest", "bad1"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused the image"), "{}", fail(&format!("bad image: {err}")));
    assert_eq!(echo(port, b"still here").unwrap(), b"still here");
    // A memory limit beyond the machine's fails Create too.
    let out = ctrd.ctr(&["run", "--rm", "--runtime", RUNTIME, "--memory-limit", &(64u64 << 30).to_string(), &hello, "huge"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("more than the hypervisor's"), "{}", fail(&format!("huge: {err}")));
    assert_eq!(echo(port, b"and still").unwrap(), b"and still");

    // A pod: its sandbox runs no guest and stays RUNNING; a container of
    // it joins the pod's tenant (a vNIC); killing the sandbox ends it.
    let sandbox = ["--annotation", "io.kubernetes.cri.container-type=sandbox"];
    ctrd.ctr_ok(&[&["run", "-d", "--runtime", RUNTIME][..], &sandbox, &[&hello, "pod1"]].concat()).unwrap();
    assert!(tasks(&ctrd).contains(&("pod1".into(), "RUNNING".into())), "{:?}", tasks(&ctrd));
    let member = ["--annotation", "io.kubernetes.cri.container-type=container", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"];
    let out = ctrd.ctr(&[&["run", "--rm", "--runtime", RUNTIME][..], &member, &[&hello, "member1"]].concat()).unwrap();
    assert!(out.status.success(), "{}", fail(&format!("pod member: {}", String::from_utf8_lossy(&out.stderr))));
    let started = console().lines().find(|l| l.starts_with("[hv] guest member1 started")).map(str::to_string);
    assert!(started.as_deref().is_some_and(|l| l.contains(", tenant 1)")), "{}", fail(&format!("member1: {started:?}")));
    assert!(!console().contains("guest pod1 "), "a sandbox runs no guest");
    ctrd.ctr_ok(&["task", "kill", "pod1"]).unwrap();
    until("pod1 STOPPED", 30, || tasks(&ctrd).contains(&("pod1".into(), "STOPPED".into())).then_some(()));
    let _ = ctrd.ctr(&["task", "delete", "pod1"]).unwrap();
    ctrd.ctr_ok(&["containers", "delete", "pod1"]).unwrap();
    assert_eq!(shim_servers(&shim.0), servers, "one shim serves every container");

    // Kill: the guest is stopped, the console and its log say so, its
    // forward is gone, its exit status is a kill's.
    ctrd.ctr_ok(&["task", "kill", "web"]).unwrap();
    until("web STOPPED", 60, || tasks(&ctrd).contains(&("web".into(), "STOPPED".into())).then_some(()));
    assert!(console().contains("[hv] guest web stopped: stopped by the operator"), "{}", console());
    let log = std::fs::read_to_string(&web_log).unwrap_or_default();
    assert!(log.contains("[hv] guest web stopped: stopped by the operator"), "web's log:\n{log}");
    assert!(echo(port, b"gone?").is_err(), "the forward outlived the guest");
    // ctr warns with the task's exit status.
    let deleted = ctrd.ctr(&["task", "delete", "web"]).unwrap();
    let said = String::from_utf8_lossy(&deleted.stderr);
    assert!(deleted.status.success() && said.contains("exit code 137"), "{said}");
    ctrd.ctr_ok(&["containers", "delete", "web"]).unwrap();

    // Nothing of ours is left: no task, no container, no shim.
    assert_eq!(tasks(&ctrd), vec![]);
    let containers = ctrd.ctr_ok(&["containers", "ls", "-q"]).unwrap();
    assert!(containers.trim().is_empty(), "{containers}");
    until("the shim to end with its last container", 30, || shim_servers(&shim.0).is_empty().then_some(()));
    // containerd-shim logs this once a server serves (a `start` that
    // finds one serving leaves before).
    let serving = ctrd.log().matches("Shim successfully started").count();
    assert_eq!(serving, 1, "{}", fail("one shim process served the whole run"));
}
