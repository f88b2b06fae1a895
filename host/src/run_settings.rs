//! What `plugbus run` starts with: its flags (`cli::RunArgs`, the
//! grammar) checked together and turned into [`RunSettings`]: flags that
//! are fine alone but not together are refused naming both, the data
//! directory is chosen, a broker's password file is read into its URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RunArgs;
use crate::plugin::{DeliverySettings, RetryOrdering};
use crate::runtime::Limits;
use crate::store::{Fsync, Retention};

/// `url` with the password in `file` as its credentials' password.
pub(crate) fn with_password(url: &str, file: &Path) -> Result<String, String> {
    let password = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "--broker-password-file {}: cannot read it: {e}",
            file.display()
        )
    })?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "--broker-password-file {}: it is empty",
            file.display()
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("--broker {url}: not a URL (scheme://host)"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    let userinfo = match authority.rsplit_once('@') {
        Some((info, _)) if info.contains(':') => {
            return Err("--broker already holds a password; give it either in the URL or in --broker-password-file, not both".to_string())
        }
        Some((user, host)) => format!("{user}:{encoded}@{host}"),
        None => format!(":{encoded}@{authority}"),
    };
    Ok(format!("{scheme}://{userinfo}{path}"))
}

/// `plugbus run`'s flags, checked and typed.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The data directory, or `None` for memory mode.
    pub data: Option<PathBuf>,
    /// The broker's URL, if the log is kept there.
    pub broker: Option<String>,
    /// Where declared schemas are kept, if anywhere.
    pub schemas: Option<PathBuf>,
    /// Take the broker over from another release (`--take-over-broker`).
    pub take_over_broker: bool,
    /// The CA the broker's TLS certificate must chain to.
    pub broker_ca: Option<PathBuf>,
    /// A NATS credentials file.
    pub broker_creds: Option<PathBuf>,
    /// The fsync policy (durable mode).
    pub fsync: Fsync,
    /// Free space kept on the data directory's file system, in bytes
    /// (`None`: [`crate::store::disk_reserve_for`] its size).
    pub disk_reserve_bytes: Option<u64>,
    /// Start on a store that lost acknowledged events.
    pub accept_lost_events: bool,
    /// The duplicate window of idempotent publishing.
    pub dedup_window: Duration,
    /// How much of the log to keep.
    pub retention: Retention,
    /// Plugin directory.
    pub plugins: PathBuf,
    /// HTTP address.
    pub listen: SocketAddr,
    /// Compile cache, if any.
    pub cache_dir: Option<PathBuf>,
    /// Start plugins missing from the cache on a baseline build, and swap
    /// the optimized one in when it is compiled (needs `cache_dir`).
    pub tiered: bool,
    /// Limits per plugin call.
    pub limits: Limits,
    /// Delivery settings.
    pub delivery: DeliverySettings,
    /// Publisher wait on a full queue.
    pub publish_timeout: Duration,
    /// HTTP body limit.
    pub body_bytes_max: usize,
    /// The token file, if any.
    pub auth: Option<PathBuf>,
    /// With a token file, `/metrics` needs no token.
    pub metrics_open: bool,
    /// TLS certificate and key files, if any.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// HTTP connections open at once.
    pub connections_max: usize,
    /// Time for a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// Time for a request's body.
    pub body_timeout: Duration,
}

