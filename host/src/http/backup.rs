//! `POST /v1/backup`: a consistent backup of the embedded store, streamed
//! as it is read (`store::backup`: one snapshot of every keyspace, taken
//! while the host serves). `plugbus backup DIR` writes it into a new data
//! directory that a host starts on. Admin scope; a broker answers 409
//! (back the broker up with its own tools).

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{AppState, IngressError};

/// Bytes gathered before they are handed to the response.
const CHUNK_BYTES: usize = 256 << 10;

/// A `Write` that hands what is written to the response in chunks; fails
/// once the client has gone.
struct ToResponse {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ToResponse {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ToResponse {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub(super) async fn backup(State(state): State<AppState>) -> Result<Response, IngressError> {
    let Some(store) = state.dispatch.backend().store().cloned() else {
        return Err(IngressError::NoStore);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let errors = tx.clone();
        let out = ToResponse {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        match store.backup(out) {
            Ok(s) => tracing::info!(
                bytes = s.bytes,
                last_sequence = s.last_sequence,
                "backup streamed"
            ),
            Err(e) => {
                tracing::warn!("backup not finished: {e}");
                // The response ends broken: the client keeps nothing.
                let _ = errors.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
