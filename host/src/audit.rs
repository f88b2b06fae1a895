//! Double-entry accounting for events: for each plugin, the events of the
//! log it subscribes to since its accounting started, against what its
//! cursors say became of them (`store::progress::Counts`, committed in the
//! same write as each cursor). The identity checked:
//!
//! `matching = handled + dead + dropped + pending`
//!
//! where `pending` is the events after a cursor's `through` and the
//! retries pending in it. Anything else is `unaccounted`: an event the
//! cursor moved past that was neither acked, given up on (a dead letter),
//! dropped by the plugin's own overflow policy, nor kept to retry, which is
//! exactly how an event is lost. `plugbus audit`, `GET /v1/audit` and
//! `plugbus_unaccounted_events` show it.
//!
//! Each backend keeps the books ([`Books`]: the counts and where each
//! worker is); [`count`] reads the log once for all plugins and finishes
//! the accounts. On the embedded store the books are the cursors; a broker
//! keeps its own (`backend::redis`, `backend::nats`). When retention has
//! removed events after a plugin's accounting start, the check cannot be
//! made and says so.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::bus::OrderingKey;
use crate::event::Event;
use crate::store::progress::{cursor_name, Cursor};
use crate::store::{Store, StoreError};
use plugbus_contract::topic::Pattern;

/// Events read at a time while counting.
const READ_EVENTS: usize = 4096;

/// What decides which events are a plugin's, and which worker's.
#[derive(Clone)]
pub struct Scope {
    /// The plugin.
    pub plugin: String,
    /// Its subscriptions.
    pub patterns: Vec<Pattern>,
    /// What picks an event's worker.
    pub key: OrderingKey,
    /// Its workers (one cursor each).
    pub parts: usize,
}

/// One plugin's accounts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Audit {
    /// The plugin.
    pub plugin: String,
    /// Accounting starts after this sequence (the lowest of its cursors').
    pub since: u64,
    /// The log's last sequence when counted.
    pub head: u64,
    /// Events of the log after `since` it subscribes to.
    pub matching: u64,
    /// Of them, acked.
    pub handled: u64,
    /// Given up on: dead letters (listed, being re-driven, or purged by an
    /// operator since).
    pub dead: u64,
    /// Dropped by its overflow policy (`drop`).
    pub dropped: u64,
    /// Not yet done: after its cursor, or pending a retry.
    pub pending: u64,
    /// `matching - handled - dead - dropped - pending`: events lost (or,
    /// below zero, counted twice). Zero when the accounts hold.
    pub unaccounted: i64,
    /// Handled more often than there were events, where the backend
    /// delivers at least once and an ack can be lost (NATS: a broker
    /// restart): taken out of `unaccounted`, which then counts only losses.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub again: u64,
    /// Events it had finished that the log lost to damage afterwards (a
    /// repair recorded the ranges): counted in its books, no longer in
    /// the log. Taken out of `unaccounted`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
    /// Whether the identity could be checked; when not, `note` says why.
    pub checked: bool,
    /// Why it could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a plugin's books say before the log is counted: the totals kept
/// with its cursors (in `audit`: `handled`, `dead`, `dropped`, and the
/// retries `pending` that are not told by a position), and each worker's
/// position.
pub struct Books {
    /// The totals so far (`head`, `matching` and `unaccounted` are
    /// filled in by [`count`]).
    pub audit: Audit,
    /// One per worker, in worker order (`OrderingKey::part` picks one).
    pub parts: Vec<Part>,
}

/// Where one worker of a plugin is in the log.
#[derive(Debug, Clone, Default)]
pub struct Part {
    /// Its accounts begin after this sequence.
    pub start: u64,
    /// Every event after this one is pending (not yet delivered).
    pub through: u64,
    /// Events at or before `through` that are still in flight (delivered,
    /// not settled: pending), where the backend tells them apart from the
    /// settled ones by listing them (a broker's pending entries).
    pub held: HashSet<u64>,
}

impl Books {
    /// Books with nothing in them yet, for `plugin`.
    pub fn new(plugin: &str, parts: Vec<Part>) -> Books {
        Books {
            audit: Audit {
                plugin: plugin.to_string(),
                since: parts.iter().map(|p| p.start).min().unwrap_or(0),
                head: 0,
                matching: 0,
                handled: 0,
                dead: 0,
                dropped: 0,
                pending: 0,
                unaccounted: 0,
                again: 0,
                lost: 0,
                checked: true,
                note: None,
            },
            parts,
        }
    }

    /// Books that cannot be checked, saying why.
    pub fn unchecked(plugin: &str, note: String) -> Books {
        let mut books = Books::new(plugin, Vec::new());
        books.audit.checked = false;
        books.audit.note = Some(note);
        books
    }
}

