//! A plugin's manifest: `plugins-dir/NAME.toml` beside `NAME.wasm`, the
//! operator's settings for that one plugin. Every field is optional; a
//! missing one takes the host's setting (its command-line flag) or the
//! default documented here. Unknown keys are refused with the key named, so
//! a typo never silently does nothing.
//!
//! ```toml
//! subscriptions = ["order.placed"]  # instead of what `init` returns
//! concurrency = 2                   # workers, each with its own instance
//! ordering_key = "subject"          # events with one key: one worker, in order
//! batch_events_max = 64
//!
//! [config]                          # passed to `init` (the config interface)
//! smtp_host = "mail.example"
//!
//! [limits]
//! memory_bytes_max = 67108864
//! deadline_ms = 1000                # CPU time per `handle` call (a batch)
//! stack_bytes_max = 524288
//! output_lines_per_s_max = 100      # guest stdout/stderr lines kept
//! state_bytes_max = 67108864        # state (keys, values, timers) kept
//! timers_max = 100000               # timers set at once
//! timer_delay_ms_max = 2592000000   # how far ahead a timer may be due (30 days)
//!
//! [publish]
//! allow = ["inventory.>"]           # topics it may publish to (none: any)
//! deny = ["inventory.internal.>"]   # refused even when allowed
//! rate_events_per_s_max = 10000     # follow-up events per second (over: held)
//! chain_events_max = 1000           # follow-ups one causal chain may have
//!
//! [overflow]                        # when its queue is full (memory mode)
//! policy = "block"                  # or "drop"
//! timeout_ms = 5000                 # how long a publisher waits (block)
//!
//! [retry]
//! max_attempts = 5
//! backoff_ms_min = 100
//! backoff_ms_max = 30000
//! ordering = "none"                 # or "strict"
//!
//! [consumes."order.placed"]         # its reader schema (open), major 1
//! schema = "order.placed.json"      # beside the manifest, or inline
//!
//! [publishes."inventory.insufficient"]  # its writer schema (closed)
//! major = 1
//! schema = { type = "object", additionalProperties = false }
//! ```
//!
//! It owns parsing and checking the file; `plugin` applies it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bus::{OrderingKey, Overflow};
use crate::schema::declared::{Declaration, Declarations};
use plugbus_contract::topic::Pattern;

/// The most workers a plugin may ask for.
pub const CONCURRENCY_MAX: u32 = 64;

/// The settings an operator gives one plugin, whatever the plugin itself
/// says: what it consumes, how many workers run it, the bounds of its
/// sandbox, where it may publish, and how its failures are retried.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Topic patterns to consume instead of those `init` returns.
    #[schemars(example = vec!["order.placed"])]
    pub subscriptions: Option<Vec<String>>,
    /// Workers for this plugin, each with its own instance. Default 1.
    #[schemars(example = 2)]
    pub concurrency: Option<u32>,
    /// What decides which worker an event goes to, and what strict
    /// ordering holds back: `subject` (default), `topic`, `source`,
    /// `correlationid` (the chain: a saga's events of one order), or
    /// `extension:NAME`.
    #[schemars(example = &"subject")]
    pub ordering_key: Option<String>,
    /// Most events per `handle` call. Default: the host's
    /// `--batch-events-max` (256).
    #[schemars(example = 64)]
    pub batch_events_max: Option<u32>,
    /// Values the plugin reads with the config interface (and
    /// `wasi:config/store`), passed to `init`.
    #[serde(default)]
    #[schemars(example = [("smtp_host", "mail.example")].into_iter().collect::<BTreeMap<_, _>>())]
    pub config: BTreeMap<String, String>,
    /// Bounds on each call.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Which topics it may publish to, and how fast.
    #[serde(default)]
    pub publish: PublishSection,
    /// What a full queue does.
    #[serde(default)]
    pub overflow: OverflowSection,
    /// Retries.
    #[serde(default)]
    pub retry: RetrySection,
    /// The reader schema of a topic it consumes (open: the fields it
    /// uses), by topic; overrides the one its file embeds.
    #[serde(default)]
    pub consumes: BTreeMap<String, Declaration>,
    /// The writer schema of a topic it publishes (closed: exactly what it
    /// sends), by topic; overrides the one its file embeds. What it
    /// publishes is checked against it.
    #[serde(default)]
    pub publishes: BTreeMap<String, Declaration>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory an instance may grow to. Default: `--memory-bytes-max`.
    #[schemars(example = 67108864)]
    pub memory_bytes_max: Option<u64>,
    /// CPU time a `handle` call may use. Default: `--deadline-ms`.
    #[schemars(example = 1000)]
    pub deadline_ms: Option<u64>,
    /// WebAssembly stack a call may use. Default: 524288 (512 KiB; not a
    /// `run` flag: `plugbus compile --stack-bytes-max` sets it for a
    /// precompiled plugin).
    #[schemars(example = 524288)]
    pub stack_bytes_max: Option<u64>,
    /// Lines of guest stdout/stderr kept per second (the rest are counted
    /// and dropped). Default 100.
    #[schemars(example = 100)]
    pub output_lines_per_s_max: Option<u32>,
    /// State (keys and values, and its timers) it may keep, in bytes.
    /// Default 64 MiB.
    #[schemars(example = 67108864)]
    pub state_bytes_max: Option<u64>,
    /// Timers it may keep set at once. Default 100000.
    #[schemars(example = 100000)]
    pub timers_max: Option<u64>,
    /// How far ahead a timer may be due, in ms. Default 2592000000 (30
    /// days).
    #[schemars(example = 2592000000u64)]
    pub timer_delay_ms_max: Option<u64>,
}

