//! What a container becomes on the hypervisor, decided from its bundle's
//! `config.json` alone: a guest (its name, memory, tenant, CPU weight and
//! cap, arguments, host ports) or, for a pod's sandbox container, only a
//! tenant. Also the naming rules and the exit-status rules. Nothing here
//! talks to containerd or the hypervisor; `shim/README.md` has the table.

use std::collections::HashMap;
use std::fmt;

use abi::control::{ARGS_MAX, ENV_MAX, Tenant, good_name, good_tenant_name};
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};

/// The CRI's annotation saying whether a container is a pod's sandbox
/// (`sandbox`) or one of its containers (`container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI's annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The CRI's annotation with the container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Our annotation: the tenant of a container outside a pod (a name,
/// a number below 256, or `none`).
pub const TENANT: &str = "hive.tenant";
/// Our annotation: host port forwards, `HOST:GUEST[,HOST:GUEST...]`
/// (TCP, on 127.0.0.1); the guest goes into tenant 0, the uplink's.
/// `hive.ports.NAME` is for the container named NAME in its pod only: a
/// pod's annotations reach each of its containers (containerd's
/// `pod_annotations`), and a host port can be forwarded once.
pub const PORTS: &str = "hive.ports";

/// A guest's memory limit when the spec sets none (`linux.resources.memory.limit`).
/// A limit, not a reservation: pages are taken when first touched.
pub const DEFAULT_MEMORY: u64 = 16 << 20;
/// The fewest bytes a guest may be given (as in the manifest).
pub const MIN_MEMORY: u64 = 64 << 10;
/// CPU shares that make weight 100 (the manifest's default weight).
pub const SHARES_PER_100_WEIGHT: u64 = 1024;

/// Exit status of a guest the hypervisor stopped because it was killed
/// (`ctr task kill`, the kubelet): 128 + SIGKILL, as for a killed process.
pub const EXIT_KILLED: u32 = 137;
/// Exit status of a guest the hypervisor stopped for a fault or a bad
/// hypercall, or that ended with the hypervisor (its channel closed).
pub const EXIT_FAULT: u32 = 255;

/// What a container is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A pod's sandbox: the tenant its containers join; no guest runs.
    Sandbox { tenant: String },
    /// A guest.
    Guest(GuestPlan),
}

/// The guest a container runs as (its name is chosen later: see
/// [`guest_name`] and [`numbered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlan {
    /// Memory limit in bytes.
    pub memory: u64,
    pub tenant: TenantChoice,
    /// CPU weight (1..=10000), from `cpu.shares`.
    pub weight: Option<u32>,
    /// At most this percent of one CPU (1..=100), from `cpu.quota`/`cpu.period`.
    pub cap: Option<u32>,
    /// The guest's arguments (none: the image's `hermit.toml` `app_args`).
    pub args: Vec<String>,
    /// Its environment, `KEY=VALUE` each (`process.env`).
    pub env: Vec<String>,
    /// Host port forwards (TCP on 127.0.0.1).
    pub ports: Vec<Port>,
}

/// The tenant a guest goes into; owned, see [`TenantChoice::as_tenant`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantChoice {
    None,
    Number(u32),
    Named(String),
}

impl TenantChoice {
    pub fn as_tenant(&self) -> Tenant<'_> {
        match self {
            Self::None => Tenant::None,
            Self::Number(n) => Tenant::Number(*n),
            Self::Named(n) => Tenant::Named(n),
        }
    }
}

/// A host port forward: host 127.0.0.1:`host` to the guest's `guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub host: u16,
    pub guest: u16,
}

/// Why a bundle cannot run; the sentence goes back to containerd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

fn err<T>(s: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(s.into()))
}

