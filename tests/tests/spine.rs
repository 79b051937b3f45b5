//! The spine, end to end: the hypervisor boots under QEMU, runs guests in
//! ring 3, and stops every hostile guest and rejects every malformed image
//! while the well-behaved guests of the same manifest run to completion.

use integration_tests::{Guest, MIB, Manifest, RunOutput, boot, temp_file, try_boot};
use std::io::Read as _;

/// Asserts that the console has a line equal to `line`.
#[track_caller]
fn has_line(out: &RunOutput, line: &str) {
    assert!(out.console.lines().any(|l| l == line), "no line {line:?} in the console:\n{}", out.console);
}

/// Asserts that the console has a line starting with `prefix` and
/// containing `part`; returns it.
#[track_caller]
fn line_with<'a>(out: &'a RunOutput, prefix: &str, part: &str) -> &'a str {
    out.console
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(part))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} containing {part:?} in the console:\n{}", out.console))
}

/// The final summary's counts, after checking that every frame the guests
/// and images took was given back.
#[track_caller]
fn summary(out: &RunOutput) -> String {
    let boot_line = line_with(out, "[hv] ", " KiB free for guests");
    let free_at_boot = boot_line.split(", ").find(|p| p.contains(" KiB free for guests")).unwrap().split(' ').next().unwrap();
    let last = line_with(out, "[hv] no guests left: ", " KiB free");
    let counts = last.trim_start_matches("[hv] no guests left: ").split_once("; ").unwrap().0;
    let free = integration_tests::free_at_end_kib(&out.console);
    assert_eq!(free, free_at_boot.parse().ok(), "memory was not all returned: {last}");
    counts.to_string()
}

#[test]
fn three_hello_guests_print_their_own_names_and_exit_0() {
    let out = boot(
        r#"
        [[guest]]
        name = "hello"
        app = "hello"
        count = 3
        memory = "1 MiB"
        args = ["a", "b c"]
        "#,
        120,
    );
    assert!(out.success(), "QEMU did not end with the hypervisor's success status: {:?}\n{}", out.status, out.console);
    for i in 0..3 {
        has_line(&out, &format!("hello-{i}| Hello from hello-{i}! args: [\"a\", \"b c\"]"));
        has_line(&out, &format!("[hv] guest hello-{i} exited with code 0"));
    }
    assert_eq!(summary(&out), "3 exited, 0 stopped, 0 not started");
    // The tests force the speculation mitigations on (TCG's CPU needs
    // none), so every boot of the suite runs guests on isolated page tables
    // and through VERW.
    assert!(
        out.console.lines().any(|l| l.starts_with("[hv] speculation: ")
            && l.ends_with("page-table isolation: yes (forced); buffers cleared on every guest entry: yes (forced)")),
        "{}",
        out.console
    );
}

