//! A diff of two pods, element by element, as RFC 6902 operations: the reference the patch the
//! injector writes from its edits is tested against (both must give the same operations).

use super::{Ops, Patch, Path};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume, VolumeMount};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Operations turning `old` into `new`, two versions of a pod that differ at most in the fields
/// the injector touches: labels, annotations, init containers, containers and volumes.
///
/// The same patch as [`diff`] over the whole pods, at a fraction of the cost: the typed fields are
/// compared as they are, and only elements that differ are serialized (an admission spent most of
/// its time turning whole pods into JSON values to compare them).
pub fn pod_diff(old: &Pod, new: &Pod) -> Result<Patch, serde_json::Error> {
    let mut ops = Ops::default();
    let mut path = Path::default();
    path.push_key("metadata");
    // In key order, as a diff of the JSON documents orders them.
    diff_optional_map(
        &mut path,
        "annotations",
        old.metadata.annotations.as_ref(),
        new.metadata.annotations.as_ref(),
        &mut ops,
    )?;
    diff_optional_map(&mut path, "labels", old.metadata.labels.as_ref(), new.metadata.labels.as_ref(), &mut ops)?;
    path.pop();
    if let (Some(o), Some(n)) = (&old.spec, &new.spec) {
        path.push_key("spec");
        diff_optional_list(&mut path, "containers", Some(&o.containers), Some(&n.containers), CONTAINERS, &mut ops)?;
        diff_optional_list(
            &mut path,
            "initContainers",
            o.init_containers.as_deref(),
            n.init_containers.as_deref(),
            CONTAINERS,
            &mut ops,
        )?;
        diff_optional_list(&mut path, "volumes", o.volumes.as_deref(), n.volumes.as_deref(), VOLUMES, &mut ops)?;
        path.pop();
    }
    Ok(ops.finish())
}

/// How the items of a named list are told apart and diffed when they differ.
struct ItemDiff<T> {
    name: fn(&T) -> &str,
    diff: fn(&mut Path, &T, &T, &mut Ops) -> Result<(), serde_json::Error>,
}

const CONTAINERS: ItemDiff<Container> = ItemDiff { name: |c| &c.name, diff: diff_container };
const VOLUMES: ItemDiff<Volume> = ItemDiff { name: |v| &v.name, diff: diff_as_json };
const ENV: ItemDiff<EnvVar> = ItemDiff { name: |e| &e.name, diff: diff_as_json };
const MOUNTS: ItemDiff<VolumeMount> = ItemDiff { name: |m| &m.name, diff: diff_as_json };

fn diff_as_json<T: Serialize>(path: &mut Path, old: &T, new: &T, ops: &mut Ops) -> Result<(), serde_json::Error> {
    diff_value(path, &serde_json::to_value(old)?, &serde_json::to_value(new)?, ops)
}

/// The injector changes an application container's `env` and `volumeMounts` only: those are
/// diffed as typed lists, and anything else that differs falls back to a JSON diff.
fn diff_container(path: &mut Path, old: &Container, new: &Container, ops: &mut Ops) -> Result<(), serde_json::Error> {
    if !same_except_env_and_mounts(old, new) {
        return diff_as_json(path, old, new, ops);
    }
    // Key order, as the JSON diff has it.
    diff_optional_list(path, "env", old.env.as_deref(), new.env.as_deref(), ENV, ops)?;
    diff_optional_list(path, "volumeMounts", old.volume_mounts.as_deref(), new.volume_mounts.as_deref(), MOUNTS, ops)
}

/// Every field but `env` and `volumeMounts` is equal. Destructured exhaustively, so a field added
/// by a new Kubernetes version fails to compile here instead of being silently ignored.
fn same_except_env_and_mounts(old: &Container, new: &Container) -> bool {
    let Container {
        args,
        command,
        env: _,
        env_from,
        image,
        image_pull_policy,
        lifecycle,
        liveness_probe,
        name,
        ports,
        readiness_probe,
        resize_policy,
        resources,
        restart_policy,
        restart_policy_rules,
        security_context,
        startup_probe,
        stdin,
        stdin_once,
        termination_message_path,
        termination_message_policy,
        tty,
        volume_devices,
        volume_mounts: _,
        working_dir,
    } = old;
    *args == new.args
        && *command == new.command
        && *env_from == new.env_from
        && *image == new.image
        && *image_pull_policy == new.image_pull_policy
        && *lifecycle == new.lifecycle
        && *liveness_probe == new.liveness_probe
        && *name == new.name
        && *ports == new.ports
        && *readiness_probe == new.readiness_probe
        && *resize_policy == new.resize_policy
        && *resources == new.resources
        && *restart_policy == new.restart_policy
        && *restart_policy_rules == new.restart_policy_rules
        && *security_context == new.security_context
        && *startup_probe == new.startup_probe
        && *stdin == new.stdin
        && *stdin_once == new.stdin_once
        && *termination_message_path == new.termination_message_path
        && *termination_message_policy == new.termination_message_policy
        && *tty == new.tty
        && *volume_devices == new.volume_devices
        && *working_dir == new.working_dir
}

