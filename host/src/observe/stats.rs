//! Counts of the events this process accepted, for the flow graph and the
//! catalog: per topic (total, rate, who published, a few sampled payloads)
//! and per observed publish edge, plugin → topic (total, rate, mean time
//! from the cause's `time` to the follow-up). Rates are over a sliding
//! window of whole seconds, from a mark per second kept for
//! [`WINDOW_MAX`].
//!
//! Bounded: at most [`TOPICS_MAX`] topics and [`EDGES_MAX`] edges are
//! tracked; events of topics past that are only counted (`untracked`).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::event::Event;

/// Topics tracked, at most.
pub const TOPICS_MAX: usize = 1024;
/// Publish edges tracked, at most.
pub const EDGES_MAX: usize = 1024;
/// The longest window a rate is taken over.
pub const WINDOW_MAX: Duration = Duration::from_secs(60);
/// Payloads kept per topic, the newest.
pub const SAMPLES_MAX: usize = 8;
/// A topic's payload is sampled at most this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Publishers named per topic, at most.
const PUBLISHERS_MAX: usize = 16;
/// Major versions counted per topic, at most.
const MAJORS_MAX: usize = 16;

/// Cumulative counts at the start of each second, for windowed rates.
#[derive(Default)]
struct Marks {
    total: u64,
    latency_ms_sum: f64,
    latency_n: u64,
    /// (second since the observer started, total, latency sum, latency n)
    /// before the first count in that second.
    marks: VecDeque<(u64, u64, f64, u64)>,
}

impl Marks {
    /// Count `n` events at `second`; `None`: events from before anyone
    /// looked (read back from the log), counted in the totals but not in
    /// any rate.
    fn add(&mut self, second: Option<u64>, n: u64, latency_ms: f64, latency_n: u64) {
        let Some(second) = second else {
            self.total += n;
            self.latency_ms_sum += latency_ms;
            self.latency_n += latency_n;
            for m in &mut self.marks {
                m.1 += n;
                m.2 += latency_ms;
                m.3 += latency_n;
            }
            return;
        };
        if self.marks.back().is_none_or(|m| m.0 != second) {
            self.marks
                .push_back((second, self.total, self.latency_ms_sum, self.latency_n));
            let oldest = second.saturating_sub(WINDOW_MAX.as_secs());
            while self.marks.front().is_some_and(|m| m.0 < oldest) {
                self.marks.pop_front();
            }
        }
        self.total += n;
        self.latency_ms_sum += latency_ms;
        self.latency_n += latency_n;
    }

    /// Events per second over the last `window` (seconds since start
    /// `now`), and the mean latency of those that had one.
    fn rate(&self, now: f64, window: u64) -> (f64, Option<f64>) {
        let since = (now as u64).saturating_sub(window);
        match self.marks.iter().find(|m| m.0 >= since) {
            Some(&(second, total, sum, n)) => {
                let elapsed = (now - second as f64).max(1.0);
                let count = self.total - total;
                let latency_n = self.latency_n - n;
                let mean = (latency_n > 0).then(|| (self.latency_ms_sum - sum) / latency_n as f64);
                (count as f64 / elapsed, mean)
            }
            None => (0.0, None),
        }
    }
}

/// One payload seen on a topic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// The event's sequence.
    pub sequence: u64,
    /// Its id.
    pub id: String,
    /// Its time.
    pub time: String,
    /// Its media type.
    pub datacontenttype: Option<String>,
    /// Its data.
    #[serde(skip)]
    pub data: Vec<u8>,
}

struct Topic {
    marks: Marks,
    first_seen: String,
    last_seen: String,
    /// Who published (`None`: from outside), with counts.
    publishers: Vec<(Option<String>, u64)>,
    samples: VecDeque<Sample>,
    sampled_at: Option<Instant>,
    /// Events by the major of their `dataschema` (1 when none).
    majors: std::collections::BTreeMap<u32, u64>,
}

/// Which events the counts cover: not every event the log holds, but
/// those read back when counting started and those accepted while anyone
/// looked (see [`crate::observe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Events counted, of every topic.
    pub events: u64,
    /// The first counted event's sequence and time (none: nothing yet).
    pub from: Option<(u64, String)>,
    /// The last counted event's sequence.
    pub through: u64,
}

impl Coverage {
    fn add(&mut self, first: &Event, last: u64, n: u64) {
        self.events += n;
        if self.from.as_ref().is_none_or(|(s, _)| first.sequence < *s) {
            self.from = Some((first.sequence, first.time.clone()));
        }
        self.through = self.through.max(last);
    }

