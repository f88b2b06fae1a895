//! Event contracts: the JSON Schema declared for a topic's `data`, its
//! major version and its mode, and the check of an event against it where
//! events enter (ingress, and a plugin's publish). This room owns the
//! registry (compiled once per schema), its directory on disk and the
//! words of a refusal; the HTTP API and the runtime call it.
//!
//! A topic's schema lives in `DIR/TOPIC/MAJOR.json`; the highest major is
//! the topic's, and `DIR/TOPIC/mode` says `enforce` (the default: an event
//! that does not fit is refused), `warn` (accepted, counted and logged) or
//! `off`. Schemas use JSON Schema 2020-12 unless they say otherwise
//! (`$schema`); a `$ref` outside the schema is refused (nothing is fetched).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub mod asyncapi;
pub mod compat;
pub mod declared;
pub mod upcast;
pub mod violations;

pub use declared::{Declarations, Declared};

/// The largest schema accepted, in bytes.
pub const SCHEMA_BYTES_MAX: usize = 1 << 20;

/// What happens to an event that does not fit its topic's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refused, with the field and the rule named.
    Enforce,
    /// Accepted, counted and logged.
    Warn,
    /// Not checked.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Mode, SchemaError> {
        match s.trim() {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            "off" => Ok(Mode::Off),
            other => Err(SchemaError::Mode(other.to_string())),
        }
    }
}

impl Mode {
    /// As written in `DIR/TOPIC/mode` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}

/// Why a schema was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The topic is not a topic.
    #[error("`{0}` is not a topic: {1}")]
    Topic(String, String),
    /// Not JSON.
    #[error("the schema for `{topic}` is not JSON ({reason}); send a JSON Schema document")]
    NotJson {
        /// The topic.
        topic: String,
        /// What the JSON parser said.
        reason: String,
    },
    /// Too big.
    #[error("the schema for `{topic}` is {bytes} bytes, more than the {SCHEMA_BYTES_MAX} a schema may have; split it or drop what no consumer reads")]
    TooBig {
        /// The topic.
        topic: String,
        /// The schema's size.
        bytes: usize,
    },
    /// Not a valid JSON Schema, or one that refers outside itself.
    #[error("the schema for `{topic}` is not a usable JSON Schema: {reason}; fix it (a `$ref` may point only inside the schema)")]
    Invalid {
        /// The topic.
        topic: String,
        /// What the schema compiler said.
        reason: String,
    },
    /// A mode that is not one.
    #[error("`{0}` is not a schema mode: use enforce, warn or off")]
    Mode(String),
    /// A major version that would go back.
    #[error("`{topic}` has major version {current}; a schema for major {asked} would go back: send {current} (a compatible change) or {next} (a breaking one)", next = current + 1)]
    OlderMajor {
        /// The topic.
        topic: String,
        /// Its major version now.
        current: u32,
        /// The one asked for.
        asked: u32,
    },
    /// An upcaster from a major the topic has not passed.
    #[error("`{topic}` has major version {current}: an upcaster goes from a major below it (1 to {current} - 1), not from {from}; declare the new major first")]
    UpcasterMajor {
        /// The topic.
        topic: String,
        /// The major it would start from.
        from: u32,
        /// The topic's major.
        current: u32,
    },
    /// An upcaster that is not one.
    #[error("the upcaster of `{topic}`: {reason}")]
    Upcaster {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The directory could not be read or written.
    #[error("the schema directory {dir}: {reason}")]
    Io {
        /// The schema directory.
        dir: PathBuf,
        /// What the file system said.
        reason: String,
    },
}

/// A topic's declared contract.
pub struct Contract {
    /// The topic.
    pub topic: String,
    /// Its major version.
    pub major: u32,
    /// What happens to an event that does not fit.
    pub mode: Mode,
    /// The schema, as declared.
    pub schema: serde_json::Value,
    validator: jsonschema::Validator,
    /// Its checks' counters (valid, invalid, warned), made at the first
    /// check so that a check allocates nothing.
    counters: std::sync::OnceLock<[Counter; 3]>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("topic", &self.topic)
            .field("major", &self.major)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Contract {
    /// The `dataschema` URI of events checked against it.
    pub fn uri(&self) -> String {
        format!("/v1/schemas/{}/{}", self.topic, self.major)
    }

    /// Where `data` first breaks it (none: it fits), whatever its mode.
    pub fn violation(&self, data: &[u8]) -> Option<Violation> {
        first_violation(self, data)
    }

    /// What the API shows.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "topic": self.topic, "major": self.major, "mode": self.mode.as_str(),
            "dataschema": self.uri(), "schema": self.schema,
        })
    }
}

