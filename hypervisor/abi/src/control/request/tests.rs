use super::*;
use alloc::string::{String, ToString};
use alloc::vec;

#[test]
fn requests_parse_and_garbage_is_refused() {
    assert_eq!(parse("list"), Ok(Request::List));
    assert_eq!(parse(" stats "), Ok(Request::Stats));
    assert_eq!(parse("version"), Ok(Request::Version));
    assert_eq!(parse("stop echo-0"), Ok(Request::Stop("echo-0")));
    assert_eq!(parse("capture tenant:1 10 5"), Ok(Request::Capture { what: "tenant:1", count: 10, secs: 5 }));
    assert_eq!(parse("image-begin echo.hermit 1234"), Ok(Request::ImageBegin { name: "echo.hermit", len: 1234 }));
    assert_eq!(parse("image-data 00ff7f"), Ok(Request::ImageData(vec![0, 0xff, 0x7f])));
    assert_eq!(parse("image-data 0g"), Err(RequestError::ImageDataHex));
    assert_eq!(parse("image-data 123"), Err(RequestError::ImageDataHex));
    assert_eq!(parse("image-begin ../x 1"), Err(RequestError::ImageBeginUsage));
    assert_eq!(
        parse("start web-1 echo.hermit 1048576 2 serve 7"),
        Ok(Request::Start {
            name: "web-1",
            image: "echo.hermit",
            memory: 1 << 20,
            tenant: Tenant::Number(2),
            options: StartOptions::default(),
            args: vec!["serve".into(), "7".into()],
            env: vec![],
        })
    );
    assert_eq!(parse("start w x 4096 none").map(|r| matches!(r, Request::Start { tenant: Tenant::None, .. })), Ok(true));
    assert_eq!(parse("start W x 4096 0"), Err(RequestError::StartName));
    assert_eq!(parse("start w x lots 0"), Err(RequestError::StartMemory));
    assert_eq!(parse("start w x 1 a.b"), Err(RequestError::StartTenant));
    assert_eq!(parse("start w x 1 256"), Err(RequestError::StartTenant));
    assert_eq!(parse("start w x 1 1t").map(|r| matches!(r, Request::Start { tenant: Tenant::Named("1t"), .. })), Ok(true));
    assert_eq!(parse("start w x 1 acme").map(|r| matches!(r, Request::Start { tenant: Tenant::Named("acme"), .. })), Ok(true));
    assert_eq!(parse("image-remove sha256:ab"), Ok(Request::ImageRemove("sha256:ab")));
    assert_eq!(parse("tenants"), Ok(Request::Tenants));
    assert_eq!(parse("tenant-remove acme"), Ok(Request::TenantRemove("acme")));
    assert_eq!(parse("wait w"), Ok(Request::Wait("w")));
    assert_eq!(parse("events"), Ok(Request::Events));
    assert_eq!(parse("console w"), Ok(Request::Console("w")));
    assert_eq!(parse("wait"), Err(RequestError::NeedsName));
    assert_eq!(parse("wait a b"), Err(RequestError::TooManyWords));
    assert_eq!(parse("start w"), Err(RequestError::StartUsage));
    assert_eq!(parse("start w x 1 1 a b c d e f g h i j k l m n o p q"), Err(RequestError::StartArgs));
    assert!(parse("capture a 0 5").is_err() && parse("capture a 10").is_err() && parse("capture a x 1").is_err());
    assert_eq!(parse("stop"), Err(RequestError::StopNeedsName));
    assert_eq!(parse(""), Err(RequestError::Empty));
    assert_eq!(parse("rm -rf /"), Err(RequestError::Unknown));
    assert_eq!(parse("list x"), Err(RequestError::Unknown));
    assert_eq!(parse("stop a b"), Err(RequestError::TooManyWords));
    assert_eq!(parse("pause t"), Ok(Request::Pause("t")));
    assert_eq!(parse("resume t"), Ok(Request::Resume("t")));
    assert_eq!(parse("pause"), Err(RequestError::NeedsName));
    assert_eq!(parse("clone t c"), Ok(Request::Clone { template: "t", name: "c", count: None, args: None }));
    assert_eq!(parse("clone t c 10000"), Ok(Request::Clone { template: "t", name: "c", count: Some(10_000), args: None }));
    assert_eq!(
        parse("clone t c 2 -- a%20b --"),
        Ok(Request::Clone { template: "t", name: "c", count: Some(2), args: Some(vec!["a b".into(), "--".into()]) })
    );
    assert_eq!(parse("clone t c --"), Ok(Request::Clone { template: "t", name: "c", count: None, args: Some(vec![]) }));
    assert_eq!(parse("clone t c -- %zz"), Err(RequestError::StartEscape));
    for bad in ["clone", "clone t", "clone t c 0", "clone t c 65537", "clone t c.d", "clone t C", "clone t c x"] {
        assert_eq!(parse(bad), Err(RequestError::CloneUsage), "{bad}");
    }
    assert_eq!(parse("clone t c 1 2"), Err(RequestError::TooManyWords));
    assert_eq!(parse("snapshot e"), Ok(Request::Snapshot("e")));
    assert_eq!(parse("snapshot"), Err(RequestError::NeedsName));
    assert_eq!(parse("restore-begin e 100"), Ok(Request::RestoreBegin { name: "e", len: 100, tenant: None, args: None }));
    assert_eq!(
        parse("restore-begin e 100 acme"),
        Ok(Request::RestoreBegin { name: "e", len: 100, tenant: Some(Tenant::Named("acme")), args: None })
    );
    assert_eq!(
        parse("restore-begin e 1073741824 none"),
        Ok(Request::RestoreBegin { name: "e", len: 1 << 30, tenant: Some(Tenant::None), args: None })
    );
    assert_eq!(
        parse("restore-begin e 100 -- x y"),
        Ok(Request::RestoreBegin { name: "e", len: 100, tenant: None, args: Some(vec!["x".into(), "y".into()]) })
    );
    assert_eq!(parse("restore-begin e 100 1 2"), Err(RequestError::RestoreUsage));
    assert_eq!(parse("restore-end"), Ok(Request::RestoreEnd));
    for bad in [
        "restore-begin",
        "restore-begin e",
        "restore-begin e 0",
        "restore-begin e 1073741825",
        "restore-begin e.x 5",
        "restore-begin e 5 256",
    ] {
        assert_eq!(parse(bad), Err(RequestError::RestoreUsage), "{bad}");
    }
    for r in [
        Request::Snapshot("e"),
        Request::RestoreBegin { name: "e", len: 7, tenant: Some(Tenant::Number(3)), args: None },
        Request::RestoreBegin { name: "e", len: 7, tenant: None, args: Some(vec!["a b%".into(), "--".into()]) },
        Request::Clone { template: "t", name: "c", count: None, args: Some(vec!["ü".into()]) },
        Request::RestoreEnd,
    ] {
        assert_eq!(parse(&r.to_string()), Ok(r.clone()), "{r}");
    }
}

