//! The RFC 6902 patch from the admitted pod to the injected one.
//!
//! The injector only adds: containers, volumes, env vars, mounts, labels, annotations, and
//! appends to a few env values. So the patch is built from what was added, element by element
//! (see `edits`): arrays of named objects (containers, env, volumes, mounts) get `add` at the
//! right index, and no existing object is replaced wholesale — fields this crate's API version
//! does not know survive untouched.
//!
//! Operations are written straight into the JSON text the webhook sends: each added object is
//! serialized once, from its typed form (building `serde_json::Value`s and serializing them
//! again cost more than deciding the injection, in profiles).

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::BTreeMap;

/// An RFC 6902 patch as the JSON text of its operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    /// `[op, op, ...]`, or empty when there is no operation.
    json: Vec<u8>,
}

impl Patch {
    /// No operation: the pod is left as it is.
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// The patch as JSON (`[]` when empty).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.json.is_empty() {
            b"[]".to_vec()
        } else {
            self.json.clone()
        }
    }

    /// The patch as JSON, consuming it (`[]` when empty).
    pub fn into_bytes(self) -> Vec<u8> {
        if self.json.is_empty() {
            b"[]".to_vec()
        } else {
            self.json
        }
    }

    /// The operations, parsed (tests, the offline command).
    pub fn operations(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(&self.to_bytes())
    }
}

impl From<&json_patch::Patch> for Patch {
    fn from(patch: &json_patch::Patch) -> Self {
        let mut ops = Ops::default();
        for op in &patch.0 {
            ops.raw(op);
        }
        ops.finish()
    }
}

impl Serialize for Patch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let raw = serde_json::value::RawValue::from_string(String::from_utf8_lossy(&self.to_bytes()).into_owned())
            .map_err(S::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Writes operations into a patch's JSON text.
#[derive(Default)]
pub(super) struct Ops {
    json: Vec<u8>,
}

impl Ops {
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Ops { json: Vec::with_capacity(bytes) }
    }

    fn start(&mut self, op: &str, path: &Path) {
        self.json.push(if self.json.is_empty() { b'[' } else { b',' });
        self.json.extend_from_slice(b"{\"op\":\"");
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(b"\",\"path\":");
        // The path was escaped as a pointer on the way in; as a JSON string it may need more.
        let _ = serde_json::to_writer(&mut self.json, path.buf.as_str());
    }

    pub(super) fn add<T: Serialize + ?Sized>(&mut self, path: &Path, value: &T) -> Result<(), serde_json::Error> {
        self.with_value("add", path, value)
    }

    pub(super) fn replace<T: Serialize + ?Sized>(&mut self, path: &Path, value: &T) -> Result<(), serde_json::Error> {
        self.with_value("replace", path, value)
    }

    fn with_value<T: Serialize + ?Sized>(&mut self, op: &str, path: &Path, value: &T) -> Result<(), serde_json::Error> {
        self.start(op, path);
        self.json.extend_from_slice(b",\"value\":");
        serde_json::to_writer(&mut self.json, value)?;
        self.json.push(b'}');
        Ok(())
    }

    #[cfg(test)]
    fn remove(&mut self, path: &Path) {
        self.start("remove", path);
        self.json.push(b'}');
    }

    fn raw(&mut self, op: &json_patch::PatchOperation) {
        self.json.push(if self.json.is_empty() { b'[' } else { b',' });
        // A parsed operation always serializes.
        let _ = serde_json::to_writer(&mut self.json, op);
    }

    pub(super) fn finish(mut self) -> Patch {
        if !self.json.is_empty() {
            self.json.push(b']');
        }
        Patch { json: self.json }
    }
}

/// The JSON pointer being walked, kept escaped in one buffer: a push is an append and a pop a
/// truncate (jsonptr's `push_back`/`pop_back` and `from_tokens` re-scan or re-encode the whole
/// pointer, which showed in profiles).
#[derive(Default)]
pub(super) struct Path {
    buf: String,
    starts: Vec<usize>,
}

impl Path {
    pub(super) fn push_key(&mut self, key: &str) {
        self.starts.push(self.buf.len());
        self.buf.push('/');
        for c in key.chars() {
            match c {
                '~' => self.buf.push_str("~0"),
                '/' => self.buf.push_str("~1"),
                c => self.buf.push(c),
            }
        }
    }

    pub(super) fn push_index(&mut self, index: usize) {
        use std::fmt::Write;
        self.starts.push(self.buf.len());
        // Writing into a String cannot fail.
        let _ = write!(self.buf, "/{index}");
    }

    pub(super) fn pop(&mut self) {
        if let Some(start) = self.starts.pop() {
            self.buf.truncate(start);
        }
    }

    #[cfg(test)]
    fn pointer(&self) -> &str {
        &self.buf
    }
}

/// The patch that sets one annotation on `pod` (used to record why a pod was skipped).
pub fn annotation_patch(pod: &Pod, key: &str, value: &str) -> Result<Patch, serde_json::Error> {
    let mut ops = Ops::default();
    let mut path = Path::default();
    path.push_key("metadata");
    path.push_key("annotations");
    match &pod.metadata.annotations {
        None => ops.add(&path, &BTreeMap::from([(key, value)]))?,
        Some(_) => {
            path.push_key(key);
            ops.add(&path, value)?;
        }
    }
    Ok(ops.finish())
}

/// The reference the written patch is tested against: a diff of the admitted and the injected
/// pod.
#[cfg(test)]
mod diff;
#[cfg(test)]
pub use diff::pod_diff;