/// The plan for a container `id` whose bundle has `spec`.
pub fn plan(id: &str, spec: &Spec) -> Result<Plan, PlanError> {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Plan::Sandbox { tenant: tenant_name(id) });
    }

    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = match resources.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()) {
        // containerd writes -1 (or nothing) for "no limit".
        Some(limit) if limit > 0 => {
            let limit = limit as u64;
            if limit < MIN_MEMORY {
                return err(format!("memory limit {limit} bytes is below the {MIN_MEMORY} bytes a guest needs at least"));
            }
            limit
        }
        _ => DEFAULT_MEMORY,
    };
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let weight = cpu.and_then(|c| c.shares()).map(weight_from_shares);
    let cap = cpu.and_then(|c| cap_from_quota(c.quota(), c.period()));

    let named = annotations.get(CONTAINER_NAME).and_then(|n| annotations.get(&format!("{PORTS}.{n}")));
    let ports = match named.or(annotations.get(PORTS)) {
        Some(text) => parse_ports(text)?,
        None => Vec::new(),
    };
    let tenant = if !ports.is_empty() {
        // QEMU's forwards reach the uplink's tenant only.
        TenantChoice::Number(0)
    } else if let Some(sandbox) = annotations.get(SANDBOX_ID).filter(|s| !s.is_empty()) {
        TenantChoice::Named(tenant_name(sandbox))
    } else if let Some(t) = annotations.get(TENANT) {
        parse_tenant(t)?
    } else {
        TenantChoice::None
    };

    let args = guest_args(spec.process().as_ref().and_then(|p| p.args().as_deref()).unwrap_or(&[]))?;
    let env = guest_env(spec.process().as_ref().and_then(|p| p.env().as_deref()).unwrap_or(&[]))?;
    Ok(Plan::Guest(GuestPlan { memory, tenant, weight, cap, args, env, ports }))
}

/// CPU shares to a weight: 1024 shares are weight 100, clamped to 1..=10000.
pub fn weight_from_shares(shares: u64) -> u32 {
    (shares.saturating_mul(100) / SHARES_PER_100_WEIGHT).clamp(1, 10_000) as u32
}

/// A CFS quota and period (µs) to a cap in percent of one CPU, rounded up
/// and clamped to 1..=100 (a guest has one vCPU); none without a positive
/// quota and period.
pub fn cap_from_quota(quota: Option<i64>, period: Option<u64>) -> Option<u32> {
    let (quota, period) = (quota.filter(|&q| q > 0)? as u64, period.filter(|&p| p > 0)?);
    Some(quota.saturating_mul(100).div_ceil(period).clamp(1, 100) as u32)
}

/// `process.args` to the guest's arguments: argv\[0\] is dropped when it is
/// the image's path (the OCI image's entrypoint). Spaces and any other
/// characters travel (escaped); an empty argument or a NUL cannot.
pub fn guest_args(argv: &[String]) -> Result<Vec<String>, PlanError> {
    let rest = match argv.first().map(String::as_str) {
        Some(a) if a == abi::oci::IMAGE_PATH || a == abi::oci::IMAGE_LAYER_PATH => &argv[1..],
        _ => argv,
    };
    if rest.len() > ARGS_MAX {
        return err(format!("{} arguments: a guest takes at most {ARGS_MAX}", rest.len()));
    }
    for a in rest {
        if a.is_empty() || a.contains('\0') {
            return err(format!("argument {a:?}: a guest's arguments are not empty and hold no NUL"));
        }
    }
    Ok(rest.to_vec())
}

/// `process.env` to the guest's environment: each `KEY=VALUE` with a key
/// and no NUL, at most [`ENV_MAX`] (they share the guest's start page with
/// its arguments, which the hypervisor checks: the kubelet's service
/// variables for a namespace with many services may not fit, see
/// `enableServiceLinks`).
pub fn guest_env(env: &[String]) -> Result<Vec<String>, PlanError> {
    if env.len() > ENV_MAX {
        return err(format!(
            "{} environment variables: a guest takes at most {ENV_MAX} (a pod's enableServiceLinks: false drops the kubelet's)",
            env.len()
        ));
    }
    for v in env {
        if v.find('=').is_none_or(|k| k == 0) || v.contains('\0') {
            return err(format!("environment variable {v:?}: each is KEY=VALUE with a KEY, and holds no NUL"));
        }
    }
    Ok(env.to_vec())
}

/// `hive.ports`: `HOST:GUEST[,HOST:GUEST...]`, each port 1..=65535,
/// `/tcp` allowed after the guest port.
pub fn parse_ports(text: &str) -> Result<Vec<Port>, PlanError> {
    let mut out: Vec<Port> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = item.strip_suffix("/tcp").unwrap_or(item);
        let port = |s: &str| s.parse::<u16>().ok().filter(|&p| p > 0);
        let Some((host, guest)) = item.split_once(':').and_then(|(h, g)| Some((port(h)?, port(g)?))) else {
            return err(format!("{PORTS} {text:?}: each forward is HOST:GUEST (TCP ports 1 to 65535)"));
        };
        if out.iter().any(|p| p.host == host) {
            return err(format!("{PORTS} {text:?}: host port {host} twice"));
        }
        out.push(Port { host, guest });
    }
    Ok(out)
}