#[test]
fn numbers_are_range_checked() {
    // A tenant of 4 billion once made the hypervisor size a table by it.
    assert!(parse("start w x 4096 4000000000").is_err());
    assert!(parse("start w x 4096 256").is_err());
    assert!(matches!(parse("start w x 4096 255"), Ok(Request::Start { tenant: Tenant::Number(255), .. })));
    assert!(parse("start w x 0 1").is_err() && parse("start w x 18446744073709551616 1").is_err());
    assert!(
        parse("image-begin x 0").is_err()
            && parse("image-begin x 67108865").is_err()
            && parse("image-begin x 99999999999999999999999").is_err()
    );
    assert_eq!(parse("image-begin x 67108864"), Ok(Request::ImageBegin { name: "x", len: 67_108_864 }));
    assert_eq!(IMAGE_BYTES_MAX, 67_108_864, "the error sentence names it");
    assert!(parse("capture a 4294967296 1").is_err());
}

#[test]
fn start_options_come_before_a_double_dash() {
    let Ok(Request::Start { options, args, .. }) =
        parse("start w x 4096 0 weight=200 cap=50 ring_slots=4 console_bytes=0 watch -- serve weight=1")
    else {
        panic!()
    };
    let want =
        StartOptions { weight: Some(200), cap: Some(50), ring_slots: Some(4), limits: [None, None, None, Some(0), None], watch: true };
    assert_eq!((options, args), (want, vec![Cow::from("serve"), "weight=1".into()]));
    assert_eq!(options.apply_limits(crate::bundle::Limits::default()).console_bytes, 0);
    // Without `--`, every word is an argument (protocol 3).
    assert!(matches!(parse("start w x 4096 0 weight=200"), Ok(Request::Start { options: StartOptions { weight: None, .. }, .. })));
    for bad in ["weight=0", "weight=10001", "cap=101", "cap=0", "ring_slots=3", "ring_slots=4096", "colour=red", "nic_bytes=-1", "watch=1"]
    {
        assert_eq!(parse(&alloc::format!("start w x 4096 0 {bad} --")), Err(RequestError::StartOption), "{bad}");
    }
}

/// Arguments and variables with spaces, `%`, any other character but NUL
/// travel escaped (protocol 5); a malformed escape is refused.
#[test]
fn arguments_and_variables_travel_escaped() {
    let Ok(Request::Start { args, env, .. }) =
        parse("start w x 4096 0 env=GREETING=hello%20world env=EMPTY= escaped -- two%20words 100%25 %C3%BC plain")
    else {
        panic!()
    };
    assert_eq!(args, ["two words", "100%", "ü", "plain"]);
    assert_eq!(env, ["GREETING=hello world", "EMPTY="]);
    // Without `escaped`, arguments are as they are (protocol 4).
    assert!(matches!(parse("start w x 4096 0 -- 100%25"), Ok(Request::Start { args, .. }) if args == ["100%25"]));
    for bad in ["env=NOKEY --", "env==v --", "env=K=%zz --", "env=K=%0 --", "escaped -- %00", "escaped -- %C3", "env=K=%FF --"] {
        assert!(parse(&alloc::format!("start w x 4096 0 {bad}")).is_err(), "{bad}");
    }
    let many: String = (0..=ENV_MAX).map(|i| alloc::format!("env=K{i}=v ")).collect();
    assert_eq!(parse(&alloc::format!("start w x 4096 0 {many}--")), Err(RequestError::StartEnv));
}

