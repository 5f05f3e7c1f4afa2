//! Label selector matching, as the API server defines it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("label selector operator {operator:?} on key {key:?} is not In, NotIn, Exists or DoesNotExist")]
    UnknownOperator { key: String, operator: String },
    #[error("label selector operator {operator} on key {key:?} needs at least one value")]
    MissingValues { key: String, operator: String },
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    matches_with(selector, |key| labels.get(key).map(String::as_str))
}

/// [`matches`](fn@matches) for labels kept in any form: `label` looks a label's value up by its key.
pub fn matches_with<'l>(
    selector: &LabelSelector,
    label: impl Fn(&str) -> Option<&'l str>,
) -> Result<bool, SelectorError> {
    let labels_match = selector.match_labels.iter().flatten().all(|(k, v)| label(k) == Some(v.as_str()));
    if !labels_match {
        return Ok(false);
    }
    for req in selector.match_expressions.iter().flatten() {
        if !requirement_matches(req, &label)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn requirement_matches<'l>(
    req: &LabelSelectorRequirement,
    label: impl Fn(&str) -> Option<&'l str>,
) -> Result<bool, SelectorError> {
    let values = req.values.as_deref().unwrap_or_default();
    let value = label(&req.key);
    let need_values = || {
        if values.is_empty() {
            Err(SelectorError::MissingValues { key: req.key.clone(), operator: req.operator.clone() })
        } else {
            Ok(())
        }
    };
    match req.operator.as_str() {
        "In" => {
            need_values()?;
            Ok(value.is_some_and(|v| values.iter().any(|w| w == v)))
        }
        "NotIn" => {
            need_values()?;
            Ok(!value.is_some_and(|v| values.iter().any(|w| w == v)))
        }
        "Exists" => Ok(value.is_some()),
        "DoesNotExist" => Ok(value.is_none()),
        other => Err(SelectorError::UnknownOperator { key: req.key.clone(), operator: other.to_string() }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A `matchExpressions` requirement (shared with the other selector tests).
    pub(crate) fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])).unwrap());
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "shop")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["pilot", "canary"]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(&sel, &labels(&[("team", "shop"), ("tier", "pilot")])).unwrap());
        assert!(!matches(&sel, &labels(&[("team", "shop"), ("tier", "prod")])).unwrap());
        assert!(!matches(&sel, &labels(&[("team", "shop"), ("tier", "pilot"), ("legacy", "y")])).unwrap());
        assert!(!matches(&sel, &labels(&[("tier", "pilot")])).unwrap());
    }

    #[test]
    fn not_in_matches_missing_key() {
        let sel =
            LabelSelector { match_expressions: Some(vec![expr("env", "NotIn", &["prod"])]), ..Default::default() };
        assert!(matches(&sel, &labels(&[])).unwrap());
        assert!(!matches(&sel, &labels(&[("env", "prod")])).unwrap());
    }

    #[test]
    fn bad_operator_is_an_error_not_a_match() {
        let sel = LabelSelector { match_expressions: Some(vec![expr("env", "Like", &["p"])]), ..Default::default() };
        assert!(matches(&sel, &labels(&[])).is_err());
        let sel = LabelSelector { match_expressions: Some(vec![expr("env", "In", &[])]), ..Default::default() };
        assert_eq!(
            matches(&sel, &labels(&[])),
            Err(SelectorError::MissingValues { key: "env".into(), operator: "In".into() })
        );
    }
}
