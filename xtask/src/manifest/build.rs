//! Manifests built in code (benchmarks, tests): [`Guest::app`] and its
//! setters give an entry with the documented defaults, and
//! [`Manifest::to_toml`] writes the text that [`super::parse`] reads back
//! into the same manifest, so a built manifest goes through the same
//! validation as a file (`ManifestSource::Built`).

use std::fmt::Write as _;
use std::path::Path;

use super::{DEFAULT_GUEST_MEMORY, DEFAULT_TENANT, DEFAULT_WEIGHT, Forward, Guest, Manifest, Source, format_size};

impl Manifest {
    /// The guests `guests` on a restricted uplink.
    pub fn new(guests: impl IntoIterator<Item = Guest>) -> Manifest {
        Manifest { guests: guests.into_iter().collect(), restrict: true }
    }

    /// The manifest as TOML; [`super::parse`] reads it back into `self`
    /// (with `line` numbers of that text, and image paths as given).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if !self.restrict {
            out += "[host]\nrestrict = false\n\n";
        }
        for g in &self.guests {
            out += "[[guest]]\n";
            let _ = writeln!(out, "name = {}", quote(&g.name));
            if let Some(from) = &g.from {
                let _ = writeln!(out, "from = {}\ncount = {}\n", quote(from), g.count);
                continue;
            }
            match &g.source {
                Source::App(app) => {
                    let _ = writeln!(out, "app = {}", quote(app));
                }
                Source::Image(path) => {
                    let _ = writeln!(out, "image = {}", quote(&path.display().to_string()));
                }
            }
            let _ = writeln!(out, "count = {}", g.count);
            let _ = writeln!(out, "memory = {}", quote(&format_size(g.memory)));
            if !g.args.is_empty() {
                let args: Vec<String> = g.args.iter().map(|a| quote(a)).collect();
                let _ = writeln!(out, "args = [{}]", args.join(", "));
            }
            let _ = writeln!(out, "weight = {}", g.weight);
            if let Some(cap) = g.cap {
                let _ = writeln!(out, "cap = {cap}");
            }
            if let Some(t) = &g.tenant {
                let _ = writeln!(out, "tenant = {}", quote(t));
            }
            let _ = writeln!(out, "ring_slots = {}", g.ring_slots);
            let l = &g.limits;
            let _ = writeln!(
                out,
                "limits = {{ nic_packets = {}, nic_bytes = {}, nic_broadcasts = {}, console_bytes = {}, notifications = {} }}",
                l.nic_packets, l.nic_bytes, l.nic_broadcasts, l.console_bytes, l.notifications
            );
            if g.warm {
                out += "warm = true\n";
            }
            if !g.ports.is_empty() {
                let ports: Vec<String> =
                    g.ports.iter().map(|f| quote(&format!("{}:{}{}", f.host, f.guest, if f.udp { "/udp" } else { "" }))).collect();
                let _ = writeln!(out, "ports = [{}]", ports.join(", "));
            }
            out += "\n";
        }
        out
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Guest {
    /// One instance of app `app` (a directory under `apps/`) named `name`,
    /// every other setting its default.
    pub fn app(name: &str, app: &str) -> Guest {
        Guest::with_source(name, Source::App(app.to_string()))
    }

    /// One instance of the Hermit image at `path`.
    pub fn image(name: &str, path: &Path) -> Guest {
        Guest::with_source(name, Source::Image(path.to_path_buf()))
    }

    fn with_source(name: &str, source: Source) -> Guest {
        Guest {
            name: name.to_string(),
            source,
            count: 1,
            memory: DEFAULT_GUEST_MEMORY,
            args: Vec::new(),
            weight: DEFAULT_WEIGHT,
            cap: None,
            tenant: None,
            ring_slots: abi::ring::SLOTS_DEFAULT,
            limits: abi::bundle::Limits::default(),
            ports: Vec::new(),
            warm: false,
            from: None,
            line: 0,
        }
    }

    /// `count` clones of `template`'s instance 0, named `name-0`, ... (its
    /// other settings are the template's).
    pub fn clones(name: &str, template: &Guest, count: u32) -> Guest {
        Guest {
            name: name.to_string(),
            count,
            ports: Vec::new(),
            warm: false,
            from: Some(template.name.clone()),
            line: 0,
            ..template.clone()
        }
    }

    /// Instance 0 boots and pauses when it first blocks; the others are its
    /// clones (`warm = true`).
    pub fn warm(self) -> Guest {
        Guest { warm: true, ..self }
    }

    /// `count` instances.
    pub fn count(self, count: u32) -> Guest {
        Guest { count, ..self }
    }

    /// A memory limit of `bytes` per instance.
    pub fn memory(self, bytes: u64) -> Guest {
        Guest { memory: bytes, ..self }
    }

    /// Its application arguments.
    pub fn args<S: ToString>(self, args: impl IntoIterator<Item = S>) -> Guest {
        Guest { args: args.into_iter().map(|a| a.to_string()).collect(), ..self }
    }

    /// A vNIC in tenant `tenant`.
    pub fn tenant(self, tenant: &str) -> Guest {
        Guest { tenant: Some(tenant.to_string()), ..self }
    }

    /// A vNIC in the default tenant (`net = true`).
    pub fn net(self) -> Guest {
        self.tenant(DEFAULT_TENANT)
    }

    /// `slots` frames per vNIC ring.
    pub fn ring_slots(self, slots: u32) -> Guest {
        Guest { ring_slots: slots, ..self }
    }

    /// Its rate limits (per second; 0: none).
    pub fn limits(self, limits: abi::bundle::Limits) -> Guest {
        Guest { limits, ..self }
    }

    /// Host TCP port `host` on 127.0.0.1 forwarded to its port `guest`
    /// (a vNIC in the default tenant if it has none yet).
    pub fn port(self, host: u16, guest: u16) -> Guest {
        self.forward(Forward { udp: false, host, guest })
    }

    /// Host UDP port `host` forwarded to its port `guest` (needs an
    /// unrestricted uplink: [`Manifest::restrict`] false).
    pub fn udp_port(self, host: u16, guest: u16) -> Guest {
        self.forward(Forward { udp: true, host, guest })
    }

    fn forward(mut self, f: Forward) -> Guest {
        self.ports.push(f);
        if self.tenant.is_none() { self.net() } else { self }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Context, MIB, parse};
    use super::*;

    fn read_back(m: &Manifest) -> Manifest {
        let apps = ["echo".to_string(), "http".to_string()];
        let cx = Context { file: "built", base_dir: Path::new("."), apps: &apps, machine_memory: 512 * MIB };
        let mut back = parse(&m.to_toml(), &cx).unwrap_or_else(|e| panic!("{e}\n{}", m.to_toml()));
        for g in &mut back.guests {
            g.line = 0;
        }
        back
    }

    #[test]
    fn a_built_manifest_reads_back_as_itself() {
        let m = Manifest::new([
            Guest::app("http", "http").memory(34 * MIB).tenant("bench").ring_slots(32).args(["80", "1024"]).port(18080, 80),
            Guest::app("e", "echo").count(200).memory(160 * 1024).ring_slots(4).net(),
            Guest::app("s", "echo").tenant("bench").ring_slots(128).limits(abi::bundle::Limits {
                nic_packets: 0,
                nic_bytes: 0,
                notifications: 0,
                ..Default::default()
            }),
            Guest::app("q", "echo").args(["say \"hi\"", "back\\slash", ""]),
        ]);
        assert_eq!(read_back(&m), m);
        let mut open = m.clone();
        open.restrict = false;
        open.guests[0].cap = Some(25);
        open.guests[0].weight = 7;
        open.guests[0].limits.console_bytes = 1234;
        open.guests[0].ports.push(Forward { udp: true, host: 5353, guest: 53 });
        assert_eq!(read_back(&open), open);
    }

    #[test]
    fn the_defaults_are_the_manifests() {
        let g = Guest::app("h", "echo");
        let apps = ["echo".to_string()];
        let cx = Context { file: "m", base_dir: Path::new("."), apps: &apps, machine_memory: 512 * MIB };
        let mut parsed = parse("[[guest]]\nname = \"h\"\napp = \"echo\"\n", &cx).unwrap().guests.remove(0);
        parsed.line = 0;
        assert_eq!(parsed, g);
        // A port gives a vNIC in the default tenant, as in a file.
        assert_eq!(Guest::app("h", "echo").port(8007, 7).tenant.as_deref(), Some(DEFAULT_TENANT));
    }
}
