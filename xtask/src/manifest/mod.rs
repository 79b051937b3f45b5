//! The run manifest: which guests to boot, how many of each, with how much
//! memory and which arguments.
//!
//! ```toml
//! [[guest]]
//! name = "hello"          # [a-z0-9_-]+, at most 48 bytes; instances are hello-0, hello-1, ...
//! app = "hello"           # a directory under apps/ ...
//! # image = "x.hermit"    # ... or a Hermit image, relative to the manifest's directory
//! count = 3               # default 1, at most 65536
//! memory = "2 MiB"        # default "2 MiB", at least 64 KiB, at most the machine's memory
//! args = ["a", "b"]       # default []
//! weight = 100            # CPU share relative to other guests, 1..=10000, default 100
//! cap = 25                # at most this percent of one CPU, 1..=100, default none
//! net = true              # give it a vNIC (default false; implied by tenant)
//! tenant = "acme"         # its broadcast domain; guests of other tenants cannot reach it
//! ring_slots = 16         # frames each vNIC ring holds: a power of two, 2..=2048, default 16 (2 KiB each)
//! limits = { nic_packets = 200000, nic_bytes = "256 MiB", nic_broadcasts = 1000, console_bytes = "64 KiB", notifications = 200000 }
//!                         # per second, 0 = none; each key optional, defaults as shown
//! ports = ["8080:7"]      # host 127.0.0.1:8080 -> this guest's port 7 ("HOST:GUEST[/udp]"); count 1, first tenant only
//! warm = true             # instance 0 boots and pauses when it first blocks (initialised, idle); the others
//!                         # are its copy-on-write clones, each with its own name, addresses and randomness;
//!                         # then instance 0 goes on (default false)
//!
//! [[guest]]
//! name = "more"
//! from = "hello"          # each instance a copy-on-write clone of an earlier entry's instance 0, which
//! count = 100             # pauses when it first blocks and stays paused as their template; the clones
//!                         # take its app, memory, arguments, tenant, rings and limits (give only name,
//!                         # count and from)
//!
//! [host]
//! restrict = true         # QEMU's restrict=on (default): the first tenant's guests reach nothing of the
//!                         # host or beyond; false gives them the host's loopback services and the outside
//!                         # network through 10.0.0.1, and is needed for "/udp" ports
//! ```
//!
//! Every error names the manifest and the line it is about, and all of them
//! are found before QEMU starts.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use abi::bundle::Limits;
use abi::layout::{NAME_MAX, START_STRINGS_MAX};
use serde::Deserialize;
use toml::Spanned;

mod build;

/// The manifest `cargo xtask run` uses when no `--manifest` is given.
pub const DEFAULT_MANIFEST: &str = r#"# Three hello guests, and an echo server the host reaches on TCP port 8007.
[[guest]]
name = "hello"
app = "hello"
count = 3
memory = "1 MiB"
args = ["from", "the", "default", "manifest"]

[[guest]]
name = "echo"
app = "echo"
memory = "4 MiB"
ports = ["8007:7"]
"#;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

/// Memory of a guest that does not say.
pub const DEFAULT_GUEST_MEMORY: u64 = 2 * MIB;
/// The tenant of a guest with `net = true` and no `tenant`.
pub const DEFAULT_TENANT: &str = "default";

/// A guest's CPU weight when the manifest names none.
pub const DEFAULT_WEIGHT: u32 = 100;

/// The least memory a guest may ask for.
pub const MIN_GUEST_MEMORY: u64 = 64 * KIB;
/// Longest guest name; `-<instance>` is appended to it.
pub const NAME_LEN_MAX: usize = 48;
/// Most instances of one guest entry.
pub const COUNT_MAX: u32 = 65_536;

/// A parsed and validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The guest entries, in file order; never empty.
    pub guests: Vec<Guest>,
    /// QEMU's user network runs restricted (`[host] restrict`, default
    /// true): the first tenant's guests reach nothing of the host or beyond
    /// (they only answer on the host's TCP port forwards). False opens the
    /// host's loopback services and the outside network to them through
    /// the gateway: for trusted tenants only.
    pub restrict: bool,
}