/// Count the accounts of the plugins of `scopes` on the embedded store:
/// their cursors first, then the log, read once for all of them, up to
/// `head()` read after the cursors (so no cursor is past it).
pub fn embedded(
    store: &Store,
    head: impl Fn() -> u64,
    scopes: &[Scope],
) -> Result<Vec<Audit>, StoreError> {
    let mut books = Vec::with_capacity(scopes.len());
    for scope in scopes {
        books.push(from_cursors(&scope.plugin, &cursors_of(store, scope)?));
    }
    let lost: Vec<(u64, u64)> = store
        .lost_ranges()?
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    let mut audits = count_around(scopes, books, head(), &lost, |from, max| {
        store.read(from, max)
    })?;
    for a in &mut audits {
        a.lost_to_damage(&lost);
    }
    Ok(audits)
}

/// Finish the accounts of the plugins of `scopes` from their `books` (one
/// each, in order, taken before `head` was read) by reading the log up to
/// `head` once for all of them with `read(from, max)`.
pub fn count<E>(
    scopes: &[Scope],
    books: Vec<Books>,
    head: u64,
    read: impl FnMut(u64, usize) -> Result<Vec<Event>, E>,
) -> Result<Vec<Audit>, E> {
    count_around(scopes, books, head, &[], read)
}

/// [`count`], knowing that the log lost the sequences of `lost` to damage
/// (a repair recorded them): a gap there is not retention's.
fn count_around<E>(
    scopes: &[Scope],
    books: Vec<Books>,
    head: u64,
    lost: &[(u64, u64)],
    mut read: impl FnMut(u64, usize) -> Result<Vec<Event>, E>,
) -> Result<Vec<Audit>, E> {
    assert_eq!(scopes.len(), books.len(), "one set of books per scope");
    let (mut audits, parts): (Vec<Audit>, Vec<Vec<Part>>) =
        books.into_iter().map(|b| (b.audit, b.parts)).unzip();
    for a in &mut audits {
        a.head = head;
    }
    let mut next = audits
        .iter()
        .filter(|a| a.checked)
        .map(|a| a.since)
        .min()
        .unwrap_or(head)
        + 1;
    while next <= head {
        let events = read(next, READ_EVENTS)?;
        let Some(first) = events.first() else {
            break;
        };
        let gap_lost = lost
            .iter()
            .any(|&(from, to)| from <= next && to >= first.sequence - 1);
        if first.sequence > next && !gap_lost {
            for a in audits.iter_mut().filter(|a| a.since < first.sequence - 1) {
                a.checked = false;
                a.note = Some(format!(
                    "the log no longer holds events {}..{} (retention removed them after the plugin's accounting began at {}); its accounts start again at its next replay",
                    a.since + 1,
                    first.sequence - 1,
                    a.since
                ));
            }
        }
        for e in events.iter().take_while(|e| e.sequence <= head) {
            for ((scope, parts), audit) in scopes.iter().zip(&parts).zip(&mut audits) {
                if !audit.checked || !scope.patterns.iter().any(|p| p.matches(&e.topic)) {
                    continue;
                }
                let Some(part) = parts.get(scope.key.part(e, parts.len())) else {
                    continue;
                };
                if e.sequence > part.start {
                    audit.matching += 1;
                    if e.sequence > part.through || part.held.contains(&e.sequence) {
                        audit.pending += 1;
                    }
                }
            }
        }
        next = events.last().map_or(head + 1, |e| e.sequence + 1);
    }
    for a in &mut audits {
        a.unaccounted = if a.checked {
            a.matching as i64 - (a.handled + a.dead + a.dropped + a.pending) as i64
        } else {
            0
        };
    }
    Ok(audits)
}

/// The cursor of each worker of `scope`'s plugin, in worker order.
fn cursors_of(store: &Store, scope: &Scope) -> Result<Vec<Cursor>, StoreError> {
    let parts = scope.parts.max(1);
    let named = store.cursors_of(&scope.plugin)?;
    Ok((0..parts)
        .map(|i| {
            let name = cursor_name(&scope.plugin, i, parts);
            named
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.clone())
                .unwrap_or_default()
        })
        .collect())
}

