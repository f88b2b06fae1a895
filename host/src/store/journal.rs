//! A read-only check of the storage engine's journals, run before the
//! engine opens them: the engine (fjall 3.1) recovers a journal by cutting
//! it at the first batch it cannot read, so a damaged batch in the middle of
//! a journal, or anywhere in an older one, would take every later batch with
//! it, silently (the research in `repair.md`; fjall-rs/fjall#311). This
//! module reads the journals the way the engine writes them and tells an
//! ordinary torn tail (the last batch of the newest journal, cut by a crash)
//! from damage that has intact batches after it, which the host refuses to
//! open and `plugbus repair` salvages.
//!
//! The format (fjall 3.1.13, `src/journal/entry.rs`): journals are
//! `N.jnl` files, preallocated with zeros; a batch is a Start entry
//! (`1`, item count u32, engine seqno u64), that many Item (`2`, value type
//! u8, compression u8, keyspace u64, key length u16, value length u32,
//! stored length u32, key, stored value) or Clear (`4`, keyspace u64)
//! entries, and an End entry (`3`, xxh3-64 of the items' bytes, the magic
//! `FJL\x03`). Integers are little-endian. The Start entry is not covered
//! by the checksum: a wrong item count breaks the structure, but a flipped
//! seqno cannot be told from a right one here.
//!
//! It owns parsing and classifying; `store` refuses, `repair` salvages.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::StoreError;

const START: u8 = 1;
const ITEM: u8 = 2;
const END: u8 = 3;
const CLEAR: u8 = 4;
const MAGIC: &[u8; 4] = b"FJL\x03";
const START_BYTES: usize = 1 + 4 + 8;
const ITEM_HEADER_BYTES: usize = 1 + 1 + 1 + 8 + 2 + 4 + 4;
const CLEAR_BYTES: usize = 1 + 8;
const END_BYTES: usize = 1 + 8 + MAGIC.len();

/// One intact batch: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Its bytes in the file.
    pub bytes: Range<usize>,
    /// The engine's sequence number for it.
    pub seqno: u64,
    /// Its items: (keyspace id, key).
    pub items: Vec<(u64, Vec<u8>)>,
}

/// Bytes that are not an intact batch, between two intact ones or before
/// the end of the file's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The bytes, up to the next intact batch (or the end of the data).
    pub bytes: Range<usize>,
    /// What is wrong with the first batch there.
    pub reason: String,
}

/// What one journal holds.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub path: PathBuf,
    /// Its number (`N.jnl`).
    pub number: u64,
    pub batches: Vec<Batch>,
    pub damage: Vec<Damage>,
    /// Where its data ends (the zeros of preallocation follow).
    pub end: usize,
}

impl Scan {
    /// Damage with an intact batch after it in this file.
    pub(crate) fn damage_before_intact(&self) -> impl Iterator<Item = &Damage> {
        let last_intact = self.batches.last().map_or(0, |b| b.bytes.end);
        self.damage
            .iter()
            .filter(move |d| d.bytes.start < last_intact)
    }

    /// Damage at the end of its data, with nothing intact after it: in the
    /// newest journal, a batch a crash cut short.
    #[cfg(test)]
    pub(crate) fn tail_damage(&self) -> Option<&Damage> {
        let last_intact = self.batches.last().map_or(0, |b| b.bytes.end);
        self.damage.iter().find(|d| d.bytes.start >= last_intact)
    }
}

/// Read a little-endian integer of `N` bytes at `at`.
fn le<const N: usize>(bytes: &[u8], at: usize) -> Option<u64> {
    let slice: [u8; N] = bytes.get(at..at + N)?.try_into().ok()?;
    let mut wide = [0u8; 8];
    wide[..N].copy_from_slice(&slice);
    Some(u64::from_le_bytes(wide))
}