/// A small deterministic generator (xorshift), so the property test needs
/// no crate and fails the same way every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A word of 1 to 64 bytes from `alphabet`.
    fn word(&mut self, alphabet: &[u8]) -> String {
        let n = 1 + self.below(64) as usize;
        (0..n).map(|_| alphabet[self.below(alphabet.len() as u64) as usize] as char).collect()
    }
}

const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
const ANY: &[u8] = b"abcXYZ019_-.:/\"\\{}";
/// Bytes an argument may hold that need escaping (ASCII: `word` makes a
/// char of each).
const ODD: &[u8] = b"ab %=\t\x7f\x01";

/// Builds a random valid request in `words` (the strings it borrows).
fn request<'a>(rng: &mut Rng, words: &'a [String]) -> Request<'a> {
    match rng.below(16) {
        0 => Request::List,
        1 => Request::Stats,
        2 => Request::Version,
        3 => Request::Stop(&words[0]),
        4 => {
            Request::Capture { what: &words[1], count: 1 + rng.below(u32::MAX as u64) as u32, secs: 1 + rng.below(u32::MAX as u64) as u32 }
        }
        5 => Request::Images,
        6 => Request::ImageBegin { name: &words[2], len: 1 + rng.below(IMAGE_BYTES_MAX as u64) as usize },
        7 => Request::ImageData((0..1 + rng.below(CHUNK_MAX as u64)).map(|_| rng.next() as u8).collect()),
        8 => Request::ImageEnd,
        9 => Request::Start {
            name: &words[2],
            image: &words[3],
            memory: 1 + rng.below(u64::MAX - 1),
            tenant: match rng.below(4) {
                0 => Tenant::None,
                1 => Tenant::Named("acme-1"),
                _ => Tenant::Number(rng.below(MAX_TENANTS as u64) as u32),
            },
            options: if rng.below(2) == 0 {
                StartOptions::default()
            } else {
                StartOptions {
                    weight: Some(1 + rng.below(10_000) as u32),
                    cap: rng.below(2).checked_mul(1 + rng.below(100)).filter(|&c| c > 0).map(|c| c as u32),
                    ring_slots: Some(2 << rng.below(7)),
                    limits: [Some(rng.next()), None, Some(0), None, Some(rng.next())],
                    watch: rng.below(2) == 0,
                }
            },
            args: words[4..4 + rng.below(ARGS_MAX as u64 + 1) as usize].iter().map(|w| Cow::Borrowed(w.as_str())).collect(),
            env: (0..rng.below(3)).map(|i| Cow::Owned(alloc::format!("K{i}={}", words[4 + i as usize]))).collect(),
        },
        10 => Request::ImageRemove(&words[1]),
        11 => Request::Tenants,
        12 => Request::TenantRemove(&words[1]),
        13 => Request::Wait(&words[1]),
        14 => Request::Events,
        _ => Request::Console(&words[1]),
    }
}

#[test]
fn every_request_prints_as_the_line_that_parses_back_to_it() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut words = vec![rng.word(ANY), rng.word(ANY), rng.word(NAME), rng.word(ANY)];
        // An argument may be `--` itself, or need escaping.
        words.push("--".into());
        words.extend((0..ARGS_MAX).map(|i| rng.word(if i % 3 == 0 { ODD } else { ANY })));
        let req = request(&mut rng, &words);
        let line = req.to_string();
        assert_eq!(parse(&line).as_ref(), Ok(&req), "{line}");
        // The line fits the channel's limit.
        assert!(line.len() <= super::super::LINE_MAX || matches!(req, Request::Start { .. }), "{}", line.len());
    }
}

#[test]
fn every_error_has_its_sentence() {
    assert_eq!(RequestError::TooLong.to_string(), "request too long");
    assert_eq!(RequestError::NotUtf8.to_string(), "request is not UTF-8");
    // The unknown-request sentence lists every request there is.
    let unknown = RequestError::Unknown.to_string();
    for line in [
        "list",
        "stats",
        "stop a",
        "capture a 1 1",
        "images",
        "image-begin a 1",
        "image-data 00",
        "image-end",
        "image-remove a",
        "start a b 1 1",
        "tenants",
        "tenant-remove a",
        "wait a",
        "events",
        "console a",
        "remove a",
        "version",
    ] {
        let w = line.split(' ').next().unwrap();
        assert!(unknown.contains(w) && parse(line).is_ok(), "{line}");
    }
}
