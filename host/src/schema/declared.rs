//! What a plugin declares it reads and writes: per topic it consumes, a
//! reader schema (open by convention: only the fields it uses), and per
//! topic it publishes, a writer schema (closed: exactly what it sends),
//! each with a major version. The plugin's author ships them in the wasm
//! file (a `plugbus:contracts` custom section, a JSON document the SDK's
//! `contracts!` macro embeds); the operator's manifest (`NAME.toml`
//! `[consumes."TOPIC"]`, `[publishes."TOPIC"]`) overrides them per topic,
//! with a schema inline or in a file beside the manifest.
//!
//! This room owns reading and compiling them and checking a publish
//! against them; the plugin room checks a new version's against the
//! running plugins' ([`super::compat`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{compile_value, Contract, Mode, SchemaError};

/// The custom section a plugin's declarations are embedded in.
pub const SECTION: &str = "plugbus:contracts";

/// One declared schema: `{ major = 1, schema = "file.json" | { ... } }`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    /// The schema's major version (CloudEvents `dataschema`
    /// `/v1/schemas/TOPIC/MAJOR`). Default 1.
    #[schemars(example = 1)]
    pub major: Option<u32>,
    /// A JSON Schema (2020-12) inline, or the path of a JSON file (in a
    /// manifest: relative to its directory).
    #[schemars(example = &"inventory.insufficient.json")]
    pub schema: serde_json::Value,
}

/// Declarations as written: the embedded document's shape, and a
/// manifest's two tables.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Declarations {
    /// Reader schemas, by topic.
    #[serde(default)]
    pub consumes: BTreeMap<String, Declaration>,
    /// Writer schemas, by topic.
    #[serde(default)]
    pub publishes: BTreeMap<String, Declaration>,
}

/// Why a plugin's declarations cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The embedded document is not one.
    #[error("its `{SECTION}` section is not a contracts document ({reason}); it holds {{\"consumes\": {{TOPIC: {{\"major\": N, \"schema\": {{...}}}}}}, \"publishes\": {{...}}}}")]
    Section {
        /// What the parser said.
        reason: String,
    },
    /// A schema file named in the manifest cannot be read.
    #[error("the schema file {file} of `{topic}`: {reason}")]
    File {
        /// The topic.
        topic: String,
        /// The file.
        file: PathBuf,
        /// What the file system said.
        reason: String,
    },
    /// An embedded schema names a file (only a manifest may).
    #[error(
        "the schema of `{topic}` in its `{SECTION}` section names a file; embed the schema itself"
    )]
    FileInSection {
        /// The topic.
        topic: String,
    },
    /// A declared schema is not a usable one.
    #[error("the schema it {direction} `{topic}` with: {source}")]
    Schema {
        /// `consumes` or `publishes`.
        direction: &'static str,
        /// The topic.
        topic: String,
        /// Why.
        source: SchemaError,
    },
}

/// A plugin's declared contracts, compiled.
#[derive(Debug, Default)]
pub struct Declared {
    /// The plugin.
    pub plugin: String,
    /// Reader schemas, by topic.
    pub consumes: BTreeMap<String, Arc<Contract>>,
    /// Writer schemas, by topic.
    pub publishes: BTreeMap<String, Arc<Contract>>,
}

/// The `plugbus:contracts` section of a wasm file (a core module or a
/// component, where it is inside the core module), if it has one.
pub fn section(wasm: &[u8]) -> Option<Vec<u8>> {
    wasmparser::Parser::new(0)
        .parse_all(wasm)
        .map_while(Result::ok)
        .find_map(|payload| match payload {
            wasmparser::Payload::CustomSection(c) if c.name() == SECTION => Some(c.data().to_vec()),
            _ => None,
        })
}

/// Where a declaration comes from.
enum Source<'a> {
    Section,
    Manifest(&'a Path),
}

impl Declared {
    /// `plugin`'s contracts: those embedded (`section`, the bytes of its
    /// `plugbus:contracts` section), each overridden by its manifest's
    /// (`manifest`, whose files are relative to `base`).
    pub fn build(
        plugin: &str,
        section: Option<&[u8]>,
        manifest: &Declarations,
        base: &Path,
    ) -> Result<Declared, DeclareError> {
        let embedded: Declarations = match section {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| DeclareError::Section {
                reason: e.to_string(),
            })?,
            None => Declarations::default(),
        };
        let mut declared = Declared {
            plugin: plugin.to_string(),
            ..Declared::default()
        };
        for (from, decls) in [
            (Source::Section, &embedded),
            (Source::Manifest(base), manifest),
        ] {
            for (topic, d) in &decls.consumes {
                let c = compile_declaration("consumes", topic, d, &from)?;
                declared.consumes.insert(topic.clone(), c);
            }
            for (topic, d) in &decls.publishes {
                let c = compile_declaration("publishes", topic, d, &from)?;
                declared.publishes.insert(topic.clone(), c);
            }
        }
        Ok(declared)
    }

    /// Whether it declares nothing.
    pub fn is_empty(&self) -> bool {
        self.consumes.is_empty() && self.publishes.is_empty()
    }

    /// Name the major `event` was checked against as its producer's
    /// (`dataschema`), unless it names one already or this plugin declares
    /// nothing for its topic.
    pub fn stamp(&self, event: &mut crate::event::Event) {
        if event.extension("dataschema").is_some() {
            return;
        }
        if let Some(c) = self.publishes.get(&event.topic) {
            event.extensions.push(("dataschema".into(), c.uri()));
        }
    }

    /// What the API shows: each topic's major and schema.
    pub fn describe(&self) -> serde_json::Value {
        let side = |m: &BTreeMap<String, Arc<Contract>>| -> serde_json::Value {
            m.iter()
                .map(|(t, c)| {
                    (
                        t.clone(),
                        serde_json::json!({"major": c.major, "schema": c.schema}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        serde_json::json!({"consumes": side(&self.consumes), "publishes": side(&self.publishes)})
    }
}

fn compile_declaration(
    direction: &'static str,
    topic: &str,
    d: &Declaration,
    from: &Source<'_>,
) -> Result<Arc<Contract>, DeclareError> {
    let schema = match (&d.schema, from) {
        (serde_json::Value::String(name), Source::Manifest(base)) => {
            let file = base.join(name);
            let file_error = |reason: String| DeclareError::File {
                topic: topic.to_string(),
                file: file.clone(),
                reason,
            };
            let bytes = std::fs::read(&file).map_err(|e| file_error(e.to_string()))?;
            if bytes.len() > super::SCHEMA_BYTES_MAX {
                return Err(file_error(format!(
                    "{} bytes, more than the {} a schema may have",
                    bytes.len(),
                    super::SCHEMA_BYTES_MAX
                )));
            }
            serde_json::from_slice(&bytes).map_err(|e| file_error(format!("not JSON: {e}")))?
        }
        (serde_json::Value::String(_), Source::Section) => {
            return Err(DeclareError::FileInSection {
                topic: topic.to_string(),
            })
        }
        (inline, _) => inline.clone(),
    };
    let schema_error = |source: SchemaError| DeclareError::Schema {
        direction,
        topic: topic.to_string(),
        source,
    };
    plugbus_contract::topic::validate_topic(topic)
        .map_err(|e| schema_error(SchemaError::Topic(topic.to_string(), e.to_string())))?;
    compile_value(topic, schema, d.major.unwrap_or(1), Mode::Enforce)
        .map(Arc::new)
        .map_err(schema_error)
}
