//! Packing: an app's ELF into a Hermit image, and a manifest plus its images
//! into the boot bundle the hypervisor reads (`abi::bundle`).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::manifest::{Manifest, Source};

/// The `hermit.toml` of an image whose kernel ELF is the file `app`, with
/// `app_args` (the guest's arguments when its manifest entry or `ctl start`
/// gives none, and an OCI image's `Cmd`).
pub fn hermit_toml(app: &str, app_args: &[String]) -> String {
    let quoted: Vec<String> = app_args.iter().map(|a| toml::Value::String(a.clone()).to_string()).collect();
    format!("version = \"1\"\nkernel = \"{app}\"\n\n[input]\nkernel_args = []\napp_args = [{}]\n", quoted.join(", "))
}

/// Packs a Hermit image (hermit-entry 0.10): a gzip-compressed tar holding
/// `hermit.toml` (see [`hermit_toml`]) and the ELF as a file named `app`. The
/// output depends only on the inputs (no timestamps, owners or modes from
/// the host).
pub fn hermit_image(app: &str, elf: &[u8], app_args: &[String]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::best()));
    for (name, data, mode) in [("hermit.toml", hermit_toml(app, app_args).as_bytes(), 0o644), (app, elf, 0o755)] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)?;
    }
    tar.into_inner()?.finish()
}

/// Packs `manifest` into a bundle. `app_images` maps each app the manifest
/// names to its built Hermit image. Guests that use the same image file share
/// one image in the bundle, named by the file name (e.g. `hello.hermit`).
pub fn bundle(manifest: &Manifest, app_images: &HashMap<String, PathBuf>, flags: u32) -> Result<Vec<u8>> {
    let mut writer = abi::bundle::Writer::new(flags);
    let mut index: HashMap<PathBuf, u32> = HashMap::new();
    let mut tenants: Vec<String> = Vec::new();
    for guest in &manifest.guests {
        let path: &Path = match &guest.source {
            Source::App(app) => app_images.get(app).ok_or_else(|| anyhow!("app '{app}' was not built"))?,
            Source::Image(path) => path,
        };
        let key = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let image = match index.get(&key) {
            Some(&i) => i,
            None => {
                let data = fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
                let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                let i = writer.image(&name, &data);
                index.insert(key, i);
                i
            }
        };
        // Tenants are numbered in order of first appearance.
        let tenant = match &guest.tenant {
            None => abi::bundle::TENANT_NONE,
            Some(t) => match tenants.iter().position(|x| x == t) {
                Some(i) => i as u32,
                None => {
                    tenants.push(t.clone());
                    tenants.len() as u32 - 1
                }
            },
        };
        let settings = abi::bundle::Settings {
            memory: guest.memory,
            weight: guest.weight,
            cap: guest.cap.unwrap_or(0),
            tenant,
            ring_slots: guest.ring_slots,
            limits: guest.limits,
        };
        let start = match (&guest.from, guest.warm) {
            (Some(t), _) => abi::bundle::Start::From(
                manifest
                    .guests
                    .iter()
                    .position(|g| g.name == *t)
                    .ok_or_else(|| anyhow!("guest '{}' clones '{t}', which is not in the manifest", guest.name))? as u32,
            ),
            (None, true) => abi::bundle::Start::Warm,
            (None, false) => abi::bundle::Start::Boot,
        };
        writer.guest(&guest.name, image, guest.count, &settings, &guest.args, start);
    }
    // The hypervisor keeps the names, so that `ctl start --tenant NAME`
    // reaches a manifest's tenant.
    for t in &tenants {
        writer.tenant(t);
    }
    Ok(writer.finish())
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader
/// never sees a half-written file.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Guest;
    use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE};
    use std::io::Read;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-pack-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn guest(name: &str, source: Source, count: u32, memory: u64, args: &[&str]) -> Guest {
        Guest {
            name: name.into(),
            source,
            count,
            memory,
            args: args.iter().map(|a| a.to_string()).collect(),
            weight: crate::manifest::DEFAULT_WEIGHT,
            cap: None,
            tenant: None,
            ring_slots: abi::ring::SLOTS_DEFAULT,
            limits: abi::bundle::Limits::default(),
            ports: Vec::new(),
            warm: false,
            from: None,
            line: 1,
        }
    }

    #[test]
    fn hermit_image_parses_with_hermit_entry() {
        let elf = b"\x7fELF pretend".repeat(100);
        let gz = hermit_image("hello", &elf, &[]).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b", "not gzip");
        assert_eq!(gz, hermit_image("hello", &elf, &[]).unwrap(), "not deterministic");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
        let parsed = hermit_entry::config::parse_tar(&tar).unwrap();
        assert_eq!(parsed.raw_kernel, &elf[..]);
        let hermit_entry::config::Config::V1 { kernel, input, .. } = parsed.config;
        assert_eq!(kernel, "hello");
        assert!(input.app_args.is_empty() && input.kernel_args.is_empty());
    }

    #[test]
    fn hermit_toml_carries_app_args_quoted() {
        let args: Vec<String> = ["serve", "7", "a \"quoted\" \\ one", "tab\there", "\u{7f}"].map(String::from).into();
        let gz = hermit_image("echo", b"\x7fELF pretend", &args).unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
        let hermit_entry::config::Config::V1 { input, .. } = hermit_entry::config::parse_tar(&tar).unwrap().config;
        assert_eq!(input.app_args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), args);
    }

    #[test]
    fn bundle_decodes_to_the_manifest() {
        let dir = temp_dir("bundle");
        let hello = dir.join("hello.hermit");
        let other = dir.join("other.hermit");
        fs::write(&hello, b"hello image").unwrap();
        fs::write(&other, b"other image").unwrap();
        let manifest = Manifest {
            guests: vec![
                guest("a", Source::App("hello".into()), 3, 1 << 20, &["x", "y z"]),
                guest("b", Source::Image(other.clone()), 1, 64 << 10, &[]),
                // The same file as app "hello", reached by another path: shared.
                guest("c", Source::Image(dir.join(".").join("hello.hermit")), 2, 2 << 20, &["c"]),
            ],
            restrict: true,
        };
        let apps = HashMap::from([("hello".to_string(), hello)]);
        let buf = bundle(&manifest, &apps, FLAG_EXIT_WHEN_IDLE).unwrap();

        let b = Bundle::parse(&buf).unwrap();
        assert_eq!(b.flags, FLAG_EXIT_WHEN_IDLE);
        let images: Vec<_> = b.images().map(|i| (i.name, i.data)).collect();
        assert_eq!(images, [("hello.hermit", &b"hello image"[..]), ("other.hermit", &b"other image"[..])]);
        let guests: Vec<_> = b.guests().map(|g| (g.name, g.image, g.count, g.settings.memory, g.args().collect::<Vec<_>>())).collect();
        assert_eq!(guests, [("a", 0, 3, 1 << 20, vec!["x", "y z"]), ("b", 1, 1, 64 << 10, vec![]), ("c", 0, 2, 2 << 20, vec!["c"]),]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bundle_reports_missing_files() {
        let manifest =
            Manifest { guests: vec![guest("a", Source::Image("/nonexistent/x.hermit".into()), 1, 1 << 20, &[])], restrict: true };
        let e = bundle(&manifest, &HashMap::new(), 0).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/x.hermit"), "{e:#}");
        let manifest = Manifest { guests: vec![guest("a", Source::App("nope".into()), 1, 1 << 20, &[])], restrict: true };
        assert!(bundle(&manifest, &HashMap::new(), 0).is_err());
    }
}
