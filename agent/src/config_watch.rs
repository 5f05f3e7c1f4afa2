//! Live reconfiguration: poll the mounted config (and the Secret files it names) and apply a
//! valid change without a restart; an invalid one is logged and the running config is kept.
//!
//! Polling content, not inotify: ConfigMap and Secret volumes update through an atomic swap of
//! a `..data` symlink, which is easy to miss with file watches and trivial to see by reading.

use super::enrich;
use super::exporter::Client;
use super::metrics::{ReloadLabel, ReloadResult};
use super::pipeline::LiveSettings;
use super::rules::RuleSet;
use super::sampler::Threshold;
use super::settings::{self, Settings};
use super::Shared;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct ConfigWatcher {
    pub path: PathBuf,
    pub interval: Duration,
    pub export_timeout: Duration,
    pub shared: Arc<Shared>,
    pub clients: watch::Sender<Option<Arc<Client>>>,
    last_seen: Option<u64>,
    /// The unknown fields last logged, so a newer operator's additions are logged once, not at
    /// every reload.
    unknown_logged: Vec<String>,
}

impl ConfigWatcher {
    pub fn new(path: PathBuf, shared: Arc<Shared>, clients: watch::Sender<Option<Arc<Client>>>) -> ConfigWatcher {
        ConfigWatcher {
            path,
            interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
            shared,
            clients,
            last_seen: None,
            unknown_logged: Vec::new(),
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            self.poll();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Check once; apply when the content changed. Returns whether a new config was applied.
    pub fn poll(&mut self) -> bool {
        let fingerprint = fingerprint(&self.path);
        if self.last_seen == Some(fingerprint) {
            return false;
        }
        // Remember even a bad version, so it is logged once rather than every second.
        self.last_seen = Some(fingerprint);
        let loaded = settings::load(&self.path).map_err(ReloadError::from);
        if let Ok(s) = &loaded {
            self.note_unknown_fields(s);
        }
        match loaded.and_then(|s| self.build(s)) {
            Ok(()) => true,
            Err(e) => {
                self.shared.metrics.config_reloads.get_or_create(&ReloadLabel { result: ReloadResult::Rejected }).inc();
                tracing::warn!(error = %e, path = %self.path.display(), "config rejected; keeping the running config");
                false
            }
        }
    }

    /// Logs the fields a newer operator added that this agent ignores, once per distinct set.
    fn note_unknown_fields(&mut self, s: &Settings) {
        if s.unknown_fields.is_empty() || s.unknown_fields == self.unknown_logged {
            return;
        }
        tracing::info!(
            fields = ?s.unknown_fields,
            config_contract = s.config.contract_version,
            agent_contract = tracelight_contract::CONTRACT_VERSION,
            "config has fields this agent does not know (written by a newer operator); ignoring them"
        );
        self.unknown_logged = s.unknown_fields.clone();
    }

    fn build(&self, s: Settings) -> Result<(), ReloadError> {
        let client = Client::build(&s.export, self.export_timeout)?;
        let c = &s.config;
        let attributes = enrich::attributes_to_add(&self.shared.pipeline.identity, &c.resource_attributes);
        let pipeline = &self.shared.pipeline;
        let rules = RuleSet::compile(&c.sampling, &pipeline.identity, &pipeline.metrics)?;
        pipeline.set_live(LiveSettings {
            threshold: Threshold::for_ratio(c.sampling.ratio.get()),
            attributes,
            generation: c.generation,
            rules: (!rules.is_plain()).then(|| Arc::new(rules)),
            probe_below: c
                .probes
                .as_ref()
                .map_or(0, |p| tracelight_contract::probe::threshold_for_ratio(p.ratio.get())),
        });
        // Queued spans stay in the queue; the export loop picks up the new client for its next batch.
        self.clients.send_replace(Some(Arc::new(client)));
        tracing::info!(
            generation = c.generation,
            policy = %c.policy,
            ratio = c.sampling.ratio.get(),
            rules = c.sampling.rules.len(),
            endpoint = %s.export.endpoint,
            protocol = c.collector.protocol.as_str(),
            "config applied"
        );
        *self.shared.config.write().unwrap_or_else(|p| p.into_inner()) = Some(s.config);
        self.shared.metrics.config_reloads.get_or_create(&ReloadLabel { result: ReloadResult::Applied }).inc();
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error("cannot build the exporter: {0}")]
    Build(#[from] super::exporter::BuildError),
    #[error(transparent)]
    Rules(#[from] super::rules::RulesError),
}

/// A hash of the config file and every file it references (API key, CA); unreadable files hash
/// as absent, so their later appearance is noticed.
fn fingerprint(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let config = std::fs::read(path).ok();
    config.hash(&mut h);
    if let Some(cfg) = config.as_deref().and_then(|b| tracelight_contract::AgentConfig::parse(b).ok()).map(|p| p.config)
    {
        for file in [&cfg.collector.api_key_file, &cfg.collector.ca_file].into_iter().flatten() {
            std::fs::read(file).ok().hash(&mut h);
        }
    }
    h.finish()
}
