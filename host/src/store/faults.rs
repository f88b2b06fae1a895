//! Injected storage faults, one per row of `docs/operating/storage-faults.md` that
//! the journal's own tests (`store::journal`) and the end-to-end tests
//! (`tests/e2e/disk.rs`, `tests/e2e/repair.rs`) do not already cover: a
//! damaged or missing table, a witness that claims more than the log
//! holds, a missing journal. In each, plugbus either reads back exactly
//! what was written or refuses naming the directory: never a wrong event,
//! never a silent hole.

use std::path::{Path, PathBuf};

use super::tests::{ev, temp_dir};
use super::{backup, Fsync, Store, StoreError, MARK_FILE};
use crate::event::Event;

/// A store in `dir` with `n` events, the log flushed to a table (the
/// journal then holds none of it).
fn flushed(dir: &Path, n: usize) -> Vec<Event> {
    let store = Store::open(dir, Fsync::Always).expect("opens");
    for i in 0..n {
        store.append(&mut [ev(i)]).expect("append");
    }
    store.log.rotate_memtable_and_wait().expect("flush");
    store.read(1, n).expect("reads")
}

/// The table files of `dir`, largest first.
fn tables(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.join("keyspaces")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().is_some_and(|q| q.ends_with("tables")) {
                found.push(p);
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map_or(0, |m| m.len())));
    found
}

#[test]
fn a_flipped_byte_in_a_table_block_is_an_error_never_a_wrong_event() {
    for offset_of in [|len: u64| len / 4, |len: u64| len / 2] {
        let dir = temp_dir("fault-table");
        let written = flushed(&dir, 3000);
        let table = tables(&dir).into_iter().next().expect("the log's table");
        let mut bytes = std::fs::read(&table).expect("read");
        let at = offset_of(bytes.len() as u64) as usize;
        bytes[at] ^= 0x10;
        std::fs::write(&table, &bytes).expect("write");
        match Store::open(&dir, Fsync::Always) {
            // The engine may check the table when it opens it...
            Err(e) => assert!(e.to_string().contains(&dir.display().to_string()), "{e}"),
            // ...or when a block is read: an error, or exactly the events.
            Ok(store) => {
                match store.read(1, 3000) {
                    Err(e) => assert!(e.to_string().contains("reading"), "{e}"),
                    Ok(events) => assert_eq!(events, written, "never a wrong event"),
                }
                drop(store);
                if let Ok(v) = backup::verify(&dir) {
                    assert!(v.records > 0);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_missing_table_is_refused_or_a_lost_tail_never_a_silent_hole() {
    let dir = temp_dir("fault-no-table");
    flushed(&dir, 500);
    let table = tables(&dir).into_iter().next().expect("a table");
    std::fs::remove_file(&table).expect("remove");
    let err = Store::open(&dir, Fsync::Always).err().expect("refused");
    assert!(
        matches!(
            err,
            StoreError::Open { .. } | StoreError::Damaged { .. } | StoreError::LostTail { .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_witness_past_the_log_is_a_lost_tail_and_a_low_or_garbled_one_is_harmless() {
    let dir = temp_dir("fault-witness");
    {
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        for i in 0..10 {
            store.append(&mut [ev(i)]).expect("append");
        }
    }
    std::fs::write(dir.join(MARK_FILE), 25u64.to_be_bytes()).expect("witness");
    let err = Store::open(&dir, Fsync::Always).err().expect("refused");
    assert!(
        matches!(
            err,
            StoreError::LostTail {
                recovered: 10,
                acknowledged: 25,
                ..
            }
        ),
        "{err}"
    );
    for (next, witness) in [(11, 3u64.to_be_bytes().to_vec()), (12, b"xy".to_vec())] {
        std::fs::write(dir.join(MARK_FILE), witness).expect("witness");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        assert_eq!(
            store.append(&mut [ev(99)]).expect("append"),
            next,
            "numbered after the log"
        );
        drop(store);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_journal_with_acknowledged_events_in_it_is_a_lost_tail() {
    let dir = temp_dir("fault-no-journal");
    {
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        for i in 0..10 {
            store.append(&mut [ev(i)]).expect("append");
        }
    }
    for (_, path) in super::journal::journals(&dir).expect("journals") {
        std::fs::remove_file(path).expect("remove");
    }
    match Store::open(&dir, Fsync::Always) {
        Err(e) => assert!(
            matches!(
                e,
                StoreError::LostTail {
                    acknowledged: 10,
                    ..
                } | StoreError::Open { .. }
                    | StoreError::Damaged { .. }
            ),
            "{e}"
        ),
        Ok(store) => panic!(
            "opened without its journal, at sequence {}",
            store.last_sequence()
        ),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flipped_byte_in_an_older_journal_is_refused_naming_it_not_cut_into_a_hole() {
    let dir = temp_dir("fault-older-journal");
    {
        let store =
            Store::open(&dir, Fsync::Interval(std::time::Duration::from_secs(60))).expect("opens");
        // A plugin's state not yet flushed keeps the first journal alive
        // once the engine moves on to the next (past 64 MB, at a flush).
        let progress = super::progress::Progress {
            plugin: "inventory".into(),
            kv: vec![("stock.a".into(), Some(b"7".to_vec()))],
            ..Default::default()
        };
        store.commit_progress(&progress).expect("state");
        // Incompressible events, 70 MB of them.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1100 {
            let data: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b'a' + (x % 26) as u8
                })
                .collect();
            let mut e = Event::new("order.placed", None, data).expect("event");
            store.append(std::slice::from_mut(&mut e)).expect("append");
        }
        store.sync().expect("sync");
        store.log.rotate_memtable_and_wait().expect("flush the log");
        for i in 0..10 {
            store.append(&mut [ev(i)]).expect("append");
        }
        store.sync().expect("sync");
    }
    let journals = super::journal::journals(&dir).expect("journals");
    assert!(
        journals.len() >= 2,
        "an older journal is kept: {journals:?}"
    );
    let scans = super::journal::scan_dir(&dir).expect("scans");
    let older = &scans[0];
    let middle = &older.batches[older.batches.len() / 2];
    let mut bytes = std::fs::read(&older.path).expect("read");
    bytes[middle.bytes.start] ^= 0xff;
    std::fs::write(&older.path, &bytes).expect("write");
    let err = Store::open(&dir, Fsync::Always).err().expect("refused");
    assert!(
        matches!(&err, StoreError::JournalDamaged { file, intact_after, .. } if *file == older.path && *intact_after > 0),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
