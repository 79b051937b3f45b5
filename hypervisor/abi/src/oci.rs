//! Names a guest packaged as an OCI image carries, shared by the packager
//! (`cargo xtask pkg --oci`) and the containerd runtime (the `hive` shim)
//! that reads the image back out of a container's rootfs.
//!
//! The image is one layer holding the Hermit image at [`IMAGE_PATH`]; the
//! config names it as the entrypoint, carries the `hermit.toml`'s
//! `app_args` as `Cmd`, and labels the image with [`LABEL_ABI`] (the
//! [`crate::ABI_VERSION`] it was built for, in decimal) and [`LABEL_IMAGE`]
//! (= [`IMAGE_PATH`]).

/// Where the Hermit image lies in the container's rootfs (absolute), and
/// the config's `Entrypoint`.
pub const IMAGE_PATH: &str = "/hive/image.hermit";

/// [`IMAGE_PATH`] as the layer's tar names it (relative).
pub const IMAGE_LAYER_PATH: &str = "hive/image.hermit";

/// Config label: the guest ABI version the image was built against, in
/// decimal (`"4"`).
pub const LABEL_ABI: &str = "org.hive.abi";

/// Config label: the Hermit image's path in the rootfs ([`IMAGE_PATH`]).
pub const LABEL_IMAGE: &str = "org.hive.image";

/// The config's `os`. A guest is no Linux program, but containerd unpacks
/// and runs only images whose platform its default matcher accepts (the
/// host's: `linux/amd64` here); another value would need `--platform` or
/// `--all-platforms` on every `ctr` command and would not be pulled by a
/// kubelet at all.
pub const OS: &str = "linux";

/// The config's `architecture` (see [`OS`]); the guest is x86_64 code.
pub const ARCHITECTURE: &str = "amd64";

/// The repository a packaged app gets when no reference is given:
/// `localhost/hive/<app>:latest`.
pub const DEFAULT_REPOSITORY_PREFIX: &str = "localhost/hive/";

/// The tag a reference without one gets.
pub const DEFAULT_TAG: &str = "latest";

/// containerd's annotation on an index's manifest descriptor that names
/// the image `ctr image import` creates (with the full reference; the OCI
/// `org.opencontainers.image.ref.name` beside it is often only a tag).
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
