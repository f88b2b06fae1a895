//! The `plugbus` binary: parses the command line and runs the subcommand.

use std::process::ExitCode;

// Events are built on the ingress threads and freed on the plugin workers'
// threads; mimalloc handles such cross-thread frees far better than glibc's
// malloc (the fan-out benchmark measures both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use plugbus::cli::{Cli, Command, DeadAction, KvAction, LogAction, SchemaAction, TokenAction};
use plugbus::client::Client;
use plugbus::plugin::PluginStatus;

fn main() -> ExitCode {
    let args = match plugbus::config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => return fail(&e),
    };
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Run(args) => {
            no_huge_pages();
            prompt_purge();
            let filter = || {
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn,opentelemetry=warn".into())
            };
            if args.log_format == "json" {
                plugbus::telemetry::log_batch_spans();
                tracing_subscriber::fmt()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_env_filter(filter())
                    .with_writer(std::io::stderr)
                    .init();
            } else {
                tracing_subscriber::fmt()
                    .with_env_filter(filter())
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init();
            }
            let settings = match args.settings() {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            // Before the async runtime: the exporter's blocking HTTP client
            // is made and dropped outside it.
            if let Some(url) = &args.otlp {
                match plugbus::telemetry::start(url, args.otlp_sample_ratio) {
                    Ok(t) => {
                        tracing::info!(endpoint = %t.endpoint, sample_ratio = args.otlp_sample_ratio, "exporting spans over OTLP/HTTP")
                    }
                    Err(e) => return fail(&e.to_string()),
                }
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
            };
            let ran = runtime.block_on(plugbus::server::run(settings));
            if ran.is_err() {
                // Stopped without a drain (a failed store): its threads
                // are not waited for.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            } else {
                drop(runtime);
            }
            plugbus::telemetry::shutdown();
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("plugbus: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Publish {
            topic,
            json,
            at,
            after,
            client,
        } => match Client::new(&client).and_then(|c| match deliver_at(at, after) {
            Ok(Some(at)) => schedule(&c, &topic, &json, &at),
            Ok(None) => publish(&c, &topic, &json),
            Err(e) => Err(e),
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Plugins { client, json } => {
            match Client::new(&client).and_then(|c| plugins(&c, json)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Repair {
            data,
            dry_run,
            json,
        } => match plugbus::store::repair::repair(&data, dry_run) {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.text());
                }
                if report.lost_anything() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(&format!("repair of {}: {e}", data.display())),
        },
        Command::Backup { client, dir } => {
            let copied = Client::new(&client)
                .and_then(|c| c.post_reader("/v1/backup"))
                .and_then(|stream| {
                    plugbus::store::backup::restore(stream, &dir).map_err(|e| e.to_string())
                });
            match copied {
                Ok(s) => {
                    let items: Vec<String> =
                        s.items.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    println!(
                        "backed up into {}: events through sequence {}, {} bytes ({}); restore: plugbus run --data {}",
                        dir.display(),
                        s.last_sequence,
                        s.bytes,
                        items.join(", "),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("backup into {}: {e}", dir.display())),
            }
        }
        Command::Verify { data, json } => match plugbus::store::backup::verify(&data) {
            Ok(v) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    println!(
                        "{}: {} log records through sequence {}; holes a repair did not record: {:?}; recorded lost: {:?}; cursors past the end: {:?}",
                        data.display(),
                        v.records,
                        v.last_sequence,
                        v.unexplained_holes,
                        v.recorded_lost,
                        v.cursors_ahead
                    );
                }
                if v.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::Audit { client, json } => {
            match Client::new(&client).and_then(|c| audit(&c, json)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(&e),
            }
        }
        Command::Replay {
            plugin,
            from_seq,
            from_time,
            reset_state,
            client,
        } => {
            let body = match (from_seq, from_time) {
                (Some(seq), _) => {
                    serde_json::json!({ "from_sequence": seq, "reset_state": reset_state })
                }
                (None, Some(t)) => {
                    serde_json::json!({ "from_time": t, "reset_state": reset_state })
                }
                (None, None) => return fail("say where from: --from-seq N or --from-time T"),
            };
            let replayed = Client::new(&client)
                .and_then(|c| c.post_json(&format!("/v1/plugins/{plugin}/replay"), &body));
            match replayed {
                Ok(v) => {
                    let state = if reset_state {
                        " with its state cleared"
                    } else {
                        ""
                    };
                    println!(
                        "{plugin} replays from sequence {}{state}",
                        v["from_sequence"]
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Log { action, client } => {
            let path = match action {
                LogAction::Tail { count } => format!("/v1/log?limit={count}"),
                LogAction::Get { sequence } => format!("/v1/log/{sequence}"),
            };
            match Client::new(&client).and_then(|c| c.get_json(&path)) {
                Ok(v) => {
                    match v["events"].as_array() {
                        Some(events) => events.iter().for_each(|e| println!("{e}")),
                        None => println!("{v:#}"),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Schema { action, client } => {
            match Client::new(&client).and_then(|c| schema(&c, &action)) {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Kv { action, client } => {
            let path = match &action {
                KvAction::List { plugin } => format!("/v1/plugins/{plugin}/kv"),
                KvAction::Get { plugin, key } => {
                    format!("/v1/plugins/{plugin}/kv/{}", encode_path(key))
                }
            };
            match Client::new(&client).and_then(|c| c.get_json(&path)) {
                Ok(v) => {
                    match (&action, v["entries"].as_array()) {
                        (KvAction::List { .. }, Some(entries)) => {
                            for e in entries {
                                println!(
                                    "{}\t{}",
                                    e["key"].as_str().unwrap_or_default(),
                                    e["value"]
                                );
                            }
                        }
                        _ => println!("{}", v["value"]),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Compile {
            file,
            cache_dir,
            stack_bytes_max,
            tier,
        } => match compile(&file, cache_dir, stack_bytes_max, tier) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Dead { action, client } => {
            match Client::new(&client).and_then(|c| dead(&c, &action)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::New(args) => author_done(plugbus::author::commands::new(&args)),
        Command::Build(args) => author_done(plugbus::author::commands::build(&args)),
        Command::Test(args) => {
            // The plugin's log lines, as the host would write them.
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn,plugin=info"))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            match plugbus::author::commands::test(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Dev(args) => {
            // The plugin's log lines and the host's warnings come from the
            // host child; this process says what it does on stdout.
            author_done(plugbus::author::commands::dev(&args))
        }
        Command::Token {
            action: TokenAction::New { name, scopes },
        } => match token_new(&name, &scopes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn author_done(result: Result<(), plugbus::author::AuthorError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// `plugbus compile`: `tier`'s build of `file` into the cache.
fn compile(
    file: &std::path::Path,
    cache_dir: Option<std::path::PathBuf>,
    stack_bytes_max: u64,
    tier: plugbus::runtime::Tier,
) -> Result<(), String> {
    let cache = cache_dir
        .or_else(plugbus::runtime::cache::default_dir)
        .ok_or("no compile cache: HOME is not set; pass --cache-dir DIR")?;
    let range = plugbus::runtime::STACK_BYTES_RANGE;
    let stack = usize::try_from(stack_bytes_max)
        .ok()
        .filter(|s| range.contains(s))
        .ok_or_else(|| {
            format!(
                "--stack-bytes-max {stack_bytes_max} is out of range; use {} to {}, the plugin manifest's limits.stack_bytes_max",
                range.start(),
                range.end()
            )
        })?;
    let runtime = plugbus::runtime::Runtime::new(plugbus::runtime::Limits::default(), Some(cache))?;
    runtime
        .compile_into_cache(file, stack, tier)
        .map_err(|e| e.to_string())
}

/// `text` as one URL path segment.
fn encode_path(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn fail(message: &str) -> ExitCode {
    eprintln!("plugbus: {message}");
    ExitCode::FAILURE
}

fn publish(client: &Client, topic: &str, json: &str) -> Result<(), String> {
    serde_json::from_str::<serde_json::Value>(json)
        .map_err(|e| format!("the event data is not valid JSON: {e}; quote it for your shell, e.g. '{{\"order_id\":\"o-1\"}}'"))?;
    let body = client.post_text(
        &format!("/v1/events/{}", encode_path(topic)),
        "application/json",
        json,
    )?;
    println!(
        "published {topic} id={} sequence={}",
        body["id"].as_str().unwrap_or("?"),
        body["sequence"]
    );
    Ok(())
}

/// When `plugbus publish --at/--after` asks the event to be delivered, as
/// RFC 3339.
fn deliver_at(
    at: Option<String>,
    after: Option<humantime::Duration>,
) -> Result<Option<String>, String> {
    match (at, after) {
        (Some(at), _) => {
            humantime::parse_rfc3339_weak(&at).map_err(|_| {
                format!("--at `{at}` is not an RFC 3339 time; write it like 2026-12-24T18:00:00Z")
            })?;
            Ok(Some(at))
        }
        (None, Some(after)) => {
            let t = std::time::SystemTime::now() + *after;
            Ok(Some(humantime::format_rfc3339_millis(t).to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// Publish one event to be delivered not before `at`, as a CloudEvent with
/// the `deliverat` attribute.
fn schedule(client: &Client, topic: &str, json: &str, at: &str) -> Result<(), String> {
    let data: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("the event data is not valid JSON: {e}; quote it for your shell, e.g. '{{\"order_id\":\"o-1\"}}'"))?;
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": plugbus::event::new_id(),
        "source": "plugbus/cli",
        "type": topic,
        "datacontenttype": "application/json",
        "data": data,
        "deliverat": at,
    });
    let body = client.post_text(
        "/v1/events",
        "application/cloudevents+json",
        &event.to_string(),
    )?;
    match body["scheduled"].as_str() {
        Some(when) => println!(
            "scheduled {topic} id={} for {when}",
            body["id"].as_str().unwrap_or("?")
        ),
        None => println!(
            "published {topic} id={} sequence={} (its time has come)",
            body["id"].as_str().unwrap_or("?"),
            body["sequence"]
        ),
    }
    Ok(())
}

fn plugins(client: &Client, raw: bool) -> Result<(), String> {
    let body = client.get_json("/v1/plugins")?;
    if raw {
        println!("{body:#}");
        return Ok(());
    }
    let list: Vec<PluginStatus> = serde_json::from_value(body["plugins"].clone())
        .map_err(|e| format!("unexpected answer to /v1/plugins: {e}"))?;
    if body["backend"]["kind"] == "broker" {
        println!(
            "broker {} ({})",
            body["backend"]["address"].as_str().unwrap_or("?"),
            if body["backend"]["connected"] == true {
                "connected"
            } else {
                "unreachable: reconnecting"
            }
        );
    }
    println!(
        "{:<14} {:<11} {:<9} {:<12} {:>9} {:>7} {:>7} {:>6} {:>6} {:>8}  SUBSCRIPTIONS",
        "NAME",
        "STATE",
        "VERSION",
        "HASH",
        "HANDLED",
        "FAILED",
        "RETRIED",
        "QUEUE",
        "LAG",
        "EVENTS/S"
    );
    for p in &list {
        println!(
            "{:<14} {:<11} {:<9} {:<12} {:>9} {:>7} {:>7} {:>6} {:>6} {:>8.1}  {}",
            p.name,
            p.state,
            p.version,
            p.content_hash,
            p.handled,
            p.failed,
            p.retried,
            p.queue_depth,
            p.lag.map_or("-".to_string(), |l| l.to_string()),
            p.handled_per_s,
            p.subscriptions.join(", ")
        );
        if let Some(held) = &p.held {
            println!("    held: {held}");
        }
        if let Some(note) = &p.batch_note {
            println!("    batch: {note}");
        }
        if let Some(death) = &p.worker_death {
            println!("    {death} ({} in all)", p.worker_deaths);
        }
        if let (Some(pending), Some(waiting)) = (p.pending, p.waiting_retries) {
            println!("    on the broker: {pending} handed out and not settled, {waiting} retries waiting, last handed out {}", p.cursor);
        }
        if let Some(l) = &p.limits {
            println!(
                "    {} build; limits: {} worker(s) by {}, batch {}, deadline {} ms, memory {} MiB, stack {} KiB, {} attempts ({} ordering), overflow {}, publish {}, output {} lines/s{}",
                p.tier,
                l.concurrency,
                l.ordering_key,
                l.batch_events_max,
                l.deadline_ms,
                l.memory_bytes_max >> 20,
                l.stack_bytes_max >> 10,
                l.max_attempts,
                l.retry_ordering,
                l.overflow,
                l.publish_events_per_s_max
                    .map_or("unlimited".to_string(), |r| format!("{r}/s")),
                l.output_lines_per_s_max,
                if l.manifest { " (manifest)" } else { "" }
            );
        }
        if let Some(e) = &p.error {
            println!("    {e}");
        }
    }
    Ok(())
}

/// Print the host's audit; true when every event is accounted for.
fn audit(client: &Client, raw: bool) -> Result<bool, String> {
    let body = client.get_json("/v1/audit")?;
    let list: Vec<plugbus::audit::Audit> = serde_json::from_value(body["plugins"].clone())
        .map_err(|e| format!("unexpected answer to /v1/audit: {e}"))?;
    if raw {
        println!("{body:#}");
    } else {
        print!("{}", plugbus::audit::table(&list));
    }
    let unaccounted = body["unaccounted"]
        .as_i64()
        .ok_or("unexpected answer to /v1/audit: no `unaccounted` total")?;
    if unaccounted != 0 {
        eprintln!("{unaccounted} events unaccounted for: neither handled, dead letters, dropped by a plugin's policy nor pending");
    }
    Ok(unaccounted == 0)
}

fn dead(client: &Client, action: &DeadAction) -> Result<(), String> {
    match action {
        DeadAction::List { plugin } => {
            let path = match plugin {
                Some(p) => format!("/v1/dead/{p}"),
                None => "/v1/dead".to_string(),
            };
            let body = client.get_json(&path)?;
            let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<14} {:>9} {:<22} {:>8}  ERROR",
                "PLUGIN", "SEQUENCE", "TYPE", "ATTEMPTS"
            );
            for l in &letters {
                println!(
                    "{:<14} {:>9} {:<22} {:>8}  {}",
                    l["plugin"].as_str().unwrap_or("?"),
                    l["sequence"],
                    l["type"].as_str().unwrap_or("?"),
                    l["attempts"],
                    l["error"].as_str().unwrap_or("")
                );
            }
            eprintln!("{} dead letter(s)", letters.len());
        }
        DeadAction::Show { plugin, sequence } => {
            println!(
                "{:#}",
                client.get_json(&format!("/v1/dead/{plugin}/{sequence}"))?
            );
        }
        DeadAction::Redrive(which) => {
            let body = client.post_json(
                &format!("/v1/dead/{}/redrive", which.plugin),
                &which.body()?,
            )?;
            println!("re-driven: {}", body["redriven"]);
        }
        DeadAction::Purge(which) => {
            let body =
                client.post_json(&format!("/v1/dead/{}/purge", which.plugin), &which.body()?)?;
            println!("purged: {}", body["purged"]);
        }
    }
    Ok(())
}

/// `plugbus token new`: a random token, printed once (stderr), and the
/// entry for the token file, which keeps only its hash (stdout).
fn token_new(name: &str, scopes: &[String]) -> Result<(), String> {
    use plugbus::http::auth;
    let token = auth::new_token()?;
    let entry = format!(
        "[[token]]\nname = {}\nsha256 = \"{}\"\nscopes = [{}]\n",
        toml_string(name),
        auth::hash_hex(&token),
        scopes
            .iter()
            .map(|s| toml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The entry must be one the host accepts.
    auth::parse(&entry)?;
    // The entry on stdout (`>> tokens.toml` appends it), the token on
    // stderr: shown once, never written to a file by us.
    eprintln!(
        "token for `{name}` (shown once; the CLI takes it as --token or PLUGBUS_TOKEN):\n{token}\n"
    );
    eprintln!("the entry for the token file (--auth), holding only the token's hash:");
    print!("{entry}");
    Ok(())
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in its
/// `mimalloc.h`: the 16th of `mi_option_e`, which the Rust binding does not
/// name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay plugbus runs with, in ms, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Give memory the host freed back to the kernel after 10 ms instead of
/// mimalloc 3's default of a second. Under the order flow the host frees
/// megabytes a second (request bodies, batches read back, memtables), and
/// with a second's delay their pages stayed resident: peak RSS for 200,000
/// orders went from 121-150 MiB to 94-110, with no measurable CPU cost
/// (the throughput in the same runs moved within the machine's noise).
#[allow(unsafe_code)]
fn prompt_purge() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        // The operator's choice, read by mimalloc itself.
        return;
    }
    // SAFETY: plain calls into the allocator's option table, which
    // mimalloc documents as settable at any time. (Set, not set as a
    // default: a default is ignored once the option was read, which hosts
    // started by the benchmark showed.)
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        // A purge scheduled before this (at start, a second ahead) would
        // hold every later one back until it is due: done now instead.
        libmimalloc_sys::mi_collect(true);
    }
}

/// Turn transparent huge pages off for this process. The host's buffers
/// (request bodies, batches, memtables) come and go by the megabyte, and
/// mimalloc asks the kernel for huge pages: every fresh one is 2 MiB to
/// zero on first touch, which took 30 % of the host's CPU in the order flow
/// (`perf`: `clear_page_erms` under `do_huge_pmd_anonymous_page`) and held
/// more memory. With them off the order flow used 4.7 CPU seconds for
/// 200,000 orders instead of 6.8, and peaked 50 MiB lower.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("plugbus: cannot turn transparent huge pages off ({e}); running with them");
    }
}

/// `plugbus schema`: read or declare a topic's schema.
fn schema(client: &Client, action: &SchemaAction) -> Result<serde_json::Value, String> {
    match action {
        SchemaAction::Get { topic: None } => client.get_json("/v1/schemas"),
        SchemaAction::Get { topic: Some(t) } => client.get_json(&format!("/v1/schemas/{t}")),
        SchemaAction::Put {
            topic,
            file,
            major,
            mode,
        } => {
            let body = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the schema file {}: {e}", file.display()))?;
            let mut query = Vec::new();
            if let Some(m) = major {
                query.push(format!("major={m}"));
            }
            if let Some(m) = mode {
                query.push(format!("mode={m}"));
            }
            let path = format!("/v1/schemas/{topic}?{}", query.join("&"));
            client.put_text(&path, "application/json", &body)
        }
        SchemaAction::Upcaster { topic, from, file } => {
            let body = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the upcaster file {}: {e}", file.display()))?;
            let path = format!("/v1/schemas/{topic}/upcasters/{from}");
            client.put_text(&path, "application/json", &body)
        }
    }
}
