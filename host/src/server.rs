//! Wiring for `plugbus run`: build the runtime, bus and registry from the
//! settings, load the plugin directory, serve HTTP until a signal, then
//! shut down in order (stop accepting, drain every queue, join workers).

use std::sync::Arc;

use crate::bus::Bus;
use crate::dispatch::Dispatch;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::run_settings::RunSettings;
use crate::runtime::Runtime;
use crate::store::log::{Log, LogOptions};
use crate::store::Store;

/// Why `plugbus run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// wasmtime could not be set up.
    #[error("{0}")]
    Runtime(String),
    /// The plugin directory cannot be read.
    #[error(transparent)]
    Plugins(#[from] crate::plugin::PluginError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The schema directory cannot be read, or holds a schema that is not one.
    #[error("{0}; fix or remove it (--schemas names the directory)")]
    Schemas(#[from] crate::schema::SchemaError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}; pass --listen with a free address, e.g. --listen 127.0.0.1:7421")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token file cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::http::auth::AuthError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    /// The broker refused (its address, credentials or version).
    #[error(transparent)]
    Broker(#[from] crate::backend::BackendError),
    /// A write or fsync of the store failed while serving: the host stops
    /// so that a restart recovers from the journal.
    #[error("data directory {dir}: {reason}; plugbus stopped so that a restart recovers the store from its journal (everything acknowledged is kept; a supervisor such as the shipped systemd unit restarts it; check the disk)")]
    StoreFailed {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another release took the broker over: this host delivered what it
    /// had in hand and stopped, to be restarted on the new release.
    #[error("plugbus {theirs} took the broker over (every host on one broker runs the same release): this host of plugbus {} delivered what it had in hand and stopped; restart it on the new binary", crate::backend::RELEASE)]
    TakenOver {
        /// The release that took it over.
        theirs: String,
    },
}

impl StartError {
    /// The exit status for this error: [`EXIT_RESTART`] for a failure a
    /// restart recovers from, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::StoreFailed { .. } | StartError::TakenOver { .. } => EXIT_RESTART,
            _ => 1,
        }
    }
}

/// The exit status of a host that stopped so that it is restarted
/// (`EX_TEMPFAIL`): its store failed a write or fsync while serving.
pub const EXIT_RESTART: u8 = 75;

/// How often a serving host looks whether its store failed.
const STORE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Wait until `store` refuses writes after a failure; its reason.
async fn store_failed(store: Option<Arc<crate::store::Store>>) -> String {
    let Some(store) = store else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(STORE_LOOK_EVERY);
    loop {
        tick.tick().await;
        if let Some(reason) = store.poisoned() {
            return reason;
        }
    }
}

/// Wait until another release takes the broker over; that release.
async fn taken_over(broker: Option<Arc<dyn crate::backend::Backend>>) -> String {
    let Some(broker) = broker else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(crate::backend::RELEASE_LOOK_EVERY);
    loop {
        tick.tick().await;
        let probe = broker.clone();
        let now = tokio::task::spawn_blocking(move || {
            probe.claim_release(crate::backend::RELEASE, false)
        })
        .await;
        if let Ok(Ok(Some(theirs))) = now {
            if theirs != crate::backend::RELEASE {
                return theirs;
            }
        }
    }
}

/// Why a serving host stops.
enum Stop {
    /// Asked to (a signal).
    Asked,
    /// Its store refuses writes: stop at once.
    StoreFailed(String),
    /// Another release took its broker over: deliver what is in hand, then
    /// stop.
    TakenOver(String),
}

/// The first wait between attempts to reach the broker at start; doubled
/// up to [`BROKER_RETRY_MAX`].
const BROKER_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(250);
const BROKER_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Open the broker at `url` and wait until it answers, retrying with
/// backoff (and saying so) while it is unreachable; a broker that answers
/// with a refusal (credentials, a command it lacks) stops the start.
async fn connect_broker(
    url: &str,
    dedup_window: std::time::Duration,
    access: crate::backend::Access,
    take_over: bool,
) -> Result<Arc<dyn crate::backend::Backend>, StartError> {
    use crate::backend::BackendError;
    let backend = crate::backend::open_broker(url, "plugbus", dedup_window, access)?;
    let mut wait = BROKER_RETRY_MIN;
    loop {
        let probe = backend.clone();
        let answer = tokio::task::spawn_blocking(move || probe.head())
            .await
            .map_err(|e| StartError::Runtime(format!("the broker check panicked: {e}")))?;
        match answer {
            Ok(head) => {
                tracing::info!(broker = %backend.describe(), events = head, "broker connected");
                let probe = backend.clone();
                let claimed = tokio::task::spawn_blocking(move || {
                    crate::backend::check_release(&*probe, take_over)
                })
                .await
                .map_err(|e| StartError::Runtime(format!("the release check panicked: {e}")))??;
                if let Some(theirs) = claimed {
                    tracing::warn!(broker = %backend.describe(), "took the broker over from plugbus {theirs} for {}: its hosts stop taking work within {:?}", crate::backend::RELEASE, crate::backend::RELEASE_LOOK_EVERY);
                }
                return Ok(backend);
            }
            Err(e @ BackendError::Unavailable { .. }) => {
                tracing::warn!("{e}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BROKER_RETRY_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run the host until Ctrl-C or SIGTERM.
pub async fn run(settings: RunSettings) -> Result<(), StartError> {
    let (tokens, tls) = api_guards(&settings)?;
    raise_open_files_limit();
    let metrics = Arc::new(Metrics::new());
    let runtime = make_runtime(&settings)?;
    let dispatch = open_dispatch(&settings, &metrics).await?;
    dispatch
        .backend()
        .count_timers_into(crate::backend::clock::TimerMeters {
            fired: metrics.timers_fired.clone(),
            lateness: metrics.timer_lateness_seconds.clone(),
            last_lateness: metrics.timer_last_lateness_seconds.clone(),
        });
    let observer = start_observer(&metrics, &dispatch);
    let (registry, watch, failures) =
        start_plugins(&settings, &dispatch, runtime, &metrics, &observer).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: settings.listen,
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(settings.listen);
    let running = registry
        .status()
        .iter()
        .filter(|p| p.state == "running")
        .count();
    tracing::info!(
        listen = %listen,
        tls = tls.is_some(),
        auth = tokens.is_some(),
        plugins = running,
        failed = failures.len(),
        "plugbus ready"
    );
    let closing = observer.clone();
    let store = dispatch.backend().store().cloned();
    let data_dir = store.as_ref().map(|s| s.dir().to_path_buf());
    let broker = Some(dispatch.backend().clone()).filter(|b| b.capabilities().shared);
    let app = http::router(AppState {
        dispatch,
        registry: registry.clone(),
        metrics: metrics.clone(),
        body_bytes_max: settings.body_bytes_max,
        body_timeout: settings.body_timeout,
        tokens,
        observer,
    });
    let options = http::serve::ServeOptions {
        connections_max: settings.connections_max,
        header_timeout: settings.header_timeout,
        tls,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let stop = tokio::select! {
            () = shutdown_signal() => Stop::Asked,
            reason = store_failed(store) => {
                tracing::error!("the store refuses writes after a failure ({reason}): stopping so that a restart recovers it from its journal");
                Stop::StoreFailed(reason)
            }
            theirs = taken_over(broker) => {
                tracing::warn!("plugbus {theirs} took the broker over: delivering what is in hand, then stopping (status 75) to be restarted on the new release");
                Stop::TakenOver(theirs)
            }
        };
        let _ = stop_tx.send(stop);
        closing.close();
    };
    http::serve::serve(listener, app, options, metrics, shutdown).await?;
    let stop = stop_rx.await.unwrap_or(Stop::Asked);
    wind_down(stop, watch, registry, data_dir).await
}

/// After the API stopped: on a failed store, stop at once (nothing more
/// can be committed: what was acknowledged is durable, the rest comes
/// again); else stop watching, deliver what is queued, and say why it
/// stopped.
async fn wind_down(
    stop: Stop,
    watch: Option<crate::plugin::watch::DirWatch>,
    registry: Arc<Registry>,
    data_dir: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    if let Stop::StoreFailed(reason) = stop {
        // Nothing more can be committed: no drain, as after a crash; what
        // was acknowledged is durable, the rest comes again.
        return Err(StartError::StoreFailed {
            dir: data_dir.unwrap_or_default(),
            reason,
        });
    }
    if let Some(w) = watch {
        tokio::task::spawn_blocking(move || w.stop())
            .await
            .map_err(|e| StartError::Runtime(format!("stopping the watcher panicked: {e}")))?;
    }
    tracing::info!("stopping: delivering queued events");
    tokio::task::spawn_blocking(move || registry.shutdown())
        .await
        .map_err(|e| StartError::Runtime(format!("shutdown panicked: {e}")))?;
    tracing::info!("stopped");
    match stop {
        Stop::TakenOver(theirs) => Err(StartError::TakenOver { theirs }),
        _ => Ok(()),
    }
}

/// The plugins: the registry on `dispatch`, the periodic audit (embedded
/// store), the observer's history, the directory watched first (so that
/// nothing deployed while the others load is missed), then every plugin
/// in it loaded; the failures, each logged, are returned.
async fn start_plugins(
    settings: &RunSettings,
    dispatch: &Dispatch,
    runtime: Arc<Runtime>,
    metrics: &Arc<Metrics>,
    observer: &crate::observe::Observer,
) -> Result<
    (
        Arc<Registry>,
        Option<crate::plugin::watch::DirWatch>,
        Vec<crate::plugin::PluginError>,
    ),
    StartError,
> {
    let schemas =
        crate::schema::Schemas::open(settings.schemas.as_deref(), metrics.schema_checks.clone())?;
    let registry = Arc::new(
        Registry::new(
            dispatch.clone(),
            runtime,
            metrics.clone(),
            settings.delivery.clone(),
        )
        .with_schemas(Arc::new(schemas)),
    );
    registry.start_optimizer()?;
    // On the embedded store only: on a broker every host would read the
    // whole shared log every minute (there the audit is asked for).
    if dispatch.backend().store().is_some() {
        tokio::spawn(audit_every(registry.clone(), AUDIT_EVERY));
        observer.history_from(Arc::new(LogHistory(dispatch.backend().clone())));
    }
    let dir = settings.plugins.clone();
    // Watch first, so that nothing deployed while the others load is missed
    // (the registry serialises the two).
    let watch = match crate::plugin::watch::DirWatch::start(registry.clone(), &dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    let loader = registry.clone();
    registry.backend().plugins_starting();
    let loaded = tokio::task::spawn_blocking(move || loader.load_dir(&dir)).await;
    registry.backend().plugins_started();
    let failures =
        loaded.map_err(|e| StartError::Runtime(format!("plugin loading panicked: {e}")))??;
    Ok((registry, watch, failures))
}

/// The files that guard the API (the token file, the TLS pair), checked
/// before anything starts.
type Guards = (
    Option<Arc<http::auth::Tokens>>,
    Option<Arc<http::tls::ReloadingCert>>,
);

fn api_guards(settings: &RunSettings) -> Result<Guards, StartError> {
    let tokens = match &settings.auth {
        Some(file) => Some(Arc::new(http::auth::Tokens::load(
            file,
            settings.metrics_open,
        )?)),
        None => None,
    };
    let tls = match &settings.tls {
        Some((cert, key)) => Some(Arc::new(http::tls::ReloadingCert::load(cert, key)?)),
        None => None,
    };
    if tokens.is_some() && tls.is_none() && !settings.listen.ip().is_loopback() {
        tracing::warn!(listen = %settings.listen, "tokens cross the network in clear text: anyone on the path can read and reuse them; serve TLS with --tls-cert and --tls-key");
    }
    Ok((tokens, tls))
}

/// The plugins' runtime: its limits, its compile cache, and tiering (a
/// plugin missing from the cache starts on the baseline compiler).
fn make_runtime(settings: &RunSettings) -> Result<Arc<Runtime>, StartError> {
    let mut runtime = Runtime::new(settings.limits.clone(), settings.cache_dir.clone())
        .map_err(StartError::Runtime)?;
    if settings.tiered {
        match std::env::current_exe() {
            Ok(exe) => runtime = runtime.tiered(exe),
            Err(e) => tracing::warn!(
                "cannot find the plugbus binary ({e}); plugins missing from the compile cache are compiled optimized at start"
            ),
        }
    }
    Ok(Arc::new(runtime))
}

/// Where events go: a broker, memory mode's bus, or the embedded log.
async fn open_dispatch(
    settings: &RunSettings,
    metrics: &Arc<Metrics>,
) -> Result<Dispatch, StartError> {
    Ok(match (&settings.data, &settings.broker) {
        (_, Some(url)) => Dispatch::new(
            connect_broker(
                url,
                settings.dedup_window,
                crate::backend::Access {
                    ca: settings.broker_ca.clone(),
                    creds: settings.broker_creds.clone(),
                },
                settings.take_over_broker,
            )
            .await?,
        ),
        (None, None) => {
            tracing::info!(
                "memory mode: events are not stored, a crash or a full queue loses them"
            );
            let bus = Arc::new(Bus::new(settings.publish_timeout, metrics.clone()));
            Dispatch::new(Arc::new(crate::backend::memory::MemoryBackend::new(
                bus,
                metrics.clone(),
            )))
        }
        (Some(dir), None) => {
            let log = open_log(dir, settings, metrics)?;
            let window = log.dedup_window();
            let backend = crate::backend::embedded::EmbeddedBackend::new(log, window);
            Dispatch::new(Arc::new(backend))
        }
    })
}

/// The embedded log in `dir`: opened (refusing damage it cannot explain),
/// retention sized to the device unless set, its committer started, a
/// check for holes beside the host's work, the lost ranges announced.
fn open_log(
    dir: &std::path::Path,
    settings: &RunSettings,
    metrics: &Metrics,
) -> Result<Arc<Log>, StartError> {
    let store = Store::open_accepting_loss(
        dir,
        settings.fsync,
        settings.accept_lost_events,
        settings.disk_reserve_bytes,
    )?
    .with_fsync_histogram(metrics.fsync_seconds.clone());
    tracing::info!(data = %dir.display(), fsync = ?settings.fsync, events = store.last_sequence(), disk_reserve_bytes = store.disk_reserve_bytes(), "event log opened");
    for r in store.lost_ranges()? {
        tracing::warn!(data = %dir.display(), repair = %r.repair, "sequences {}..={} were lost to damage ({}); reading one answers 410", r.from, r.to, r.reason);
    }
    let mut retention = settings.retention;
    if retention.bytes.is_none() {
        if let Ok(total) = fs4::total_space(dir) {
            let keep = crate::store::retention_bytes_for(total, store.disk_reserve_bytes());
            retention.bytes = Some(keep);
            tracing::info!(data = %dir.display(), retention_bytes = keep, "the log keeps at most {:.1} MiB of events every plugin has finished (a third of the file system above the reserve; --retention-bytes sets it); unfinished events are never trimmed", keep as f64 / f64::from(1 << 20));
        }
    }
    let log = Log::start_with(
        store,
        metrics.published.clone(),
        LogOptions {
            fsync: settings.fsync,
            dedup_window: settings.dedup_window,
            retention,
        },
    )?;
    // The recovered log is checked for holes beside the host's work.
    let checked = log.clone();
    tokio::task::spawn_blocking(move || {
        let store = checked.store();
        match store.unexplained_holes(checked.head()) {
            Ok(holes) if holes.is_empty() => {}
            Ok(holes) => {
                tracing::error!(data = %store.dir().display(), "the log has holes no repair recorded, sequences {holes:?}: damage the storage engine cut away; stop the host and run `plugbus repair --data {}` to record them (reading them answers 410 after it)", store.dir().display());
                store.note_holes(holes);
            }
            Err(e) => tracing::warn!("cannot check the log for holes: {e}"),
        }
    });
    let announced = tokio::task::block_in_place(|| crate::store::lost::announce(&log))?;
    if announced > 0 {
        tracing::info!(
            ranges = announced,
            "published {} for the ranges a repair found",
            crate::store::lost::LOST_TOPIC
        );
    }
    Ok(log)
}

/// The console's observer of the flow: shown every event the log or the
/// bus commits, or following a broker's log; it stops counting once
/// nobody has looked for a while.
fn start_observer(metrics: &Metrics, dispatch: &Dispatch) -> Arc<crate::observe::Observer> {
    let observer = Arc::new(crate::observe::Observer::new(metrics));
    // Counting stops once nobody has looked for a while.
    let expiring = observer.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            expiring.expire();
        }
    });
    // The embedded log and memory mode's bus show what they accept; a
    // broker's log is followed.
    let backend = dispatch.backend();
    if !backend.observe(observer.clone()) {
        tokio::spawn(crate::observe::follow::follow(
            Arc::new(LogHistory(backend.clone())),
            observer.clone(),
        ));
    }
    observer
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Raise this process's soft limit of open files to its hard limit: each
/// HTTP connection takes a descriptor, beside the store's files.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("cannot raise the open files limit: {e}");
        }
    }
}

/// How often the host audits its plugins' events by itself (the gauge
/// `plugbus_unaccounted_events` and a log line when one is unaccounted).
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Audit every plugin's events every `period`, and say so in the log when
/// any is unaccounted.
async fn audit_every(registry: Arc<Registry>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let r = registry.clone();
        let audits = match tokio::task::spawn_blocking(move || r.audit()).await {
            Ok(Ok(audits)) => audits,
            Ok(Err(e)) => {
                tracing::warn!("the periodic audit of the plugins' events failed: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("the periodic audit of the plugins' events did not finish: {e}");
                continue;
            }
        };
        for a in audits.iter().filter(|a| a.unaccounted != 0) {
            tracing::error!(plugin = %a.plugin, unaccounted = a.unaccounted, matching = a.matching, handled = a.handled, dead = a.dead, pending = a.pending, "events of the plugin are unaccounted for: neither handled, dead letters, dropped by its policy nor pending (a bug in plugbus: please report it with `plugbus audit` and the log)");
        }
    }
}

/// What the observer reads the recent flow back from: the backend's log.
struct LogHistory(Arc<dyn crate::backend::Backend>);

impl crate::observe::History for LogHistory {
    fn head(&self) -> Result<u64, String> {
        self.0.head().map_err(|e| e.to_string())
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<crate::event::Event>, String> {
        self.0.read(from, max).map_err(|e| e.to_string())
    }
}
