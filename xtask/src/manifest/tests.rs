use super::*;

fn apps() -> Vec<String> {
    vec!["echo".into(), "hello".into(), "hostile".into()]
}

fn check(text: &str) -> Result<Manifest, Error> {
    let apps = apps();
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cx = Context { file: "manifest.toml", base_dir: base, apps: &apps, machine_memory: 512 * MIB };
    parse(text, &cx)
}

/// Asserts that `text` fails on `line` with a message containing `needle`.
fn fails(text: &str, line: Option<usize>, needle: &str) {
    let e = check(text).expect_err("manifest should not parse");
    assert_eq!(e.line, line, "wrong line in: {e}");
    assert!(e.message.contains(needle), "'{needle}' not in: {e}");
    assert!(e.to_string().starts_with("manifest.toml:"), "{e}");
}

#[test]
fn default_manifest_parses() {
    let m = check(DEFAULT_MANIFEST).unwrap();
    assert_eq!(m.guests.len(), 2);
    assert_eq!(m.guests[1].name, "echo");
    assert_eq!(m.guests[1].ports[0], Forward { udp: false, host: 8007, guest: 7 });
    assert_eq!(
        m.guests[..1],
        [Guest {
            name: "hello".into(),
            source: Source::App("hello".into()),
            count: 3,
            memory: MIB,
            args: ["from", "the", "default", "manifest"].map(String::from).to_vec(),
            weight: DEFAULT_WEIGHT,
            cap: None,
            tenant: None,
            ring_slots: abi::ring::SLOTS_DEFAULT,
            limits: abi::bundle::Limits::default(),
            ports: Vec::new(),
            warm: false,
            from: None,
            line: 2,
        }]
    );
}

#[test]
fn defaults_and_image() {
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\n\n[[guest]]\nname = \"b_2\"\nimage = \"Cargo.toml\"\n").unwrap();
    assert_eq!(m.guests.len(), 2);
    let a = &m.guests[0];
    assert_eq!((a.count, a.memory, a.args.len(), a.line), (1, DEFAULT_GUEST_MEMORY, 0, 1));
    assert_eq!(m.guests[1].source, Source::Image(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")));
    assert_eq!(m.guests[1].line, 5);
}

#[test]
fn unknown_key() {
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\ncolour = \"red\"\n").unwrap_err();
    assert_eq!(e.line, Some(4));
    assert!(e.to_string().starts_with("manifest.toml:4: unknown field `colour`, expected one of"), "{e}");
    fails("[[guests]]\nname = \"a\"\n", Some(1), "unknown field `guests`");
}

#[test]
fn syntax_and_type_errors() {
    fails("[[guest]]\nname = \"a\"\napp = hello\n", Some(3), "");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\ncount = \"3\"\n", Some(4), "");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nmemory = 65536\n", Some(4), "");
}

#[test]
fn missing_name() {
    fails("\n[[guest]]\napp = \"hello\"\n", Some(2), "missing field `name`");
}

#[test]
fn missing_app() {
    let e = check("[[guest]]\nname = \"a\"\napp = \"nope\"\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:3: app 'nope' does not exist (apps: echo, hello, hostile)");
}

#[test]
fn neither_or_both_app_and_image() {
    fails("[[guest]]\nname = \"a\"\n\n[[guest]]\nname = \"b\"\ncount = 2\n", Some(1), "needs app");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nimage = \"Cargo.toml\"\n", Some(4), "both app and image");
}

#[test]
fn image_not_found() {
    fails("[[guest]]\nname = \"a\"\nimage = \"nope.hermit\"\n", Some(3), "image 'nope.hermit' not found");
    // A directory is not an image file.
    fails("[[guest]]\nname = \"a\"\nimage = \"src\"\n", Some(3), "not found");
}