/// A string map (labels, annotations) that may be absent on either side.
fn diff_optional_map(
    path: &mut Path,
    key: &str,
    old: Option<&BTreeMap<String, String>>,
    new: Option<&BTreeMap<String, String>>,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    path.push_key(key);
    match (old, new) {
        (None, None) => {}
        (Some(_), None) => ops.remove(path),
        (None, Some(n)) => ops.add(path, n)?,
        (Some(o), Some(n)) => {
            for key in o.keys().filter(|k| !n.contains_key(*k)) {
                path.push_key(key.as_str());
                ops.remove(path);
                path.pop();
            }
            for (key, value) in n {
                path.push_key(key.as_str());
                match o.get(key) {
                    Some(old_value) if old_value == value => {}
                    Some(_) => ops.replace(path, value)?,
                    None => ops.add(path, value)?,
                }
                path.pop();
            }
        }
    }
    path.pop();
    Ok(())
}

/// A list of named items (containers, volumes) that may be absent on either side.
fn diff_optional_list<T: Serialize + PartialEq>(
    path: &mut Path,
    key: &str,
    old: Option<&[T]>,
    new: Option<&[T]>,
    item: ItemDiff<T>,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    path.push_key(key);
    match (old, new) {
        (None, None) => {}
        (Some(_), None) => ops.remove(path),
        (None, Some(n)) => ops.add(path, n)?,
        (Some(o), Some(n)) => diff_named_list(path, o, n, item, ops)?,
    }
    path.pop();
    Ok(())
}

/// Walks `new` in order; elements absent from `old` are added at their index, elements present
/// in both are diffed in place, elements of `old` absent from `new` are removed. Indices are
/// those of the document as each operation applies, since RFC 6902 applies them in sequence.
/// When the elements common to both are not in the same order (never the injector's doing), the
/// list is replaced whole. Equal elements cost a comparison; new ones are serialized once.
fn diff_named_list<T: Serialize + PartialEq>(
    path: &mut Path,
    old: &[T],
    new: &[T],
    item_diff: ItemDiff<T>,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    let name = item_diff.name;
    let old_names: BTreeSet<&str> = old.iter().map(name).collect();
    let new_names: BTreeSet<&str> = new.iter().map(name).collect();
    let kept_old = old.iter().map(name).filter(|n| new_names.contains(n));
    let kept_new = new.iter().map(name).filter(|n| old_names.contains(n));
    if !kept_old.eq(kept_new) {
        return ops.replace(path, new);
    }
    for (i, item) in old.iter().enumerate().rev() {
        if !new_names.contains(name(item)) {
            path.push_index(i);
            ops.remove(path);
            path.pop();
        }
    }
    let mut kept = old.iter().filter(|item| new_names.contains(name(item))).peekable();
    for (k, item) in new.iter().enumerate() {
        path.push_index(k);
        match kept.peek() {
            Some(current) if name(current) == name(item) => {
                if *current != item {
                    (item_diff.diff)(path, current, item, ops)?;
                }
                kept.next();
            }
            _ => ops.add(path, item)?,
        }
        path.pop();
    }
    Ok(())
}

/// Operations turning the JSON document `old` into `new`: the reference [`pod_diff`] is tested
/// against.
pub fn diff(old: &Value, new: &Value) -> Patch {
    let mut ops = Ops::default();
    diff_value(&mut Path::default(), old, new, &mut ops).expect("JSON values always serialize");
    ops.finish()
}

// Objects and named arrays are walked without comparing them whole first: a deep equality test
// at every level would make the diff quadratic in the pod's depth.
fn diff_value(path: &mut Path, old: &Value, new: &Value, ops: &mut Ops) -> Result<(), serde_json::Error> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => diff_object(path, o, n, ops)?,
        (Value::Array(o), Value::Array(n)) if is_named(o) && is_named(n) => {
            diff_named_list(path, o, n, JSON_ITEMS, ops)?
        }
        _ if old == new => {}
        _ => ops.replace(path, new)?,
    }
    Ok(())
}

/// Elements of a JSON array of named objects (containers, volumes, env, mounts...).
const JSON_ITEMS: ItemDiff<Value> = ItemDiff { name: name_of, diff: diff_value };

fn diff_object(
    path: &mut Path,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    ops: &mut Ops,
) -> Result<(), serde_json::Error> {
    for key in old.keys() {
        if !new.contains_key(key) {
            path.push_key(key.as_str());
            ops.remove(path);
            path.pop();
        }
    }
    for (key, new_value) in new {
        path.push_key(key.as_str());
        match old.get(key) {
            Some(old_value) => diff_value(path, old_value, new_value, ops)?,
            None => ops.add(path, new_value)?,
        }
        path.pop();
    }
    Ok(())
}