/// What `cursors` say of `plugin`'s events, before the log is counted.
fn from_cursors(plugin: &str, cursors: &[Cursor]) -> Books {
    let parts = cursors
        .iter()
        .map(|c| Part {
            start: c.counts.start,
            through: c.through,
            held: HashSet::new(),
        })
        .collect();
    let mut books = Books::new(plugin, parts);
    let audit = &mut books.audit;
    for c in cursors {
        audit.handled += c.counts.handled;
        audit.dead += c.counts.dead;
        audit.dropped += c.counts.dropped;
        audit.pending += c
            .pending
            .iter()
            .filter(|(seq, _)| *seq > c.counts.start)
            .count() as u64;
    }
    books
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Audit {
    /// Explain by `lost` (ranges the log lost to damage) what the books
    /// count beyond the log: at most the lost sequences after `since`.
    fn lost_to_damage(&mut self, lost: &[(u64, u64)]) {
        if !self.checked || self.unaccounted >= 0 {
            return;
        }
        let in_window: u64 = lost
            .iter()
            .map(|&(from, to)| {
                let (from, to) = (from.max(self.since + 1), to.min(self.head));
                (to + 1).saturating_sub(from)
            })
            .sum();
        let over = self.unaccounted.unsigned_abs();
        if over <= in_window {
            self.lost = over;
            self.unaccounted = 0;
            self.note = Some(format!(
                "{over} of the events it had finished were lost to damage afterwards (`plugbus repair` recorded the ranges)"
            ));
        }
    }

    /// On a backend that delivers at least once: events counted more than
    /// once are handled again, not lost (`again`).
    pub fn at_least_once(&mut self) {
        if self.unaccounted < 0 {
            self.again = self.unaccounted.unsigned_abs();
            self.unaccounted = 0;
            self.note = Some(format!(
                "{} of its events were handled again after their acks were lost (at least once: a broker restart, a host that died between its count and its acks)",
                self.again
            ));
        }
    }
}

/// The audit as a table, one line per plugin.
pub fn table(audits: &[Audit]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>12}\n",
        "PLUGIN", "SINCE", "MATCHING", "HANDLED", "DEAD", "DROPPED", "PENDING", "UNACCOUNTED"
    );
    for a in audits {
        let unaccounted = if a.checked {
            a.unaccounted.to_string()
        } else {
            "unknown".to_string()
        };
        out.push_str(&format!(
            "{:<20} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>12}\n",
            a.plugin, a.since, a.matching, a.handled, a.dead, a.dropped, a.pending, unaccounted
        ));
        if let Some(note) = &a.note {
            out.push_str(&format!("  {}: {note}\n", a.plugin));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::progress::{Counts, Progress};
    use crate::store::tests::temp_dir;
    use crate::store::Fsync;

    fn scope(patterns: &[&str]) -> Scope {
        Scope {
            plugin: "inventory".into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).expect("pattern"))
                .collect(),
            key: OrderingKey::Subject,
            parts: 1,
        }
    }

    fn cursor(store: &Store, through: u64, pending: Vec<(u64, u32)>, counts: Counts) {
        store
            .commit_progress(&Progress {
                plugin: "inventory".into(),
                cursor: Some(Cursor {
                    through,
                    pending,
                    counts,
                    dues: Vec::new(),
                }),
                ..Progress::default()
            })
            .expect("cursor");
    }

    #[test]
    fn the_accounts_hold_and_an_event_skipped_is_unaccounted() {
        let dir = temp_dir("audit");
        let store = Store::open(&dir, Fsync::Always).expect("opens");
        // Ten events, every other one the plugin's.
        let mut events: Vec<Event> = (0..10)
            .map(|i| {
                let topic = if i % 2 == 0 { "order.placed" } else { "user.x" };
                Event::new(topic, None, b"{}".to_vec()).expect("event")
            })
            .collect();
        assert_eq!(store.append(&mut events).expect("append"), 1);
        let s = scope(&["order.*"]);
        let audit = |store: &Store| {
            embedded(store, || 10, std::slice::from_ref(&s))
                .expect("audit")
                .remove(0)
        };
        // Orders are 1, 3, 5, 7, 9. Through 6: 1 and 5 acked, 3 retrying,
        // 7 and 9 after the cursor.
        cursor(
            &store,
            6,
            vec![(3, 2)],
            Counts {
                start: 0,
                handled: 2,
                dead: 0,
                dropped: 0,
            },
        );
        let a = audit(&store);
        assert_eq!((a.matching, a.handled, a.pending), (5, 2, 3), "{a:?}");
        assert_eq!(a.unaccounted, 0, "{a:?}");
        assert!(a.checked);
        // The cursor past 3 with nothing pending and no count of it: lost.
        cursor(
            &store,
            6,
            Vec::new(),
            Counts {
                start: 0,
                handled: 2,
                dead: 0,
                dropped: 0,
            },
        );
        assert_eq!(audit(&store).unaccounted, 1);
        // A dead letter and a drop account for events too.
        cursor(
            &store,
            10,
            Vec::new(),
            Counts {
                start: 0,
                handled: 3,
                dead: 1,
                dropped: 1,
            },
        );
        assert_eq!(audit(&store).unaccounted, 0);
        // Counting from a replay at 4: 5, 7, 9 only.
        cursor(
            &store,
            10,
            Vec::new(),
            Counts {
                start: 4,
                handled: 3,
                dead: 0,
                dropped: 0,
            },
        );
        let a = audit(&store);
        assert_eq!((a.since, a.matching, a.unaccounted), (4, 3, 0), "{a:?}");
        assert!(table(&[a]).contains("inventory"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