/// Where an event broke a schema: its topic's, or the one its producer
/// declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The topic.
    pub topic: String,
    /// Its major version.
    pub major: u32,
    /// The JSON pointer of the value that broke it (`""`: the root).
    pub pointer: String,
    /// The schema keyword it broke (`required`, `minimum`, ...).
    pub keyword: String,
    /// The validator's words.
    pub message: String,
    /// The plugin whose declared schema it broke (none: the topic's).
    pub declared_by: Option<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = place(&self.pointer);
        match &self.declared_by {
            None => write!(
                f,
                "data of `{}` does not fit its schema (major {}): `{}` at `{}`: {}; fix the producer, or declare a new major with GET/PUT /v1/schemas/{}",
                self.topic, self.major, self.keyword, at, self.message, self.topic
            ),
            Some(plugin) => write!(
                f,
                "data of `{}` does not fit the schema `{plugin}` declares it publishes (major {}): `{}` at `{}`: {}; publish what it declares, or change its declaration (its contracts)",
                self.topic, self.major, self.keyword, at, self.message
            ),
        }
    }
}

/// A JSON pointer as a refusal shows it: the root as `/`.
pub(crate) fn place(pointer: &str) -> &str {
    if pointer.is_empty() {
        "/"
    } else {
        pointer
    }
}

/// Labels of the checks' counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CheckLabels {
    /// The topic.
    pub topic: String,
    /// `valid`, `invalid` (refused), `warned` (accepted anyway) or
    /// `unparsable` (not JSON where a schema says JSON).
    pub outcome: String,
}

/// Every topic's contract. See the module docs.
pub struct Schemas {
    topics: ArcSwap<HashMap<String, Arc<Contract>>>,
    /// Upcasters by topic and the major they start from.
    upcasters: ArcSwap<HashMap<(String, u32), Arc<upcast::Upcaster>>>,
    /// Where they are kept (none: in memory only).
    dir: Option<PathBuf>,
    checks: Family<CheckLabels, Counter>,
    /// Who broke which contract.
    violations: violations::Book,
    /// Serialises changes.
    writing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas")
            .field("topics", &self.topics.load().len())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Default for Schemas {
    fn default() -> Schemas {
        Schemas {
            topics: ArcSwap::default(),
            upcasters: ArcSwap::default(),
            dir: None,
            checks: Family::default(),
            violations: violations::Book::default(),
            writing: std::sync::Mutex::new(()),
        }
    }
}

impl Schemas {
    /// The contracts kept in `dir` (made if missing), counting checks in
    /// `checks`; none kept without one.
    pub fn open(
        dir: Option<&Path>,
        checks: Family<CheckLabels, Counter>,
    ) -> Result<Schemas, SchemaError> {
        let schemas = Schemas {
            dir: dir.map(Path::to_path_buf),
            checks,
            ..Schemas::default()
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let mut topics = HashMap::new();
            let mut upcasters = HashMap::new();
            for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
                let entry = entry.map_err(|e| io(dir, e))?;
                let topic = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() {
                    if let Some(c) = load_topic(&entry.path(), &topic)? {
                        topics.insert(topic.clone(), Arc::new(c));
                    }
                    for (from, u) in load_upcasters(&entry.path(), &topic)? {
                        upcasters.insert((topic.clone(), from), Arc::new(u));
                    }
                }
            }
            schemas.topics.store(Arc::new(topics));
            schemas.upcasters.store(Arc::new(upcasters));
        }
        Ok(schemas)
    }

    /// `topic`'s contract, if it has one.
    pub fn get(&self, topic: &str) -> Option<Arc<Contract>> {
        self.topics.load().get(topic).cloned()
    }

    /// Every contract, by topic.
    pub fn list(&self) -> Vec<Arc<Contract>> {
        let mut all: Vec<Arc<Contract>> = self.topics.load().values().cloned().collect();
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        all
    }

    /// Declare `schema` (JSON bytes) for `topic`: its major `major` (none:
    /// the current one, or 1), mode `mode` (none: as it was, or enforce).
    /// Kept in the directory before it applies.
    pub fn put(
        &self,
        topic: &str,
        schema: &[u8],
        major: Option<u32>,
        mode: Option<Mode>,
    ) -> Result<Arc<Contract>, SchemaError> {
        plugbus_contract::topic::validate_topic(topic)
            .map_err(|e| SchemaError::Topic(topic.to_string(), e.to_string()))?;
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.get(topic);
        let major = major.unwrap_or(current.as_ref().map_or(1, |c| c.major));
        if let Some(c) = current.as_ref().filter(|c| major < c.major) {
            return Err(SchemaError::OlderMajor {
                topic: topic.to_string(),
                current: c.major,
                asked: major,
            });
        }
        let mode = mode.unwrap_or(current.as_ref().map_or(Mode::Enforce, |c| c.mode));
        let contract = Arc::new(compile(topic, schema, major, mode)?);
        if let Some(dir) = &self.dir {
            let at = dir.join(topic);
            std::fs::create_dir_all(&at).map_err(|e| io(dir, e))?;
            write_atomically(&at.join(format!("{major}.json")), schema).map_err(|e| io(dir, e))?;
            write_atomically(&at.join("mode"), mode.as_str().as_bytes()).map_err(|e| io(dir, e))?;
        }
        let mut topics = HashMap::clone(&self.topics.load());
        topics.insert(topic.to_string(), contract.clone());
        self.topics.store(Arc::new(topics));
        Ok(contract)
    }