/// Walk `count` items from `pos`, pushing (keyspace, key) of each to
/// `items`; where the items end.
fn walk_items(
    bytes: &[u8],
    mut pos: usize,
    count: u64,
    items: &mut Vec<(u64, Vec<u8>)>,
) -> Result<usize, String> {
    for _ in 0..count {
        match bytes.get(pos) {
            Some(&ITEM) => {
                let key_len = le::<2>(bytes, pos + 11).ok_or("the file ends inside an item")?;
                let stored = le::<4>(bytes, pos + 17).ok_or("the file ends inside an item")?;
                let keyspace = le::<8>(bytes, pos + 3).ok_or("the file ends inside an item")?;
                let key_at = pos + ITEM_HEADER_BYTES;
                let end = key_at
                    .checked_add(key_len as usize)
                    .and_then(|k| k.checked_add(stored as usize))
                    .filter(|&e| e <= bytes.len())
                    .ok_or("an item's length runs past the end of the file")?;
                items.push((keyspace, bytes[key_at..key_at + key_len as usize].to_vec()));
                pos = end;
            }
            Some(&CLEAR) => {
                let keyspace = le::<8>(bytes, pos + 1).ok_or("the file ends inside an item")?;
                items.push((keyspace, Vec::new()));
                pos += CLEAR_BYTES;
            }
            Some(other) => {
                return Err(format!(
                    "item {} of {count} has the tag {other:#04x}",
                    items.len() + 1
                ))
            }
            None => return Err("the file ends inside a batch".into()),
        }
    }
    Ok(pos)
}

/// What can still be read of the items of the damaged batch at the start
/// of `damage`: (keyspace, key) of each item up to the first that does
/// not parse (none when its start is unreadable). For the repair's report.
pub(crate) fn readable_items(bytes: &[u8], damage: &Damage) -> Vec<(u64, Vec<u8>)> {
    let region = &bytes[..damage.bytes.end.min(bytes.len())];
    let at = damage.bytes.start;
    let mut items = Vec::new();
    if region.get(at) == Some(&START) {
        if let Some(count) = le::<4>(region, at + 1) {
            let _ = walk_items(region, at + START_BYTES, count, &mut items);
        }
    }
    items
}

/// Parse the batch that starts at `at`, checking its structure, checksum
/// and trailer.
fn batch_at(bytes: &[u8], at: usize) -> Result<Batch, String> {
    if bytes.get(at) != Some(&START) {
        return Err(format!(
            "a batch should start here, found the byte {:#04x}",
            bytes.get(at).copied().unwrap_or(0)
        ));
    }
    let count = le::<4>(bytes, at + 1).ok_or("the file ends inside a batch's start")?;
    let seqno = le::<8>(bytes, at + 5).ok_or("the file ends inside a batch's start")?;
    let items_start = at + START_BYTES;
    let mut items = Vec::new();
    let pos = walk_items(bytes, items_start, count, &mut items)?;
    if bytes.get(pos) != Some(&END) {
        return Err(format!(
            "after {count} items the batch's end marker is missing"
        ));
    }
    let expected = le::<8>(bytes, pos + 1).ok_or("the file ends inside a batch's end")?;
    let magic = bytes
        .get(pos + 9..pos + END_BYTES)
        .ok_or("the file ends inside a batch's end")?;
    if magic != MAGIC {
        return Err("the batch's trailer is not the engine's magic".into());
    }
    let got = xxhash_rust::xxh3::xxh3_64(&bytes[items_start..pos]);
    if got != expected {
        return Err(format!(
            "checksum mismatch (stored {expected:#018x}, computed {got:#018x})"
        ));
    }
    Ok(Batch {
        bytes: at..pos + END_BYTES,
        seqno,
        items,
    })
}

/// Where the file's data ends: after its last non-zero byte.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// The next offset after `from` where an intact batch starts, if any.
fn resync(bytes: &[u8], from: usize, end: usize) -> Option<Batch> {
    (from..end)
        .filter(|&at| bytes[at] == START)
        .find_map(|at| batch_at(&bytes[..end], at).ok())
}

/// Scan one journal's bytes: every intact batch, and every damaged range.
pub(crate) fn scan_bytes(path: PathBuf, number: u64, bytes: &[u8]) -> Scan {
    let end = data_end(bytes);
    let data = &bytes[..end];
    let mut scan = Scan {
        path,
        number,
        batches: Vec::new(),
        damage: Vec::new(),
        end,
    };
    let mut pos = 0;
    while pos < end {
        match batch_at(data, pos) {
            Ok(b) => {
                pos = b.bytes.end;
                scan.batches.push(b);
            }
            Err(reason) => {
                let next = resync(data, pos + 1, end);
                let to = next.as_ref().map_or(end, |b| b.bytes.start);
                scan.damage.push(Damage {
                    bytes: pos..to,
                    reason,
                });
                pos = to;
            }
        }
    }
    scan
}