    /// Sequences between the first and the last counted that were not
    /// counted: accepted while nobody looked (or, on a broker, not
    /// events).
    pub fn uncounted(&self) -> u64 {
        match &self.from {
            Some((from, _)) => (self.through.saturating_sub(*from) + 1).saturating_sub(self.events),
            None => 0,
        }
    }
}

/// The counts.
pub struct Stats {
    origin: Instant,
    topics: HashMap<String, Topic, foldhash::fast::RandomState>,
    /// (plugin, topic) → follow-ups published.
    edges: HashMap<(String, String), Marks, foldhash::fast::RandomState>,
    untracked: u64,
    /// The last sequence counted from history: live events up to it were
    /// counted already.
    history_through: u64,
    /// The last sequence counted live.
    live_through: u64,
    coverage: Coverage,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            origin: Instant::now(),
            topics: HashMap::default(),
            edges: HashMap::default(),
            untracked: 0,
            history_through: 0,
            live_through: 0,
            coverage: Coverage::default(),
        }
    }
}

/// A topic as counted.
#[derive(Debug, Clone)]
pub struct TopicView {
    /// The topic.
    pub topic: String,
    /// Events counted (what they cover: [`Snapshot::coverage`]).
    pub total: u64,
    /// Events per second over the window.
    pub rate: f64,
    /// The `time` of the first and the last event seen.
    pub first_seen: String,
    /// See `first_seen`.
    pub last_seen: String,
    /// Who published (`None`: from outside), with counts.
    pub publishers: Vec<(Option<String>, u64)>,
    /// The newest sampled payloads, oldest first.
    pub samples: Vec<Sample>,
    /// Events counted by the major of their `dataschema`.
    pub majors: Vec<(u32, u64)>,
}

/// An observed publish edge, plugin → topic.
#[derive(Debug, Clone)]
pub struct EdgeView {
    /// The publishing plugin.
    pub plugin: String,
    /// The topic.
    pub topic: String,
    /// Follow-ups published since the host started.
    pub total: u64,
    /// Per second over the window.
    pub rate: f64,
    /// Mean milliseconds from the cause's `time` to the follow-up, over
    /// the window (the cause's queueing and handling), or over all counted
    /// when none was in the window.
    pub latency_ms: Option<f64>,
}

/// What [`Stats::snapshot`] returns.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Topics, by name.
    pub topics: Vec<TopicView>,
    /// Publish edges, by plugin then topic.
    pub edges: Vec<EdgeView>,
    /// Events of topics past [`TOPICS_MAX`].
    pub untracked: u64,
    /// Which events the counts cover.
    pub coverage: Coverage,
    /// The window the rates are over.
    pub window: Duration,
}

impl Stats {
    /// Count `events`, committed in this order; `history`: read back
    /// from the log, from before anyone looked (in the totals, not in the
    /// rates).
    pub fn count<E: Borrow<Event>>(&mut self, events: &[E], history: bool) {
        // Each event is counted once across the two paths: what history
        // read back that was counted live before (a look after a pause),
        // or live events the history already counted (at the look).
        let through = if history {
            self.history_through.max(self.live_through)
        } else {
            self.history_through
        };
        let skip = events
            .iter()
            .take_while(|e| through > 0 && Borrow::<Event>::borrow(*e).sequence <= through)
            .count();
        let events = &events[skip..];
        let Some(last) = events.last().map(|e| Borrow::<Event>::borrow(e).sequence) else {
            return;
        };
        self.coverage
            .add(events[0].borrow(), last, events.len() as u64);
        if history {
            self.history_through = self.history_through.max(last);
        } else {
            self.live_through = self.live_through.max(last);
        }
        let now = Instant::now();
        let second = (!history).then(|| now.duration_since(self.origin).as_secs());
        let mut i = 0;
        while i < events.len() {
            let first: &Event = events[i].borrow();
            let mut j = i + 1;
            while j < events.len() {
                let e: &Event = events[j].borrow();
                if e.topic != first.topic || e.source != first.source {
                    break;
                }
                j += 1;
            }
            self.count_run(&events[i..j], second, now);
            i = j;
        }
    }