/// Every element is an object with a string `name` (containers, volumes, env, mounts...).
fn is_named(items: &[Value]) -> bool {
    items.iter().all(|v| v.get("name").is_some_and(Value::is_string))
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(old: Value, new: Value) -> json_patch::Patch {
        let patch = diff(&old, &new).operations().expect("the patch is valid JSON");
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        assert_eq!(doc, new, "patch {patch:?} does not reproduce the target");
        patch
    }

    #[test]
    fn equal_documents_give_an_empty_patch() {
        let v = json!({"a": [{"name": "x"}]});
        assert!(check(v.clone(), v).0.is_empty());
        assert!(diff(&json!({"a": 1}), &json!({"a": 1})).is_empty());
    }

    #[test]
    fn insertions_into_named_arrays_are_adds_at_index() {
        let patch = check(
            json!({"spec": {"initContainers": [{"name": "init", "image": "i"}]}}),
            json!({"spec": {"initContainers": [{"name": "agent"}, {"name": "init", "image": "i"}]}}),
        );
        assert_eq!(patch.0.len(), 1);
        assert_eq!(patch.0[0].path().to_string(), "/spec/initContainers/0");
    }

    #[test]
    fn nested_changes_touch_only_the_changed_field() {
        let patch = check(
            json!({"c": [{"name": "app", "x-unknown": 1, "env": [{"name": "A", "value": "1"}]}]}),
            json!({"c": [{"name": "app", "x-unknown": 1, "env": [{"name": "A", "value": "1 2"}, {"name": "B", "value": "b"}]}]}),
        );
        let paths: Vec<_> = patch.0.iter().map(|op| op.path().to_string()).collect();
        assert_eq!(paths, vec!["/c/0/env/0/value", "/c/0/env/1"]);
    }

    #[test]
    fn keys_with_slashes_are_escaped() {
        let patch = check(json!({"labels": {}}), json!({"labels": {"tracelight.io/injected": "true"}}));
        assert_eq!(patch.0[0].path().to_string(), "/labels/tracelight.io~1injected");
    }

    #[test]
    fn removals_and_reorders_still_reproduce_the_target() {
        check(
            json!({"v": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
            json!({"v": [{"name": "c"}, {"name": "new"}, {"name": "a", "x": 1}]}),
        );
        check(json!({"v": [1, 2], "w": 1}), json!({"v": [2]}));
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    /// The typed diff gives exactly the operations of the JSON diff of the whole pods.
    fn same_as_json_diff(old: Value, new: Value) {
        let typed = pod_diff(&pod(old.clone()), &pod(new.clone())).expect("typed diff");
        let json = diff(&old, &new);
        assert_eq!(typed, json, "typed diff differs from the JSON diff");
        assert!(!typed.is_empty(), "the cases here all change something");
    }

    #[test]
    fn typed_pod_diff_matches_the_json_diff() {
        let base = json!({
            "metadata": {"labels": {"a": "1", "gone": "x"}},
            "spec": {
                "containers": [{"name": "app", "image": "i", "env": [{"name": "A", "value": "1"}],
                                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
            }
        });
        // Labels and annotations added, changed and removed; init containers added.
        same_as_json_diff(
            base.clone(),
            json!({
                "metadata": {"labels": {"a": "2", "b": "new/x"}, "annotations": {"k": "v"}},
                "spec": {
                    "initContainers": [{"name": "agent", "image": "agent", "restartPolicy": "Always"}],
                    "containers": base["spec"]["containers"].clone(),
                    "volumes": base["spec"]["volumes"].clone(),
                }
            }),
        );
        // Env appended and edited, a mount added: the typed path.
        let mut edited = base.clone();
        edited["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1 2"}, {"name": "B", "value": "b"}]);
        edited["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "x", "mountPath": "/x"}));
        same_as_json_diff(base.clone(), edited);
        // Another container field changed: the JSON fallback.
        let mut image = base.clone();
        image["spec"]["containers"][0]["image"] = json!("j");
        image["spec"]["containers"][0].as_object_mut().unwrap().remove("env");
        same_as_json_diff(base.clone(), image);
        // A volume removed and the containers reordered (replaced whole).
        let mut reordered = base.clone();
        reordered["spec"]["volumes"] = json!([{"name": "w", "emptyDir": {}}]);
        reordered["spec"]["containers"] = json!([{"name": "b", "image": "b"}, {"name": "app", "image": "i"}]);
        same_as_json_diff(base, reordered);
    }

    #[test]
    fn path_escapes_tokens_and_pops_back() {
        let mut path = Path::default();
        path.push_key("metadata");
        path.push_key("a~b/c");
        assert_eq!(path.pointer().to_string(), "/metadata/a~0b~1c");
        path.pop();
        path.push_index(7);
        assert_eq!(path.pointer().to_string(), "/metadata/7");
        path.pop();
        path.pop();
        assert_eq!(path.pointer().to_string(), "");
    }
}