/// `[publish]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    /// Patterns of topics it may publish to. Absent: any topic.
    #[schemars(example = vec!["inventory.>"])]
    pub allow: Option<Vec<String>>,
    /// Patterns it may not publish to, even when allowed.
    #[serde(default)]
    #[schemars(example = vec!["inventory.internal.>"])]
    pub deny: Vec<String>,
    /// Follow-up events per second, across its workers. Over it the
    /// plugin's deliveries are held until it is back under (backpressure):
    /// no publish fails for it. Default: no limit (the chain budget
    /// guards against storms).
    #[schemars(example = 10000)]
    pub rate_events_per_s_max: Option<u32>,
    /// Follow-up events one causal chain (one correlation id) may have,
    /// counting every plugin's, before this plugin's are refused. Default
    /// 1000.
    #[schemars(example = 1000)]
    pub chain_events_max: Option<u64>,
}

/// `[overflow]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverflowSection {
    /// `block` (default) or `drop`.
    #[schemars(example = &"block")]
    pub policy: Option<String>,
    /// How long a publisher waits for room (`block`). Default:
    /// `--publish-timeout-ms` (2000).
    #[schemars(example = 5000)]
    pub timeout_ms: Option<u64>,
}

/// `[retry]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts before an event is given up on. Default: `--max-attempts`.
    #[schemars(example = 5)]
    pub max_attempts: Option<u32>,
    /// First retry delay. Default: `--backoff-ms-min`.
    #[schemars(example = 100)]
    pub backoff_ms_min: Option<u64>,
    /// Longest retry delay. Default: `--backoff-ms-max`.
    #[schemars(example = 30000)]
    pub backoff_ms_max: Option<u64>,
    /// `none` or `strict`. Default: `--ordering`.
    #[schemars(example = &"none")]
    pub ordering: Option<String>,
}