/// The journal files of `dir`, oldest first: (number, path).
pub(crate) fn journals(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let n = path
                .file_name()?
                .to_str()?
                .strip_suffix(".jnl")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The bytes of a journal that were ever written: the engine preallocates
/// its journals, so on a file system with sparse files the rest is a hole
/// and is not read (unless some data follows it, when the whole file is).
fn written_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let hole = seek(&file, SeekFrom::Hole(0)).unwrap_or(len).min(len);
    let more = hole < len && seek(&file, SeekFrom::Data(hole)).is_ok();
    let upto = if more { len } else { hole };
    let mut bytes = vec![0u8; usize::try_from(upto).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Scan every journal of `dir`, oldest first.
pub(crate) fn scan_dir(dir: &Path) -> std::io::Result<Vec<Scan>> {
    journals(dir)?
        .into_iter()
        .map(|(number, path)| {
            let bytes = written_bytes(&path)?;
            Ok(scan_bytes(path, number, &bytes))
        })
        .collect()
}

/// The first damage in `scans` that the engine would cut away silently:
/// any in an older journal, and in the newest any with an intact batch
/// after it. (A damaged end of the newest journal is a crash's torn write,
/// which the engine drops and the acknowledged witness judges.)
pub(crate) fn silent_loss(scans: &[Scan]) -> Option<(&Scan, &Damage)> {
    let newest = scans.last().map(|s| s.number);
    scans.iter().find_map(|s| {
        let damage = if Some(s.number) == newest {
            s.damage_before_intact().next()
        } else {
            s.damage.first()
        };
        damage.map(|d| (s, d))
    })
}

/// Refuse to open `dir` when a journal has damage the engine would cut
/// away silently ([`silent_loss`]). A directory without journals, or one
/// that cannot be read here, is left to the engine.
pub(crate) fn refuse_silent_loss(dir: &Path) -> Result<(), StoreError> {
    let Ok(scans) = scan_dir(dir) else {
        return Ok(());
    };
    let Some((scan, damage)) = silent_loss(&scans) else {
        return Ok(());
    };
    let intact_after = scan
        .batches
        .iter()
        .filter(|b| b.bytes.start >= damage.bytes.end)
        .count()
        + scans
            .iter()
            .filter(|s| s.number > scan.number)
            .map(|s| s.batches.len())
            .sum::<usize>();
    Err(StoreError::JournalDamaged {
        dir: dir.to_path_buf(),
        file: scan.path.clone(),
        offset: damage.bytes.start,
        reason: damage.reason.clone(),
        intact_after,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A batch as the engine writes it, of `items` (keyspace, key, value).
    pub(crate) fn encode(seqno: u64, items: &[(u64, &[u8], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (keyspace, key, value) in items {
            body.extend([ITEM, 0, 0]);
            body.extend(keyspace.to_le_bytes());
            body.extend((key.len() as u16).to_le_bytes());
            body.extend((value.len() as u32).to_le_bytes());
            body.extend((value.len() as u32).to_le_bytes());
            body.extend(*key);
            body.extend(*value);
        }
        let mut out = vec![START];
        out.extend((items.len() as u32).to_le_bytes());
        out.extend(seqno.to_le_bytes());
        out.extend(&body);
        out.push(END);
        out.extend(xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        out.extend(MAGIC);
        out
    }

    fn journal(batches: usize) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut bytes = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..batches {
            let key = (i as u64 + 1).to_be_bytes();
            let start = bytes.len();
            bytes.extend(encode(
                i as u64 + 1,
                &[(3, &key, b"an event"), (5, b"cursor", b"x")],
            ));
            ranges.push(start..bytes.len());
        }
        bytes.extend(vec![0u8; 4096]);
        (bytes, ranges)
    }

    #[test]
    fn an_intact_journal_is_every_batch_with_its_keys() {
        let (bytes, ranges) = journal(5);
        let scan = scan_bytes("1.jnl".into(), 1, &bytes);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        let found: Vec<Range<usize>> = scan.batches.iter().map(|b| b.bytes.clone()).collect();
        assert_eq!(found, ranges);
        assert_eq!(scan.batches[2].items[0], (3, 3u64.to_be_bytes().to_vec()));
        assert_eq!(scan.end, ranges[4].end);
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_batch_is_that_batch_only_and_the_rest_is_found_again() {
        let (bytes, ranges) = journal(5);
        // Every byte of the third batch but its seqno (which no checksum
        // covers).
        let seqno = ranges[2].start + 5..ranges[2].start + 13;
        for at in ranges[2].clone().filter(|at| !seqno.contains(at)) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let scan = scan_bytes("1.jnl".into(), 1, &damaged);
            assert_eq!(scan.batches.len(), 4, "flip at {at}: {:?}", scan.damage);
            assert_eq!(scan.damage.len(), 1, "flip at {at}");
            assert_eq!(scan.damage[0].bytes, ranges[2], "flip at {at}");
            assert_eq!(scan.damage_before_intact().count(), 1);
        }
    }

    #[test]
    fn a_torn_last_batch_is_a_tail_not_damage_before_intact_batches() {
        let (bytes, ranges) = journal(5);
        let mut torn = bytes[..ranges[4].end - 7].to_vec();
        torn.extend(vec![0u8; 100]);
        let scan = scan_bytes("2.jnl".into(), 2, &torn);
        assert_eq!(scan.batches.len(), 4);
        assert_eq!(scan.damage_before_intact().count(), 0);
        assert_eq!(
            scan.tail_damage().map(|d| d.bytes.start),
            Some(ranges[4].start)
        );
        // The newest journal may end torn; an older one may not.
        let older = scan_bytes("1.jnl".into(), 1, &torn);
        assert!(silent_loss(std::slice::from_ref(&scan)).is_none());
        assert!(silent_loss(&[older, scan]).is_some());
    }

    #[test]
    fn a_zeroed_tag_in_the_middle_is_found_by_the_data_after_it() {
        let (mut bytes, ranges) = journal(5);
        bytes[ranges[1].start] = 0;
        let scan = scan_bytes("1.jnl".into(), 1, &bytes);
        assert_eq!(scan.batches.len(), 4);
        assert_eq!(scan.damage[0].bytes, ranges[1]);
        assert!(silent_loss(&[scan]).is_some());
    }

    #[test]
    fn the_engines_own_journals_scan_whole_and_damage_in_them_is_refused_untouched() {
        use crate::store::tests::{ev, temp_dir};
        use crate::store::{Fsync, Store};
        let dir = temp_dir("journal-scan");
        {
            let store = Store::open(&dir, Fsync::Always).expect("opens");
            for i in 0..50 {
                store.append(&mut [ev(i)]).expect("append");
            }
        }
        let scans = scan_dir(&dir).expect("scans");
        assert!(!scans.is_empty(), "a journal");
        assert!(scans.iter().all(|s| s.damage.is_empty()), "{scans:?}");
        let batches: usize = scans.iter().map(|s| s.batches.len()).sum();
        assert!(batches >= 50, "every append is a batch: {batches}");
        // A flipped byte in a middle batch: refused, the file untouched.
        let newest = scans.last().expect("a journal");
        let middle = &newest.batches[newest.batches.len() / 2];
        let mut bytes = std::fs::read(&newest.path).expect("read");
        bytes[middle.bytes.start + 20] ^= 0x01;
        std::fs::write(&newest.path, &bytes).expect("write");
        let err = Store::open(&dir, Fsync::Always).err().expect("refused");
        let text = err.to_string();
        assert!(
            matches!(&err, StoreError::JournalDamaged { offset, .. } if *offset == middle.bytes.start),
            "{text}"
        );
        assert!(text.contains("plugbus repair --data"), "{text}");
        assert_eq!(
            std::fs::read(&newest.path).expect("read"),
            bytes,
            "untouched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