#[test]
fn weight_and_cap() {
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nweight = 200\ncap = 25\n").unwrap();
    assert_eq!((m.guests[0].weight, m.guests[0].cap), (200, Some(25)));
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\n").unwrap();
    assert_eq!((m.guests[0].weight, m.guests[0].cap), (DEFAULT_WEIGHT, None));
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\n\ncap = 0\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:5: cap 0 is not a percentage between 1 and 100");
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nweight = 0\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:4: weight 0 is not between 1 and 10000");
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nlimits = { nic_packets = 10, console_bytes = \"1 KiB\", nic_bytes = 0 }\n")
        .unwrap();
    let l = m.guests[0].limits;
    assert_eq!((l.nic_packets, l.console_bytes, l.nic_bytes), (10, 1024, 0));
    assert_eq!(l.notifications, abi::bundle::Limits::default().notifications);
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nlimits = { nic_packets = -1 }\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:4: limits.nic_packets -1 is negative");
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nlimits = { console_bytes = \"1 KB\" }\n").unwrap_err();
    assert!(e.to_string().starts_with("manifest.toml:4: limits.console_bytes \"1 KB\": "), "{e}");
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nlimits = { colour = 1 }\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nring_slots = 4\n").unwrap();
    assert_eq!(m.guests[0].ring_slots, 4);
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nring_slots = 2048\nmemory = \"16 MiB\"\n").unwrap();
    assert_eq!(m.guests[0].ring_slots, 2048);
    for bad in ["3", "1", "4096", "-2"] {
        let e = check(&format!("[[guest]]\nname = \"a\"\napp = \"hello\"\nring_slots = {bad}\n")).unwrap_err();
        assert_eq!(e.to_string(), format!("manifest.toml:4: ring_slots {bad} is not a power of two between 2 and 2048"));
    }
}

#[test]
fn net_and_tenants() {
    let m = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nnet = true\n[[guest]]\nname = \"b\"\napp = \"hello\"\ntenant = \"acme\"\n[[guest]]\nname = \"c\"\napp = \"hello\"\n").unwrap();
    let t: Vec<_> = m.guests.iter().map(|g| g.tenant.as_deref()).collect();
    assert_eq!(t, [Some(DEFAULT_TENANT), Some("acme"), None]);
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\nnet = false\ntenant = \"x\"\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:5: a tenant needs a vNIC, but net = false");
    // A tenant is a /16: 65,533 guests with a vNIC, and 256 tenants.
    check("[[guest]]\nname = \"a\"\napp = \"hello\"\nnet = true\ncount = 65533\n").unwrap();
    let e = check(
        "[[guest]]\nname = \"a\"\napp = \"hello\"\nnet = true\ncount = 65533\n[[guest]]\nname = \"b\"\napp = \"hello\"\nnet = true\n",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("manifest.toml:6: tenant 'default' has more than 65533 guests"), "{e}");
    let many: String = (0..257).map(|i| format!("[[guest]]\nname = \"g{i}\"\napp = \"hello\"\ntenant = \"t{i}\"\n")).collect();
    let e = check(&many).unwrap_err();
    assert!(e.to_string().ends_with("more than 256 tenants"), "{e}");
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\ntenant = \"a b\"\n").unwrap_err();
    assert!(e.to_string().starts_with("manifest.toml:4: tenant \"a b\" must be"), "{e}");
}

#[test]
fn port_forwards() {
    let e = check("[[guest]]\nname = \"e\"\napp = \"hello\"\nports = [\"8080:7\", \"5353:53/udp\"]\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "manifest.toml:4: port \"5353:53/udp\": a UDP forward needs [host] restrict = false (QEMU's restricted network drops the guests' UDP, answers included)"
    );
    let m = check("[host]\nrestrict = false\n[[guest]]\nname = \"e\"\napp = \"hello\"\nports = [\"8080:7\", \"5353:53/udp\"]\n").unwrap();
    assert!(!m.restrict);
    assert_eq!(m.guests[0].tenant.as_deref(), Some(DEFAULT_TENANT), "ports imply a vNIC");
    assert_eq!(m.guests[0].ports, [Forward { udp: false, host: 8080, guest: 7 }, Forward { udp: true, host: 5353, guest: 53 }]);
    let e = check("[[guest]]\nname = \"e\"\napp = \"hello\"\ncount = 2\nports = [\"8080:7\"]\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:5: ports can be forwarded to one instance only, and count is 2");
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\ntenant = \"x\"\n[[guest]]\nname = \"b\"\napp = \"hello\"\ntenant = \"y\"\nports = [\"80:80\"]\n").unwrap_err();
    assert!(e.to_string().starts_with("manifest.toml:9: ports reach only the first tenant's guests (tenant 'x')"), "{e}");
    let e = check("[[guest]]\nname = \"e\"\napp = \"hello\"\nports = [\"80\"]\n").unwrap_err();
    assert!(e.to_string().contains("is not HOST:GUEST"), "{e}");
    let e = check("[[guest]]\nname = \"e\"\napp = \"hello\"\nports = [\"80:1\", \"80:2\"]\n").unwrap_err();
    assert!(e.to_string().contains("host port 80 is forwarded twice"), "{e}");
}

