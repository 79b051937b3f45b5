//! Guests as OCI images (`cargo xtask pkg --oci`): a Hermit image packed
//! into an OCI image layout tarball that `ctr image import` (and `skopeo
//! copy oci-archive:...`) accept.
//!
//! The tarball holds `oci-layout`, `index.json` and three blobs under
//! `blobs/sha256/`: the manifest, the config and one tar+gzip layer with
//! the Hermit image at [`abi::oci::IMAGE_LAYER_PATH`]. The config's `Cmd`
//! is the image's `hermit.toml` `app_args`, its labels name the ABI and the
//! image path (the names are in [`abi::oci`], shared with the shim). The
//! output depends only on the Hermit image and the reference: no
//! timestamps, owners or host modes, and JSON written with sorted keys, so
//! the same app gives the same digests.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use abi::oci::{
    ANNOTATION_CONTAINERD_IMAGE_NAME, ARCHITECTURE, DEFAULT_REPOSITORY_PREFIX, DEFAULT_TAG, IMAGE_LAYER_PATH, IMAGE_PATH, LABEL_ABI,
    LABEL_IMAGE, OS,
};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::build::{App, build_app};
use crate::pack;

/// An OCI image layout tarball and what it holds.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// The tarball (plain tar).
    pub tarball: Vec<u8>,
    /// The reference `index.json` names it by, e.g. `localhost/hive/hello:latest`.
    pub reference: String,
    /// `sha256:...` of the manifest: the image's digest in a registry or
    /// containerd (`ctr images ls`).
    pub manifest_digest: String,
    /// `sha256:...` of the config blob.
    pub config_digest: String,
    /// The config's `Cmd`: the image's `app_args`.
    pub cmd: Vec<String>,
}

/// The reference a packaged `app` gets: `given` with `:latest` added when
/// it has no tag, or `localhost/hive/<app>:latest`. Refuses what no
/// registry or containerd would take (upper case in the name, spaces, a
/// digest instead of a tag).
pub fn reference(app: &str, given: Option<&str>) -> Result<String> {
    let Some(given) = given else {
        return Ok(format!("{DEFAULT_REPOSITORY_PREFIX}{app}:{DEFAULT_TAG}"));
    };
    let last_slash = given.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match given[last_slash..].rfind(':') {
        Some(i) => (&given[..last_slash + i], &given[last_slash + i + 1..]),
        None => (given, DEFAULT_TAG),
    };
    let name_ok = !name.is_empty()
        && !name.starts_with(['/', '.', '-', ':'])
        && !name.ends_with('/')
        && !name.contains("//")
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    ensure!(
        name_ok && tag_ok,
        "`{given}` is not an image reference NAME[:TAG] (NAME: lower-case letters, digits, `._-`, `/` between \
         components and a registry `host:port/` in front; TAG: letters, digits, `_.-`)"
    );
    Ok(format!("{name}:{tag}"))
}

/// The bytes of the ELF note that stamps a guest with this ABI
/// ([`abi::note::AbiNote::current`]), as the libos lays it out.
fn abi_note_bytes() -> Vec<u8> {
    let n = abi::note::AbiNote::current();
    [&n.namesz.to_le_bytes()[..], &n.descsz.to_le_bytes(), &n.ty.to_le_bytes(), &n.name, &n.desc].concat()
}

/// The `hermit.toml` of a Hermit image (gzip-compressed tar or tar): its
/// kernel's name and bytes and its `app_args`.
struct HermitContents {
    kernel: String,
    elf: Vec<u8>,
    app_args: Vec<String>,
}

fn read_hermit(image: &[u8]) -> Result<HermitContents> {
    let tar = if image.starts_with(b"\x1f\x8b") {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image).read_to_end(&mut tar).context("not a Hermit image: bad gzip")?;
        tar
    } else {
        image.to_vec()
    };
    let parsed = hermit_entry::config::parse_tar(&tar).map_err(|e| anyhow!("not a Hermit image: {e}"))?;
    let hermit_entry::config::Config::V1 { kernel, input, .. } = parsed.config;
    Ok(HermitContents {
        kernel: kernel.to_string(),
        elf: parsed.raw_kernel.to_vec(),
        app_args: input.app_args.iter().map(|a| a.to_string()).collect(),
    })
}

