//! Guests as OCI images (`cargo xtask pkg --oci`), imported into a private
//! containerd with `ctr`, and a guest crate outside the workspace
//! (`--path`) built, packaged and booted.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use abi::oci::{IMAGE_LAYER_PATH, IMAGE_PATH, LABEL_ABI, LABEL_IMAGE};
use integration_tests::containerd::Containerd;
use integration_tests::{Guest, Manifest, workspace_root};
use serde_json::Value;
use xtask::App;
use xtask::oci::{Packaged, pkg};

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `cargo xtask pkg APP --oci DIR/APP.tar [--ref R] [-- ARGS]`.
fn pkg_oci(app: &str, dir: &Path, reference: Option<&str>, a: Option<&[&str]>) -> (Packaged, PathBuf) {
    let out = dir.join(format!("{app}-{}.tar", reference.map_or("default", |r| r.rsplit('/').next().unwrap())));
    let a = a.map(args);
    let packaged =
        pkg(&App::Workspace(app.to_string()), a.as_deref(), Some(&out), reference).unwrap_or_else(|e| panic!("pkg {app}: {e:#}"));
    (packaged, out)
}

/// `ctr images ls` (or `check`) as rows of whitespace-separated columns,
/// by reference.
fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().skip(1).map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
}

fn row<'a>(rows: &'a [Vec<String>], reference: &str) -> Option<&'a Vec<String>> {
    rows.iter().find(|r| r[0] == reference)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The tarball with one byte of its layer blob flipped; returns it and the
/// layer's digest.
fn corrupt_layer(tarball: &[u8], layer_digest: &str) -> Vec<u8> {
    let name = format!("blobs/{}", layer_digest.replace(':', "/"));
    let mut archive = tar::Archive::new(tarball);
    let entry = archive.entries().unwrap().map(Result::unwrap).find(|e| e.path().unwrap().to_str() == Some(&name)).unwrap();
    let at = entry.raw_file_position() as usize + entry.size() as usize / 2;
    let mut bad = tarball.to_vec();
    bad[at] ^= 0xff;
    bad
}