#[test]
fn host_restrict() {
    let m = check("[[guest]]\nname = \"e\"\napp = \"hello\"\nnet = true\n").unwrap();
    assert!(m.restrict, "QEMU's network is restricted unless the manifest says otherwise");
    assert!(check("[host]\nrestrict = true\n[[guest]]\nname = \"e\"\napp = \"hello\"\n").unwrap().restrict);
    // The table may come before or after the guests.
    assert!(!check("[host]\nrestrict = false\n\n[[guest]]\nname = \"e\"\napp = \"hello\"\nnet = true\n").unwrap().restrict);
    assert!(!check("[[guest]]\nname = \"e\"\napp = \"hello\"\ntenant = \"x\"\n[host]\nrestrict = false\n").unwrap().restrict);
    assert!(check("[host]\n[[guest]]\nname = \"e\"\napp = \"hello\"\n").unwrap().restrict);
    fails("[host]\nrestrict = \"no\"\n[[guest]]\nname = \"e\"\napp = \"hello\"\n", Some(2), "");
    // `services` is gone: refused like any unknown key, with its line.
    let e = check("[[guest]]\nname = \"e\"\napp = \"hello\"\nnet = true\n\n[host]\nservices = [5432]\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:7: unknown field `services`, expected `restrict`");
    fails("[host]\nports = [80]\n[[guest]]\nname = \"e\"\napp = \"hello\"\n", Some(2), "unknown field `ports`");
}

#[test]
fn bad_memory() {
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\n\nmemory = \"3 TiB\"\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:5: memory \"3 TiB\" is more than the machine's 512 MiB");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nmemory = \"lots\"\n", Some(4), "is not a size");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nmemory = \"2 MB\"\n", Some(4), "ambiguous");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nmemory = \"32 KiB\"\n", Some(4), "less than the minimum 64 KiB");
}

#[test]
fn bad_count() {
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\ncount = 0\n", Some(4), "count 0");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\ncount = 65537\n", Some(4), "count 65537");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\ncount = -1\n", Some(4), "count -1");
    assert_eq!(check("[[guest]]\nname = \"a\"\napp = \"hello\"\ncount = 65536\n").unwrap().guests[0].count, 65536);
}

#[test]
fn bad_names() {
    fails("[[guest]]\nname = \"Hello\"\napp = \"hello\"\n", Some(2), "must be made of");
    fails("[[guest]]\nname = \"\"\napp = \"hello\"\n", Some(2), "must be made of");
    fails("[[guest]]\nname = \"a b\"\napp = \"hello\"\n", Some(2), "must be made of");
    let long = "x".repeat(NAME_LEN_MAX + 1);
    fails(&format!("[[guest]]\nname = \"{long}\"\napp = \"hello\"\n"), Some(2), "longer than 48");
    let max = "x".repeat(NAME_LEN_MAX);
    assert!(check(&format!("[[guest]]\nname = \"{max}\"\napp = \"hello\"\ncount = 65536\n")).is_ok());
}

#[test]
fn duplicate_names() {
    let e = check("[[guest]]\nname = \"a\"\napp = \"hello\"\n[[guest]]\nname = \"a\"\napp = \"hostile\"\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest.toml:5: duplicate guest name 'a' (first used on line 1)");
}