/// `hermit` with its `hermit.toml`'s `app_args` replaced by `args` (the
/// kernel keeps its name and bytes).
pub fn with_app_args(hermit: &[u8], args: &[String]) -> Result<Vec<u8>> {
    let contents = read_hermit(hermit)?;
    Ok(pack::hermit_image(&contents.kernel, &contents.elf, args)?)
}

/// `sha256:<hex>` of `data`.
fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A descriptor of `data` as a blob of `media_type`.
fn descriptor(media_type: MediaType, data: &[u8]) -> Result<Descriptor> {
    let hex = Sha256Digest::from_str(&format!("{:x}", Sha256::digest(data)))?;
    Ok(Descriptor::new(media_type, data.len() as u64, hex))
}

/// `value` as JSON with every object's keys sorted: oci-spec keeps labels
/// and annotations in `HashMap`s, whose order changes from run to run.
fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// A ustar header with owner root, mtime 0 and `mode`.
fn header(entry_type: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(entry_type);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The uncompressed layer: the directory of [`IMAGE_LAYER_PATH`] and the
/// image in it (mode 0644).
fn layer_tar(hermit: &[u8]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let dir = Path::new(IMAGE_LAYER_PATH).parent().map(|d| format!("{}/", d.display())).unwrap_or_default();
    if !dir.is_empty() {
        tar.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), &dir, io::empty())?;
    }
    tar.append_data(&mut header(tar::EntryType::Regular, hermit.len() as u64, 0o644), IMAGE_LAYER_PATH, hermit)?;
    tar.into_inner()
}

/// Packs the Hermit image `hermit` into an OCI image layout tarball named
/// `reference` (see [`reference`]). Refuses a file that is not a Hermit
/// image, or whose kernel does not carry this ABI's note: the config's
/// [`LABEL_ABI`] label says [`abi::ABI_VERSION`], and must be true.
pub fn image_layout(hermit: &[u8], reference: &str) -> Result<OciImage> {
    let contents = read_hermit(hermit)?;
    let note = abi_note_bytes();
    ensure!(
        contents.elf.windows(note.len()).any(|w| w == note),
        "the kernel `{}` has no note for guest ABI {}: it was not built with this tree's libos (the hypervisor \
         refuses it)",
        contents.kernel,
        abi::ABI_VERSION
    );

    let layer = layer_tar(hermit)?;
    let diff_id = digest(&layer);
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;

    let labels = HashMap::from([(LABEL_ABI.to_string(), abi::ABI_VERSION.to_string()), (LABEL_IMAGE.to_string(), IMAGE_PATH.to_string())]);
    let config = ImageConfigurationBuilder::default()
        // linux/amd64, though a guest is no Linux program: see abi::oci::OS.
        .os(Os::from(OS))
        .architecture(Arch::from(ARCHITECTURE))
        .config(ConfigBuilder::default().entrypoint(vec![IMAGE_PATH.to_string()]).cmd(contents.app_args.clone()).labels(labels).build()?)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![diff_id]).build()?)
        .build()?;
    let config = canonical_json(&config)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer_gz)?])
        .build()?;
    let manifest = canonical_json(&manifest)?;

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .size(manifest.len() as u64)
                .digest(Sha256Digest::from_str(&format!("{:x}", Sha256::digest(&manifest)))?)
                .platform(PlatformBuilder::default().os(Os::from(OS)).architecture(Arch::from(ARCHITECTURE)).build()?)
                // `ctr image import` names the image by containerd's
                // annotation; other tools read the OCI one.
                .annotations(HashMap::from([
                    (ANNOTATION_REF_NAME.to_string(), reference.to_string()),
                    (ANNOTATION_CONTAINERD_IMAGE_NAME.to_string(), reference.to_string()),
                ]))
                .build()?,
        ])
        .build()?;
    let index = canonical_json(&index)?;
    let layout = canonical_json(&OciLayoutBuilder::default().image_layout_version("1.0.0").build()?)?;

    let mut tar = tar::Builder::new(Vec::new());
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        tar.append_data(&mut header(tar::EntryType::Regular, data.len() as u64, 0o644), path, data)
    };
    file(&mut tar, "oci-layout", &layout)?;
    file(&mut tar, "index.json", &index)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), dir, io::empty())?;
    }
    for blob in [&config, &layer_gz, &manifest] {
        let hex = format!("{:x}", Sha256::digest(blob));
        file(&mut tar, &format!("blobs/sha256/{hex}"), blob)?;
    }
    Ok(OciImage {
        tarball: tar.into_inner()?,
        reference: reference.to_string(),
        manifest_digest: digest(&manifest),
        config_digest: digest(&config),
        cmd: contents.app_args,
    })
}