    /// Name the major of its topic's schema `event` was checked against
    /// (`dataschema`), unless it names one itself or its topic has none.
    pub fn stamp(&self, event: &mut crate::event::Event) {
        if event.extension("dataschema").is_some() {
            return;
        }
        if let Some(c) = self.topics.load().get(&event.topic) {
            if c.mode != Mode::Off {
                event.extensions.push(("dataschema".into(), c.uri()));
            }
        }
    }

    /// `topic`'s upcaster from major `from` to `from + 1`, if it has one.
    pub fn upcaster(&self, topic: &str, from: u32) -> Option<Arc<upcast::Upcaster>> {
        self.upcasters
            .load()
            .get(&(topic.to_string(), from))
            .cloned()
    }

    /// The majors `topic` has upcasters from, in order.
    pub fn upcasters_of(&self, topic: &str) -> Vec<u32> {
        let mut from: Vec<u32> = self
            .upcasters
            .load()
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, m)| *m)
            .collect();
        from.sort_unstable();
        from
    }

    /// Declare `topic`'s upcaster from major `from` to `from + 1`
    /// (`bytes`: its rules, JSON); `topic` must have a schema of a major
    /// above `from`. Kept in the directory before it applies.
    pub fn put_upcaster(
        &self,
        topic: &str,
        from: u32,
        bytes: &[u8],
    ) -> Result<Arc<upcast::Upcaster>, SchemaError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.get(topic).map_or(0, |c| c.major);
        if from == 0 || from >= current {
            return Err(SchemaError::UpcasterMajor {
                topic: topic.to_string(),
                from,
                current,
            });
        }
        let upcaster =
            Arc::new(
                upcast::Upcaster::parse(bytes).map_err(|e| SchemaError::Upcaster {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                })?,
            );
        if let Some(dir) = &self.dir {
            let at = dir.join(topic);
            std::fs::create_dir_all(&at).map_err(|e| io(dir, e))?;
            write_atomically(&at.join(format!("upcast-{from}.json")), bytes)
                .map_err(|e| io(dir, e))?;
        }
        let mut all = HashMap::clone(&self.upcasters.load());
        all.insert((topic.to_string(), from), upcaster.clone());
        self.upcasters.store(Arc::new(all));
        Ok(upcaster)
    }

    /// Check `data` (an event's, on `topic`) against the topic's contract:
    /// the violation when the contract is enforced and it does not fit. A
    /// topic without one, or `off`, is not checked; `warn` counts and logs.
    pub fn check(&self, topic: &str, data: &[u8], producer: &str) -> Result<(), Box<Violation>> {
        self.check_publish(topic, data, producer, None)
    }

    /// [`Schemas::check`], then `data` against `declared`, the writer
    /// schema its producer declares for the topic (a violation of it is
    /// kept with the topic's others): the data parsed once for both.
    pub fn check_publish(
        &self,
        topic: &str,
        data: &[u8],
        producer: &str,
        declared: Option<&Contract>,
    ) -> Result<(), Box<Violation>> {
        let topics = self.topics.load();
        let own = topics.get(topic).filter(|c| c.mode != Mode::Off);
        if own.is_none() && declared.is_none() {
            return Ok(());
        }
        let value = match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("not JSON ({e})")),
        };
        if let Some(contract) = own {
            self.check_value(contract, &value, producer)?;
        }
        if let Some(writer) = declared {
            if let Some(mut v) = violation_of(writer, &value) {
                v.declared_by = Some(producer.to_string());
                self.violations.note(producer, &v, true);
                return Err(Box::new(v));
            }
        }
        Ok(())
    }

    /// `value` (parsed data, or why it is not JSON) against `contract`,
    /// counted and, in mode warn, logged.
    fn check_value(
        &self,
        contract: &Contract,
        value: &Result<serde_json::Value, String>,
        producer: &str,
    ) -> Result<(), Box<Violation>> {
        let found = violation_of(contract, value);
        let counters = contract.counters.get_or_init(|| {
            ["valid", "invalid", "warned"].map(|outcome| {
                self.checks
                    .get_or_create(&CheckLabels {
                        topic: contract.topic.clone(),
                        outcome: outcome.to_string(),
                    })
                    .clone()
            })
        });
        let counter = match (&found, contract.mode) {
            (None, _) => 0,
            (Some(_), Mode::Enforce) => 1,
            (Some(_), _) => 2,
        };
        counters[counter].inc();
        match found {
            Some(v) if contract.mode == Mode::Enforce => {
                self.violations.note(producer, &v, true);
                Err(Box::new(v))
            }
            Some(v) => {
                tracing::warn!(%producer, "{v} (mode warn: accepted)");
                self.violations.note(producer, &v, false);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Who broke which contract ([`violations`]).
    pub fn violations(&self) -> &violations::Book {
        &self.violations
    }

    /// Where `data` first breaks `topic`'s schema whatever its mode
    /// (none: it fits, or the topic has none). Counts nothing.
    pub fn fits(&self, topic: &str, data: &[u8]) -> Option<Violation> {
        first_violation(self.topics.load().get(topic)?, data)
    }
}

/// Where `data` first breaks `contract` (none: it fits).
fn first_violation(contract: &Contract, data: &[u8]) -> Option<Violation> {
    let value = serde_json::from_slice(data).map_err(|e| format!("not JSON ({e})"));
    violation_of(contract, &value)
}

/// Where `value` (parsed data, or why it is not JSON) first breaks
/// `contract` (none: it fits).
fn violation_of(
    contract: &Contract,
    value: &Result<serde_json::Value, String>,
) -> Option<Violation> {
    let violation = |pointer: String, keyword: &str, message: String| Violation {
        topic: contract.topic.clone(),
        major: contract.major,
        pointer,
        keyword: keyword.to_string(),
        message,
        declared_by: None,
    };
    let value = match value {
        Ok(v) => v,
        Err(why) => return Some(violation(String::new(), "type", why.clone())),
    };
    let error = contract.validator.validate(value).err()?;
    Some(violation(
        error.instance_path().to_string(),
        error.kind().keyword(),
        error.to_string(),
    ))
}

/// `schema` compiled for `topic`.
fn compile(topic: &str, schema: &[u8], major: u32, mode: Mode) -> Result<Contract, SchemaError> {
    if schema.len() > SCHEMA_BYTES_MAX {
        return Err(SchemaError::TooBig {
            topic: topic.to_string(),
            bytes: schema.len(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(schema).map_err(|e| SchemaError::NotJson {
            topic: topic.to_string(),
            reason: e.to_string(),
        })?;
    compile_value(topic, value, major, mode)
}

/// `value`, a parsed schema, compiled for `topic`.
fn compile_value(
    topic: &str,
    value: serde_json::Value,
    major: u32,
    mode: Mode,
) -> Result<Contract, SchemaError> {
    let invalid = |reason: String| SchemaError::Invalid {
        topic: topic.to_string(),
        reason,
    };
    if !value.is_object() && !value.is_boolean() {
        return Err(invalid("a schema is an object (or true/false)".into()));
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&value)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Contract {
        topic: topic.to_string(),
        major,
        mode,
        schema: value,
        validator,
        counters: std::sync::OnceLock::new(),
    })
}

/// The contract kept in `dir` (a topic's directory): its highest major.
fn load_topic(dir: &Path, topic: &str) -> Result<Option<Contract>, SchemaError> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let major = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(major) = major.filter(|m| best.as_ref().is_none_or(|(b, _)| m > b)) {
            best = Some((major, path));
        }
    }
    let Some((major, path)) = best else {
        return Ok(None);
    };
    let mode = match std::fs::read_to_string(dir.join("mode")) {
        Ok(text) => text.parse()?,
        Err(_) => Mode::Enforce,
    };
    let bytes = std::fs::read(&path).map_err(|e| io(dir, e))?;
    compile(topic, &bytes, major, mode).map(Some)
}

/// The upcasters kept in `dir` (a topic's directory), by the major they
/// start from.
fn load_upcasters(dir: &Path, topic: &str) -> Result<Vec<(u32, upcast::Upcaster)>, SchemaError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let from = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("upcast-")?.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(from) = from {
            let bytes = std::fs::read(&path).map_err(|e| io(dir, e))?;
            let u = upcast::Upcaster::parse(&bytes).map_err(|e| SchemaError::Upcaster {
                topic: topic.to_string(),
                reason: e.to_string(),
            })?;
            out.push((from, u));
        }
    }
    Ok(out)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn io(dir: &Path, e: impl std::fmt::Display) -> SchemaError {
    SchemaError::Io {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