impl RunArgs {
    /// Check combinations and build the settings.
    pub fn settings(&self) -> Result<RunSettings, String> {
        self.check_combinations()?;
        let ordering_for = self.ordering_for()?;
        let data = self.data_dir()?;
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::runtime::cache::default_dir)
        };
        let host_name = self.host_name.clone().unwrap_or_else(|| {
            let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{machine}-{}", std::process::id())
        });
        Ok(RunSettings {
            schemas: self
                .schemas
                .clone()
                .or_else(|| data.as_ref().map(|d| d.join("schemas"))),
            data,
            broker: match (&self.broker, &self.broker_password_file) {
                (Some(url), Some(file)) => Some(with_password(url, file)?),
                (url, _) => url.clone(),
            },
            take_over_broker: self.take_over_broker,
            broker_ca: self.broker_ca.clone(),
            broker_creds: self.broker_creds.clone(),
            fsync: self.fsync,
            disk_reserve_bytes: self.disk_reserve_bytes,
            accept_lost_events: self.accept_lost_events,
            dedup_window: Duration::from_millis(self.dedup_window_ms),
            retention: Retention {
                age: self.retention_age,
                bytes: self.retention_bytes,
            },
            plugins: self.plugins.clone(),
            listen: self.listen,
            cache_dir,
            tiered: !self.no_tiering,
            limits: Limits {
                deadline_ms: self.deadline_ms,
                memory_bytes_max: self.memory_bytes_max as usize,
                ..Limits::default()
            },
            delivery: DeliverySettings {
                batch_events_max: self.batch_events_max as usize,
                batch_bytes_max: self.batch_bytes_max as usize,
                queue_events_max: self.queue_events_max as usize,
                max_attempts: self.max_attempts,
                backoff_ms_min: self.backoff_ms_min,
                backoff_ms_max: self.backoff_ms_max,
                retry_delay_ms_max: self.retry_delay_ms_max,
                new_plugins_start_latest: self.new_plugins_start == "latest",
                accept_incompatible: self.accept_incompatible,
                ordering: self.ordering,
                ordering_for,
                broker_host: host_name,
                broker_lease_ms: self.broker_lease_ms,
                ..DeliverySettings::default()
            },
            publish_timeout: Duration::from_millis(self.publish_timeout_ms),
            body_bytes_max: self.body_bytes_max as usize,
            auth: self.auth.clone(),
            metrics_open: self.metrics_open,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            connections_max: self.connections_max as usize,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
        })
    }

    /// Flags that are each fine but not together.
    fn check_combinations(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && self.auth.is_none() && !self.insecure_no_auth {
            return Err(format!(
                "--listen {} is reachable from other machines, and without a token file anyone who reaches it may publish, read every plugin's state, purge dead letters and wipe state by replay; give --auth FILE (make tokens with `plugbus token new NAME --scope ...`), or --insecure-no-auth to accept the risk knowingly",
                self.listen
            ));
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return Err(format!(
                "--otlp-sample-ratio {} is not a share; give a number from 0 to 1",
                self.otlp_sample_ratio
            ));
        }
        if self.backoff_ms_min > self.backoff_ms_max {
            return Err(format!(
                "--backoff-ms-min ({}) is larger than --backoff-ms-max ({}); make the minimum the smaller",
                self.backoff_ms_min, self.backoff_ms_max
            ));
        }
        if self.batch_bytes_max > self.memory_bytes_max / 2 {
            return Err(format!(
                "--batch-bytes-max ({}) is more than half of --memory-bytes-max ({}); a plugin must hold a whole batch in its memory, so lower the batch or raise the memory",
                self.batch_bytes_max, self.memory_bytes_max
            ));
        }
        if self.batch_events_max > self.queue_events_max {
            return Err(format!(
                "--batch-events-max ({}) is larger than --queue-events-max ({}); a batch is taken from the queue, so raise the queue or lower the batch",
                self.batch_events_max, self.queue_events_max
            ));
        }
        Ok(())
    }

    /// `--ordering-for PLUGIN=ORDERING`, by plugin.
    fn ordering_for(&self) -> Result<std::collections::HashMap<String, RetryOrdering>, String> {
        let mut ordering_for = std::collections::HashMap::new();
        for pair in &self.ordering_for {
            let (plugin, ordering) = pair.split_once('=').ok_or_else(|| {
                format!("--ordering-for `{pair}`: write PLUGIN=strict or PLUGIN=none")
            })?;
            let ordering = ordering
                .parse()
                .map_err(|e| format!("--ordering-for `{pair}`: {e}"))?;
            ordering_for.insert(plugin.to_string(), ordering);
        }
        Ok(ordering_for)
    }

    /// The data directory: none in memory mode and on a broker, else
    /// `--data` or `$XDG_DATA_HOME/plugbus/data`.
    fn data_dir(&self) -> Result<Option<PathBuf>, String> {
        let home = || std::env::var_os("HOME").map(PathBuf::from);
        Ok(if self.memory || self.broker.is_some() {
            None
        } else {
            match self.data.clone().or_else(|| {
                std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| home().map(|h| h.join(".local").join("share")))
                    .map(|d| d.join("plugbus").join("data"))
            }) {
                Some(dir) => Some(dir),
                None => {
                    return Err(
                        "no data directory: HOME is not set; pass --data DIR (or --memory)".into(),
                    )
                }
            }
        })
    }
}
