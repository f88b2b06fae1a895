//! Whether a plugin version's declared schemas fit the running plugins'
//! before it replaces the running version: what it declares it publishes
//! must fit every running consumer's declared reader schema of that topic
//! (and the topic's own schema), and what every running producer declares
//! (and the topic's schema, for outside producers) must fit what it
//! declares it reads. A version that does not fit is refused, naming the
//! consumer, the topic and the field, and the running one keeps serving,
//! unless the host runs with `--accept-incompatible` (then it is logged).

use super::*;
use crate::schema::compat::{fits, Break};
use crate::schema::Contract;

/// Where a new version's declared schemas do not fit a running plugin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    /// The plugin whose new version it is, and that version.
    pub plugin: String,
    /// Its version, as `init` says.
    pub version: String,
    /// Who publishes the topic: a plugin, or the topic's schema.
    pub producer: String,
    /// Who reads it: a plugin, or the topic's schema.
    pub consumer: String,
    /// The topic.
    pub topic: String,
    /// The writer's and the reader's major versions.
    pub majors: (u32, u32),
    /// Where the writer's events may not fit the reader.
    pub at: Break,
}

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} does not fit: {} publishes `{}` (major {}) that {} cannot read (major {}): {}; keep what the reader needs, declare a new major with an upcaster, or run the host with --accept-incompatible",
            self.plugin,
            self.version,
            self.producer,
            self.topic,
            self.majors.0,
            self.consumer,
            self.majors.1,
            self.at
        )
    }
}

/// Who declared a schema: a plugin (named) or the topic itself.
fn party(plugin: Option<&str>, topic: &str) -> String {
    match plugin {
        Some(p) => format!("`{p}`"),
        None => format!("the schema of `{topic}` (/v1/schemas/{topic})"),
    }
}

impl Registry {
    /// Check `declared`, the schemas of `plugin`'s version `version`,
    /// against the running plugins' (but its own) and the topics'. A
    /// misfit is an error unless the host accepts incompatible versions
    /// (then a warning).
    pub(super) fn check_fit(
        &self,
        plugin: &str,
        version: &str,
        declared: &Declared,
    ) -> Result<(), PluginError> {
        let Some(misfit) = self.misfit(plugin, version, declared) else {
            return Ok(());
        };
        if self.settings.accept_incompatible {
            tracing::warn!(
                plugin,
                "{misfit} (--accept-incompatible: swapped in anyway)"
            );
            return Ok(());
        }
        Err(PluginError::Incompatible(Box::new(misfit)))
    }

    /// The running plugins but `plugin`.
    pub(super) fn others(&self, plugin: &str) -> Vec<Arc<RunningPlugin>> {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.name != plugin)
            .cloned()
            .collect()
    }

    /// The first place `declared` does not fit.
    fn misfit(&self, plugin: &str, version: &str, declared: &Declared) -> Option<Incompatible> {
        let others = self.others(plugin);
        let misfit =
            |producer: Option<&str>, consumer: Option<&str>, w: &Contract, r: &Contract| {
                fits(&w.schema, &r.schema).err().map(|at| Incompatible {
                    plugin: plugin.to_string(),
                    version: version.to_string(),
                    producer: party(producer, &w.topic),
                    consumer: party(consumer, &r.topic),
                    topic: w.topic.clone(),
                    majors: (w.major, r.major),
                    at,
                })
            };
        for (topic, w) in &declared.publishes {
            if let Some(r) = self.schemas.get(topic) {
                if let Some(m) = misfit(Some(plugin), None, w, &r) {
                    return Some(m);
                }
            }
            for other in others.iter().filter(|o| o.consumes(topic)) {
                let theirs = other.declared();
                if let Some(r) = theirs.consumes.get(topic) {
                    if let Some(m) = misfit(Some(plugin), Some(&other.name), w, r) {
                        return Some(m);
                    }
                }
            }
        }
        for (topic, r) in &declared.consumes {
            if let Some(w) = self.schemas.get(topic) {
                if let Some(m) = misfit(None, Some(plugin), &w, r) {
                    return Some(m);
                }
            }
            for other in &others {
                let theirs = other.declared();
                if let Some(w) = theirs.publishes.get(topic) {
                    if let Some(m) = misfit(Some(&other.name), Some(plugin), w, r) {
                        return Some(m);
                    }
                }
            }
        }
        None
    }

    /// `plugin`'s declared schemas: those its file `loaded` embeds, with
    /// its manifest's over them.
    pub(super) fn declared(
        &self,
        loaded: &runtime::LoadedPlugin,
        file: &Path,
        settings: &PluginSettings,
    ) -> Result<Arc<Declared>, PluginError> {
        Declared::build(
            loaded.name(),
            loaded.contracts(),
            &settings.declarations,
            &settings.manifest_dir,
        )
        .map(Arc::new)
        .map_err(|source| PluginError::Contracts {
            file: file.to_path_buf(),
            source,
        })
    }
}

impl RunningPlugin {
    /// Whether it subscribes to `topic`.
    pub(super) fn consumes(&self, topic: &str) -> bool {
        self.subscriptions
            .iter()
            .filter_map(|s| Pattern::parse(s).ok())
            .any(|p| p.matches(topic))
    }

    /// The schemas its version declares.
    pub(crate) fn declared(&self) -> Arc<Declared> {
        self.declared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Registry {
    /// Each running plugin's declared schemas, by name.
    pub fn declarations(&self) -> Vec<(String, Arc<Declared>)> {
        let mut all: Vec<(String, Arc<Declared>)> = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (r.name.clone(), r.declared()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
