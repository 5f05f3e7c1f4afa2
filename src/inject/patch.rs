//! The RFC 6902 patch from the admitted pod to the injected one.
//!
//! The injector only adds: containers, volumes, env vars, mounts, labels, annotations, and
//! appends to a few env values. So the patch is built from what was added, element by element:
//! arrays of named objects (containers, env, volumes, mounts) get `add` at the right index, and
//! no existing object is replaced wholesale — fields this crate's API version does not know
//! survive untouched.

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Operations turning `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Patch {
    let mut ops = Vec::new();
    diff_value(&mut PointerBuf::root(), old, new, &mut ops);
    Patch(ops)
}

// Objects and named arrays are walked without comparing them whole first: a deep equality test
// at every level would make the diff quadratic in the pod's depth.
fn diff_value(path: &mut PointerBuf, old: &Value, new: &Value, ops: &mut Vec<PatchOperation>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => diff_object(path, o, n, ops),
        (Value::Array(o), Value::Array(n)) if is_named(o) && is_named(n) => diff_named_array(path, o, n, ops),
        _ if old == new => {}
        _ => ops.push(PatchOperation::Replace(ReplaceOperation { path: path.clone(), value: new.clone() })),
    }
}

fn diff_object(
    path: &mut PointerBuf,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    ops: &mut Vec<PatchOperation>,
) {
    for key in old.keys() {
        if !new.contains_key(key) {
            path.push_back(key.as_str());
            ops.push(PatchOperation::Remove(RemoveOperation { path: path.clone() }));
            path.pop_back();
        }
    }
    for (key, new_value) in new {
        path.push_back(key.as_str());
        match old.get(key) {
            Some(old_value) => diff_value(path, old_value, new_value, ops),
            None => ops.push(PatchOperation::Add(AddOperation { path: path.clone(), value: new_value.clone() })),
        }
        path.pop_back();
    }
}

/// Every element is an object with a string `name` (containers, volumes, env, mounts...).
fn is_named(items: &[Value]) -> bool {
    items.iter().all(|v| v.get("name").is_some_and(Value::is_string))
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// Walks `new` in order; elements absent from `old` are added at their index, elements present
/// in both are diffed in place, elements of `old` absent from `new` are removed. Indices are
/// those of the document as each operation applies, since RFC 6902 applies them in sequence.
/// When the elements common to both are not in the same order (never the injector's doing), the
/// array is replaced whole.
fn diff_named_array(path: &mut PointerBuf, old: &[Value], new: &[Value], ops: &mut Vec<PatchOperation>) {
    let old_names: HashSet<&str> = old.iter().map(name_of).collect();
    let new_names: HashSet<&str> = new.iter().map(name_of).collect();
    let kept_old: Vec<&str> = old.iter().map(name_of).filter(|n| new_names.contains(n)).collect();
    let kept_new: Vec<&str> = new.iter().map(name_of).filter(|n| old_names.contains(n)).collect();
    if kept_old != kept_new {
        ops.push(PatchOperation::Replace(ReplaceOperation { path: path.clone(), value: Value::Array(new.to_vec()) }));
        return;
    }
    // Removals from the end, so earlier indices stay valid.
    for (i, item) in old.iter().enumerate().rev() {
        if !new_names.contains(name_of(item)) {
            path.push_back(i);
            ops.push(PatchOperation::Remove(RemoveOperation { path: path.clone() }));
            path.pop_back();
        }
    }
    let mut kept = old.iter().filter(|item| new_names.contains(name_of(item))).peekable();
    for (k, item) in new.iter().enumerate() {
        path.push_back(k);
        match kept.peek() {
            Some(current) if name_of(current) == name_of(item) => {
                diff_value(path, current, item, ops);
                kept.next();
            }
            _ => ops.push(PatchOperation::Add(AddOperation { path: path.clone(), value: item.clone() })),
        }
        path.pop_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(old: Value, new: Value) -> Patch {
        let patch = diff(&old, &new);
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        assert_eq!(doc, new, "patch {patch:?} does not reproduce the target");
        patch
    }

    #[test]
    fn equal_documents_give_an_empty_patch() {
        let v = json!({"a": [{"name": "x"}]});
        assert!(check(v.clone(), v).0.is_empty());
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
}
