//! The concrete changes an injection makes to one pod, decided once and then either applied to a
//! copy of the pod (the injected pod `tracelight inject` prints) or written as the JSON patch
//! (all the webhook needs), from the same values.
//!
//! Writing the patch from the edits, instead of diffing a mutated copy against the admitted pod,
//! spares the webhook a deep copy, a walk over both pods and a serialization of whole lists.
//! The tests apply the patch to every golden and generated pod and compare it with the copy the
//! edits were applied to, so the two paths cannot drift apart.

use super::env::EnvChange;
use super::patch::{Ops, Patch, Path};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume, VolumeMount};
use std::collections::BTreeMap;

/// Everything an injection adds or changes.
#[derive(Debug, Default)]
pub struct Edits {
    /// Labels to set, in key order.
    pub labels: Vec<(&'static str, String)>,
    /// Annotations to set, in key order.
    pub annotations: Vec<(&'static str, String)>,
    /// Changes to application containers, in index order.
    pub containers: Vec<ContainerEdits>,
    /// The agent as a plain container, appended (clusters without native sidecars).
    pub appended_container: Option<Container>,
    /// Init containers inserted, with their index in the resulting list, ascending.
    pub init_containers: Vec<(usize, Container)>,
    /// Volumes appended.
    pub volumes: Vec<Volume>,
}

/// Changes to one application container.
#[derive(Debug)]
pub struct ContainerEdits {
    pub index: usize,
    pub env: EnvChange,
    /// A volume mount appended (a language's files), when missing.
    pub mount: Option<VolumeMount>,
}

impl Edits {
    /// Applies the edits to `pod` (the admitted pod they were decided for).
    pub fn apply(self, pod: &mut Pod) {
        for (key, value) in self.labels {
            pod.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value);
        }
        for (key, value) in self.annotations {
            pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value);
        }
        let spec = pod.spec.get_or_insert_with(Default::default);
        for edit in self.containers {
            let c = &mut spec.containers[edit.index];
            if !edit.env.is_empty() {
                c.env = Some(edit.env.apply(c.env.as_deref().unwrap_or_default()));
            }
            if let Some(mount) = edit.mount {
                c.volume_mounts.get_or_insert_with(Vec::new).push(mount);
            }
        }
        if let Some(agent) = self.appended_container {
            spec.containers.push(agent);
        }
        if !self.init_containers.is_empty() {
            let init = spec.init_containers.get_or_insert_with(Vec::new);
            for (index, container) in self.init_containers {
                init.insert(index, container);
            }
        }
        if !self.volumes.is_empty() {
            spec.volumes.get_or_insert_with(Vec::new).extend(self.volumes);
        }
    }

    /// The RFC 6902 patch that makes these edits to `pod`: the same operations a diff of the
    /// admitted and the edited pod would give, in the same order.
    pub fn patch(&self, pod: &Pod) -> Result<Patch, serde_json::Error> {
        let mut ops = Ops::with_capacity(8 * 1024);
        let mut path = Path::default();
        path.push_key("metadata");
        string_map(&mut ops, &mut path, "annotations", pod.metadata.annotations.as_ref(), &self.annotations)?;
        string_map(&mut ops, &mut path, "labels", pod.metadata.labels.as_ref(), &self.labels)?;
        path.pop();
        path.push_key("spec");
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        path.push_key("containers");
        for edit in &self.containers {
            path.push_index(edit.index);
            container(&mut ops, &mut path, &containers[edit.index], edit)?;
            path.pop();
        }
        if let Some(agent) = &self.appended_container {
            path.push_index(containers.len());
            ops.add(&path, agent)?;
            path.pop();
        }
        path.pop();
        inserted(
            &mut ops,
            &mut path,
            "initContainers",
            spec.and_then(|s| s.init_containers.as_deref()),
            &self.init_containers,
        )?;
        appended(&mut ops, &mut path, "volumes", spec.and_then(|s| s.volumes.as_deref()), &self.volumes)?;
        Ok(ops.finish())
    }
}

/// Sets `entries` (in key order) in the string map `key` (labels, annotations).
fn string_map(
    ops: &mut Ops,
    path: &mut Path,
    key: &str,
    old: Option<&BTreeMap<String, String>>,
    entries: &[(&'static str, String)],
) -> Result<(), serde_json::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    path.push_key(key);
    match old {
        None => ops.add(path, &entries.iter().map(|(k, v)| (*k, v)).collect::<BTreeMap<_, _>>())?,
        Some(old) => {
            for (k, v) in entries {
                path.push_key(k);
                match old.get(*k) {
                    Some(current) if current == v => {}
                    Some(_) => ops.replace(path, v)?,
                    None => ops.add(path, v)?,
                }
                path.pop();
            }
        }
    }
    path.pop();
    Ok(())
}

/// An application container's env (injected variables around the user's, joined values) and
/// its appended mount.
fn container(ops: &mut Ops, path: &mut Path, c: &Container, edit: &ContainerEdits) -> Result<(), serde_json::Error> {
    if !edit.env.is_empty() {
        path.push_key("env");
        match c.env.as_deref() {
            None => ops.add(path, &edit.env.apply(&[]))?,
            Some(user) => env(ops, path, user, &edit.env)?,
        }
        path.pop();
    }
    if let Some(mount) = &edit.mount {
        appended(ops, path, "volumeMounts", c.volume_mounts.as_deref(), std::slice::from_ref(mount))?;
    }
    Ok(())
}

/// The env operations in the order of the resulting list: variables placed before the user's,
/// the user's joined values, variables placed after.
fn env(ops: &mut Ops, path: &mut Path, user: &[EnvVar], change: &EnvChange) -> Result<(), serde_json::Error> {
    let front = change.front.len();
    for (i, var) in change.front.iter().enumerate() {
        path.push_index(i);
        ops.add(path, var)?;
        path.pop();
    }
    for (index, value) in &change.joined {
        path.push_index(front + index);
        path.push_key("value");
        match user[*index].value {
            Some(_) => ops.replace(path, value)?,
            None => ops.add(path, value)?,
        }
        path.pop();
        path.pop();
    }
    for (i, var) in change.back.iter().enumerate() {
        path.push_index(front + user.len() + i);
        ops.add(path, var)?;
        path.pop();
    }
    Ok(())
}

/// Items inserted at their (ascending) indices of the resulting list `key`.
fn inserted(
    ops: &mut Ops,
    path: &mut Path,
    key: &str,
    old: Option<&[Container]>,
    items: &[(usize, Container)],
) -> Result<(), serde_json::Error> {
    if items.is_empty() {
        return Ok(());
    }
    path.push_key(key);
    match old {
        None => ops.add(path, &items.iter().map(|(_, c)| c).collect::<Vec<_>>())?,
        Some(_) => {
            for (index, item) in items {
                path.push_index(*index);
                ops.add(path, item)?;
                path.pop();
            }
        }
    }
    path.pop();
    Ok(())
}

/// Items appended to the list `key`.
fn appended<T: serde::Serialize>(
    ops: &mut Ops,
    path: &mut Path,
    key: &str,
    old: Option<&[T]>,
    items: &[T],
) -> Result<(), serde_json::Error> {
    if items.is_empty() {
        return Ok(());
    }
    path.push_key(key);
    match old {
        None => ops.add(path, items)?,
        Some(old) => {
            for (i, item) in items.iter().enumerate() {
                path.push_index(old.len() + i);
                ops.add(path, item)?;
                path.pop();
            }
        }
    }
    path.pop();
    Ok(())
}