/// `hive.tenant`: `none`, a number below 256, or a tenant name.
pub fn parse_tenant(word: &str) -> Result<TenantChoice, PlanError> {
    Ok(match word {
        "none" => TenantChoice::None,
        w if good_tenant_name(w) => TenantChoice::Named(w.to_string()),
        w => match w.parse::<u32>() {
            Ok(n) if n < abi::MAX_TENANTS => TenantChoice::Number(n),
            _ => return err(format!("{TENANT} {w:?}: a number below {}, a name of [A-Za-z0-9_-], or none", abi::MAX_TENANTS)),
        },
    })
}

/// The first `n` hex digits of the SHA-256 of `s`.
fn hash_hex(s: &str, n: usize) -> String {
    let mut out = String::with_capacity(64);
    let _ = abi::control::write_hex(&mut out, &Sha256::digest(s.as_bytes()));
    out.truncate(n);
    out
}

/// `s` with every character outside `[a-z0-9_-]` made `-`, at most `max`
/// characters.
fn sanitized(s: &str, max: usize) -> String {
    s.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' { c } else { '-' }).take(max).collect()
}

/// The guest name of container `id`: the id itself where it is a guest
/// name (1 to 64 of `[a-z0-9_-]`, as containerd's and the kubelet's ids
/// are), else its lowercase, sanitized start, `-` and 12 hex digits of its
/// SHA-256 (so two ids never share a name).
pub fn guest_name(id: &str) -> String {
    if good_name(id) && !id.contains('.') {
        return id.to_string();
    }
    format!("{}-{}", sanitized(&id.to_ascii_lowercase(), 40), hash_hex(id, 12))
}

/// `name`, or for `n` above 0 its `n`th alternative (`NAME-n`, shortened
/// to stay within 64 characters): the hypervisor keeps the names of ended
/// guests, so a container id used again needs another one.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    let suffix = format!("-{n}");
    let keep = abi::layout::NAME_MAX - suffix.len();
    format!("{}{suffix}", &name[..name.len().min(keep)])
}

/// The tenant of pod sandbox `sandbox_id`: `pod-` and the id where it fits
/// (1 to 60 of `[A-Za-z0-9_-]`), else `pod-`, its sanitized start and a
/// hash. Never only digits, never `none`.
pub fn tenant_name(sandbox_id: &str) -> String {
    let fits = (1..=60).contains(&sandbox_id.len()) && sandbox_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        return format!("pod-{sandbox_id}");
    }
    format!("pod-{}-{}", sanitized(&sandbox_id.to_ascii_lowercase(), 40), hash_hex(sandbox_id, 12))
}

/// How a guest ended, as the hypervisor says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It called `exit(code)`.
    Exited(i32),
    /// The hypervisor stopped it on request (`stop`: a kill).
    Killed,
    /// The hypervisor stopped it for a fault or a bad hypercall.
    Faulted,
    /// The hypervisor went away before it ended (its channel closed and
    /// a new connection does not find the guest).
    Lost,
}

impl Ending {
    /// The task's exit status: the exit code's low 8 bits (as a Linux
    /// process's), [`EXIT_KILLED`] for a kill, [`EXIT_FAULT`] otherwise.
    pub fn exit_status(self) -> u32 {
        match self {
            Self::Exited(code) => (code as u32) & 0xff,
            Self::Killed => EXIT_KILLED,
            Self::Faulted | Self::Lost => EXIT_FAULT,
        }
    }

    /// From an `ended` event.
    pub fn of(event: &abi::control::GuestEvent) -> Ending {
        use abi::report::GuestState;
        use abi::stop::StopReason;
        match (event.state, event.exit_code, &event.stop_reason) {
            (GuestState::Exited, Some(code), _) => Self::Exited(code),
            (_, _, Some(StopReason::Operator)) => Self::Killed,
            _ => Self::Faulted,
        }
    }
}

#[cfg(test)]
mod tests;