/// One `[[guest]]` entry: `count` instances of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    pub name: String,
    pub source: Source,
    pub count: u32,
    /// Memory limit per instance, in bytes.
    pub memory: u64,
    pub args: Vec<String>,
    /// Share of the CPU relative to other guests (default 100).
    pub weight: u32,
    /// Most CPU the guest may use, in percent of one CPU (`None`: no cap).
    pub cap: Option<u32>,
    /// The tenant (broadcast domain) of its vNIC; `None`: no vNIC.
    pub tenant: Option<String>,
    /// Slots in each of its vNIC's rings.
    pub ring_slots: u32,
    /// Rate limits per second.
    pub limits: abi::bundle::Limits,
    /// Host ports forwarded to it: (protocol, host port, guest port).
    pub ports: Vec<Forward>,
    /// Instance 0 boots and pauses when it first blocks; the others are
    /// its clones (`warm = true`).
    pub warm: bool,
    /// Each instance is a clone of this earlier entry's instance 0
    /// (`from = "NAME"`); its other settings are that entry's.
    pub from: Option<String>,
    /// Line of the entry in the manifest (for later messages).
    pub line: usize,
}

/// A host port forwarded to a guest's port through the uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
}

/// Parses `"8080:80"` or `"5353:53/udp"`.
pub fn parse_forward(s: &str) -> Option<Forward> {
    let (ports, udp) = match s.split_once('/') {
        None => (s, false),
        Some((p, "tcp")) => (p, false),
        Some((p, "udp")) => (p, true),
        Some(_) => return None,
    };
    let (h, g) = ports.split_once(':')?;
    let (host, guest) = (h.trim().parse().ok()?, g.trim().parse().ok()?);
    (host != 0 && guest != 0).then_some(Forward { udp, host, guest })
}

/// Where a guest's image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An app under `apps/`, built with `build-app`.
    App(String),
    /// A Hermit image file (already resolved against the manifest's directory).
    Image(PathBuf),
}

/// What validation needs to know about the world.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// How messages name the manifest, e.g. `manifest.toml`.
    pub file: &'a str,
    /// `image` paths are relative to this directory.
    pub base_dir: &'a Path,
    /// The apps that exist (directories under `apps/`).
    pub apps: &'a [String],
    /// Memory of the (virtual) machine in bytes; no guest may ask for more.
    pub machine_memory: u64,
}

/// A manifest error: `file:line: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    /// 1-based; `None` when the error is about the whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for Error {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    guest: Vec<Spanned<RawGuest>>,
    host: Option<RawHost>,
}

/// `[host]`: what of the host the guests may reach.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    restrict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    app: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    memory: Option<Spanned<String>>,
    args: Option<Spanned<Vec<String>>>,
    weight: Option<Spanned<i64>>,
    cap: Option<Spanned<i64>>,
    net: Option<bool>,
    tenant: Option<Spanned<String>>,
    ring_slots: Option<Spanned<i64>>,
    limits: Option<Spanned<RawLimits>>,
    ports: Option<Spanned<Vec<String>>>,
    warm: Option<bool>,
    from: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    nic_packets: Option<i64>,
    nic_bytes: Option<Amount>,
    nic_broadcasts: Option<i64>,
    console_bytes: Option<Amount>,
    notifications: Option<i64>,
}

/// A count of bytes: a number, or a string with a unit ("64 KiB").
#[derive(Deserialize)]
#[serde(untagged)]
enum Amount {
    Number(i64),
    Text(String),
}

