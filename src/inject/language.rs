//! Language auto-instrumentation: which containers ask for which language, and what each
//! language needs (an init container copying the agent files, and environment variables).

use crate::api::keys::LANGUAGE_ANNOTATION;
use crate::api::{InstrumentationSpec, LanguageSpec};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Java,
    Nodejs,
    Python,
    Dotnet,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::Java, Language::Nodejs, Language::Python, Language::Dotnet];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Java => "java",
            Language::Nodejs => "nodejs",
            Language::Python => "python",
            Language::Dotnet => "dotnet",
        }
    }

    pub fn parse(text: &str) -> Option<Language> {
        match text.trim().to_ascii_lowercase().as_str() {
            "java" => Some(Language::Java),
            "nodejs" | "node" | "node.js" => Some(Language::Nodejs),
            "python" => Some(Language::Python),
            "dotnet" | ".net" => Some(Language::Dotnet),
            _ => None,
        }
    }

    /// The upstream OpenTelemetry auto-instrumentation image, used when neither the policy nor the
    /// operator names one.
    pub fn default_image(self) -> &'static str {
        match self {
            Language::Java => "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-java:2.21.0",
            Language::Nodejs => "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-nodejs:0.66.0",
            Language::Python => "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-python:0.59b0",
            Language::Dotnet => "ghcr.io/open-telemetry/opentelemetry-operator/autoinstrumentation-dotnet:1.13.0",
        }
    }

    /// Where the language's files are inside the pod (an emptyDir shared by the copying init
    /// container and the application containers).
    pub fn mount_path(self) -> String {
        format!("/otel-auto-instrumentation-{}", self.as_str())
    }

    /// Name of the emptyDir volume and of the init container filling it.
    pub fn volume_name(self) -> String {
        format!("tracelight-auto-{}", self.as_str())
    }

    /// The copy command of the init container, matching the upstream images' layout.
    pub fn copy_command(self) -> Vec<String> {
        let dest = self.mount_path();
        let cmd: Vec<String> = match self {
            Language::Java => vec!["cp".into(), "/javaagent.jar".into(), format!("{dest}/javaagent.jar")],
            _ => vec!["cp".into(), "-r".into(), "/autoinstrumentation/.".into(), dest],
        };
        cmd
    }

    pub fn settings(self, spec: &InstrumentationSpec) -> Option<&LanguageSpec> {
        match self {
            Language::Java => spec.java.as_ref(),
            Language::Nodejs => spec.nodejs.as_ref(),
            Language::Python => spec.python.as_ref(),
            Language::Dotnet => spec.dotnet.as_ref(),
        }
    }
}

/// The languages requested by the `tracelight.io/language` annotation: `java` for every
/// instrumented container, `app=java,worker=python` per container, or a mix (`python,worker=java`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LanguageRequest {
    pub default: Option<Language>,
    pub per_container: BTreeMap<String, Language>,
}

impl LanguageRequest {
    /// Parses the annotation; unknown languages become warnings and are ignored.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>, warnings: &mut Vec<String>) -> Self {
        let mut request = LanguageRequest::default();
        let Some(value) = annotations.and_then(|a| a.get(LANGUAGE_ANNOTATION)) else {
            return request;
        };
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (container, lang) = match entry.split_once('=') {
                Some((c, l)) => (Some(c.trim()), l),
                None => (None, entry),
            };
            let Some(language) = Language::parse(lang) else {
                warnings.push(format!(
                    "{LANGUAGE_ANNOTATION}: unknown language {:?} (known: java, nodejs, python, dotnet); ignored",
                    lang.trim()
                ));
                continue;
            };
            match container {
                Some(c) => {
                    request.per_container.insert(c.to_string(), language);
                }
                None => request.default = Some(language),
            }
        }
        request
    }

    pub fn for_container(&self, name: &str) -> Option<Language> {
        self.per_container.get(name).copied().or(self.default)
    }
}

/// How an instrumented container's environment changes for `language`.
pub enum EnvEdit {
    /// Set when the container does not set it.
    Set(&'static str, String),
    /// Join with the container's literal value (`user SEP ours`, or `ours SEP user` when
    /// `prepend`), or set when absent. A value from `valueFrom` cannot be joined: the language
    /// is then skipped for the container with a warning.
    Join { name: &'static str, value: String, separator: &'static str, prepend: bool },
}

/// The environment a language's auto-instrumentation needs.
pub fn env_edits(language: Language) -> Vec<EnvEdit> {
    let dir = language.mount_path();
    match language {
        Language::Java => vec![EnvEdit::Join {
            name: "JAVA_TOOL_OPTIONS",
            value: format!("-javaagent:{dir}/javaagent.jar"),
            separator: " ",
            prepend: false,
        }],
        Language::Nodejs => vec![EnvEdit::Join {
            name: "NODE_OPTIONS",
            value: format!("--require {dir}/autoinstrumentation.js"),
            separator: " ",
            prepend: false,
        }],
        // Python's site machinery loads the first `sitecustomize` on the path, so ours must come
        // before the user's entries; the user's entries are kept after it.
        Language::Python => vec![EnvEdit::Join {
            name: "PYTHONPATH",
            value: format!("{dir}/opentelemetry/instrumentation/auto_instrumentation:{dir}"),
            separator: ":",
            prepend: true,
        }],
        Language::Dotnet => vec![
            EnvEdit::Set("CORECLR_ENABLE_PROFILING", "1".into()),
            EnvEdit::Set("CORECLR_PROFILER", "{918728DD-259F-4A6A-AC2B-B85E1B658318}".into()),
            EnvEdit::Set(
                "CORECLR_PROFILER_PATH",
                format!("{dir}/linux-x64/OpenTelemetry.AutoInstrumentation.Native.so"),
            ),
            EnvEdit::Set("OTEL_DOTNET_AUTO_HOME", dir.clone()),
            EnvEdit::Join {
                name: "DOTNET_STARTUP_HOOKS",
                value: format!("{dir}/net/OpenTelemetry.AutoInstrumentation.StartupHook.dll"),
                separator: ":",
                prepend: false,
            },
            EnvEdit::Join {
                name: "DOTNET_ADDITIONAL_DEPS",
                value: format!("{dir}/AdditionalDeps"),
                separator: ":",
                prepend: false,
            },
            EnvEdit::Join {
                name: "DOTNET_SHARED_STORE",
                value: format!("{dir}/store"),
                separator: ":",
                prepend: false,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> (LanguageRequest, Vec<String>) {
        let mut warnings = Vec::new();
        let annotations = BTreeMap::from([(LANGUAGE_ANNOTATION.to_string(), value.to_string())]);
        (LanguageRequest::from_annotations(Some(&annotations), &mut warnings), warnings)
    }

    #[test]
    fn single_language_applies_to_every_container() {
        let (req, warnings) = parse("java");
        assert!(warnings.is_empty());
        assert_eq!(req.for_container("anything"), Some(Language::Java));
    }

    #[test]
    fn per_container_languages_override_the_default() {
        let (req, _) = parse("python, worker=java ,api=node");
        assert_eq!(req.for_container("web"), Some(Language::Python));
        assert_eq!(req.for_container("worker"), Some(Language::Java));
        assert_eq!(req.for_container("api"), Some(Language::Nodejs));
    }

    #[test]
    fn unknown_language_is_a_warning_not_an_error() {
        let (req, warnings) = parse("cobol,app=java");
        assert_eq!(req.default, None);
        assert_eq!(req.for_container("app"), Some(Language::Java));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("cobol"));
    }
}
