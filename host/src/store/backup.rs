//! Online backup: a consistent copy of the whole store (log, cursors,
//! state, dead letters, re-drives, chains, lost ranges) taken from one
//! point in time while the host serves, as a stream a client writes into a
//! new data directory that a host starts on as it is ("restore" is
//! starting a host on it). The point is one engine snapshot across every
//! keyspace, so a plugin's state always matches its cursor, and every event
//! acknowledged before the backup began is in it.
//!
//! The stream: the line `plugbus backup 1\n`; then frames, each a kind
//! byte and its fields (integers big-endian): `K` name-length u16, name (a
//! keyspace begins); `I` key-length u32, key, value-length u32, value (an
//! item of it); `E` last sequence u64, xxh3-64 of everything before the `E`
//! (the end). A stream without its end, or whose checksum differs, is
//! refused and nothing is left behind.
//!
//! It owns the stream format, writing it from a store and building a
//! directory from it, and `verify` (checking a directory).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fjall::{PersistMode, Readable};

use super::{format, Fsync, Store, StoreError, MARK_FILE};

const HEADER: &[u8] = b"plugbus backup 1\n";
/// The keyspaces a backup holds, in the order written.
pub(super) const KEYSPACES: [&str; 7] =
    ["log", "cursors", "dead", "redrive", "meta", "kv", "chains"];

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stream is not a whole backup.
    #[error("the backup stream is not whole ({0}); nothing was kept: take it again")]
    Broken(String),
    /// The engine failed.
    #[error("{0}")]
    Store(String),
    /// The target exists.
    #[error("{0} exists and is not empty: back up into a new directory")]
    Exists(PathBuf),
}

/// What a backup holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Items per keyspace.
    pub items: Vec<(String, u64)>,
    /// Bytes of the stream.
    pub bytes: u64,
    /// The last sequence of the log in it.
    pub last_sequence: u64,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    out: W,
    hash: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Store {
    /// Write a backup of the store, as of now, to `out`.
    pub fn backup(&self, out: impl Write) -> Result<Summary, BackupError> {
        let failed = |source| BackupError::Io {
            what: "writing the backup".into(),
            source,
        };
        let snapshot = self.db.snapshot();
        let mut w = Hashing {
            out,
            hash: xxhash_rust::xxh3::Xxh3::new(),
            bytes: 0,
        };
        w.write_all(HEADER).map_err(failed)?;
        let mut summary = Summary::default();
        for name in KEYSPACES {
            let keyspace = self.keyspace_named(name);
            w.write_all(b"K").map_err(failed)?;
            w.write_all(&(name.len() as u16).to_be_bytes())
                .map_err(failed)?;
            w.write_all(name.as_bytes()).map_err(failed)?;
            let mut count = 0;
            for guard in snapshot.iter(keyspace) {
                let (key, value) = guard
                    .into_inner()
                    .map_err(|e| BackupError::Store(format!("reading {name}: {e:?}")))?;
                if name == "log" {
                    if let Some(first) = super::sequence_of(&key) {
                        let run = super::codec::run_len(&value).unwrap_or(1);
                        summary.last_sequence = first + run.saturating_sub(1);
                    }
                }
                w.write_all(b"I").map_err(failed)?;
                w.write_all(&(key.len() as u32).to_be_bytes())
                    .map_err(failed)?;
                w.write_all(&key).map_err(failed)?;
                w.write_all(&(value.len() as u32).to_be_bytes())
                    .map_err(failed)?;
                w.write_all(&value).map_err(failed)?;
                count += 1;
            }
            summary.items.push((name.to_string(), count));
        }
        w.write_all(b"E").map_err(failed)?;
        w.write_all(&summary.last_sequence.to_be_bytes())
            .map_err(failed)?;
        let sum = w.hash.digest();
        w.out.write_all(&sum.to_be_bytes()).map_err(failed)?;
        w.out.flush().map_err(failed)?;
        summary.bytes = w.bytes + 8;
        Ok(summary)
    }

    pub(super) fn keyspace_named(&self, name: &str) -> &fjall::Keyspace {
        match name {
            "log" => &self.log,
            "cursors" => &self.cursors,
            "dead" => &self.dead,
            "redrive" => &self.redrive,
            "meta" => &self.meta,
            "kv" => &self.kv,
            _ => &self.chains,
        }
    }
}

