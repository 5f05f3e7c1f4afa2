//! `$(VAR)` expansion exactly as the kubelet does it (Kubernetes'
//! `third_party/forked/golang/expansion`): `$(NAME)` is replaced by NAME's value when NAME is
//! defined, left as written when it is not; `$$` is an escaped `$`; any other `$` is literal.

/// Expands `input` with `lookup`; undefined names stay as `$(NAME)`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is literal.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // No closing parenthesis: `$(` is literal and scanning goes on after it.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;
    use std::collections::BTreeMap;

    fn with(vars: &[(&str, &str)], input: &str) -> String {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        expand(input, |name| map.get(name).cloned())
    }

    #[test]
    fn defined_names_are_replaced() {
        assert_eq!(with(&[("A", "x"), ("B", "y")], "k=$(A),l=$(B)"), "k=x,l=y");
        assert_eq!(with(&[("A", "")], "[$(A)]"), "[]");
    }

    #[test]
    fn undefined_names_are_kept_verbatim() {
        assert_eq!(with(&[], "pod=$(TRACELIGHT_POD_NAME)"), "pod=$(TRACELIGHT_POD_NAME)");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(with(&[("A", "x")], "$$(A) $$ $$$(A)"), "$(A) $ $x");
    }

    #[test]
    fn lone_and_trailing_dollars_are_literal() {
        assert_eq!(with(&[("A", "x")], "$A $ é$é $"), "$A $ é$é $");
        assert_eq!(with(&[("A", "x")], "$(A"), "$(A");
        assert_eq!(with(&[("A", "x")], "$($(A)"), "$($(A)");
    }

    #[test]
    fn values_are_not_expanded_again() {
        assert_eq!(with(&[("A", "$(B)"), ("B", "no")], "$(A)"), "$(B)");
    }
}
