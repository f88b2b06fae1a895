//! The command line: `plugbus run` starts the host; `plugbus publish` and
//! `plugbus plugins` talk to a running host over its HTTP API.
//!
//! Configuration is checked in two stages: clap validates each flag, then
//! [`RunArgs::settings`] turns them into the runtime's typed settings and
//! refuses combinations that cannot work, naming the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::http::BODY_BYTES_MAX_DEFAULT;
use crate::plugin::RetryOrdering;
use crate::runtime::{Limits, Tier};
use crate::store::Fsync;

/// The address `plugbus run` listens on by default.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7420";
pub use crate::client::{ClientArgs, URL_DEFAULT};

/// plugbus: an event runtime for sandboxed WebAssembly plugins.
///
/// Start a host with `plugbus run --plugins DIR`. Every `NAME.wasm` in DIR
/// is loaded as a plugin; each says in its `init` which topics it consumes.
/// Publish events over HTTP (`POST /v1/events/{type}` with a JSON body) or
/// with `plugbus publish TYPE JSON`, and see what the plugins did with
/// `plugbus plugins`.
#[derive(Debug, Parser)]
#[command(name = "plugbus", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: load the plugins, serve the HTTP API, deliver events.
    ///
    /// Stops cleanly on Ctrl-C or SIGTERM: new publishes are refused, queued
    /// events are delivered, then the process exits.
    Run(Box<RunArgs>),
    /// Publish one event with a JSON body to a running host, now or
    /// scheduled for later (the host keeps it and delivers it not before
    /// its time, across restarts; embedded store only).
    ///
    /// Examples: plugbus publish order.placed '{"order_id":"o-1","total_cents":2500}';
    /// plugbus publish reminder.due '{"order_id":"o-1"}' --after 15m
    Publish {
        /// The topic (CloudEvents `type`), e.g. `order.placed`.
        #[arg(value_name = "TYPE")]
        topic: String,
        /// The event data: a JSON document.
        json: String,
        /// Deliver it not before this time (RFC 3339), e.g.
        /// 2026-12-24T18:00:00Z.
        #[arg(long, value_name = "TIME", conflicts_with = "after")]
        at: Option<String>,
        /// Deliver it not before this long from now, e.g. 90s, 15m, 2h.
        #[arg(long, value_name = "DURATION")]
        after: Option<humantime::Duration>,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compile a plugin with the optimizing compiler into the compile
    /// cache, ahead of time (a deploy step), so that the host starts it
    /// from the cache.
    ///
    /// `plugbus run` runs this itself in the background for a plugin it
    /// started with the baseline compiler.
    ///
    /// Example: plugbus compile plugins/email.wasm
    Compile {
        /// The plugin file (a wasm32-wasip1 module or a component).
        file: PathBuf,
        /// The compile cache (default: ~/.cache/plugbus/compiled), as given
        /// to `plugbus run`.
        #[arg(long, value_name = "DIR", env = "PLUGBUS_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// The wasm stack cap the build is for, in bytes (the host's default,
        /// or the plugin manifest's `limits.stack_bytes_max`).
        #[arg(long, value_name = "BYTES", default_value_t = Limits::default().stack_bytes_max as u64)]
        stack_bytes_max: u64,
        /// Which compiler: `optimized` (Cranelift) or `baseline` (Winch).
        #[arg(long, default_value = "optimized")]
        tier: Tier,
    },
    /// List the plugins of a running host, with their counters.
    Plugins {
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Salvage a data directory whose journals are damaged (offline: stop
    /// the host first). Copies the directory aside first, keeps every
    /// intact batch, cuts the damaged bytes into a quarantine file, and
    /// prints exactly which sequences were lost and which plugins' cursors
    /// lie before them. Exits 0 when nothing was lost, 2 when it salvaged
    /// with losses, 1 when it could not repair.
    Repair {
        /// The data directory (as `plugbus run --data`).
        #[arg(long, value_name = "DIR", env = "PLUGBUS_DATA")]
        data: PathBuf,
        /// Say what would be kept and lost, changing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up a running host's store, consistently, while it serves: the
    /// log, cursors, state, dead letters as of one moment, written into a
    /// new data directory DIR. Restore by starting a host on DIR
    /// (`plugbus run --data DIR`). On a broker, back the broker up instead.
    Backup {
        /// Where the host is, and the token (admin scope).
        #[command(flatten)]
        client: ClientArgs,
        /// The new data directory to write (must not exist, or be empty).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Check a data directory (a copy or a backup): its journals and
    /// format, that every log record decodes, that the log has no hole a
    /// repair did not record, that no cursor is past its end. Exits 1 when
    /// something is wrong. Open it with no host running on it.
    Verify {
        /// The data directory.
        #[arg(long, value_name = "DIR", env = "PLUGBUS_DATA")]
        data: PathBuf,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that every event is accounted for: per plugin, the events of
    /// the log it subscribes to against those it handled, are dead letters,
    /// dropped by its policy, or pending. Exits 1 when any is unaccounted
    /// (embedded store).
    Audit {
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deliver a plugin every event from a point in the log again, as a
    /// fresh instance: rebuilds a projection from the log (durable mode).
    ///
    /// Example: plugbus replay analytics --from-seq 1 --reset-state
    Replay {
        /// The plugin.
        plugin: String,
        /// From this sequence number.
        #[arg(
            long,
            conflicts_with = "from_time",
            required_unless_present = "from_time"
        )]
        from_seq: Option<u64>,
        /// From the first event at or after this RFC 3339 time.
        #[arg(long)]
        from_time: Option<String>,
        /// Empty the plugin's key-value state first, to rebuild it.
        #[arg(long)]
        reset_state: bool,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a plugin's key-value state.
    ///
    /// Example: plugbus kv list analytics; plugbus kv get analytics orders
    Kv {
        /// What to read.
        #[command(subcommand)]
        action: KvAction,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read the event log (durable mode).
    Log {
        /// What to read.
        #[command(subcommand)]
        action: LogAction,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make an API token.
    ///
    /// Example: plugbus token new shop --scope 'publish:order.*' --scope read
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Dead letters: events a plugin rejected or ran out of attempts on
    /// (durable mode).
    Dead {
        /// What to do with them.
        #[command(subcommand)]
        action: DeadAction,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Topics' declared schemas: events whose data does not fit are refused
    /// (mode enforce), counted (warn) or not looked at (off).
    ///
    /// Example: plugbus schema put order.placed order.schema.json --mode enforce
    Schema {
        /// What to do.
        #[command(subcommand)]
        action: SchemaAction,
        /// Where the host is, and the token.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a new plugin project, ready to build, test and run.
    ///
    /// Example: plugbus new audit && cd audit && plugbus dev
    New(crate::author::commands::NewArgs),
    /// Build a plugin project into dist/NAME.wasm, check that it loads
    /// here, and compile it into the cache ahead of deploying it.
    Build(crate::author::commands::BuildArgs),
    /// Run a project's own tests, then its built plugin in the real runtime
    /// against its events/*.json; fails on an unexpected outcome.
    Test(crate::author::commands::BuildArgs),
    /// Run a plugin project in a host on loopback, rebuilding and swapping
    /// it in on every change, and show what it does with events/*.json.
    Dev(crate::author::commands::DevArgs),
}

/// `plugbus token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a new random token: prints it once, and the entry to add to
    /// the token file (which holds only its hash).
    New {
        /// A name for who uses it (shown in 403 answers and logs).
        name: String,
        /// What it may do: `publish`, `publish:PATTERN` (e.g.
        /// `publish:order.*`), `read`, `admin`. Repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
}

/// `plugbus log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogAction {
    /// The last events, one JSON object a line.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
    },
    /// One event, by sequence.
    Get {
        /// Its sequence number.
        sequence: u64,
    },
}

/// `plugbus schema` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Every declared schema, or one topic's.
    Get {
        /// Only this topic's.
        topic: Option<String>,
    },
    /// Declare a topic's schema from a JSON Schema file.
    Put {
        /// The topic.
        topic: String,
        /// The JSON Schema file.
        file: PathBuf,
        /// Its major version (default: the topic's current one, or 1). A
        /// breaking change is a new major.
        #[arg(long)]
        major: Option<u32>,
        /// enforce (refuse what does not fit), warn (accept and count) or
        /// off (default: as it was, or enforce).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Declare how a topic's events of major FROM are brought to FROM + 1
    /// when delivered to a plugin that reads a newer major (a JSON file
    /// of rules: move, default, drop; docs/reference/schemas.md).
    Upcaster {
        /// The topic.
        topic: String,
        /// The major it starts from.
        from: u32,
        /// The rules file.
        file: PathBuf,
    },
}

/// `plugbus kv` subcommands.
#[derive(Debug, Subcommand)]
pub enum KvAction {
    /// Every key of a plugin's bucket with its value, one a line.
    List {
        /// The plugin.
        plugin: String,
    },
    /// One value.
    Get {
        /// The plugin.
        plugin: String,
        /// The key.
        key: String,
    },
}

/// `plugbus dead` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List dead letters, of one plugin or of all.
    List {
        /// Only this plugin's.
        plugin: Option<String>,
    },
    /// Show one dead letter with its event.
    Show {
        /// The plugin.
        plugin: String,
        /// The event's sequence.
        sequence: u64,
    },
    /// Deliver dead letters to their plugin again (they keep their ids).
    Redrive(DeadSelection),
    /// Delete dead letters.
    Purge(DeadSelection),
}

/// Which dead letters of a plugin.
#[derive(Debug, Args)]
pub struct DeadSelection {
    /// The plugin.
    pub plugin: String,
    /// These sequences.
    pub sequences: Vec<u64>,
    /// Those whose topic matches this pattern, e.g. `order.*`.
    #[arg(long, conflicts_with = "sequences")]
    pub topic: Option<String>,
    /// All of them.
    #[arg(long, conflicts_with_all = ["sequences", "topic"])]
    pub all: bool,
}

impl DeadSelection {
    /// The selection as the HTTP API takes it.
    pub fn body(&self) -> Result<serde_json::Value, String> {
        if self.all {
            Ok(serde_json::json!({ "all": true }))
        } else if let Some(topic) = &self.topic {
            Ok(serde_json::json!({ "topic": topic }))
        } else if !self.sequences.is_empty() {
            Ok(serde_json::json!({ "sequences": self.sequences }))
        } else {
            Err("say which dead letters: sequence numbers, --topic PATTERN or --all".into())
        }
    }
}

/// Flags of `plugbus run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML file of these flags, one key per flag without its dashes
    /// (`fsync = "always"`, `batch-events-max = 256`, `memory = true`, a
    /// list for a repeated flag). A flag given here wins over the file, and
    /// the file over the environment variables.
    #[arg(long, value_name = "FILE", env = "PLUGBUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The plugin directory: each NAME.wasm in it is a plugin.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_PLUGINS")]
    pub plugins: PathBuf,
    /// Address for the HTTP API.
    #[arg(long, value_name = "ADDR", default_value = LISTEN_DEFAULT, env = "PLUGBUS_LISTEN")]
    pub listen: SocketAddr,
    /// Where compiled plugins are cached (default: ~/.cache/plugbus/compiled).
    /// Entries are trusted like the binary: only plugbus should write here.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins at every start instead of caching them.
    #[arg(long)]
    pub no_cache: bool,
    /// Compile a plugin missing from the cache with the optimizing compiler
    /// before starting it (a slower cold start), instead of starting it on
    /// a baseline build and swapping the optimized one in when it is ready.
    #[arg(long)]
    pub no_tiering: bool,
    /// Where the event log and cursors live (default:
    /// ~/.local/share/plugbus/data). Events are durable: a publisher's 202
    /// means stored under the --fsync policy.
    #[arg(
        long,
        value_name = "DIR",
        env = "PLUGBUS_DATA",
        conflicts_with = "memory"
    )]
    pub data: Option<PathBuf>,
    /// Keep events in memory only: lossy on a crash or a full queue, for
    /// tests and benchmarks.
    #[arg(long)]
    pub memory: bool,
    /// Where topics' declared schemas are kept (`TOPIC/MAJOR.json` and
    /// `TOPIC/mode`; default: `schemas` in the data directory; in memory
    /// mode and on a broker, none: declared ones last until the host stops).
    #[arg(long, value_name = "DIR", env = "PLUGBUS_SCHEMAS")]
    pub schemas: Option<PathBuf>,
    /// Swap in a new plugin version (or manifest) even when what it
    /// declares it publishes does not fit a running consumer's declared
    /// reader schema, or it cannot read what a running producer declares:
    /// logged, not refused.
    #[arg(long, env = "PLUGBUS_ACCEPT_INCOMPATIBLE")]
    pub accept_incompatible: bool,
    /// Keep the log, the plugins' delivery, dead letters and state in a
    /// broker instead of the data directory, shared by every host pointed
    /// at it (each event is handled by one host per plugin):
    /// `nats://[USER:PASSWORD@|TOKEN@]HOST:PORT` or `tls://…` (NATS
    /// JetStream, 2.12 or later), `redis://[USER:PASSWORD@]HOST:PORT[/DB]`,
    /// `rediss://…` (TLS) or `redis+unix:///PATH` (Redis Streams, 7.0 or
    /// later; run it with `appendfsync always`).
    #[arg(
        long,
        value_name = "URL",
        env = "PLUGBUS_BROKER",
        conflicts_with_all = ["memory", "data"]
    )]
    pub broker: Option<String>,
    /// A CA certificate (PEM) the broker's TLS certificate must chain to,
    /// for a `rediss://` or `tls://` broker whose certificate the system's
    /// roots do not cover.
    #[arg(long, value_name = "FILE", requires = "broker")]
    pub broker_ca: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed) for
    /// a `nats://` broker.
    #[arg(
        long,
        value_name = "FILE",
        requires = "broker",
        env = "PLUGBUS_BROKER_CREDS"
    )]
    pub broker_creds: Option<PathBuf>,
    /// A file holding the broker's password (one line), put into the
    /// broker's URL: `redis://HOST` becomes `redis://:PASSWORD@HOST`,
    /// `nats://USER@HOST` becomes `nats://USER:PASSWORD@HOST`. Keeps the
    /// secret off the command line, where `ps` shows it.
    #[arg(
        long,
        value_name = "FILE",
        requires = "broker",
        env = "PLUGBUS_BROKER_PASSWORD_FILE"
    )]
    pub broker_password_file: Option<PathBuf>,
    /// Take the broker over for this release when it is used by another:
    /// the first host of a rolling upgrade. The hosts of the other release
    /// stop taking work, deliver what they have in hand and exit with
    /// status 75 within seconds, for their supervisors to restart them on
    /// the new binary. Without it a host refuses a broker of another
    /// release, naming both.
    #[arg(long, requires = "broker")]
    pub take_over_broker: bool,
    /// This host's name among a broker's consumers (default: the machine's
    /// host name and the process id).
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
    /// On a broker: how long events handed to this host stay its own
    /// without a settlement before another host may take them, in ms (at
    /// least three of a plugin's deadlines; renewed while a batch runs).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub broker_lease_ms: u64,
    /// When stored events reach stable storage: `always` (before the 202:
    /// they survive power loss) or `interval=MS` (within MS; a crash of the
    /// process loses nothing, power loss up to MS of events).
    #[arg(long, default_value = "always", value_parser = clap::value_parser!(Fsync))]
    pub fsync: Fsync,
    /// Refuse publishes (507) while the data directory's file system has
    /// less than this many bytes free, so the store never runs out of room
    /// for its own flushes; publishing resumes once there is room. Default:
    /// an eighth of the file system, at least 8 MiB and at most 256 MiB.
    #[arg(long)]
    pub disk_reserve_bytes: Option<u64>,
    /// Idempotent publishing: an event whose id was published less than
    /// this long ago is not stored again, and its publisher gets the
    /// original sequence (0 turns this off). At most 500,000 ids are
    /// remembered (about 15-25 MiB): at 100,000 events a second the window
    /// is 5 seconds.
    #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub dedup_window_ms: u64,
    /// Remove events older than this (by their `time`), e.g. `7d`, `12h`,
    /// once every plugin has finished them. Default: keep all.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention_age: Option<Duration>,
    /// Remove the oldest events while the log is larger than this many
    /// bytes, once every plugin has finished them. Default: a third of the
    /// data directory's file system above the disk reserve (said at
    /// start), so finished events cannot fill a device.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Where a plugin the log has never seen starts: `earliest` (every
    /// event kept) or `latest` (the next event published).
    #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
    pub new_plugins_start: String,
    /// Start even if the store comes back shorter than what was
    /// acknowledged (a damaged journal): the loss is logged and new events
    /// are numbered after it. Without it plugbus refuses to start.
    #[arg(long)]
    pub accept_lost_events: bool,
    /// Export publish and process spans over OTLP/HTTP (protobuf) to this
    /// collector, e.g. http://127.0.0.1:4318 (`/v1/traces` is added). Off
    /// unless given.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp: Option<String>,
    /// The share of new traces exported, 0 to 1; a trace that comes with a
    /// context (traceparent) follows its sampled flag.
    #[arg(long, default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
    /// How log lines are written: `text`, or `json` (one object a line;
    /// lines written while a plugin handles a batch carry its plugin and
    /// sequences, and the correlation and trace ids of its chain).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Most events passed to one plugin call (a call that runs past its
    /// deadline, or uses 100 ms of CPU, is handled again in halves, and the
    /// cap stays halved for a while: slow plugins get smaller batches by
    /// themselves).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_events_max: u64,
    /// Most bytes (payloads plus attributes) passed to one plugin call; a
    /// single larger event still goes alone.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    pub batch_bytes_max: u64,
    /// Capacity of each plugin's queue, in events.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub queue_events_max: u64,
    /// How long a publisher waits for room in a full queue before 503, in ms.
    #[arg(long, default_value_t = 2000)]
    pub publish_timeout_ms: u64,
    /// A token file: who may call the API, with which scopes (TOML; see
    /// `plugbus token new`). Read again when it changes. Without it anyone
    /// who reaches --listen may do anything, so a --listen off loopback
    /// needs it (or --insecure-no-auth).
    #[arg(long, value_name = "FILE", env = "PLUGBUS_AUTH")]
    pub auth: Option<PathBuf>,
    /// Listen off loopback without a token file, accepting that anyone who
    /// reaches the port may publish, read every plugin's state, purge dead
    /// letters and wipe state by replay.
    #[arg(long, conflicts_with = "auth")]
    pub insecure_no_auth: bool,
    /// With --auth, serve /metrics without a token (default: it needs the
    /// `read` scope).
    #[arg(long)]
    pub metrics_open: bool,
    /// Serve HTTPS with this certificate chain (PEM, server certificate
    /// first); read again when it changes, for rotation without a restart.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTP connections open at once; more are closed at once and counted.
    #[arg(long, default_value_t = crate::http::serve::CONNECTIONS_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections_max: u64,
    /// Time for a client to send a request's headers (and a TLS handshake),
    /// in ms, including an idle keep-alive connection's next request; then
    /// the connection is closed.
    #[arg(long, default_value_t = crate::http::serve::HEADER_TIMEOUT_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub header_timeout_ms: u64,
    /// Time for a client to send a request's body, in ms; then 408 and the
    /// connection is closed.
    #[arg(long, default_value_t = crate::http::serve::BODY_TIMEOUT_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub body_timeout_ms: u64,
    /// Largest HTTP request body, in bytes.
    #[arg(long, default_value_t = BODY_BYTES_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    pub body_bytes_max: u64,
    /// CPU time one plugin call (a batch) may use, in ms; a call still running
    /// after 60 times this on the wall clock is stopped too.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub deadline_ms: u64,
    /// Linear memory a plugin instance may use, in bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..=4 << 30))]
    pub memory_bytes_max: u64,
    /// Delivery attempts per event before it is dropped.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// First retry delay in ms (doubles per attempt).
    #[arg(long, default_value_t = 100)]
    pub backoff_ms_min: u64,
    /// Longest retry delay in ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_ms_max: u64,
    /// The longest delay a plugin may ask a retry to wait, in ms (a longer
    /// one waits this long). Kept with the cursor: a restart does not cut
    /// it short. Default 30 days.
    #[arg(long, default_value_t = crate::plugin::RETRY_DELAY_MS_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=crate::plugin::RETRY_DELAY_MS_MAX_DEFAULT))]
    pub retry_delay_ms_max: u64,
    /// Ordering under retry: `none` (later events go on) or `strict` (later
    /// events with the same subject wait for the retried one).
    #[arg(long, default_value = "none")]
    pub ordering: RetryOrdering,
    /// Ordering under retry for one plugin, as NAME=strict|none; repeat for
    /// more plugins.
    #[arg(long, value_name = "PLUGIN=ORDERING")]
    pub ordering_for: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_settings::{with_password, RunSettings};

    fn parse(args: &[&str]) -> Result<RunSettings, String> {
        let mut all = vec!["plugbus", "run", "--plugins", "/tmp"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Run(run) => run.settings(),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    #[test]
    fn ordering_is_set_for_all_and_per_plugin_with_a_clear_refusal() {
        let s = parse(&["--ordering", "strict", "--ordering-for", "email=none"]).expect("valid");
        assert_eq!(s.delivery.ordering_of("email"), RetryOrdering::None);
        assert_eq!(s.delivery.ordering_of("inventory"), RetryOrdering::Strict);
        let e = parse(&["--ordering-for", "email"]).expect_err("no ordering");
        assert!(e.contains("PLUGIN=strict"), "{e}");
        let e = parse(&["--ordering-for", "email=sorted"]).expect_err("bad ordering");
        assert!(e.contains("`sorted` is not an ordering"), "{e}");
    }

    #[test]
    fn listening_off_loopback_needs_a_token_file_or_the_risk_said_out_loud() {
        let e = parse(&["--listen", "0.0.0.0:7420"]).expect_err("open to the network");
        assert!(
            e.contains("--auth FILE") && e.contains("--insecure-no-auth"),
            "{e}"
        );
        assert!(parse(&["--listen", "0.0.0.0:7420", "--auth", "/tmp/tokens.toml"]).is_ok());
        assert!(parse(&["--listen", "0.0.0.0:7420", "--insecure-no-auth"]).is_ok());
        assert!(parse(&["--listen", "[::1]:7420"]).is_ok(), "loopback");
        assert!(
            parse(&["--tls-cert", "/tmp/c.pem"]).is_err(),
            "a certificate needs its key"
        );
    }

    /// The systemd unit shipped in `packaging/` starts a host these flags
    /// accept: its `ExecStart` line, continuations joined, parses and
    /// passes the same checks as a real start (off loopback with a token
    /// file, a certificate with its key).
    #[test]
    fn the_shipped_systemd_unit_starts_a_valid_host() {
        let unit = include_str!("../../packaging/plugbus.service").replace("\\\n", " ");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart line");
        let mut args = line.split_whitespace();
        assert_eq!(args.next(), Some("/usr/local/bin/plugbus"));
        // Its settings file, the one shipped beside it.
        let config = std::env::temp_dir().join(format!("plugbus-unit-{}.toml", std::process::id()));
        std::fs::write(&config, include_str!("../../packaging/plugbus.toml")).expect("write");
        let argv: Vec<std::ffi::OsString> = std::iter::once("plugbus")
            .chain(args)
            .map(|a| {
                a.replace("/etc/plugbus/plugbus.toml", &config.display().to_string())
                    .into()
            })
            .collect();
        let argv = crate::config_file::expand(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        let Command::Run(run) = cli.command else {
            panic!("the unit runs `plugbus run`: {line}")
        };
        let s = run.settings().unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(!s.listen.ip().is_loopback(), "the unit serves the network");
        assert!(s.data.is_some(), "durable");
    }

    #[test]
    fn a_broker_password_comes_from_its_file_into_the_url() {
        let file = std::env::temp_dir().join(format!("plugbus-pw-{}", std::process::id()));
        std::fs::write(&file, "s3cr@t/x\n").expect("write");
        assert_eq!(
            with_password("redis://127.0.0.1:6379/0", &file).expect("ok"),
            "redis://:s3cr%40t%2Fx@127.0.0.1:6379/0"
        );
        assert_eq!(
            with_password("nats://shop@nats.local:4222", &file).expect("ok"),
            "nats://shop:s3cr%40t%2Fx@nats.local:4222"
        );
        let err = with_password("redis://u:p@h", &file).expect_err("both");
        assert!(err.contains("not both"), "{err}");
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn defaults_are_documented_values() {
        let s = parse(&[]).expect("defaults are valid");
        assert_eq!(s.listen.to_string(), LISTEN_DEFAULT);
        assert_eq!(
            URL_DEFAULT,
            format!("http://{LISTEN_DEFAULT}"),
            "keep the two in step"
        );
        assert_eq!(s.delivery.batch_events_max, 256);
        assert_eq!(s.body_bytes_max, 1 << 20);
        assert_eq!(s.fsync, Fsync::Always);
        assert!(s.data.is_some(), "durable by default");
        assert!(parse(&["--memory"]).expect("memory").data.is_none());
        assert!(
            parse(&["--memory", "--data", "/tmp/x"]).is_err(),
            "one or the other"
        );
        assert!(parse(&["--fsync", "never"]).is_err());
    }

    #[test]
    fn contradictory_flags_name_both() {
        let err = parse(&["--backoff-ms-min", "50000"]).expect_err("min > max");
        assert!(
            err.contains("--backoff-ms-min") && err.contains("--backoff-ms-max"),
            "{err}"
        );
        let err = parse(&["--batch-events-max", "512", "--queue-events-max", "100"])
            .expect_err("batch > queue");
        assert!(err.contains("--queue-events-max"), "{err}");
        let err = parse(&["--batch-bytes-max", "50000000"]).expect_err("batch > memory / 2");
        assert!(err.contains("--memory-bytes-max"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_by_the_parser() {
        assert!(parse(&["--batch-events-max", "0"]).is_err());
        assert!(parse(&["--deadline-ms", "0"]).is_err());
    }
}
