use super::*;
use abi::control::{EventKind, GuestEvent};
use abi::report::GuestState;
use abi::stop::StopReason;

/// A spec as containerd writes `config.json`, with `extra` merged in.
fn spec(extra: serde_json::Value) -> Spec {
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "cwd": "/", "args": ["/hive/image.hermit", "serve", "7"], "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "linux": {}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("a valid spec")
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn guest(p: Result<Plan, PlanError>) -> GuestPlan {
    match p.expect("a plan") {
        Plan::Guest(g) => g,
        other => panic!("not a guest: {other:?}"),
    }
}

#[test]
fn a_plain_container_is_a_guest_without_a_vnic_with_the_defaults() {
    let g = guest(plan("web", &spec(serde_json::json!({}))));
    assert_eq!(
        g,
        GuestPlan {
            memory: DEFAULT_MEMORY,
            tenant: TenantChoice::None,
            weight: None,
            cap: None,
            args: vec!["serve".into(), "7".into()],
            env: vec![],
            ports: vec![]
        }
    );
}

#[test]
fn resources_become_memory_weight_and_cap() {
    let s = spec(serde_json::json!({ "linux": { "resources": {
        "memory": { "limit": 8388608 },
        "cpu": { "shares": 512, "quota": 25000, "period": 100000 }
    }}}));
    let g = guest(plan("web", &s));
    assert_eq!((g.memory, g.weight, g.cap), (8 << 20, Some(50), Some(25)));
    // containerd's "no limit" is -1.
    let s = spec(serde_json::json!({ "linux": { "resources": { "memory": { "limit": -1 } } } }));
    assert_eq!(guest(plan("web", &s)).memory, DEFAULT_MEMORY);
    let s = spec(serde_json::json!({ "linux": { "resources": { "memory": { "limit": 4096 } } } }));
    assert!(plan("web", &s).unwrap_err().0.contains("below"), "a limit no guest fits in is refused");
}

#[test]
fn shares_and_quotas_are_clamped() {
    assert_eq!(weight_from_shares(1024), 100);
    assert_eq!(weight_from_shares(2), 1, "the kubelet's BestEffort shares");
    assert_eq!(weight_from_shares(0), 1);
    assert_eq!(weight_from_shares(262_144), 10_000);
    assert_eq!(weight_from_shares(u64::MAX), 10_000);
    assert_eq!(cap_from_quota(Some(50_000), Some(100_000)), Some(50));
    assert_eq!(cap_from_quota(Some(1), Some(100_000)), Some(1), "rounded up");
    assert_eq!(cap_from_quota(Some(200_000), Some(100_000)), Some(100), "one vCPU");
    assert_eq!(cap_from_quota(Some(-1), Some(100_000)), None, "-1: no quota");
    assert_eq!(cap_from_quota(Some(50_000), None), None);
    assert_eq!(cap_from_quota(Some(i64::MAX), Some(1)), Some(100));
}

#[test]
fn args_drop_the_image_path_and_must_be_words() {
    let s = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(guest_args(&s(&["/hive/image.hermit", "a", "exit=3"])).unwrap(), s(&["a", "exit=3"]));
    assert_eq!(guest_args(&s(&["/hive/image.hermit"])).unwrap(), s(&[]), "none: the image's own app_args");
    assert_eq!(guest_args(&s(&["serve", "7"])).unwrap(), s(&["serve", "7"]), "argv[0] is kept when it is not the image");
    assert_eq!(guest_args(&s(&["/hive/image.hermit", "two words"])).unwrap(), s(&["two words"]), "spaces travel escaped");
    assert!(guest_args(&s(&["/hive/image.hermit", ""])).is_err());
    assert!(guest_args(&s(&["/hive/image.hermit", "a\0b"])).is_err());
    assert!(guest_args(&vec!["x".to_string(); ARGS_MAX + 1]).is_err());
    assert_eq!(guest_args(&vec!["x".to_string(); ARGS_MAX]).unwrap().len(), ARGS_MAX);
}

#[test]
fn sandboxes_are_tenants_and_their_containers_join_them() {
    let sandbox_id = "0f3c2a";
    let s = spec(serde_json::json!({ "annotations": { CONTAINER_TYPE: "sandbox" } }));
    assert_eq!(plan(sandbox_id, &s).unwrap(), Plan::Sandbox { tenant: "pod-0f3c2a".into() });
    let s = spec(serde_json::json!({ "annotations": { CONTAINER_TYPE: "container", SANDBOX_ID: sandbox_id } }));
    assert_eq!(guest(plan("c1", &s)).tenant, TenantChoice::Named("pod-0f3c2a".into()));
}

#[test]
fn ports_put_a_guest_in_tenant_0_and_tenant_annotations_are_checked() {
    let s = spec(serde_json::json!({ "annotations": { PORTS: "8080:7, 9000:9/tcp", TENANT: "acme" } }));
    let g = guest(plan("web", &s));
    assert_eq!(g.ports, vec![Port { host: 8080, guest: 7 }, Port { host: 9000, guest: 9 }]);
    assert_eq!(g.tenant, TenantChoice::Number(0));
    let s = spec(serde_json::json!({ "annotations": { TENANT: "acme" } }));
    assert_eq!(guest(plan("web", &s)).tenant, TenantChoice::Named("acme".into()));
    assert_eq!(parse_tenant("7").unwrap(), TenantChoice::Number(7));
    assert_eq!(parse_tenant("none").unwrap(), TenantChoice::None);
    assert!(parse_tenant("256").is_err() && parse_tenant("a.b").is_err() && parse_tenant("").is_err());
    for bad in ["8080", "8080:0", "0:7", "x:7", "8080:7/udp", "70000:7", "1:2,1:3"] {
        assert!(parse_ports(bad).is_err(), "{bad} accepted");
    }
    assert_eq!(parse_ports("").unwrap(), vec![]);
}

#[test]
fn names_are_the_id_where_it_fits_else_a_sanitized_hash() {
    assert_eq!(guest_name("hello-1"), "hello-1");
    let k8s = "a3f1c0de".repeat(8);
    assert_eq!(guest_name(&k8s), k8s, "64 hex digits fit");
    for id in ["Web.Server", "x".repeat(65).as_str(), "a b", "ünïcode", "", "a.b"] {
        let n = guest_name(id);
        assert!(good_name(&n) && !n.contains('.'), "{id:?} -> {n:?}");
    }
    assert_ne!(guest_name("A"), guest_name("a"), "ids that differ get different names");
    assert_ne!(guest_name(&format!("{}a", "x".repeat(64))), guest_name(&format!("{}b", "x".repeat(64))));
    assert_eq!(guest_name("Web.Server"), guest_name("Web.Server"), "deterministic");
    assert_eq!(numbered("web", 0), "web");
    assert_eq!(numbered("web", 2), "web-2");
    let long = numbered(&k8s, 17);
    assert!(long.len() == 64 && long.ends_with("-17") && good_name(&long), "{long}");
}

#[test]
fn tenant_names_are_good_and_never_numbers() {
    assert_eq!(tenant_name("abc"), "pod-abc");
    for id in ["0123456789", &"9".repeat(64), "a/b", "", "none"] {
        let t = tenant_name(id);
        assert!(good_tenant_name(&t), "{id:?} -> {t:?}");
    }
    assert_ne!(tenant_name(&"9".repeat(64)), tenant_name(&"9".repeat(63)));
}

#[test]
fn exit_statuses() {
    let ended = |state, exit_code, stop_reason| GuestEvent { event: EventKind::Ended, guest: "g".into(), state, exit_code, stop_reason };
    assert_eq!(Ending::of(&ended(GuestState::Exited, Some(0), None)).exit_status(), 0);
    assert_eq!(Ending::of(&ended(GuestState::Exited, Some(3), None)).exit_status(), 3);
    assert_eq!(Ending::of(&ended(GuestState::Exited, Some(101), None)).exit_status(), 101, "a guest panic");
    assert_eq!(Ending::of(&ended(GuestState::Exited, Some(-1), None)).exit_status(), 255);
    assert_eq!(Ending::of(&ended(GuestState::Exited, Some(256), None)).exit_status(), 0, "the low 8 bits, as Linux");
    assert_eq!(Ending::of(&ended(GuestState::Stopped, None, Some(StopReason::Operator))), Ending::Killed);
    assert_eq!(Ending::Killed.exit_status(), 137);
    assert_eq!(Ending::of(&ended(GuestState::Stopped, None, Some(StopReason::MachineOutOfMemory))).exit_status(), 255);
    assert_eq!(Ending::of(&ended(GuestState::Stopped, None, None)).exit_status(), 255);
    assert_eq!(Ending::Lost.exit_status(), 255);
}

#[test]
fn the_environment_goes_to_the_guest_checked() {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let with_env = spec(serde_json::json!({ "process": { "env": ["PATH=/bin", "GREETING=hello world", "EMPTY="] } }));
    assert_eq!(guest(plan("web", &with_env)).env, s(&["PATH=/bin", "GREETING=hello world", "EMPTY="]));
    assert!(guest_env(&s(&["NOKEY"])).is_err());
    assert!(guest_env(&s(&["=v"])).is_err());
    assert!(guest_env(&s(&["K=a\0b"])).is_err());
    let many: Vec<String> = (0..=ENV_MAX).map(|i| format!("K{i}=v")).collect();
    assert!(guest_env(&many).unwrap_err().0.contains("enableServiceLinks"));
}

#[test]
fn a_pods_port_annotation_names_its_container() {
    let pod = |name: &str| {
        spec(serde_json::json!({ "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "abc",
            "io.kubernetes.cri.container-name": name,
            "hive.ports.web": "8080:7",
        }}))
    };
    let web = guest(plan("c1", &pod("web")));
    assert_eq!((web.ports, web.tenant), (vec![Port { host: 8080, guest: 7 }], TenantChoice::Number(0)));
    let other = guest(plan("c2", &pod("db")));
    assert_eq!(
        (other.ports, other.tenant),
        (vec![], TenantChoice::Named(tenant_name("abc"))),
        "the pod's other containers keep its tenant"
    );
}