    /// Events of one topic from one source.
    fn count_run<E: Borrow<Event>>(&mut self, run: &[E], second: Option<u64>, now: Instant) {
        let first: &Event = run[0].borrow();
        let last: &Event = run[run.len() - 1].borrow();
        let n = run.len() as u64;
        let by = first.published_by();
        if !self.topics.contains_key(first.topic.as_str()) {
            if self.topics.len() >= TOPICS_MAX {
                self.untracked += n;
                return;
            }
            self.topics.insert(
                first.topic.clone(),
                Topic {
                    marks: Marks::default(),
                    first_seen: first.time.clone(),
                    last_seen: String::new(),
                    publishers: Vec::new(),
                    samples: VecDeque::new(),
                    sampled_at: None,
                    majors: std::collections::BTreeMap::new(),
                },
            );
        }
        let Some(topic) = self.topics.get_mut(first.topic.as_str()) else {
            return;
        };
        topic.marks.add(second, n, 0.0, 0);
        topic.last_seen.clone_from(&last.time);
        for e in run {
            let major = crate::schema::upcast::major_of(e.borrow());
            let room = topic.majors.len() < MAJORS_MAX;
            match topic.majors.get_mut(&major) {
                Some(count) => *count += 1,
                None if room => {
                    topic.majors.insert(major, 1);
                }
                None => {}
            }
        }
        let room = topic.publishers.len() < PUBLISHERS_MAX;
        match topic
            .publishers
            .iter_mut()
            .find(|(p, _)| p.as_deref() == by)
        {
            Some((_, count)) => *count += n,
            None if room => topic.publishers.push((by.map(str::to_string), n)),
            None => {}
        }
        if topic
            .sampled_at
            .is_none_or(|at| now.duration_since(at) >= SAMPLE_EVERY)
        {
            topic.sampled_at = Some(now);
            if topic.samples.len() == SAMPLES_MAX {
                topic.samples.pop_front();
            }
            // The first of the run: which event is sampled does not
            // depend on how events were grouped when committed.
            topic.samples.push_back(Sample {
                sequence: first.sequence,
                id: first.id.clone(),
                time: first.time.clone(),
                datacontenttype: first.datacontenttype.clone(),
                data: first.data.clone(),
            });
        }
        let Some(plugin) = by else { return };
        let (mut sum, mut timed) = (0.0, 0);
        for e in run {
            if let Some(after) = e.borrow().after_cause {
                sum += after.as_secs_f64() * 1000.0;
                timed += 1;
            }
        }
        let key = (plugin.to_string(), first.topic.clone());
        if let Some(edge) = self.edges.get_mut(&key) {
            edge.add(second, n, sum, timed);
        } else if self.edges.len() < EDGES_MAX {
            let mut edge = Marks::default();
            edge.add(second, n, sum, timed);
            self.edges.insert(key, edge);
        }
    }