/// Malformed images: file name, bytes, and the start of the rejection reason.
fn bad_images() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let hello = std::fs::read(&xtask::build_apps(&["hello"]).expect("build hello")[0]).expect("read hello image");
    let elf = std::fs::read(xtask::workspace_root().join("target/guest/x86_64-unknown-linux-gnu/release/hello")).unwrap();

    // A tar with the kernel but no hermit.toml.
    let mut no_config = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(elf.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    no_config.append_data(&mut h, "hello", &elf[..]).unwrap();
    let no_config = no_config.into_inner().unwrap();

    // hello's ELF with its first segment moved into the hypervisor's half.
    let mut high = elf.clone();
    let phoff = u64::from_le_bytes(high[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(high[56..58].try_into().unwrap()) as usize;
    let load = (0..phnum).map(|i| phoff + i * 56).find(|&p| high[p..p + 4] == 1u32.to_le_bytes()).unwrap();
    high[load + 16..load + 24].copy_from_slice(&0xffff_8000_0000_0000u64.to_le_bytes());
    let high = xtask::pack::hermit_image("hello", &high, &[]).unwrap();

    // A gzip bomb: 60 MiB of zeros in a tar, about 60 KB compressed (it
    // once aborted the hypervisor with a failed 30 MiB allocation; the
    // hypervisor's heap is 32 MiB on this 512 MiB machine).
    let bomb = {
        use std::io::Write as _;
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(60 << 20);
        h.set_mode(0o755);
        h.set_cksum();
        t.append_data(&mut h, "hello", std::io::repeat(0).take(60 << 20)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&t.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    };
    assert!(bomb.len() < 128 << 10, "the bomb is {} bytes", bomb.len());

    vec![
        ("bomb.hermit", bomb, "the hypervisor has no room to unpack it (needs "),
        ("random.hermit", (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), "not a tar archive"),
        ("truncated.hermit", hello[..hello.len() / 2].to_vec(), "gzip data is corrupt or truncated"),
        ("noconfig.hermit", no_config, "hermit.toml is missing"),
        // The end depends on hello's size; the start and the reason do not.
        ("kernelhalf.hermit", high, "segment 1 [0xffff800000000000, 0xffff80000000"),
    ]
}

#[test]
fn bad_images_are_rejected_while_hello_guests_finish() {
    // The attack guests run in tests/tests/hostile.rs, beside victims.
    let mut guests = vec![Guest::app("hello", "hello").count(2).memory(MIB)];
    let images = bad_images();
    for (i, (name, bytes, _)) in images.iter().enumerate() {
        guests.push(Guest::image(&format!("bad{i}"), &temp_file(name, bytes)));
    }
    guests.push(Guest::app("last", "hello").args(["still", "here"]));
    let manifest = Manifest::new(guests);

    let out = boot(&manifest, 240);
    assert!(out.success(), "the hypervisor itself failed: {:?}\n{}", out.status, out.console);
    for (i, (name, _, reason)) in images.iter().enumerate() {
        line_with(&out, "[hv] image ", &format!("{name} rejected: {reason}"));
        has_line(&out, &format!("[hv] guest bad{i}-0 not started: its image was rejected"));
    }
    for g in ["hello-0", "hello-1"] {
        has_line(&out, &format!("{g}| Hello from {g}! args: []"));
        has_line(&out, &format!("[hv] guest {g} exited with code 0"));
    }
    has_line(&out, "last-0| Hello from last-0! args: [\"still\", \"here\"]");
    has_line(&out, "[hv] guest last-0 exited with code 0");
    assert_eq!(summary(&out), format!("3 exited, 0 stopped, {} not started", images.len()));
}

#[test]
fn a_panicking_guest_reports_its_message_and_exits_101() {
    let out = boot("[[guest]]\nname = \"p\"\napp = \"hostile\"\nargs = [\"panic\"]\n", 120);
    assert!(out.success(), "{}", out.console);
    line_with(&out, "p-0| panicked at ", "hostile guest panics on purpose");
    has_line(&out, "[hv] guest p-0 exited with code 101");
    // Its backtrace, symbolized by xtask with the guest's ELF: the frame
    // that panicked is there with its file and line.
    line_with(&out, "p-0| backtrace: 0x", "");
    line_with(&out, "    #", "hostile::main at ");
    line_with(&out, "    #", "core::panicking::panic_fmt");
}

#[test]
fn a_stopped_guest_gets_a_crash_report_with_registers_and_a_symbolized_backtrace() {
    let out = boot("[[guest]]\nname = \"f\"\napp = \"hostile\"\nargs = [\"pagefault\"]\n", 120);
    assert!(out.success(), "{}", out.console);
    line_with(&out, "[hv] guest f-0 stopped: ", "page fault: write to unmapped address 0x7000dead0000");
    line_with(&out, "[hv] guest f-0 registers: rip=0x", "cr2=0x7000dead0000");
    let trace = line_with(&out, "[hv] guest f-0 backtrace: 0x", "");
    let first = out.console.lines().skip_while(|l| *l != trace).nth(1).unwrap_or("");
    assert!(
        first.starts_with("    #0 0x") && first.contains("hostile::main at ") && first.contains("apps/hostile/src/main.rs:"),
        "{first}"
    );
    line_with(&out, "    #", "libos::rt::start at ");
}

#[test]
fn a_guest_that_outgrows_its_memory_is_stopped_and_others_run() {
    let out = boot(
        // hello itself now fits in 64 KiB (52 KiB); this one keeps allocating.
        "[[guest]]\nname = \"tiny\"\napp = \"hostile\"\nmemory = \"64 KiB\"\nargs = [\"oom\"]\n\
         [[guest]]\nname = \"ok\"\napp = \"hello\"\n",
        120,
    );
    assert!(out.success(), "{}", out.console);
    line_with(&out, "[hv] guest tiny-0 stopped: ", "out of memory: touched 0x");
    has_line(&out, "[hv] guest ok-0 exited with code 0");
}

#[test]
fn bad_manifests_are_refused_before_qemu_starts_naming_the_line() {
    let cases = [
        ("[[guest]]\nname = \"a\"\napp = \"hello\"\ncolour = \"red\"\n", "<manifest>:4: unknown field `colour`"),
        ("[[guest]]\nname = \"a\"\napp = \"nope\"\n", "<manifest>:3: app 'nope' does not exist"),
        ("[[guest]]\nname = \"a\"\napp = \"hello\"\nmemory = \"3 TiB\"\n", "<manifest>:4: memory \"3 TiB\" is more than"),
    ];
    for (toml, expected) in cases {
        let err = match try_boot(toml, 30) {
            Ok(out) => panic!("manifest was accepted; console:\n{}", out.console),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected), "error {err:?} does not contain {expected:?}");
    }
}

/// CPUs past those the hypervisor prepared for halt in the start-up
/// trampoline before they read anything by their index (a 17th once loaded
/// a stack from past the end of the table), and the rest run the guests.
/// The hypervisor is told to drive 16 (`maxcpus=16` on its command line:
/// a QEMU machine cannot have more CPUs than the 256 it prepares for); all
/// 18 are started and the last two park, on either chipset.
#[test]
fn cpus_beyond_sixteen_are_parked_and_the_others_run_guests() {
    for machine in [xtask::Chipset::Pc, xtask::Chipset::Q35] {
        let cfg = xtask::RunConfig {
            manifest: xtask::ManifestSource::Text {
                text: "[[guest]]\nname = \"hello\"\napp = \"hello\"\ncount = 4\n".into(),
                base_dir: integration_tests::workspace_root().to_path_buf(),
            },
            exit_when_idle: true,
            smp: 18,
            machine,
            ..xtask::RunConfig::default()
        };
        let mut prepared = xtask::prepare(&cfg).unwrap();
        prepared.qemu_args.extend(["-append".to_string(), "maxcpus=16".to_string()]);
        let out = xtask::run_captured(&prepared, std::time::Duration::from_secs(240)).unwrap();
        assert!(out.success(), "{machine:?}: {}", summary(&out));
        has_line(&out, "[hv] 18 CPUs found; the hypervisor drives 16, the other 2 stay parked");
        for i in 0..4 {
            has_line(&out, &format!("[hv] guest hello-{i} exited with code 0"));
        }
    }
}