/// What [`pkg`] made.
#[derive(Clone, Debug)]
pub struct Packaged {
    /// The guest's name (the app, or the external crate's package name).
    pub name: String,
    /// The Hermit image `build-app` made (`target/guests/<name>.hermit`);
    /// without `args` it is also the one in the OCI image.
    pub hermit: PathBuf,
    /// The OCI image written, if one was asked for.
    pub oci: Option<OciImage>,
}

/// `cargo xtask pkg`: builds `app`, and with `oci` writes its OCI image
/// layout tarball there, named `reference` (default
/// `localhost/hive/<name>:latest`). `args`, when given, replace the image's
/// `app_args` (in the OCI image's `hermit.toml` and its config's `Cmd`).
pub fn pkg(app: &App, args: Option<&[String]>, oci: Option<&Path>, reference: Option<&str>) -> Result<Packaged> {
    if let Some(out) = oci.filter(|o| o.is_dir()) {
        bail!("{} is a directory; --oci takes the tarball's file name", out.display());
    }
    let (name, hermit) = build_app(app)?;
    let Some(out) = oci else {
        ensure!(args.is_none(), "arguments are written into the OCI image: give --oci FILE");
        return Ok(Packaged { name, hermit, oci: None });
    };
    let reference = self::reference(&name, reference)?;
    let mut image = fs::read(&hermit).with_context(|| format!("reading {}", hermit.display()))?;
    if let Some(args) = args {
        image = with_app_args(&image, args).with_context(|| format!("setting the arguments of {}", hermit.display()))?;
    }
    let packed = image_layout(&image, &reference).with_context(|| format!("packing {} as an OCI image", hermit.display()))?;
    pack::write_atomically(out, &packed.tarball)?;
    Ok(Packaged { name, hermit, oci: Some(packed) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, OciLayout};

    /// A pretend kernel that carries this ABI's note.
    fn elf() -> Vec<u8> {
        [&b"\x7fELF pretend kernel "[..], &abi_note_bytes(), &[0xaa; 300]].concat()
    }

    fn hermit(args: &[&str]) -> Vec<u8> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        pack::hermit_image("hello", &elf(), &args).unwrap()
    }

    /// The tarball's regular files by path, checking every header on the way.
    fn files(tarball: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut files = HashMap::new();
        let mut dirs = Vec::new();
        for entry in tar::Archive::new(tarball).entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0, 0, 0));
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if h.entry_type() == tar::EntryType::Directory {
                assert_eq!(h.mode().unwrap(), 0o755, "{path}");
                dirs.push(path);
                continue;
            }
            assert_eq!(h.entry_type(), tar::EntryType::Regular, "{path}");
            assert_eq!(h.mode().unwrap(), 0o644, "{path}");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert!(files.insert(path.clone(), data).is_none(), "{path} twice");
        }
        assert_eq!(dirs, ["blobs/", "blobs/sha256/"]);
        files
    }

    /// The blob `d` names, after checking its digest and size.
    fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, d: &Descriptor) -> &'a [u8] {
        let hex = d.as_digest_sha256().expect("a sha256 digest");
        let data = files.get(&format!("blobs/sha256/{hex}")).unwrap_or_else(|| panic!("no blob {hex}"));
        assert_eq!(format!("{:x}", Sha256::digest(data)), hex, "blob content does not match its name");
        assert_eq!(data.len() as u64, d.size(), "size of {hex}");
        data
    }

    struct ReadBack {
        index: ImageIndex,
        manifest: ImageManifest,
        config: ImageConfiguration,
        /// The layer's files: path -> (mode, data).
        layer: HashMap<String, (u32, Vec<u8>)>,
        diff_id: String,
    }

    fn read_back(tarball: &[u8]) -> ReadBack {
        let files = files(tarball);
        let layout = OciLayout::from_reader(&files["oci-layout"][..]).unwrap();
        assert_eq!(layout.image_layout_version(), "1.0.0");
        let index = ImageIndex::from_reader(&files["index.json"][..]).unwrap();
        assert_eq!(index.schema_version(), 2);
        assert_eq!(index.manifests().len(), 1);
        let manifest = ImageManifest::from_reader(blob(&files, &index.manifests()[0])).unwrap();
        assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
        let config = ImageConfiguration::from_reader(blob(&files, manifest.config())).unwrap();
        assert_eq!(manifest.layers().len(), 1);
        assert_eq!(manifest.layers()[0].media_type(), &MediaType::ImageLayerGzip);
        let mut layer_tar = Vec::new();
        flate2::read::GzDecoder::new(blob(&files, &manifest.layers()[0])).read_to_end(&mut layer_tar).unwrap();
        let mut layer = HashMap::new();
        for entry in tar::Archive::new(&layer_tar[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(entry.header().mtime().unwrap(), 0);
            layer.insert(entry.path().unwrap().to_string_lossy().into_owned(), (entry.header().mode().unwrap(), data));
        }
        // Every blob is named by some descriptor: nothing else in blobs/.
        assert_eq!(files.len(), 2 + 3);
        ReadBack { index, manifest, config, layer, diff_id: digest(&layer_tar) }
    }

    #[test]
    fn the_tarball_reads_back_with_digests_that_match() {
        let image = hermit(&["serve", "7"]);
        let packed = image_layout(&image, "localhost/hive/hello:v1").unwrap();
        let back = read_back(&packed.tarball);

        assert_eq!(packed.manifest_digest, back.index.manifests()[0].digest().to_string());
        assert_eq!(packed.config_digest, back.manifest.config().digest().to_string());
        let annotations = back.index.manifests()[0].annotations().clone().unwrap();
        assert_eq!(annotations[ANNOTATION_REF_NAME], "localhost/hive/hello:v1");
        assert_eq!(annotations[ANNOTATION_CONTAINERD_IMAGE_NAME], "localhost/hive/hello:v1");
        let platform = back.index.manifests()[0].platform().clone().unwrap();
        assert_eq!((platform.os(), platform.architecture()), (&Os::Linux, &Arch::Amd64));

        // The layer: the image, byte for byte, at the fixed path.
        assert_eq!(back.layer.len(), 2, "{:?}", back.layer.keys());
        assert_eq!(back.layer["hive/"].0, 0o755);
        assert_eq!(back.layer[IMAGE_LAYER_PATH], (0o644, image));
        assert_eq!(back.config.rootfs().diff_ids(), &vec![back.diff_id.clone()]);
        assert_eq!(back.config.rootfs().typ(), "layers");

        // The config.
        assert_eq!((back.config.os(), back.config.architecture()), (&Os::Linux, &Arch::Amd64));
        let c = back.config.config().clone().unwrap();
        assert_eq!(c.entrypoint(), &Some(vec!["/hive/image.hermit".to_string()]));
        assert_eq!(c.cmd(), &Some(vec!["serve".to_string(), "7".to_string()]));
        assert_eq!(packed.cmd, ["serve", "7"]);
        let labels = c.labels().clone().unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["org.hive.abi"], abi::ABI_VERSION.to_string());
        assert_eq!(labels["org.hive.image"], "/hive/image.hermit");
    }

    #[test]
    fn the_same_image_gives_the_same_bytes() {
        let a = image_layout(&hermit(&["a", "b"]), "x/y:z").unwrap();
        // Built again from scratch (new HashMaps, new random orders).
        let b = image_layout(&hermit(&["a", "b"]), "x/y:z").unwrap();
        assert!(a.tarball == b.tarball, "not deterministic");
        assert_eq!(a.manifest_digest, b.manifest_digest);
        // Keys are sorted wherever a HashMap held them.
        let files = files(&a.tarball);
        let index = String::from_utf8(files["index.json"].clone()).unwrap();
        let (containerd, oci) = (index.find("io.containerd.image.name").unwrap(), index.find("org.opencontainers").unwrap());
        assert!(containerd < oci, "{index}");
        let config = String::from_utf8(files[&format!("blobs/{}", a.config_digest.replace(':', "/"))].clone()).unwrap();
        assert!(config.find("org.hive.abi").unwrap() < config.find("org.hive.image").unwrap(), "{config}");

        // Another reference changes only the index; other args the config
        // and the layer (the image's hermit.toml).
        let c = image_layout(&hermit(&["a", "b"]), "x/y:other").unwrap();
        assert_eq!(c.manifest_digest, a.manifest_digest);
        assert_ne!(c.tarball, a.tarball);
        let d = image_layout(&hermit(&["a"]), "x/y:z").unwrap();
        assert_ne!(d.config_digest, a.config_digest);
    }

    #[test]
    fn app_args_are_rewritten_into_the_image() {
        let image = with_app_args(&hermit(&["old"]), &["new one".to_string(), "\"q\"".to_string()]).unwrap();
        let packed = image_layout(&image, "x/y:z").unwrap();
        assert_eq!(packed.cmd, ["new one", "\"q\""]);
        let contents = read_hermit(&image).unwrap();
        assert_eq!((contents.kernel.as_str(), contents.elf), ("hello", elf()));
        // The same as packing with those arguments in the first place.
        assert_eq!(image, hermit(&["new one", "\"q\""]));
    }

    #[test]
    fn refuses_what_is_not_a_guest_of_this_abi() {
        let e = image_layout(b"just some bytes", "x/y:z").unwrap_err();
        assert!(format!("{e:#}").contains("not a Hermit image"), "{e:#}");
        let e = image_layout(b"\x1f\x8b\x08\x00 truncated gzip", "x/y:z").unwrap_err();
        assert!(format!("{e:#}").contains("not a Hermit image"), "{e:#}");
        let other_abi = pack::hermit_image("old", b"\x7fELF without our note", &[]).unwrap();
        let e = image_layout(&other_abi, "x/y:z").unwrap_err();
        assert!(format!("{e:#}").contains(&format!("no note for guest ABI {}", abi::ABI_VERSION)), "{e:#}");
    }

    #[test]
    fn references() {
        assert_eq!(reference("hello", None).unwrap(), "localhost/hive/hello:latest");
        assert_eq!(reference("x", Some("registry.example:5000/team/web:1.2")).unwrap(), "registry.example:5000/team/web:1.2");
        assert_eq!(reference("x", Some("localhost:5000/web")).unwrap(), "localhost:5000/web:latest");
        assert_eq!(reference("x", Some("web")).unwrap(), "web:latest");
        for bad in ["", "Web:1", "web:", "a b:1", "web@sha256:00", "/web:1", "web/:1", "web:-x", "a//b"] {
            assert!(reference("x", Some(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
