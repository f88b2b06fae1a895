//! Who broke which contract: per topic and producer (`outside` for
//! ingress, else the plugin), how many events were refused and how many
//! accepted in mode `warn`, and the last violation with when it happened.
//! The console's catalog shows it per topic. In memory, since this host
//! started; bounded to [`PAIRS_MAX`] (topic, producer) pairs, and what
//! comes past that is only counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Violation;

/// (topic, producer) pairs kept, at most.
pub const PAIRS_MAX: usize = 1024;

/// One producer's violations of one topic's contracts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tally {
    /// `outside` (ingress) or the plugin.
    pub producer: String,
    /// Events refused.
    pub refused: u64,
    /// Events accepted in mode `warn`.
    pub warned: u64,
    /// The last violation's words.
    pub last: String,
    /// Its JSON pointer and keyword.
    pub pointer: String,
    /// See `pointer`.
    pub keyword: String,
    /// Whose declaration it broke (none: the topic's schema).
    pub declared_by: Option<String>,
    /// When (RFC 3339).
    pub last_at: String,
}

/// The tallies. See the module docs.
#[derive(Debug, Default)]
pub struct Book {
    pairs: Mutex<HashMap<(String, String), Tally>>,
    untracked: AtomicU64,
}

impl Book {
    /// `producer` published an event that broke `v`; `refused` or, in
    /// mode warn, accepted.
    pub fn note(&self, producer: &str, v: &Violation, refused: bool) {
        let producer = match producer {
            "ingress" => "outside",
            p => p,
        };
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (v.topic.clone(), producer.to_string());
        if !pairs.contains_key(&key) && pairs.len() >= PAIRS_MAX {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let t = pairs.entry(key).or_insert_with(|| Tally {
            producer: producer.to_string(),
            refused: 0,
            warned: 0,
            last: String::new(),
            pointer: String::new(),
            keyword: String::new(),
            declared_by: None,
            last_at: String::new(),
        });
        if refused {
            t.refused += 1;
        } else {
            t.warned += 1;
        }
        t.last = v.to_string();
        t.pointer = v.pointer.clone();
        t.keyword = v.keyword.clone();
        t.declared_by = v.declared_by.clone();
        t.last_at = crate::event::now_rfc3339();
    }

    /// `topic`'s tallies, by producer.
    pub fn of(&self, topic: &str) -> Vec<Tally> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Tally> = pairs
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, tally)| tally.clone())
            .collect();
        out.sort_by(|a, b| a.producer.cmp(&b.producer));
        out
    }

    /// Violations past [`PAIRS_MAX`] pairs, only counted.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(topic: &str, declared_by: Option<&str>) -> Violation {
        Violation {
            topic: topic.into(),
            major: 1,
            pointer: "/customer".into(),
            keyword: "required".into(),
            message: "\"customer\" is a required property".into(),
            declared_by: declared_by.map(str::to_string),
        }
    }

    #[test]
    fn tallies_are_kept_per_topic_and_producer_with_the_last_violation() {
        let book = Book::default();
        book.note("ingress", &violation("order.placed", None), true);
        book.note("ingress", &violation("order.placed", None), false);
        book.note(
            "inventory",
            &violation("order.placed", Some("inventory")),
            true,
        );
        book.note("email", &violation("email.sent", None), true);
        let t = book.of("order.placed");
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].producer.as_str(), t[0].refused, t[0].warned),
            ("inventory", 1, 0)
        );
        assert_eq!(t[0].declared_by.as_deref(), Some("inventory"));
        assert_eq!(
            (t[1].producer.as_str(), t[1].refused, t[1].warned),
            ("outside", 1, 1)
        );
        assert!(t[1].last.contains("required"), "{}", t[1].last);
        assert_eq!(book.of("email.sent").len(), 1);
        assert!(book.of("nothing").is_empty());
    }

    #[test]
    fn pairs_past_the_bound_are_only_counted() {
        let book = Book::default();
        for i in 0..PAIRS_MAX + 3 {
            book.note("ingress", &violation(&format!("t{i}"), None), true);
        }
        assert_eq!(book.untracked(), 3);
        assert!(book.of(&format!("t{}", PAIRS_MAX + 1)).is_empty());
        book.note("ingress", &violation("t0", None), true);
        assert_eq!(book.of("t0")[0].refused, 2, "a known pair still counts");
    }
}