#[test]
fn empty_guest_list() {
    let e = check("# nothing\n").unwrap_err();
    assert_eq!(e.line, None);
    assert_eq!(e.to_string(), "manifest.toml: no guests: add a [[guest]] table");
}

#[test]
fn args_must_fit_the_start_page() {
    // Instance name "a-0" + NUL = 4 bytes; each argument takes its length + 1.
    let room = START_STRINGS_MAX as usize - 4;
    let fits = format!("[[guest]]\nname = \"a\"\napp = \"hello\"\nargs = [\"{}\"]\n", "x".repeat(room - 1));
    assert!(check(&fits).is_ok());
    let too_long = format!("[[guest]]\nname = \"a\"\napp = \"hello\"\nargs = [\"{}\"]\n", "x".repeat(room));
    fails(&too_long, Some(4), "start page");
    fails("[[guest]]\nname = \"a\"\napp = \"hello\"\nargs = [\"a\\u0000b\"]\n", Some(4), "NUL");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("512 KiB"), Ok(512 * KIB));
    assert_eq!(parse_size("2 MiB"), Ok(2 * MIB));
    assert_eq!(parse_size("2M"), Ok(2 * MIB));
    assert_eq!(parse_size("512m"), Ok(512 * MIB));
    assert_eq!(parse_size(" 1 GiB "), Ok(GIB));
    assert_eq!(parse_size("3 TiB"), Ok(3 * TIB));
    assert_eq!(parse_size("100 B"), Ok(100));
    assert!(parse_size("").is_err());
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("1.5 GiB").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("2 MB").unwrap_err().contains("write MiB"));
    assert!(parse_size("2 parsecs").unwrap_err().contains("unknown unit"));
    assert!(parse_size("99999999999999999999").is_err());
    assert!(parse_size("20000000 TiB").is_err());
}

#[test]
fn size_formatting() {
    assert_eq!(format_size(512 * MIB), "512 MiB");
    assert_eq!(format_size(MIB + 512 * KIB), "1536 KiB");
    assert_eq!(format_size(2 * GIB), "2 GiB");
    assert_eq!(format_size(100), "100 bytes");
    assert_eq!(format_size(0), "0 bytes");
}

#[test]
fn warm_entries_and_clones_of_an_earlier_entry() {
    let m = check(
        "[[guest]]\nname = \"e\"\napp = \"echo\"\ncount = 100\nmemory = \"160 KiB\"\ntenant = \"t\"\nwarm = true\n\n\
         [[guest]]\nname = \"c\"\nfrom = \"e\"\ncount = 5\n",
    )
    .unwrap();
    assert!(m.guests[0].warm && m.guests[0].from.is_none());
    let c = &m.guests[1];
    assert_eq!((c.from.as_deref(), c.count, c.memory, c.tenant.as_deref(), c.warm), (Some("e"), 5, 160 * 1024, Some("t"), false));
    // Written and read back the same (but for line numbers).
    let lineless = |m: Manifest| m.guests.into_iter().map(|g| Guest { line: 0, ..g }).collect::<Vec<_>>();
    assert_eq!(lineless(check(&m.to_toml()).unwrap()), lineless(m));
    // A clone entry gives only name, count and from; its template comes first and boots.
    let e = check("[[guest]]\nname = \"c\"\nfrom = \"e\"\n\n[[guest]]\nname = \"e\"\napp = \"echo\"\n").unwrap_err();
    assert!(e.to_string().contains("from = \"e\" names no guest entry before this one"), "{e}");
    let e = check("[[guest]]\nname = \"e\"\napp = \"echo\"\n\n[[guest]]\nname = \"c\"\nfrom = \"e\"\nmemory = \"1 MiB\"\n").unwrap_err();
    assert!(e.to_string().contains("give only name, count and from"), "{e}");
    let e = check(
        "[[guest]]\nname = \"e\"\napp = \"echo\"\n\n[[guest]]\nname = \"c\"\nfrom = \"e\"\n\n[[guest]]\nname = \"d\"\nfrom = \"c\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("'c' is itself made of clones"), "{e}");
}
