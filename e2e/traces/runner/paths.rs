//! Container paths -> host paths. A container sees its image's files and its volume mounts at
//! absolute paths; on the host those are directories of the runner. The runner rewrites every
//! absolute path under a mapped prefix in the container's command, args and env values (after
//! `$(VAR)` expansion), so a wrong path in the pod spec stays wrong on the host.

use std::path::{Path, PathBuf};

/// Mapped prefixes of one container, longest first.
#[derive(Clone, Debug, Default)]
pub struct PathMap {
    entries: Vec<(String, PathBuf)>,
}

impl PathMap {
    /// Maps container path `inside` (absolute) to host path `host`; a later, equal prefix wins
    /// (volume mounts shadow image files).
    pub fn add(&mut self, inside: &str, host: &Path) {
        let inside = inside.trim_end_matches('/').to_string();
        self.entries.retain(|(p, _)| *p != inside);
        self.entries.push((inside, host.to_path_buf()));
        self.entries.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    /// The host path of one container path, if a prefix maps it.
    pub fn host_path(&self, inside: &str) -> Option<PathBuf> {
        self.entries.iter().find_map(|(prefix, host)| {
            let rest = inside.strip_prefix(prefix.as_str())?;
            if rest.is_empty() {
                Some(host.clone())
            } else {
                rest.strip_prefix('/').map(|r| host.join(r))
            }
        })
    }

    /// Rewrites every mapped absolute path in `value`. A path starts at the beginning or after
    /// one of ` :=,` and a prefix must end at the end of the value or before one of `/ :,`.
    pub fn rewrite(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut i = 0;
        let bytes = value.as_bytes();
        while i < value.len() {
            let at_start = i == 0 || matches!(bytes[i - 1], b' ' | b':' | b'=' | b',');
            if bytes[i] == b'/' && at_start {
                let hit = self.entries.iter().find(|(prefix, _)| {
                    value[i..].starts_with(prefix.as_str())
                        && matches!(bytes.get(i + prefix.len()), None | Some(b'/' | b' ' | b':' | b','))
                });
                if let Some((prefix, host)) = hit {
                    out.push_str(&host.to_string_lossy());
                    i += prefix.len();
                    continue;
                }
            }
            let ch = value[i..].chars().next().expect("inside the string");
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PathMap;
    use std::path::Path;

    fn map() -> PathMap {
        let mut m = PathMap::default();
        m.add("/otel-auto-instrumentation-python", Path::new("/h/py"));
        m.add("/etc/tracelight/agent", Path::new("/h/cfg"));
        m.add("/etc", Path::new("/h/etc"));
        m
    }

    #[test]
    fn paths_in_lists_and_flags_are_rewritten() {
        let m = map();
        assert_eq!(
            m.rewrite("/otel-auto-instrumentation-python/opentelemetry/x:/otel-auto-instrumentation-python:/app/lib"),
            "/h/py/opentelemetry/x:/h/py:/app/lib"
        );
        assert_eq!(m.rewrite("--config=/etc/tracelight/agent/config.yaml"), "--config=/h/cfg/config.yaml");
        assert_eq!(m.rewrite("--require /etc/x.js"), "--require /h/etc/x.js");
        assert_eq!(m.rewrite("-javaagent:/etc/a.jar"), "-javaagent:/h/etc/a.jar");
    }

    #[test]
    fn only_whole_path_components_match() {
        let m = map();
        assert_eq!(m.rewrite("/etcetera/x"), "/etcetera/x");
        assert_eq!(m.rewrite("/otel-auto-instrumentation-python2"), "/otel-auto-instrumentation-python2");
        assert_eq!(m.rewrite("http://host/etc/x"), "http://host/etc/x");
        assert_eq!(m.rewrite("a/etc"), "a/etc");
    }

    #[test]
    fn longest_prefix_wins_and_host_path_resolves() {
        let m = map();
        assert_eq!(m.host_path("/etc/tracelight/agent/config.yaml").unwrap(), Path::new("/h/cfg/config.yaml"));
        assert_eq!(m.host_path("/etc/hosts").unwrap(), Path::new("/h/etc/hosts"));
        assert_eq!(m.host_path("/usr/bin/cp"), None);
    }
}