/// Parses and validates a manifest.
pub fn parse(text: &str, cx: &Context<'_>) -> Result<Manifest, Error> {
    let err = |span: Option<Range<usize>>, message: String| Error {
        file: cx.file.to_string(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let raw: RawManifest = toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_string()))?;
    if raw.guest.is_empty() {
        return Err(err(None, "no guests: add a [[guest]] table".into()));
    }
    let restrict = raw.host.as_ref().and_then(|h| h.restrict).unwrap_or(true);
    let mut guests: Vec<Guest> = Vec::with_capacity(raw.guest.len());
    let mut first_tenant: Option<String> = None;
    // (tenant, guests with a vNIC in it so far)
    let mut tenant_hosts: Vec<(String, u64)> = Vec::new();
    let mut used_host_ports: Vec<(bool, u16)> = Vec::new();
    for entry in raw.guest {
        let entry_span = entry.span();
        let g = entry.into_inner();

        let count = match &g.count {
            None => 1,
            Some(c) => match u32::try_from(*c.get_ref()) {
                Ok(n) if (1..=COUNT_MAX).contains(&n) => n,
                _ => {
                    return Err(err(Some(c.span()), format!("count {} is not in 1..={COUNT_MAX}", c.get_ref())));
                }
            },
        };

        let name = g.name.get_ref();
        let name_err = |m: String| err(Some(g.name.span()), m);
        if name.is_empty() || !name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')) {
            return Err(name_err(format!("name '{name}' must be made of a-z, 0-9, '_' and '-'")));
        }
        if name.len() > NAME_LEN_MAX {
            return Err(name_err(format!("name '{name}' is longer than {NAME_LEN_MAX} bytes")));
        }
        let longest_instance = instance_name(name, count - 1);
        if longest_instance.len() > NAME_MAX {
            return Err(name_err(format!("instance name '{longest_instance}' is longer than {NAME_MAX} bytes")));
        }
        if let Some(first) = guests.iter().find(|o| o.name == *name) {
            return Err(name_err(format!("duplicate guest name '{name}' (first used on line {})", first.line)));
        }

        // Clones of an earlier entry: everything but their names is the
        // template's.
        if let Some(from) = &g.from {
            let ferr = |m: String| err(Some(from.span()), m);
            let own = [
                g.app.is_some(),
                g.image.is_some(),
                g.memory.is_some(),
                g.args.is_some(),
                g.weight.is_some(),
                g.cap.is_some(),
                g.net.is_some(),
                g.tenant.is_some(),
                g.ring_slots.is_some(),
                g.limits.is_some(),
                g.ports.is_some(),
                g.warm.is_some(),
            ];
            if own.into_iter().any(|b| b) {
                return Err(ferr(format!(
                    "guest '{name}' clones '{}': its app, memory, arguments, tenant, rings and limits are the template's; give only name, count and from",
                    from.get_ref()
                )));
            }
            let Some(t) = guests.iter().find(|o| o.name == *from.get_ref()) else {
                return Err(ferr(format!("from = \"{}\" names no guest entry before this one", from.get_ref())));
            };
            if t.from.is_some() {
                return Err(ferr(format!("'{}' is itself made of clones; a template boots", t.name)));
            }
            if let Some(tn) = &t.tenant {
                let at = tenant_hosts.iter().position(|(n, _)| n == tn).unwrap_or(0);
                tenant_hosts[at].1 += u64::from(count);
                if tenant_hosts[at].1 > u64::from(abi::MAX_TENANT_HOSTS) {
                    return Err(ferr(format!(
                        "tenant '{tn}' has more than {} guests with a vNIC (its /16 has no more addresses)",
                        abi::MAX_TENANT_HOSTS
                    )));
                }
            }
            let clones = Guest {
                name: name.clone(),
                count,
                ports: Vec::new(),
                warm: false,
                from: Some(t.name.clone()),
                line: line_of(text, entry_span.start),
                ..t.clone()
            };
            guests.push(clones);
            continue;
        }

        let source = match (&g.app, &g.image) {
            (Some(app), None) => {
                let a = app.get_ref();
                if !cx.apps.iter().any(|x| x == a) {
                    return Err(err(Some(app.span()), format!("app '{a}' does not exist (apps: {})", cx.apps.join(", "))));
                }
                Source::App(a.clone())
            }
            (None, Some(image)) => {
                let path = cx.base_dir.join(image.get_ref());
                if !path.is_file() {
                    return Err(err(Some(image.span()), format!("image '{}' not found (looked for {})", image.get_ref(), path.display())));
                }
                Source::Image(path)
            }
            (Some(_), Some(image)) => {
                return Err(err(Some(image.span()), format!("guest '{name}' has both app and image; give one")));
            }
            (None, None) => {
                return Err(err(Some(entry_span), format!("guest '{name}' needs app = \"...\" or image = \"...\"")));
            }
        };

        let memory = match &g.memory {
            None => DEFAULT_GUEST_MEMORY,
            Some(m) => {
                let text = m.get_ref();
                let merr = |why: String| err(Some(m.span()), format!("memory \"{text}\" {why}"));
                let bytes = parse_size(text).map_err(|why| merr(format!("is not a size: {why}")))?;
                if bytes < MIN_GUEST_MEMORY {
                    return Err(merr(format!("is less than the minimum {}", format_size(MIN_GUEST_MEMORY))));
                }
                if bytes > cx.machine_memory {
                    return Err(merr(format!("is more than the machine's {}", format_size(cx.machine_memory))));
                }
                bytes
            }
        };

        let args = match g.args {
            None => Vec::new(),
            Some(args) => {
                let span = args.span();
                let args = args.into_inner();
                let aerr = |m: String| err(Some(span.clone()), m);
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(aerr("an argument contains a NUL byte".into()));
                }
                if args.len() > abi::bundle::MAX_ARGS as usize {
                    return Err(aerr(format!("{} arguments; at most {} fit", args.len(), abi::bundle::MAX_ARGS)));
                }
                let bytes: usize = longest_instance.len() + 1 + args.iter().map(|a| a.len() + 1).sum::<usize>();
                if bytes as u64 > START_STRINGS_MAX {
                    return Err(aerr(format!(
                        "the name and arguments take {bytes} bytes; at most {START_STRINGS_MAX} fit in the start page"
                    )));
                }
                args
            }
        };

        let ranged = |v: &Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<i64>, what: &str| match v {
            None => Ok(None),
            Some(v) if range.contains(v.get_ref()) => Ok(Some(*v.get_ref() as u32)),
            Some(v) => Err(err(Some(v.span()), format!("{key} {} is not {what}", v.get_ref()))),
        };
        let weight = ranged(&g.weight, "weight", 1..=10_000, "between 1 and 10000")?.unwrap_or(DEFAULT_WEIGHT);
        let cap = ranged(&g.cap, "cap", 1..=100, "a percentage between 1 and 100")?;
        let ring_slots = match &g.ring_slots {
            None => abi::ring::SLOTS_DEFAULT,
            Some(v) if u32::try_from(*v.get_ref()).is_ok_and(abi::ring::valid_slots) => *v.get_ref() as u32,
            Some(v) => {
                return Err(err(
                    Some(v.span()),
                    format!(
                        "ring_slots {} is not a power of two between {} and {}",
                        v.get_ref(),
                        abi::ring::SLOTS_MIN,
                        abi::ring::SLOTS_MAX
                    ),
                ));
            }
        };
        let limits = match &g.limits {
            None => abi::bundle::Limits::default(),
            Some(l) => {
                let lerr = |m: String| err(Some(l.span()), m);
                let d = abi::bundle::Limits::default();
                let count = |v: Option<i64>, key: &str, default: u64| match v {
                    None => Ok(default),
                    Some(n) => u64::try_from(n).map_err(|_| lerr(format!("limits.{key} {n} is negative"))),
                };
                let bytes = |v: &Option<Amount>, key: &str, default: u64| match v {
                    None => Ok(default),
                    Some(Amount::Number(n)) => u64::try_from(*n).map_err(|_| lerr(format!("limits.{key} {n} is negative"))),
                    Some(Amount::Text(t)) => parse_size(t).map_err(|e| lerr(format!("limits.{key} \"{t}\": {e}"))),
                };
                let r = l.get_ref();
                abi::bundle::Limits {
                    nic_packets: count(r.nic_packets, "nic_packets", d.nic_packets)?,
                    nic_bytes: bytes(&r.nic_bytes, "nic_bytes", d.nic_bytes)?,
                    nic_broadcasts: count(r.nic_broadcasts, "nic_broadcasts", d.nic_broadcasts)?,
                    console_bytes: bytes(&r.console_bytes, "console_bytes", d.console_bytes)?,
                    notifications: count(r.notifications, "notifications", d.notifications)?,
                }
            }
        };
        let tenant = match (&g.tenant, g.net) {
            (Some(t), Some(false)) => {
                return Err(err(Some(t.span()), "a tenant needs a vNIC, but net = false".into()));
            }
            (Some(t), _) => {
                let name = t.get_ref();
                if name.is_empty() || name.len() > 48 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(err(Some(t.span()), format!("tenant \"{name}\" must be 1 to 48 of [A-Za-z0-9_-]")));
                }
                Some(name.clone())
            }
            (None, Some(true)) => Some(DEFAULT_TENANT.to_string()),
            (None, _) if g.ports.is_some() => Some(DEFAULT_TENANT.to_string()),
            (None, _) => None,
        };
        if let Some(t) = &tenant
            && first_tenant.is_none()
        {
            first_tenant = Some(t.clone());
        }
        // Each tenant is a /16 (abi::guest_ipv4): at most 256 tenants, and
        // 65,533 guests with a vNIC in each.
        if let Some(t) = &tenant {
            let span = g.tenant.as_ref().map_or(entry_span.clone(), |t| t.span());
            let at = match tenant_hosts.iter().position(|(n, _)| n == t) {
                Some(i) => i,
                None if tenant_hosts.len() as u32 >= abi::MAX_TENANTS => {
                    return Err(err(Some(span), format!("more than {} tenants", abi::MAX_TENANTS)));
                }
                None => {
                    tenant_hosts.push((t.clone(), 0));
                    tenant_hosts.len() - 1
                }
            };
            tenant_hosts[at].1 += u64::from(count);
            if tenant_hosts[at].1 > u64::from(abi::MAX_TENANT_HOSTS) {
                return Err(err(
                    Some(span),
                    format!("tenant '{t}' has more than {} guests with a vNIC (its /16 has no more addresses)", abi::MAX_TENANT_HOSTS),
                ));
            }
        }
        let mut ports = Vec::new();
        if let Some(p) = &g.ports {
            let perr = |m: String| err(Some(p.span()), m);
            if g.net == Some(false) {
                return Err(perr("ports need a vNIC, but net = false".into()));
            }
            if count != 1 {
                return Err(perr(format!("ports can be forwarded to one instance only, and count is {count}")));
            }
            if tenant != first_tenant {
                return Err(perr(format!(
                    "ports reach only the first tenant's guests (tenant '{}'), the uplink's",
                    first_tenant.clone().unwrap_or_default()
                )));
            }
            for spec in p.get_ref() {
                let f = parse_forward(spec).ok_or_else(|| perr(format!("port \"{spec}\" is not HOST:GUEST or HOST:GUEST/udp")))?;
                if f.udp && restrict {
                    return Err(perr(format!(
                        "port \"{spec}\": a UDP forward needs [host] restrict = false (QEMU's restricted network drops the guests' UDP, answers included)"
                    )));
                }
                if used_host_ports.contains(&(f.udp, f.host)) {
                    return Err(perr(format!("host port {} is forwarded twice", f.host)));
                }
                used_host_ports.push((f.udp, f.host));
                ports.push(f);
            }
        }

        guests.push(Guest {
            name: name.clone(),
            source,
            count,
            memory,
            args,
            weight,
            cap,
            tenant,
            ring_slots,
            limits,
            ports,
            warm: g.warm.unwrap_or(false),
            from: None,
            line: line_of(text, entry_span.start),
        });
    }
    Ok(Manifest { guests, restrict })
}

/// The name of instance `i` of guest `name`: `name-i`.
pub fn instance_name(name: &str, i: u32) -> String {
    format!("{name}-{i}")
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses a size: `"65536"` (bytes), `"512 KiB"`, `"2 MiB"`, `"1 GiB"`,
/// `"1 TiB"`, or the short forms `K`, `M`, `G`, `T` (all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err("expected a number of bytes, optionally with a unit (KiB, MiB, GiB, TiB)".into());
    }
    let multiplier = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" | "mb" | "gb" | "tb" => {
            let u = unit.trim_start();
            return Err(format!("'{u}' is ambiguous; write {}iB", &u[..1].to_ascii_uppercase()));
        }
        _ => {
            return Err(format!("unknown unit '{}' (use KiB, MiB, GiB or TiB)", unit.trim_start()));
        }
    };
    number.parse::<u64>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(|| "is too large".into())
}

/// Formats a byte count with the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests;