    /// The counts, with rates over the last `window` (at most
    /// [`WINDOW_MAX`], at least a second).
    pub fn snapshot(&self, window: Duration) -> Snapshot {
        let window = window.clamp(Duration::from_secs(1), WINDOW_MAX);
        let now = self.origin.elapsed().as_secs_f64();
        let mut topics: Vec<TopicView> = self
            .topics
            .iter()
            .map(|(name, t)| TopicView {
                topic: name.clone(),
                total: t.marks.total,
                rate: t.marks.rate(now, window.as_secs()).0,
                first_seen: t.first_seen.clone(),
                last_seen: t.last_seen.clone(),
                publishers: t.publishers.clone(),
                samples: t.samples.iter().cloned().collect(),
                majors: t.majors.iter().map(|(m, n)| (*m, *n)).collect(),
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut edges: Vec<EdgeView> = self
            .edges
            .iter()
            .map(|((plugin, topic), m)| {
                let (rate, windowed) = m.rate(now, window.as_secs());
                // Nothing timed in the window (only history): the mean of all.
                let latency_ms = windowed
                    .or_else(|| (m.latency_n > 0).then(|| m.latency_ms_sum / m.latency_n as f64));
                EdgeView {
                    plugin: plugin.clone(),
                    topic: topic.clone(),
                    total: m.total,
                    rate,
                    latency_ms,
                }
            })
            .collect();
        edges.sort_by(|a, b| (&a.plugin, &a.topic).cmp(&(&b.plugin, &b.topic)));
        Snapshot {
            topics,
            edges,
            untracked: self.untracked,
            coverage: self.coverage.clone(),
            window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, by: Option<&str>, after_ms: Option<u64>) -> Event {
        let mut e = Event::new(topic, None, br#"{"n":1}"#.to_vec()).expect("event");
        if let Some(p) = by {
            e.source = format!("{}{p}", crate::event::PLUGIN_SOURCE);
            e.after_cause = after_ms.map(Duration::from_millis);
        }
        e
    }

    #[test]
    fn topics_publishers_and_edges_are_counted() {
        let mut stats = Stats::default();
        stats.count(
            &[
                event("order.placed", None, None),
                event("order.placed", None, None),
            ],
            true,
        );
        stats.count(
            &[
                event("order.placed", None, None),
                event("order.placed", None, None),
                event("inventory.reserved", Some("inventory"), Some(10)),
                event("inventory.reserved", Some("inventory"), Some(30)),
                event("order.placed", None, None),
            ],
            false,
        );
        let s = stats.snapshot(Duration::from_secs(10));
        let placed = s.topics.iter().find(|t| t.topic == "order.placed");
        let placed = placed.expect("order.placed counted");
        assert_eq!(placed.total, 5, "history is in the totals");
        assert_eq!(placed.publishers, vec![(None, 5)]);
        // Not in the rate: 3 counted live, over at least a second.
        assert!(placed.rate > 0.0 && placed.rate <= 3.0, "{}", placed.rate);
        assert_eq!(placed.samples.len(), 1, "sampled once a second");
        assert_eq!(s.edges.len(), 1);
        let edge = &s.edges[0];
        assert_eq!(
            (edge.plugin.as_str(), edge.topic.as_str()),
            ("inventory", "inventory.reserved")
        );
        assert_eq!(edge.total, 2);
        assert_eq!(edge.latency_ms, Some(20.0));
    }

    #[test]
    fn an_event_read_back_and_seen_live_is_counted_once() {
        let numbered = |seqs: &[u64]| -> Vec<Event> {
            seqs.iter()
                .map(|&s| {
                    let mut e = event("order.placed", None, None);
                    e.sequence = s;
                    e
                })
                .collect()
        };
        let mut stats = Stats::default();
        stats.count(&numbered(&[1, 2, 3]), true);
        stats.count(&numbered(&[2, 3, 4]), false);
        stats.count(&numbered(&[5, 6]), false);
        // A later look reads back what was counted live.
        stats.count(&numbered(&[3, 4, 5, 6]), true);
        let s = stats.snapshot(Duration::from_secs(10));
        assert_eq!(s.topics[0].total, 6);
    }

    #[test]
    fn the_coverage_says_which_events_were_counted_and_majors_are_told_apart() {
        let numbered = |seqs: std::ops::RangeInclusive<u64>, major: Option<u32>| -> Vec<Event> {
            seqs.map(|s| {
                let mut e = event("order.placed", None, None);
                e.sequence = s;
                e.time = format!("t{s}");
                if let Some(m) = major {
                    e.extensions
                        .push(("dataschema".into(), format!("/v1/schemas/order.placed/{m}")));
                }
                e
            })
            .collect()
        };
        let mut stats = Stats::default();
        assert_eq!(
            stats.snapshot(Duration::from_secs(1)).coverage.uncounted(),
            0
        );
        // Read back at the first look, then live; then nobody looked
        // while 101..=200 were accepted; then a look again.
        stats.count(&numbered(11..=50, None), true);
        stats.count(&numbered(51..=100, Some(1)), false);
        stats.count(&numbered(201..=230, Some(2)), true);
        let s = stats.snapshot(Duration::from_secs(1));
        let c = &s.coverage;
        assert_eq!(c.events, 120);
        assert_eq!(c.from, Some((11, "t11".to_string())));
        assert_eq!(c.through, 230);
        assert_eq!(c.uncounted(), 100);
        assert_eq!(s.topics[0].majors, vec![(1, 90), (2, 30)]);
    }

    #[test]
    fn topics_past_the_bound_are_only_counted() {
        let mut stats = Stats::default();
        let events: Vec<Event> = (0..TOPICS_MAX + 5)
            .map(|i| event(&format!("t.{i}"), None, None))
            .collect();
        stats.count(&events, false);
        let s = stats.snapshot(Duration::from_secs(1));
        assert_eq!(s.topics.len(), TOPICS_MAX);
        assert_eq!(s.untracked, 5);
    }

    #[test]
    fn a_rate_counts_only_the_window() {
        let mut m = Marks::default();
        m.add(Some(0), 100, 0.0, 0);
        m.add(Some(50), 10, 0.0, 0);
        m.add(None, 1000, 0.0, 0);
        m.add(Some(59), 10, 0.0, 0);
        // At second 60 over 10 s: the marks of 50 and 59 are in it.
        let (rate, _) = m.rate(60.0, 10);
        assert_eq!(rate, 20.0 / 10.0);
        // Long after: nothing in the window.
        assert_eq!(m.rate(200.0, 10).0, 0.0);
    }
}
