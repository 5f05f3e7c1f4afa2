//! What the runner knows about images: there is no container runtime, so each image the pods
//! use maps to host content — an entrypoint (a host program), image env, and files the image
//! would contain at absolute paths (host directories). An image not in the table is an error.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One image, as the runner emulates it.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// `ENTRYPOINT` (used when the container has no `command`).
    pub entrypoint: Vec<String>,
    /// `CMD` (used when the container has neither `command` nor `args`).
    pub cmd: Vec<String>,
    /// `ENV`: under the container's env.
    pub env: Vec<(String, String)>,
    /// The image's files: container path -> host path.
    pub files: Vec<(String, PathBuf)>,
    /// `WORKDIR` (a container path).
    pub working_dir: Option<String>,
}

/// Image references -> emulated images.
#[derive(Clone, Debug, Default)]
pub struct Images(BTreeMap<String, Image>);

impl Images {
    pub fn insert(&mut self, reference: impl Into<String>, image: Image) {
        self.0.insert(reference.into(), image);
    }

    pub fn get(&self, reference: &str) -> anyhow::Result<&Image> {
        self.0.get(reference).with_context(|| {
            format!(
                "image {reference:?} is not known to the pod runner (known: {:?})",
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// The env of a minimal base image: the host's system paths.
pub fn base_env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()), ("LANG".into(), "C.UTF-8".into())]
}