/// Why a manifest cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file exists but cannot be read.
    #[error("{file}: cannot read the manifest: {source}")]
    Read {
        /// The manifest.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{file}: {reason}")]
    Parse {
        /// The manifest.
        file: PathBuf,
        /// What the parser said, with the key and line.
        reason: String,
    },
    /// A value out of its range or not one of the allowed words.
    #[error("{file}: `{key}`: {reason}")]
    Value {
        /// The manifest.
        file: PathBuf,
        /// The key, as written in the file (`limits.deadline_ms`).
        key: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// The path of the manifest of the plugin in `wasm`.
pub fn path_for(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

/// A manifest key refused, and why.
type Refusal = (&'static str, String);

/// Check that every entry of `list` (under `key`) is a pattern.
fn patterns(key: &'static str, list: &[String]) -> Result<(), Refusal> {
    for p in list {
        Pattern::parse(p).map_err(|e| (key, format!("`{p}` is not a pattern: {e}")))?;
    }
    Ok(())
}

impl Manifest {
    /// Its `[consumes]` and `[publishes]` declarations.
    pub fn declarations(&self) -> Declarations {
        Declarations {
            consumes: self.consumes.clone(),
            publishes: self.publishes.clone(),
        }
    }

    /// The manifest beside `wasm`, if there is one.
    pub fn load_for(wasm: &Path) -> Result<Option<Manifest>, ManifestError> {
        let file = path_for(wasm);
        match std::fs::read_to_string(&file) {
            Ok(text) => Manifest::parse(&file, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Read { file, source }),
        }
    }

    /// Parse and check `text`; `file` is used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            if let Some((key, reason)) = config_not_text(text) {
                return ManifestError::Value {
                    file: file.to_path_buf(),
                    key,
                    reason,
                };
            }
            ManifestError::Parse {
                file: file.to_path_buf(),
                reason: format!(
                    "{}; every key is optional and the known ones are listed in docs/plugins/manifest.md",
                    e.to_string().trim_end()
                ),
            }
        })?;
        manifest.check(file)?;
        Ok(manifest)
    }

    fn check(&self, file: &Path) -> Result<(), ManifestError> {
        self.check_delivery()
            .and_then(|()| self.check_limits())
            .and_then(|()| self.check_publish())
            .and_then(|()| self.check_retry())
            .map_err(|(key, reason)| ManifestError::Value {
                file: file.to_path_buf(),
                key: key.to_string(),
                reason,
            })
    }

    /// Subscriptions, concurrency, the ordering key, the batch size.
    fn check_delivery(&self) -> Result<(), Refusal> {
        if let Some(subs) = &self.subscriptions {
            if subs.is_empty() {
                return Err((
                    "subscriptions",
                    "is empty, so the plugin would get no event; list at least one pattern or leave the key out".into(),
                ));
            }
            patterns("subscriptions", subs)?;
        }
        if let Some(n) = self.concurrency {
            if n == 0 || n > CONCURRENCY_MAX {
                return Err((
                    "concurrency",
                    format!("{n} is out of range; use 1 to {CONCURRENCY_MAX}"),
                ));
            }
        }
        if let Some(k) = &self.ordering_key {
            if OrderingKey::parse(k).is_none() {
                return Err((
                    "ordering_key",
                    format!("`{k}` is not a key; use subject, topic, source, correlationid or extension:NAME"),
                ));
            }
        }
        if self.batch_events_max == Some(0) {
            return Err(("batch_events_max", "must be at least 1".into()));
        }
        Ok(())
    }

    /// `[limits]`.
    fn check_limits(&self) -> Result<(), Refusal> {
        let l = &self.limits;
        if let Some(m) = l.memory_bytes_max {
            if m < 1 << 20 {
                return Err((
                    "limits.memory_bytes_max",
                    format!("{m} is below 1 MiB (1048576), too little for any plugin"),
                ));
            }
        }
        if l.deadline_ms == Some(0) {
            return Err(("limits.deadline_ms", "must be at least 1".into()));
        }
        if let Some(s) = l.stack_bytes_max {
            let range = crate::runtime::STACK_BYTES_RANGE;
            if !usize::try_from(s).is_ok_and(|s| range.contains(&s)) {
                return Err((
                    "limits.stack_bytes_max",
                    format!(
                        "{s} is out of range; use {} to {} (16 KiB to 1 MiB)",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[publish]`, the state quota and `[overflow]`.
    fn check_publish(&self) -> Result<(), Refusal> {
        patterns(
            "publish.allow",
            self.publish.allow.as_deref().unwrap_or(&[]),
        )?;
        patterns("publish.deny", &self.publish.deny)?;
        if self.publish.chain_events_max == Some(0) {
            return Err(("publish.chain_events_max", "must be at least 1".into()));
        }
        if self.limits.state_bytes_max == Some(0) {
            return Err(("limits.state_bytes_max", "must be at least 1".into()));
        }
        if self.limits.timers_max == Some(0) {
            return Err((
                "limits.timers_max",
                "must be at least 1 (a plugin that sets no timers needs no limit)".into(),
            ));
        }
        if self.publish.rate_events_per_s_max == Some(0) {
            return Err((
                "publish.rate_events_per_s_max",
                "0 would refuse every publish; use publish.allow = [] for that".into(),
            ));
        }
        if let Some(p) = &self.overflow.policy {
            if p != "block" && p != "drop" {
                return Err((
                    "overflow.policy",
                    format!("`{p}` is not a policy; use block or drop"),
                ));
            }
        }
        Ok(())
    }

    /// `[retry]`.
    fn check_retry(&self) -> Result<(), Refusal> {
        let r = &self.retry;
        if r.max_attempts == Some(0) {
            return Err(("retry.max_attempts", "must be at least 1".into()));
        }
        if let (Some(min), Some(max)) = (r.backoff_ms_min, r.backoff_ms_max) {
            if min > max {
                return Err((
                    "retry.backoff_ms_min",
                    format!("{min} is larger than retry.backoff_ms_max ({max})"),
                ));
            }
        }
        if let Some(o) = &r.ordering {
            o.parse::<super::RetryOrdering>()
                .map_err(|e| ("retry.ordering", e))?;
        }
        Ok(())
    }

    /// The ordering key (default `subject`).
    pub fn ordering_key(&self) -> OrderingKey {
        self.ordering_key
            .as_deref()
            .and_then(OrderingKey::parse)
            .unwrap_or_default()
    }

    /// The overflow policy (`block` with the host's publish timeout by
    /// default).
    pub fn overflow(&self) -> Overflow {
        match self.overflow.policy.as_deref() {
            Some("drop") => Overflow::Drop,
            _ => Overflow::Block(
                self.overflow
                    .timeout_ms
                    .map(std::time::Duration::from_millis),
            ),
        }
    }
}

/// Why `[config]` in `text` does not parse, when a value is not text: its
/// key and the fix (a dotted key is a table in TOML, which `stock.widget`
/// in a plugin's docs reads as).
fn config_not_text(text: &str) -> Option<(String, String)> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let config = table.get("config")?.as_table()?;
    let (key, value) = config.iter().find(|(_, v)| !v.is_str())?;
    let reason = match value {
        toml::Value::Table(inner) => {
            let sub = inner.keys().next().map_or("x", String::as_str);
            format!(
                "is a table, not text: TOML reads a dotted key as one; quote the key: \"{key}.{sub}\" = \"...\""
            )
        }
        other => format!(
            "is a {}, not text: config values are text; quote it: {key} = \"{other}\"",
            other.type_str()
        ),
    };
    Some((format!("config.{key}"), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("plugins/x.toml"), text)
    }

    #[test]
    fn a_config_value_that_is_not_text_is_named_with_the_fix() {
        let err = parse("[config]\nstock.widget = \"5\"\n").expect_err("a table");
        let text = err.to_string();
        assert!(
            text.contains("config.stock") && text.contains("\"stock.widget\""),
            "{text}"
        );
        let err = parse("[config]\nlate_ms = 3000\n").expect_err("a number");
        assert!(err.to_string().contains("late_ms = \"3000\""), "{err}");
    }

    #[test]
    fn every_field_is_optional() {
        assert_eq!(parse("").expect("empty is valid"), Manifest::default());
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"
            subscriptions = ["order.*"]
            concurrency = 4
            ordering_key = "extension:tenant"
            batch_events_max = 16
            [config]
            greeting = "hi"
            [limits]
            memory_bytes_max = 8388608
            deadline_ms = 50
            stack_bytes_max = 65536
            output_lines_per_s_max = 5
            [publish]
            allow = ["inventory.>"]
            deny = ["inventory.secret"]
            rate_events_per_s_max = 10
            [overflow]
            policy = "drop"
            [retry]
            max_attempts = 2
            backoff_ms_min = 10
            backoff_ms_max = 20
            ordering = "strict"
            "#,
        )
        .expect("valid");
        assert_eq!(m.concurrency, Some(4));
        assert_eq!(m.ordering_key(), OrderingKey::Extension("tenant".into()));
        assert_eq!(m.config["greeting"], "hi");
        assert_eq!(m.limits.deadline_ms, Some(50));
        assert_eq!(m.overflow(), Overflow::Drop);
        assert_eq!(m.retry.ordering.as_deref(), Some("strict"));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = parse("concurency = 2").expect_err("typo");
        let msg = e.to_string();
        assert!(
            msg.contains("concurency") && msg.contains("x.toml"),
            "{msg}"
        );
        let e = parse("[limits]\nmemory = 5").expect_err("unknown in a section");
        assert!(e.to_string().contains("memory"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_allowed_ones() {
        for (text, key, hint) in [
            ("concurrency = 0", "concurrency", "1 to 64"),
            (
                "ordering_key = \"colour\"",
                "ordering_key",
                "extension:NAME",
            ),
            ("subscriptions = []", "subscriptions", "at least one"),
            (
                "subscriptions = [\"a..b\"]",
                "subscriptions",
                "not a pattern",
            ),
            ("[publish]\ndeny = [\"\"]", "publish.deny", "not a pattern"),
            (
                "[overflow]\npolicy = \"spill\"",
                "overflow.policy",
                "block or drop",
            ),
            (
                "[retry]\nordering = \"sorted\"",
                "retry.ordering",
                "strict or none",
            ),
            (
                "[retry]\nbackoff_ms_min = 9\nbackoff_ms_max = 1",
                "retry.backoff_ms_min",
                "larger",
            ),
            (
                "[limits]\nmemory_bytes_max = 10",
                "limits.memory_bytes_max",
                "1 MiB",
            ),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(
                msg.contains(&format!("`{key}`")) && msg.contains(hint),
                "{text}: {msg}"
            );
        }
        let msg = parse("concurrency = \"two\"")
            .expect_err("type")
            .to_string();
        assert!(msg.contains("concurrency"), "{msg}");
    }

    #[test]
    fn ordering_keys_read_the_event() {
        assert_eq!(OrderingKey::parse("subject"), Some(OrderingKey::Subject));
        assert_eq!(OrderingKey::parse("extension:"), None);
        let mut e = crate::event::Event::new("order.placed", None, b"{}".to_vec()).expect("event");
        e.subject = Some("o-1".into());
        e.extensions = vec![("tenant".into(), "acme".into())];
        assert_eq!(OrderingKey::Subject.of(&e), "o-1");
        assert_eq!(OrderingKey::Topic.of(&e), "order.placed");
        assert_eq!(OrderingKey::Extension("tenant".into()).of(&e), "acme");
        assert_eq!(OrderingKey::Extension("region".into()).of(&e), "");
    }
}
