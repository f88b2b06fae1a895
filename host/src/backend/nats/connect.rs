//! Reaching the server: the connection (credentials from the address or
//! a creds file, TLS, the version check) and the streams and buckets made
//! on first use, and the bridge that runs the client's futures for the
//! synchronous callers.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use std::sync::atomic::Ordering;

use super::{Conn, Inner, CONNECT_TIMEOUT, SERVER_MIN};
use crate::backend::BackendError;

impl Inner {
    /// The connection, made (and the streams made) on first use. Fails at
    /// once while the connection is down, naming the broker.
    pub(super) async fn conn(&self) -> Result<&Conn, BackendError> {
        let conn = self.conn.get_or_try_init(|| self.connect()).await?;
        if conn.client.connection_state() != async_nats::connection::State::Connected {
            return Err(self.unavailable("the connection is down"));
        }
        self.connected.store(true, Ordering::Relaxed);
        Ok(conn)
    }

    pub(super) async fn connect(&self) -> Result<Conn, BackendError> {
        let mut options = match &self.access.creds {
            Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|e| {
                    self.refused(format!(
                        "cannot use the credentials file {} ({e}); pass a NATS .creds file to --broker-creds",
                        file.display()
                    ))
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.access.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        // The client does not read credentials from the address itself.
        let (address, user) = split_credentials(&self.url);
        options = match user {
            Some((user, Some(password))) => options.user_and_password(user, password),
            Some((token, None)) => options.token(token),
            None => options,
        };
        let client = options
            .name("plugbus")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(address.as_str())
            .await
            .map_err(|e| {
                use async_nats::ConnectErrorKind as K;
                match e.kind() {
                    K::Authentication | K::AuthorizationViolation | K::Tls | K::ServerParse => {
                        self.refused(format!("{e}; check the credentials and TLS settings"))
                    }
                    _ => self.unavailable(e),
                }
            })?;
        let version = client.server_info().version;
        if !at_least(&version, SERVER_MIN) {
            return Err(self.refused(format!(
                "nats-server {version} lacks atomic batch publish, which plugbus needs to commit a plugin's state with its fence; run nats-server {}.{} or later with JetStream",
                SERVER_MIN.0, SERVER_MIN.1
            )));
        }
        let js = jetstream::new(client.clone());
        let events = stream::Config {
            name: self.stream(),
            subjects: vec![
                format!("{}.ev.>", self.prefix),
                format!("{}.redo.>", self.prefix),
            ],
            storage: stream::StorageType::File,
            duplicate_window: self.dedup,
            allow_direct: true,
            ..Default::default()
        };
        let dlq = stream::Config {
            name: self.dlq_stream(),
            subjects: vec![format!("{}.dlq.>", self.prefix)],
            storage: stream::StorageType::File,
            duplicate_window: self.dedup,
            allow_direct: true,
            ..Default::default()
        };
        let accounts = super::accounts::stream_config(self.accounts_stream(), &self.prefix);
        let mut made = Vec::with_capacity(3);
        for config in [events, dlq, accounts] {
            let name = config.name.clone();
            made.push(js.get_or_create_stream(config).await.map_err(|e| {
                self.error(format!(
                    "cannot make the stream {name} ({e}); is JetStream enabled (nats-server -js)?"
                ))
            })?);
        }
        let accounts = made.pop();
        let dlq = made.pop();
        let events = made.pop();
        match (events, dlq, accounts) {
            (Some(events), Some(dlq), Some(accounts)) => Ok(Conn {
                client,
                js,
                events,
                dlq,
                accounts,
            }),
            _ => Err(self.refused("the streams were not made")),
        }
    }

    /// The plugin's bucket stream, made on first use (a key-value bucket
    /// with atomic batches and per-message expiry on).
    pub(super) async fn ensure_bucket(&self, plugin: &str) -> Result<stream::Stream, BackendError> {
        let conn = self.conn().await?;
        let bucket = self.bucket(plugin);
        let name = format!("KV_{bucket}");
        let known = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned();
        if let Some(stream) = known {
            return Ok(stream);
        }
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("plugbus: the state of plugin {plugin}")),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            discard: stream::DiscardPolicy::New,
            allow_direct: true,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            ..Default::default()
        };
        let made = conn
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.error(format!("cannot make the bucket {bucket} ({e})")))?;
        let c = &made.cached_info().config;
        if !c.allow_atomic_publish || !c.allow_message_ttl {
            return Err(self.refused(format!(
                "the stream {name} has atomic batch publish or per-message TTLs off (allow_atomic, allow_msg_ttl in its configuration); plugbus needs both: turn them on, or delete the stream (the plugin's state) and plugbus makes it again"
            )));
        }
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin.to_string(), made.clone());
        Ok(made)
    }

    /// The log's stream.
    pub(super) async fn events(&self) -> Result<stream::Stream, BackendError> {
        Ok(self.conn().await?.events.clone())
    }
}

/// `url` without its user information, and that: a user and password, or
/// a token (percent-decoded).
pub(super) fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let Some(scheme) = url.find("://") else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let address = format!("{}{}", &url[..scheme + 3], &rest[at + 1..]);
    let user = match rest[..at].split_once(':') {
        Some((user, password)) => (decode(user), Some(decode(password))),
        None => (decode(&rest[..at]), None),
    };
    (address, Some(user))
}

/// Whether a server `version` (`2.12.8`) is at least `min`.
pub(super) fn at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// Runs the client's futures for the synchronous callers (workers, the
/// API's blocking sections) on a small runtime of its own.
pub(super) struct Bridge(Option<tokio::runtime::Runtime>);

impl Bridge {
    pub(super) fn new() -> Result<Bridge, String> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plugbus-nats")
            .enable_all()
            .build()
            .map(|rt| Bridge(Some(rt)))
            .map_err(|e| format!("cannot start the NATS client's threads: {e}"))
    }

    /// Run `future` to its end, or until `timeout` (the broker counts as
    /// unreachable then).
    pub(super) fn run<T: Send + 'static>(
        &self,
        inner: &Inner,
        timeout: Duration,
        future: impl Future<Output = Result<T, BackendError>> + Send + 'static,
    ) -> Result<T, BackendError> {
        // Boxed, so that the runtime's task and the timeout are made once
        // per answer type, not once per call site (a smaller binary).
        self.run_boxed(inner, timeout, Box::pin(future))
    }

    fn run_boxed<T: Send + 'static>(
        &self,
        inner: &Inner,
        timeout: Duration,
        future: std::pin::Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>>,
    ) -> Result<T, BackendError> {
        let Some(rt) = &self.0 else {
            return Err(inner.unavailable("the NATS client stopped"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, future).await);
        });
        match rx.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(inner.unavailable(format!("no answer within {timeout:?}"))),
            Err(_) => Err(inner.unavailable("the NATS client stopped")),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_address() {
        assert_eq!(
            split_credentials("tls://u:p%40ss@127.0.0.1:4222"),
            (
                "tls://127.0.0.1:4222".to_string(),
                Some(("u".to_string(), Some("p@ss".to_string())))
            )
        );
        assert_eq!(
            split_credentials("nats://s3cret@h:1"),
            ("nats://h:1".to_string(), Some(("s3cret".to_string(), None)))
        );
        assert_eq!(
            split_credentials("nats://h:1"),
            ("nats://h:1".to_string(), None)
        );
        assert!(at_least("2.12.8", (2, 12)) && !at_least("2.11.3", (2, 12)));
    }
}