/// Read exactly `n` bytes, growing the buffer only as they come (a
/// damaged length cannot make it allocate what the stream does not hold).
fn take(r: &mut impl Read, n: usize) -> Result<Vec<u8>, BackupError> {
    let mut buf = Vec::with_capacity(n.min(1 << 16));
    r.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| BackupError::Broken(format!("reading it failed: {e}")))?;
    if buf.len() != n {
        return Err(BackupError::Broken("it ends early".into()));
    }
    Ok(buf)
}

/// A reader that hashes what passes through.
struct Hashed<R> {
    inner: R,
    hash: xxhash_rust::xxh3::Xxh3,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Build a data directory at `dir` (new or empty) from the backup stream
/// `input`; on any failure nothing is left there.
pub fn restore(input: impl Read, dir: &Path) -> Result<Summary, BackupError> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::Exists(dir.to_path_buf()));
    }
    let built = build(input, dir);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    built
}

fn build(input: impl Read, dir: &Path) -> Result<Summary, BackupError> {
    let engine = |e: fjall::Error| BackupError::Store(format!("{}: {e:?}", dir.display()));
    let mut r = Hashed {
        inner: std::io::BufReader::with_capacity(1 << 20, input),
        hash: xxhash_rust::xxh3::Xxh3::new(),
    };
    if take(&mut r, HEADER.len())? != HEADER {
        return Err(BackupError::Broken("it is not a plugbus backup".into()));
    }
    // The keyspaces as a host makes them (its memtable sizes).
    let store = Store::open(dir, Fsync::Always).map_err(|e| BackupError::Store(e.to_string()))?;
    let db = &store.db;
    let mut summary = Summary::default();
    let mut keyspace: Option<fjall::Keyspace> = None;
    let mut batch = db.batch();
    let mut in_batch = 0usize;
    loop {
        match take(&mut r, 1)?[0] {
            b'K' => {
                let len = u16::from_be_bytes([take(&mut r, 1)?[0], take(&mut r, 1)?[0]]);
                let name = String::from_utf8(take(&mut r, usize::from(len))?)
                    .map_err(|_| BackupError::Broken("a keyspace name is not text".into()))?;
                if !KEYSPACES.contains(&name.as_str()) {
                    return Err(BackupError::Broken(format!("unknown keyspace {name}")));
                }
                keyspace = Some(store.keyspace_named(&name).clone());
                summary.items.push((name, 0));
            }
            b'I' => {
                let ks = keyspace
                    .as_ref()
                    .ok_or_else(|| BackupError::Broken("an item before its keyspace".into()))?;
                let len = |r: &mut Hashed<_>| -> Result<usize, BackupError> {
                    let b = take(r, 4)?;
                    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                };
                let key_len = len(&mut r)?;
                let key = take(&mut r, key_len)?;
                let value_len = len(&mut r)?;
                let value = take(&mut r, value_len)?;
                batch.insert(ks, key, value);
                in_batch += 1;
                if in_batch == 1024 {
                    batch.commit().map_err(engine)?;
                    batch = db.batch();
                    in_batch = 0;
                }
                if let Some(last) = summary.items.last_mut() {
                    last.1 += 1;
                }
            }
            b'E' => break,
            other => {
                return Err(BackupError::Broken(format!(
                    "an unknown frame {other:#04x}"
                )))
            }
        }
    }
    let last = take(&mut r, 8)?;
    let expected = r.hash.digest();
    let sum = {
        let mut b = [0u8; 8];
        r.inner
            .read_exact(&mut b)
            .map_err(|e| BackupError::Broken(format!("its checksum is missing: {e}")))?;
        u64::from_be_bytes(b)
    };
    if sum != expected {
        return Err(BackupError::Broken("its checksum does not match".into()));
    }
    batch.commit().map_err(engine)?;
    db.persist(PersistMode::SyncAll).map_err(engine)?;
    drop(store);
    summary.last_sequence = u64::from_be_bytes(last.try_into().unwrap_or_default());
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |source| BackupError::Io { what, source }
    };
    std::fs::write(dir.join(MARK_FILE), summary.last_sequence.to_be_bytes())
        .map_err(io("writing the acknowledged witness"))?;
    Ok(summary)
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    /// The last sequence.
    pub last_sequence: u64,
    /// Holes in the log that no repair recorded.
    pub unexplained_holes: Vec<(u64, u64)>,
    /// Ranges a repair recorded as lost.
    pub recorded_lost: Vec<(u64, u64)>,
    /// Cursors past the end of the log (name, through).
    pub cursors_ahead: Vec<(String, u64)>,
    /// Log records read and decoded.
    pub records: u64,
}