#[test]
fn oci_images_import_into_containerd_with_their_labels_and_args() {
    let dir = workspace_root().join(format!("target/itest/oci-{}", std::process::id()));
    let images = dir.join("images");
    let (hello, hello_tar) = pkg_oci("hello", &images, None, None);
    let (echo, echo_tar) = pkg_oci("echo", &images, None, Some(&["serve", "7"]));
    let hello_oci = hello.oci.clone().unwrap();
    let echo_oci = echo.oci.clone().unwrap();
    assert_eq!(hello_oci.reference, "localhost/hive/hello:latest");
    assert_eq!(echo_oci.reference, "localhost/hive/echo:latest");
    // Packaging again gives the same image.
    let (again, _) = pkg_oci("hello", &dir.join("again"), None, None);
    assert_eq!(again.oci.unwrap().tarball, hello_oci.tarball, "pkg is not deterministic");

    let ctrd = Containerd::start(&dir.join("containerd")).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("containerd: snapshotter {}", ctrd.snapshotter());
    for (tar, oci) in [(&hello_tar, &hello_oci), (&echo_tar, &echo_oci)] {
        let out = ctrd.ctr_ok(&["images", "import", tar.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.contains(&format!("unpacking {} ({})...done", oci.reference, oci.manifest_digest)), "{out}");
    }

    // Both listed under their references, with the digests pkg wrote,
    // complete and unpacked for this platform.
    let listed = rows(&ctrd.ctr_ok(&["images", "ls"]).unwrap());
    for oci in [&hello_oci, &echo_oci] {
        let r = row(&listed, &oci.reference).unwrap_or_else(|| panic!("{} not listed: {listed:?}", oci.reference));
        assert_eq!(r[2], oci.manifest_digest, "{r:?}");
        assert!(r.iter().any(|c| c == "linux/amd64"), "{r:?}");
    }
    let checked = ctrd.ctr_ok(&["images", "check"]).unwrap();
    for oci in [&hello_oci, &echo_oci] {
        let r = row(&rows(&checked), &oci.reference).unwrap().clone();
        assert!(r[3] == "complete" && r[4] == "(2/2)" && r.last().unwrap() == "true", "not complete and unpacked: {r:?}");
    }

    // The config, read back out of containerd's content store.
    for (oci, cmd) in [(&hello_oci, args(&[])), (&echo_oci, args(&["serve", "7"]))] {
        let manifest = json(&ctrd.ctr_ok(&["content", "get", &oci.manifest_digest]).unwrap());
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        assert_eq!(config_digest, oci.config_digest);
        let config = json(&ctrd.ctr_ok(&["content", "get", config_digest]).unwrap());
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
        let c = &config["config"];
        assert_eq!(c["Labels"][LABEL_ABI], abi::ABI_VERSION.to_string(), "{config}");
        assert_eq!(c["Labels"][LABEL_IMAGE], IMAGE_PATH, "{config}");
        assert_eq!(c["Entrypoint"], serde_json::json!([IMAGE_PATH]), "{config}");
        assert_eq!(c["Cmd"], serde_json::json!(cmd), "{config}");
    }

    // The rootfs containerd unpacked holds the Hermit image, byte for byte.
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    ctrd.ctr_ok(&["images", "mount", &hello_oci.reference, mnt.to_str().unwrap()]).unwrap();
    let in_rootfs = fs::read(mnt.join(IMAGE_LAYER_PATH));
    ctrd.ctr_ok(&["images", "unmount", "--rm", mnt.to_str().unwrap()]).unwrap();
    assert!(in_rootfs.expect("the image in the rootfs") == fs::read(&hello.hermit).unwrap(), "the rootfs holds another image");

    // A tarball whose layer was corrupted (same size, one byte flipped):
    // the import fails and names the layer it could not find; the good
    // images stay listed and complete.
    let (broken, _) = pkg_oci("hello", &images, Some("localhost/hive/broken:latest"), Some(&["other", "args"]));
    let broken = broken.oci.unwrap();
    let layer = {
        let manifest = tar_file(&broken.tarball, &format!("blobs/{}", broken.manifest_digest.replace(':', "/")));
        json(&String::from_utf8(manifest).unwrap())["layers"][0]["digest"].as_str().unwrap().to_string()
    };
    let bad = dir.join("corrupt.tar");
    fs::write(&bad, corrupt_layer(&broken.tarball, &layer)).unwrap();
    let out = ctrd.ctr(&["images", "import", bad.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupted layer was imported: {stderr}");
    assert!(stderr.contains(&layer), "the error does not name the layer {layer}: {stderr}");
    // A truncated tarball (an interrupted download) fails as well.
    let truncated = dir.join("truncated.tar");
    fs::write(&truncated, &hello_oci.tarball[..hello_oci.tarball.len() / 2]).unwrap();
    let out = ctrd.ctr(&["images", "import", truncated.to_str().unwrap()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unexpected EOF"), "{stderr}");

    let checked = rows(&ctrd.ctr_ok(&["images", "check"]).unwrap());
    for oci in [&hello_oci, &echo_oci] {
        let r = row(&checked, &oci.reference).unwrap_or_else(|| panic!("{} gone: {checked:?}", oci.reference));
        assert!(r[2] == oci.manifest_digest && r[3] == "complete", "{r:?}");
    }
    // containerd 1.6 keeps the name of an image whose unpacking failed;
    // if it does, the image must not pass for a complete one.
    if let Some(r) = row(&checked, &broken.reference) {
        assert_ne!(r[3], "complete", "the corrupted image passes for complete: {r:?}");
    }
    drop(ctrd);
    let _ = fs::remove_dir_all(&dir);
}

fn tar_file(tarball: &[u8], name: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(tarball);
    let mut entry = archive.entries().unwrap().map(Result::unwrap).find(|e| e.path().unwrap().to_str() == Some(name)).unwrap();
    let mut data = Vec::new();
    entry.read_to_end(&mut data).unwrap();
    data
}

/// The `Cargo.toml` README's "A guest in its own repository" gives, with
/// `libos` at `libos`.
fn external_cargo_toml(name: &str, libos: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[dependencies]
libos = {{ path = {libos:?} }}

# Its own workspace: cargo must not look for one in the directories above.
[workspace]

# Profiles come from the top crate only, never from libos's workspace.
[profile.release]
panic = "abort"   # the libos has no unwinder
debug = 1         # line tables: symbolized backtraces
"#
    )
}

#[test]
fn a_guest_crate_outside_the_workspace_builds_packages_and_boots() {
    // A fixed directory, so its target/ext/ build is reused between runs.
    // It lies inside our workspace's directory: its own [workspace] table is
    // what keeps cargo from taking it for one of our members.
    let dir = workspace_root().join("target/itest/ext-greeter");
    fs::create_dir_all(dir.join("src")).unwrap();
    let write = |path: PathBuf, text: &str| {
        if fs::read_to_string(&path).ok().as_deref() != Some(text) {
            fs::write(&path, text).unwrap();
        }
    };
    write(dir.join("Cargo.toml"), &external_cargo_toml("ext-greeter", &workspace_root().join("libos")));
    write(
        dir.join("src/main.rs"),
        "#![no_std]\n#![no_main]\nextern crate alloc;\nuse libos::println;\n\nlibos::main!(main);\n\nfn main() {\n    \
         let args: alloc::vec::Vec<&str> = libos::args().collect();\n    \
         println!(\"Greetings from {} outside the workspace! args: {:?}\", libos::name(), args);\n}\n",
    );
    // Our lock file: the same dependency versions, and no registry lookup.
    write(dir.join("Cargo.lock"), &fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap());

    let packaged = pkg(&App::Path(dir.clone()), Some(&args(&["from", "pkg"])), Some(&dir.join("greeter.tar")), None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(packaged.name, "ext-greeter");
    assert_eq!(packaged.hermit, workspace_root().join("target/guests/ext-greeter.hermit"));
    let oci = packaged.oci.unwrap();
    assert_eq!((oci.reference.as_str(), oci.cmd.clone()), ("localhost/hive/ext-greeter:latest", args(&["from", "pkg"])));

    // The image the layer holds boots, with the arguments pkg wrote into it.
    let in_layer = dir.join("in-layer.hermit");
    fs::write(&in_layer, layer_image(&oci.tarball)).unwrap();
    let out = integration_tests::boot(Manifest::new([Guest::image("g", &in_layer)]), 120);
    assert!(out.console.contains("g-0| Greetings from g-0 outside the workspace! args: [\"from\", \"pkg\"]"), "{}", out.console);
    assert!(out.console.contains("[hv] guest g-0 exited with code 0"), "{}", out.console);

    // No Cargo.toml, or a build that fails: clear errors.
    let e = xtask::build_external(&dir.join("src")).unwrap_err();
    assert!(format!("{e:#}").contains("no Cargo.toml"), "{e:#}");
    let broken = workspace_root().join("target/itest/ext-broken");
    fs::create_dir_all(broken.join("src")).unwrap();
    write(broken.join("Cargo.toml"), "[package]\nname = \"ext-broken\"\nversion = \"0.1.0\"\nedition = \"2024\"\n");
    write(broken.join("src/main.rs"), "fn main() {}\n");
    let e = format!("{:#}", xtask::build_external(&broken).unwrap_err());
    assert!(e.contains("building the guest crate") && e.contains("ext-broken/Cargo.toml"), "{e}");
    assert!(e.contains("no [workspace] table") && e.contains("panic = \"abort\""), "{e}");
}

/// The Hermit image in an OCI tarball's layer.
fn layer_image(tarball: &[u8]) -> Vec<u8> {
    let index = json(&String::from_utf8(tar_file(tarball, "index.json")).unwrap());
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = json(&String::from_utf8(tar_file(tarball, &format!("blobs/{}", manifest_digest.replace(':', "/")))).unwrap());
    let layer = tar_file(tarball, &format!("blobs/{}", manifest["layers"][0]["digest"].as_str().unwrap().replace(':', "/")));
    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut layer_tar).unwrap();
    tar_file(&layer_tar, IMAGE_LAYER_PATH)
}
