//! The images an empty policy field stands for. A policy that names no agent or
//! auto-instrumentation image gets the ones this operator ships with, resolved at injection
//! time: they are never written into the policy, so upgrading the operator upgrades the agents
//! (through a normal phased rollout, since the image is part of the manifest hash).

use super::language::Language;
use crate::api::{AgentSpec, InstrumentationSpec};
use std::collections::BTreeMap;

/// The agent image a build of the operator ships with (both binaries are in the one image).
pub fn shipped_agent_image() -> String {
    format!("ghcr.io/tracelight/tracelight:{}", env!("CARGO_PKG_VERSION"))
}

/// The default images, from the operator's flags (`--agent-image`, `--instrumentation-image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultImages {
    pub agent: String,
    /// Per language; a language missing here uses its upstream image.
    pub instrumentation: BTreeMap<Language, String>,
}

impl Default for DefaultImages {
    fn default() -> Self {
        DefaultImages { agent: shipped_agent_image(), instrumentation: BTreeMap::new() }
    }
}

impl DefaultImages {
    /// The agent image for `spec`: its own when it pins one, else the default.
    pub fn agent<'a>(&'a self, spec: &'a AgentSpec) -> &'a str {
        spec.image.as_deref().unwrap_or(&self.agent)
    }

    /// The auto-instrumentation image of `language` for `spec`: the policy's when it pins one,
    /// else the operator's default, else the upstream image.
    pub fn instrumentation<'a>(&'a self, language: Language, spec: &'a InstrumentationSpec) -> &'a str {
        language
            .settings(spec)
            .and_then(|s| s.image.as_deref())
            .or_else(|| self.instrumentation.get(&language).map(String::as_str))
            .unwrap_or(language.default_image())
    }
}

/// Parses `--instrumentation-image` values: `java=registry/image:tag`.
pub fn parse_instrumentation_image(value: &str) -> Result<(Language, String), String> {
    let (lang, image) = value.split_once('=').ok_or_else(|| format!("expected LANGUAGE=IMAGE, got {value:?}"))?;
    let language = Language::parse(lang).ok_or_else(|| {
        format!("unknown language {lang:?} (one of {})", Language::ALL.map(Language::as_str).join(", "))
    })?;
    let image = image.trim();
    if image.is_empty() {
        return Err(format!("no image for {lang}"));
    }
    Ok((language, image.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LanguageSpec;

    #[test]
    fn an_empty_field_means_the_operators_image_and_a_pinned_one_stays() {
        let defaults = DefaultImages { agent: "reg/agent:b".into(), instrumentation: BTreeMap::new() };
        assert_eq!(defaults.agent(&AgentSpec::default()), "reg/agent:b");
        let pinned = AgentSpec { image: Some("reg/agent:a".into()), ..Default::default() };
        assert_eq!(defaults.agent(&pinned), "reg/agent:a");
    }

    #[test]
    fn instrumentation_images_resolve_policy_then_operator_then_upstream() {
        let mut defaults = DefaultImages::default();
        let empty = InstrumentationSpec::default();
        assert_eq!(defaults.instrumentation(Language::Java, &empty), Language::Java.default_image());
        defaults.instrumentation.insert(Language::Java, "mirror/java:1".into());
        assert_eq!(defaults.instrumentation(Language::Java, &empty), "mirror/java:1");
        let pinned = InstrumentationSpec {
            java: Some(LanguageSpec { image: Some("mine/java:2".into()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(defaults.instrumentation(Language::Java, &pinned), "mine/java:2");
    }

    #[test]
    fn instrumentation_image_flags_are_checked() {
        assert_eq!(parse_instrumentation_image("java=mirror/java:1"), Ok((Language::Java, "mirror/java:1".into())));
        assert!(parse_instrumentation_image("java").is_err());
        assert!(parse_instrumentation_image("cobol=x").unwrap_err().contains("unknown language"));
        assert!(parse_instrumentation_image("python= ").is_err());
    }
}
