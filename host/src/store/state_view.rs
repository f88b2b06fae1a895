//! Per plugin, what this process knows of its state between writes: a
//! count of the writes to it, moved on before each write and again after it
//! (so odd while one is under way), and a copy of the values read or
//! written since ([`StateCache`], true at half the count).
//!
//! A consumer that finds its plugin's count even and unchanged since it
//! handed out a batch knows that nothing has written the state the batch
//! read, and need not read it again to check (`backend::local`). A read is
//! answered from the copy when the copy is true at the count now. Every
//! write of plugins' state in the store goes through [`StateViews::around`],
//! which moves the counts and, inside the odd window, brings each copy
//! along (the writes it made) or has it forget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::state_cache::{PerPlugin, StateCache};
use super::StoreError;

/// What one write does to a plugin's state.
pub(super) enum Change<'a> {
    /// These keys get these values (none: deleted).
    Writes(&'a [(String, Option<Vec<u8>>)]),
    /// Every key goes.
    Cleared,
}

/// One plugin's count and copy.
#[derive(Default)]
pub(super) struct StateView {
    epoch: Arc<AtomicU64>,
    copy: StateCache,
}

impl StateView {
    /// `key`'s value: from the copy when it is true now, else from
    /// `stored` (the store), which the copy then keeps.
    pub(super) fn read(
        &self,
        key: &str,
        stored: impl FnOnce() -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        // Odd: a write is under way, the copy is not to be trusted.
        let version = epoch.is_multiple_of(2).then_some(epoch / 2);
        if let Some(hit) = version.and_then(|v| self.copy.get_at(key, v)) {
            return Ok(hit);
        }
        let value = stored()?;
        if let Some(v) = version {
            // Read at `v` or later: a write landing meanwhile brings the
            // copy to `v + 1` with its own values, or leaves it forgotten.
            self.copy.read(key, value.clone(), v);
        }
        Ok(value)
    }
}

/// Every plugin's view, made on first use.
#[derive(Default)]
pub(super) struct StateViews(PerPlugin<StateView>);

impl StateViews {
    /// `plugin`'s view.
    pub(super) fn of(&self, plugin: &str) -> Arc<StateView> {
        self.0.of(plugin)
    }

    /// `plugin`'s count of writes.
    pub(super) fn epoch(&self, plugin: &str) -> Arc<AtomicU64> {
        self.of(plugin).epoch.clone()
    }

    /// Run `write`, which makes `changes` to plugins' state, the counts
    /// moved on before and after it and the copies brought along in
    /// between: the writes when it succeeds and no other write of the same
    /// plugin overlapped it, else forgotten.
    pub(super) fn around<T>(
        &self,
        changes: &[(&str, Change<'_>)],
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A plugin named twice moves on once: its changes go together.
        let mut views: Vec<(Arc<StateView>, Vec<&Change<'_>>)> = Vec::new();
        for (plugin, change) in changes {
            let view = self.of(plugin);
            match views.iter_mut().find(|(v, _)| Arc::ptr_eq(v, &view)) {
                Some((_, all)) => all.push(change),
                None => views.push((view, vec![change])),
            }
        }
        let before: Vec<u64> = views
            .iter()
            .map(|(v, _)| v.epoch.fetch_add(1, Ordering::AcqRel))
            .collect();
        let out = write();
        for ((view, changes), before) in views.iter().zip(&before) {
            let cleared = changes.iter().any(|c| matches!(c, Change::Cleared));
            // An odd count before: another write of this plugin overlaps.
            if out.is_err() || cleared || !before.is_multiple_of(2) {
                view.copy.forget();
                continue;
            }
            let writes = changes.iter().filter_map(|c| match c {
                Change::Writes(w) => Some(w.iter()),
                Change::Cleared => None,
            });
            view.copy.wrote(
                writes.flatten().map(|(k, v)| (k.as_str(), v.as_deref())),
                before / 2 + 1,
            );
        }
        for (view, _) in &views {
            view.epoch.fetch_add(1, Ordering::AcqRel);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(v: &str) -> impl FnOnce() -> Result<Option<Vec<u8>>, StoreError> + '_ {
        move || Ok(Some(v.as_bytes().to_vec()))
    }

    fn unread() -> Result<Option<Vec<u8>>, StoreError> {
        panic!("answered from the copy, not the store")
    }

    #[test]
    fn a_read_is_answered_from_the_copy_until_a_write_it_did_not_see() {
        let views = StateViews::default();
        let a = views.of("a");
        assert_eq!(a.read("k", stored("1")).expect("read"), Some(b"1".to_vec()));
        assert_eq!(a.read("k", unread).expect("copy"), Some(b"1".to_vec()));
        let w = vec![("k".to_string(), Some(b"2".to_vec()))];
        let epoch = views.epoch("a");
        views
            .around(
                &[("a", Change::Writes(&w)), ("a", Change::Writes(&[]))],
                || {
                    assert_eq!(epoch.load(Ordering::Acquire) % 2, 1, "odd once");
                    Ok(())
                },
            )
            .expect("writes");
        assert_eq!(epoch.load(Ordering::Acquire), 2);
        assert_eq!(a.read("k", unread).expect("copy"), Some(b"2".to_vec()));
        // A failed write, a cleared state: forgotten.
        let failed: Result<(), _> = views.around(&[("a", Change::Writes(&w))], || {
            Err(StoreError::Poisoned {
                dir: "test".into(),
                reason: "a failed write".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(a.read("k", stored("3")).expect("read"), Some(b"3".to_vec()));
        views
            .around(&[("a", Change::Cleared)], || Ok(()))
            .expect("clears");
        assert_eq!(a.read("k", || Ok(None)).expect("read"), None);
        assert_eq!(a.read("k", unread).expect("copy"), None);
        assert_eq!(views.epoch("b").load(Ordering::Acquire), 0, "b's own");
    }

    #[test]
    fn a_read_that_races_a_write_never_leaves_the_copy_behind() {
        let views = StateViews::default();
        let a = views.of("a");
        let w = vec![("k".to_string(), Some(b"new".to_vec()))];
        // The read starts before the write and answers after it landed in
        // the copy: its older value is not kept.
        let started = a.epoch.load(Ordering::Acquire);
        views
            .around(&[("a", Change::Writes(&w))], || Ok(()))
            .expect("writes");
        a.copy.read("k", Some(b"old".to_vec()), started / 2);
        assert_eq!(a.read("k", unread).expect("copy"), Some(b"new".to_vec()));
    }
}
