//! Manifest parsing: `xtask::manifest::parse` over arbitrary text, and the
//! size and port-forward parsers it uses.

use std::path::Path;

use abi::layout::{NAME_MAX, START_STRINGS_MAX};
use xtask::manifest::{
    self, COUNT_MAX, Context, DEFAULT_MANIFEST, MIB, MIN_GUEST_MEMORY, NAME_LEN_MAX, Source, format_size, instance_name, parse_forward,
    parse_size,
};

const MACHINE_MEMORY: u64 = 512 * MIB;

pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let apps = ["echo".to_string(), "hello".to_string(), "hostile".to_string()];
    let cx = Context {
        file: "fuzz.toml",
        // No image file exists here (absolute paths still resolve).
        base_dir: Path::new("/nonexistent/fuzz-manifest-dir"),
        apps: &apps,
        machine_memory: MACHINE_MEMORY,
    };
    let lines = text.matches('\n').count() + 1;
    match manifest::parse(&text, &cx) {
        Ok(m) => {
            assert!(!m.guests.is_empty(), "a manifest without guests was accepted");
            let mut first_tenant = None;
            let mut host_ports = Vec::new();
            for (i, g) in m.guests.iter().enumerate() {
                assert!(!g.name.is_empty() && g.name.len() <= NAME_LEN_MAX, "{g:?}");
                assert!(g.name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')), "{g:?}");
                assert!(m.guests[..i].iter().all(|o| o.name != g.name), "duplicate name accepted: {}", g.name);
                assert!((1..=COUNT_MAX).contains(&g.count), "{g:?}");
                let longest = instance_name(&g.name, g.count - 1);
                assert!(longest.len() <= NAME_MAX, "{g:?}");
                assert!((MIN_GUEST_MEMORY..=MACHINE_MEMORY).contains(&g.memory), "{g:?}");
                assert!(g.args.iter().all(|a| !a.contains('\0')), "{g:?}");
                let strings = longest.len() + 1 + g.args.iter().map(|a| a.len() + 1).sum::<usize>();
                assert!(strings as u64 <= START_STRINGS_MAX, "arguments do not fit in the start page: {g:?}");
                assert!((1..=10_000).contains(&g.weight), "{g:?}");
                assert!(g.cap.is_none_or(|c| (1..=100).contains(&c)), "{g:?}");
                assert!(abi::ring::valid_slots(g.ring_slots), "{g:?}");
                assert!((1..=lines).contains(&g.line), "{g:?}");
                match &g.source {
                    Source::App(a) => assert!(apps.contains(a), "{g:?}"),
                    Source::Image(p) => assert!(p.is_file(), "{g:?}"),
                }
                if let Some(t) = &g.tenant {
                    assert!(!t.is_empty() && t.len() <= 48, "{g:?}");
                    first_tenant.get_or_insert(t.clone());
                }
                if !g.ports.is_empty() {
                    assert_eq!(g.count, 1, "ports forwarded to several instances: {g:?}");
                    assert!(g.tenant.is_some() && g.tenant == first_tenant, "ports outside the first tenant: {g:?}");
                }
                for f in &g.ports {
                    assert!(f.host != 0 && f.guest != 0, "{g:?}");
                    assert!(!(f.udp && m.restrict), "a UDP forward on the restricted network: {g:?}");
                    assert!(!host_ports.contains(&(f.udp, f.host)), "host port forwarded twice: {g:?}");
                    host_ports.push((f.udp, f.host));
                }
            }
        }
        Err(e) => {
            assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "error on line {:?} of a {lines}-line file", e.line);
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
        }
    }

    // The size and forward parsers on the raw text too.
    if let Ok(n) = parse_size(&text) {
        // Sizes shown with a unit (as error messages show them) parse back.
        let shown = format_size(n);
        if shown.ends_with("iB") {
            assert_eq!(parse_size(&shown), Ok(n), "format_size({n}) = {shown:?} does not parse back");
        }
    }
    if let Some(f) = parse_forward(&text) {
        assert!(f.host != 0 && f.guest != 0);
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![DEFAULT_MANIFEST.as_bytes().to_vec()];
    seeds.extend(
        [
            "[[guest]]\nname = \"a\"\napp = \"hello\"\n",
            "[host]\nrestrict = false\n\n[[guest]]\nname = \"web\"\napp = \"echo\"\ncount = 1\nmemory = \"4 MiB\"\nargs = [\"--port\", \"80\"]\nweight = 200\ncap = 50\nnet = true\ntenant = \"acme\"\nring_slots = 32\nports = [\"8080:80\", \"5353:53/udp\"]\n\n[[guest]]\nname = \"w_2\"\napp = \"hostile\"\ncount = 65536\nmemory = \"64K\"\ntenant = \"other\"\nring_slots = 2\n",
            "[[guest]]\nname = \"x\"\nimage = \"/nonexistent.hermit\"\n",
            "[[guest]]\nname = \"c\"\napp = \"echo\"\ntenant = \"t\"\ncount = 2\n\n[host]\nrestrict = true\n",
            "[[guest]]\nname = \"x\"\napp = \"hello\"\nmemory = \"1 TiB\"\n",
            "2 MiB",
            "512 KiB",
            "8080:7/udp",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec()),
    );
    seeds
}