impl Verified {
    /// Whether the directory is whole.
    pub fn ok(&self) -> bool {
        self.unexplained_holes.is_empty() && self.cursors_ahead.is_empty()
    }
}

/// Check the data directory `dir` (a copy or a backup; it is opened as a
/// host would): its journals, its format, that every log record decodes,
/// that the log has no hole a repair did not record, and that no cursor is
/// past its end.
pub fn verify(dir: &Path) -> Result<Verified, StoreError> {
    if !dir.join(format::FORMAT_FILE).exists() && !dir.join("version").exists() {
        return Err(StoreError::Open {
            dir: dir.to_path_buf(),
            reason: "it holds no plugbus store".into(),
        });
    }
    let store = Store::open(dir, Fsync::Always)?;
    let last = store.last_sequence();
    let mut records = 0;
    for guard in store.log.iter() {
        let (key, value) = guard.into_inner().map_err(|e| store.read_error(&e))?;
        store.decode_records(&key, &value)?;
        records += 1;
    }
    let recorded: Vec<(u64, u64)> = store
        .lost_ranges()?
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    let unexplained_holes = store
        .holes(last)?
        .into_iter()
        .filter(|h| !recorded.iter().any(|r| r.0 <= h.0 && r.1 >= h.1))
        .collect();
    let mut cursors_ahead = Vec::new();
    for guard in store.cursors.iter() {
        let (name, value) = guard.into_inner().map_err(|e| store.read_error(&e))?;
        if let Some(c) = super::progress::Cursor::decode(&value) {
            if c.through > last {
                cursors_ahead.push((String::from_utf8_lossy(&name).into_owned(), c.through));
            }
        }
    }
    Ok(Verified {
        last_sequence: last,
        unexplained_holes,
        recorded_lost: recorded,
        cursors_ahead,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{ev, temp_dir};

    #[test]
    fn a_backup_restores_to_a_store_with_the_same_events_and_a_broken_one_leaves_nothing() {
        let dir = temp_dir("backup-src");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        for i in 0..300 {
            store.append(&mut [ev(i)]).expect("append");
        }
        let mut stream = Vec::new();
        let summary = store.backup(&mut stream).expect("backup");
        assert_eq!(summary.last_sequence, 300);
        let to = temp_dir("backup-dst");
        let restored = restore(stream.as_slice(), &to).expect("restore");
        assert_eq!(restored.last_sequence, 300);
        let verified = verify(&to).expect("verifies");
        assert!(verified.ok(), "{verified:?}");
        let copy = Store::open(&to, Fsync::Always).expect("a host opens it");
        assert_eq!(
            copy.read(1, 1000).expect("reads"),
            store.read(1, 1000).expect("reads")
        );
        assert_eq!(copy.append(&mut [ev(1000)]).expect("append"), 301);
        drop(copy);
        // Cut short, or one byte changed: refused, nothing left.
        for broken in [stream[..stream.len() - 3].to_vec(), {
            let mut b = stream.clone();
            let at = b.len() / 2;
            b[at] ^= 1;
            b
        }] {
            let to = temp_dir("backup-broken");
            let err = restore(broken.as_slice(), &to).expect_err("refused");
            assert!(matches!(err, BackupError::Broken(_)), "{err}");
            assert!(!to.exists(), "nothing left behind");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&to);
    }
}
