"""plugbus: write plugbus plugins in Python.

Written into the project by `plugbus new --lang python`, for the contract in
wit/ (plugbus:plugin@0.1.1). A plugin is a class with `name`, `version`,
`subscriptions`, `__init__(self, config)` and `handle(self, event, ctx)`
returning `ack()`, `retry(why)` or `reject(why)`; `app.py` exports it with
`Handler = plugbus.handler(MyPlugin)`. `plugbus build` turns app.py into
dist/NAME.wasm with componentize-py.

Run natively (`python3 -m unittest`, what `plugbus test` runs first), the
same code talks to a test host instead: `Harness` delivers events to a
plugin and keeps the host's rules (state writes and follow-ups count only
for acked events; follow-ups carry the cause's correlation and causation).
"""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

try:
    from componentize_py_types import Err
    from wit_world.imports import atomics as _atomics
    from wit_world.imports import config as _config
    from wit_world.imports import logging as _logging
    from wit_world.imports import publisher as _publisher
    from wit_world.imports import scheduler as _scheduler
    from wit_world.imports import store as _store
    from wit_world.imports import types as _types

    IN_WASM = True
except ImportError:  # natively: the test host below plays the host
    IN_WASM = False

HEADER_WORDS = 24


# ---- outcomes ------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What a plugin did with one event: `ack`, `retry` or `reject`."""

    kind: str
    message: str = ""
    delay_ms: Optional[int] = None


def ack() -> Outcome:
    """Done: the event is not delivered to this plugin again."""
    return Outcome("ack")


def retry(message: str, delay_ms: Optional[int] = None) -> Outcome:
    """A transient failure: deliver again later (after `delay_ms`, if given)."""
    return Outcome("retry", message, delay_ms)


def reject(message: str) -> Outcome:
    """A permanent failure: never retried; the event goes to dead letters."""
    return Outcome("reject", message)


# ---- the ack rule (plugbus_contract::ack on the host) ---------------------

KEEP_ALL = "keep-all"
KEEP_ACKED_FOLLOW_UPS = "keep-acked-follow-ups"
ONE_AT_A_TIME = "one-at-a-time"


def settle(acked: List[bool], wrote_state: bool) -> str:
    """What a handled batch keeps: every write and follow-up when all its
    events were acked; else a batch of several events that wrote state is
    handled again one event at a time; else only acked events' follow-ups."""
    if all(acked):
        return KEEP_ALL
    if wrote_state and len(acked) > 1:
        return ONE_AT_A_TIME
    return KEEP_ACKED_FOLLOW_UPS


# ---- what a handler may publish (plugbus_contract::publish on the host) ---

TOPIC_BYTES_MAX = 256
ATTRIBUTE_BYTES_MAX = 1024
PUBLISH_DATA_BYTES_MAX = 1 << 20
PUBLISHES_PER_EVENT_MAX = 64


def _prefix_at_char(text: str, max_bytes: int) -> str:
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


def topic_refusal(topic: str) -> Optional[str]:
    """Why `topic` is not an event topic, in the host's words; None if it is."""
    if not topic:
        return "the topic is empty; name it with dot-separated tokens, e.g. `order.placed`"
    if len(topic.encode()) > TOPIC_BYTES_MAX:
        return (f"topic `{_prefix_at_char(topic, 32)}…` is longer than {TOPIC_BYTES_MAX} bytes; "
                "use a shorter name")
    for token in topic.split("."):
        if token in ("*", ">"):
            return (f"topic `{topic}` contains a wildcard; `*` and `>` are for subscriptions, "
                    "not for events")
        if not token:
            return f"topic `{topic}` has an empty token; tokens are separated by single dots"
        for ch in token:
            if not (ch.isascii() and (ch.isalnum() or ch in "-_")):
                return (f"topic `{topic}` contains `{ch}`; use letters, digits, `-`, `_` and `.` "
                        "between tokens")
    return None


def publish_refusal(cause: int, batch_len: int, published: int, topic: str,
                    subject: Optional[str], data_bytes: int) -> Optional[str]:
    """Why the host refuses this publish, in its words; None if it takes it."""
    if cause >= batch_len:
        return (f"index {cause} is not in the batch being handled ({batch_len} events); "
                "pass the index of the event you are handling")
    why = topic_refusal(topic)
    if why:
        return why
    if published >= batch_len * PUBLISHES_PER_EVENT_MAX:
        return f"more than {PUBLISHES_PER_EVENT_MAX} follow-up events per handled event"
    if data_bytes > PUBLISH_DATA_BYTES_MAX:
        return f"data is {data_bytes} bytes, over the limit of {PUBLISH_DATA_BYTES_MAX}"
    if subject is not None and len(subject.encode()) > ATTRIBUTE_BYTES_MAX:
        return f"subject is longer than {ATTRIBUTE_BYTES_MAX} bytes"
    return None


# ---- state (plugbus_contract::state on the host) ------------------------

STATE_KEY_BYTES_MAX = 1024
STATE_VALUE_BYTES_MAX = 1 << 20
STATE_CALL_WRITE_BYTES_MAX = 16 << 20
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def state_write_refusal(key: str, value_bytes: int, written: int) -> Optional[str]:
    """Why the host refuses writing `value_bytes` at `key` in a call that
    wrote `written` bytes (keys and values) so far; None if it takes it.
    The state quota is the host's alone (it depends on what is stored)."""
    key_bytes = len(key.encode())
    if key_bytes > STATE_KEY_BYTES_MAX:
        return f"the key is {key_bytes} bytes, over the limit of {STATE_KEY_BYTES_MAX}"
    if value_bytes > STATE_VALUE_BYTES_MAX:
        return f"the value of `{key}` is {value_bytes} bytes, over the limit of {STATE_VALUE_BYTES_MAX}"
    if written + key_bytes + value_bytes > STATE_CALL_WRITE_BYTES_MAX:
        return f"this call has written {written} bytes, the limit per call is {STATE_CALL_WRITE_BYTES_MAX}"
    return None


def parse_counter(value: bytes) -> Optional[int]:
    """A counter's value: decimal text (what `increment` writes), or 8 bytes
    little-endian (what some SDKs write); None if it is neither."""
    try:
        text = value.decode().strip()
    except UnicodeDecodeError:
        text = None
    digits = text[1:] if text and text[0] in "+-" else text
    if digits and digits.isascii() and digits.isdigit():
        n = int(text)
        if _I64_MIN <= n <= _I64_MAX:
            return n
    if len(value) == 8:
        return int.from_bytes(value, "little", signed=True)
    return None


def increment_refusal(key: str, held: Optional[bytes], delta: int) -> Tuple[Optional[str], int]:
    """What `increment(key, delta)` does over `held` (None: 0): (why the host
    refuses it, or None; the new value)."""
    now = 0 if held is None else parse_counter(held)
    if now is None:
        return f"`{key}` does not hold a number (as decimal text), so it cannot be incremented", 0
    if not _I64_MIN <= now + delta <= _I64_MAX:
        return f"`{key}` would overflow: {now} + {delta}", 0
    return None, now + delta


# ---- timers (plugbus_contract::timer on the host) ------------------------

TIMER_KEY_BYTES_MAX = 256
TIMER_DELAY_MS_MAX_DEFAULT = 30 * 24 * 3600 * 1000
TIMERS_MAX_DEFAULT = 100_000
TIMER_CHANGES_PER_EVENT_MAX = 64
EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: where a harness's clock starts


def timer_refusal(key: str, due_ms: int, now_ms: int, changes: int, batch_len: int) -> Optional[str]:
    """Why the host refuses setting timer `key` due at `due_ms` (called at
    `now_ms`, with `changes` timer changes made for a batch of `batch_len`);
    None if it takes it (the plugin's count and quota are the host's)."""
    if not key:
        return "the timer key is empty; name the timer, e.g. `payment-timeout`"
    if len(key.encode()) > TIMER_KEY_BYTES_MAX:
        return f"the timer key is {len(key.encode())} bytes, over the limit of {TIMER_KEY_BYTES_MAX}"
    if changes >= max(batch_len, 1) * TIMER_CHANGES_PER_EVENT_MAX:
        return f"more than {TIMER_CHANGES_PER_EVENT_MAX} timer changes per handled event"
    if due_ms - now_ms > TIMER_DELAY_MS_MAX_DEFAULT:
        return (f"timer `{key}` is due in {due_ms - now_ms} ms, further ahead than the plugin may set "
                f"one ({TIMER_DELAY_MS_MAX_DEFAULT} ms, limits.timer_delay_ms_max in its manifest)")
    return None


# ---- events --------------------------------------------------------------

class Event:
    """One delivered event: a view of the batch the host handed over."""

    __slots__ = ("_bytes", "_h", "_ext")

    def __init__(self, data: bytes, headers: List[int], extensions: List[int], index: int):
        self._bytes = data
        self._h = headers[index * HEADER_WORDS:(index + 1) * HEADER_WORDS]
        self._ext = extensions

    def _span(self, i: int) -> bytes:
        offset, length = self._h[i], self._h[i + 1]
        return self._bytes[offset:offset + length]

    def _text(self, i: int) -> str:
        return self._span(i).decode("utf-8", "replace")

    def _optional(self, i: int) -> Optional[str]:
        return self._text(i) if self._h[i + 1] else None

    @property
    def id(self) -> str:
        return self._text(0)

    @property
    def source(self) -> str:
        return self._text(2)

    @property
    def topic(self) -> str:
        """The topic (CloudEvents `type`), e.g. `order.placed`."""
        return self._text(4)

    @property
    def subject(self) -> Optional[str]:
        return self._optional(6)

    @property
    def time(self) -> str:
        return self._text(8)

    @property
    def datacontenttype(self) -> Optional[str]:
        return self._optional(10)

    @property
    def data(self) -> bytes:
        return self._span(12)

    @property
    def correlation_id(self) -> Optional[str]:
        """The id of the first event of this event's chain."""
        return self._optional(14)

    @property
    def causation_id(self) -> Optional[str]:
        """The id of the event whose handler published this one."""
        return self._optional(16)

    @property
    def sequence(self) -> int:
        return self._h[18] | (self._h[19] << 32)

    @property
    def attempt(self) -> int:
        """Which delivery this is: 1 on the first."""
        return self._h[20]

    @property
    def extensions(self) -> Dict[str, str]:
        first, count = self._h[21] * 4, self._h[22] * 4
        words = self._ext[first:first + count]
        text = lambda o, n: self._bytes[o:o + n].decode("utf-8", "replace")
        return {text(w[0], w[1]): text(w[2], w[3]) for w in (words[i:i + 4] for i in range(0, len(words), 4))}

    def json(self) -> Any:
        """The data decoded as JSON (raises ValueError if it is not)."""
        return json.loads(self.data)


class Context:
    """What a handler can do besides returning an outcome."""

    __slots__ = ("_cause",)

    def __init__(self, cause: int):
        self._cause = cause

    def publish(self, topic: str, data: Any, subject: Optional[str] = None) -> None:
        """Publish a follow-up event with `data` as JSON, caused by the event
        being handled; sent only if that event is acked. Raises
        PublishError if the host refuses it."""
        self.publish_bytes(topic, json.dumps(data).encode(), "application/json", subject)

    def publish_bytes(self, topic: str, data: bytes, datacontenttype: Optional[str] = None,
                      subject: Optional[str] = None) -> None:
        _host.publish(self._cause, topic, subject, datacontenttype, data)

    def schedule(self, key: str, topic: str, data: Any, *, after_ms: Optional[int] = None,
                 at_ms: Optional[int] = None, subject: Optional[str] = None) -> None:
        """Set timer `key`: publish `data` (as JSON) to `topic` `after_ms` from
        now or at Unix time `at_ms`, as a follow-up of the event being handled.
        Setting a key that is set replaces its timer. Like a state write it is
        kept only if the event is acked; its event is published once, not
        before it is due. Raises PublishError if the host refuses it."""
        if (after_ms is None) == (at_ms is None):
            raise PublishError("say when: after_ms=... or at_ms=... (one of them)")
        _host.schedule(self._cause, key, ("at" if at_ms is not None else "after",
                                          at_ms if at_ms is not None else after_ms),
                       topic, subject, "application/json", json.dumps(data).encode())

    def cancel(self, key: str) -> None:
        """Call off timer `key` if it has not fired, once the event being
        handled is acked. A cancel committed before the timer fires always
        wins; after, its event arrives anyway."""
        _host.cancel(self._cause, key)


class PublishError(Exception):
    """The host refused a publish; the message says why."""


class StateError(Exception):
    """A state operation failed; usually worth a retry."""


class State:
    """The plugin's key-value state, committed with its progress: writes made
    for an event count only if the event is acked."""

    def __init__(self):
        self._bucket = _host.open_bucket()

    def get(self, key: str) -> Optional[bytes]:
        return _host.kv_get(self._bucket, key)

    def set(self, key: str, value: bytes) -> None:
        _host.kv_set(self._bucket, key, value)

    def delete(self, key: str) -> None:
        _host.kv_set(self._bucket, key, None)

    def get_json(self, key: str) -> Any:
        value = self.get(key)
        return None if value is None else json.loads(value)

    def set_json(self, key: str, value: Any) -> None:
        self.set(key, json.dumps(value).encode())

    def increment(self, key: str, delta: int = 1) -> int:
        """Add `delta` to the counter at `key` (missing: 0); the new value."""
        return _host.kv_increment(self._bucket, key, delta)

    def counter(self, key: str) -> int:
        return self.get_json(key) or 0


def log(message: str, level: str = "info") -> None:
    """Send a line to the host's log, tagged with the plugin's name."""
    _host.log(level, message)


# ---- the host: the contract's imports in wasm, a test host natively -------

if IN_WASM:
    _LEVELS = {"trace": _logging.Level.TRACE, "debug": _logging.Level.DEBUG,
               "info": _logging.Level.INFO, "warn": _logging.Level.WARN,
               "error": _logging.Level.ERROR}

    class _WasmHost:
        def publish(self, cause, topic, subject, datacontenttype, data):
            try:
                _publisher.publish(cause, _types.Outgoing(topic, subject, datacontenttype, data))
            except Err as e:
                raise PublishError(getattr(e.value, "value", str(e.value))) from None

        def schedule(self, cause, key, when, topic, subject, datacontenttype, data):
            due = _scheduler.When_AtMs(when[1]) if when[0] == "at" else _scheduler.When_AfterMs(when[1])
            try:
                _scheduler.schedule(cause, key, due, _types.Outgoing(topic, subject, datacontenttype, data))
            except Err as e:
                raise PublishError(getattr(e.value, "value", str(e.value))) from None

        def cancel(self, cause, key):
            try:
                _scheduler.cancel(cause, key)
            except Err as e:
                raise PublishError(getattr(e.value, "value", str(e.value))) from None

        def open_bucket(self):
            return _store.open("default")

        def kv_get(self, bucket, key):
            try:
                return bucket.get(key)
            except Err as e:
                raise StateError(str(e.value)) from None

        def kv_set(self, bucket, key, value):
            try:
                bucket.set(key, value) if value is not None else bucket.delete(key)
            except Err as e:
                raise StateError(str(e.value)) from None

        def kv_increment(self, bucket, key, delta):
            try:
                return _atomics.increment(bucket, key, delta)
            except Err as e:
                raise StateError(str(e.value)) from None

        def config(self):
            return dict(_config.get_all())

        def log(self, level, message):
            _logging.log(_LEVELS.get(level, _logging.Level.INFO), "", message)

    _host = _WasmHost()

    def _outcome(o: Outcome):
        if o.kind == "ack":
            return _types.Outcome_Ack()
        if o.kind == "reject":
            return _types.Outcome_Reject(o.message)
        return _types.Outcome_Retry(_types.Retry(o.delay_ms, o.message))


def handler(plugin_class):
    """The class componentize-py exports (`Handler = plugbus.handler(P)`)."""

    class Handler:
        plugin = None

        def init(self):
            try:
                Handler.plugin = plugin_class(_host.config())
            except Exception as e:  # shown to the operator
                raise Err(str(e)) from None
            return _types.Info(plugin_class.name, plugin_class.version, list(plugin_class.subscriptions))

        def handle(self, batch):
            p = Handler.plugin
            n = len(batch.headers) // HEADER_WORDS
            out = []
            for i in range(n):
                try:
                    o = p.handle(Event(batch.bytes, batch.headers, batch.extensions, i), Context(i))
                except Exception as e:  # a bug: retry, the host gives up in time
                    o = retry(f"{type(e).__name__}: {e}")
                out.append(_outcome(o))
            return out

    return Handler


# ---- testing (natively) -------------------------------------------------

@dataclass
class Published:
    """A follow-up the harness kept (its cause was acked)."""

    topic: str
    data: bytes
    subject: Optional[str]
    datacontenttype: Optional[str]
    causation_id: str
    correlation_id: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Delivery:
    """What the plugin did with one event."""

    event_id: str
    outcome: Outcome
    published: List[Published] = field(default_factory=list)


@dataclass
class TestEvent:
    """An event to deliver in a test."""

    topic: str
    data: bytes = b""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source: str = "plugbus"
    subject: Optional[str] = None
    time: str = "2026-01-01T00:00:00Z"
    datacontenttype: Optional[str] = None
    correlation_id: Optional[str] = None
    causation_id: Optional[str] = None
    attempt: int = 1
    extensions: Dict[str, str] = field(default_factory=dict)
    sequence: Optional[int] = None  # the harness numbers events from 1 unless set

    @staticmethod
    def json(topic: str, data: Any, **attrs) -> "TestEvent":
        return TestEvent(topic, json.dumps(data).encode(), datacontenttype="application/json", **attrs)


class _TestHost:
    def __init__(self):
        self.config_values: Dict[str, str] = {}
        self.committed: Dict[str, bytes] = {}
        self.overlay: Dict[str, Optional[bytes]] = {}
        self.published: List[Tuple[int, str, Optional[str], Optional[str], bytes]] = []
        self.logs: List[Tuple[str, str]] = []
        self.batch_len = 0
        self.written = 0  # bytes (keys and values) written by the call in progress
        self.now_ms = EPOCH_MS  # the harness's clock
        self.timers: Dict[str, Tuple[int, "Published"]] = {}  # committed: key -> (due, event)
        self.timer_changes: List[Tuple[int, str, Optional[Tuple[int, Tuple]]]] = []

    def publish(self, cause, topic, subject, datacontenttype, data):
        why = publish_refusal(cause, self.batch_len, len(self.published), topic,
                              subject, len(data or b""))
        if why:
            raise PublishError(why)
        self.published.append((cause, topic, subject, datacontenttype, data))

    def _timers_set(self) -> Dict[str, bool]:
        now = {k: True for k in self.timers}
        for _, k, change in self.timer_changes:
            now[k] = change is not None
        return now

    def schedule(self, cause, key, when, topic, subject, datacontenttype, data):
        why = publish_refusal(cause, self.batch_len, 0, topic, subject, len(data or b""))
        due = when[1] if when[0] == "at" else self.now_ms + when[1]
        why = why or timer_refusal(key, due, self.now_ms, len(self.timer_changes), self.batch_len)
        set_now = self._timers_set()
        if not why and not set_now.get(key) and sum(set_now.values()) >= TIMERS_MAX_DEFAULT:
            why = (f"the plugin keeps {TIMERS_MAX_DEFAULT} timers, as many as it may "
                   "(limits.timers_max in its manifest); cancel timers it no longer needs")
        if why:
            raise PublishError(why)
        self.timer_changes.append((cause, key, (due, (topic, subject, datacontenttype, data))))

    def cancel(self, cause, key):
        if cause >= self.batch_len:
            raise PublishError(f"index {cause} is not in the batch being handled ({self.batch_len} "
                               "events); pass the index of the event you are handling")
        why = timer_refusal(key, self.now_ms, self.now_ms, len(self.timer_changes), self.batch_len)
        if why:
            raise PublishError(why)
        self.timer_changes.append((cause, key, None))

    def open_bucket(self):
        return "default"

    def kv_get(self, bucket, key):
        return self.overlay[key] if key in self.overlay else self.committed.get(key)

    def kv_set(self, bucket, key, value):
        why = state_write_refusal(key, len(value or b""), self.written)
        if why:
            raise StateError(why)
        self.written += len(key.encode()) + len(value or b"")
        self.overlay[key] = value

    def kv_increment(self, bucket, key, delta):
        why = state_write_refusal(key, 0, 0)
        why, value = (why, 0) if why else increment_refusal(key, self.kv_get(bucket, key), delta)
        if why:
            raise StateError(why)
        self.kv_set(bucket, key, str(value).encode())
        return value

    def config(self):
        return dict(self.config_values)

    def log(self, level, message):
        self.logs.append((level, message))


if not IN_WASM:
    _host = _TestHost()


class Harness:
    """Runs one plugin class the way the host does, natively."""

    def __init__(self, plugin_class, config: Optional[Dict[str, str]] = None):
        self._host = _TestHost()
        self._host.config_values = dict(config or {})
        self.published: List[Published] = []
        self._next_sequence = 1
        self.plugin = self._lend(lambda: plugin_class(self._host.config()))
        self._commit()

    def _lend(self, f):
        global _host
        saved, _host = _host, self._host
        try:
            return f()
        finally:
            _host = saved

    def _commit(self):
        for k, v in self._host.overlay.items():
            if v is None:
                self._host.committed.pop(k, None)
            else:
                self._host.committed[k] = v
        self._host.overlay.clear()
        self._host.written = 0

    def deliver(self, event: TestEvent) -> Delivery:
        """Deliver one event; what the plugin did with it."""
        return self.deliver_batch([event])[0]

    def deliver_batch(self, events: List[TestEvent]) -> List[Delivery]:
        """One `handle` call for `events`. If one is not acked and the batch
        wrote state, the events are handled again one by one (as the host
        does), so only acked events' writes are kept."""
        for e in events:
            if e.sequence is None:
                e.sequence = self._next_sequence
            self._next_sequence = max(self._next_sequence, e.sequence + 1)
        data, headers, ext = _pack(events)
        h = self._host
        h.batch_len = len(events)
        h.written = 0
        h.timer_changes = []

        def call():
            out = []
            for i in range(len(events)):
                try:
                    out.append(self.plugin.handle(Event(data, headers, ext, i), Context(i)))
                except Exception as e:
                    out.append(retry(f"{type(e).__name__}: {e}"))
            return out

        outcomes = self._lend(call)
        acks = [o.kind == "ack" for o in outcomes]
        settlement = settle(acks, bool(h.overlay) or bool(h.timer_changes))
        if settlement == ONE_AT_A_TIME:
            h.overlay.clear()
            h.published.clear()
            return [self.deliver_batch([e])[0] for e in events]
        if settlement == KEEP_ALL:
            self._commit()
            for cause, key, change in h.timer_changes:
                if change is None:
                    h.timers.pop(key, None)
                    continue
                due, (topic, subject, ct, data) = change
                e = events[cause]
                h.timers[key] = (due, Published(topic, data, subject, ct, e.id, e.correlation_id or e.id))
        h.timer_changes = []
        h.overlay.clear()
        published, h.published = h.published, []
        deliveries = []
        for i, (e, o) in enumerate(zip(events, outcomes)):
            kept = [Published(t, d, s, ct, e.id, e.correlation_id or e.id)
                    for (c, t, s, ct, d) in published if c == i and acks[i]]
            self.published.extend(kept)
            deliveries.append(Delivery(e.id, o, kept))
        return deliveries

    @property
    def now_ms(self) -> int:
        """The harness's clock, Unix ms: it starts at 2026-01-01T00:00:00Z and
        moves only by `advance`."""
        return self._host.now_ms

    def timers(self) -> List[Tuple[str, int]]:
        """The timers set, by key, with when each is due (Unix ms)."""
        return sorted((k, due) for k, (due, _) in self._host.timers.items())

    def advance(self, ms: int) -> List[TestEvent]:
        """Move the clock on by `ms`: the timers due by then fire, soonest
        first, and are gone. Their events, to deliver to the plugin."""
        h = self._host
        h.now_ms += ms
        due = sorted((d, k) for k, (d, _) in h.timers.items() if d <= h.now_ms)
        fired = []
        for d, k in due:
            _, p = h.timers.pop(k)
            fired.append(TestEvent(p.topic, p.data, subject=p.subject, datacontenttype=p.datacontenttype,
                                   correlation_id=p.correlation_id, causation_id=p.causation_id,
                                   time=_rfc3339(h.now_ms),
                                   extensions={"scheduledat": _rfc3339(d), "latems": str(h.now_ms - d)}))
        return fired

    @property
    def state(self) -> Dict[str, bytes]:
        """The committed state."""
        return dict(self._host.committed)

    def counter(self, key: str) -> int:
        return parse_counter(self._host.committed.get(key, b"0")) or 0

    @property
    def logs(self) -> List[str]:
        return [m for (_, m) in self._host.logs]


def _rfc3339(ms: int) -> str:
    import datetime
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _pack(events: List[TestEvent]):
    data = bytearray()
    headers: List[int] = []
    ext: List[int] = []

    def put(words, text):
        raw = text.encode() if isinstance(text, str) else (text or b"")
        words += [len(data), len(raw)]
        data.extend(raw)

    for e in events:
        for value in (e.id, e.source, e.topic, e.subject, e.time, e.datacontenttype, e.data,
                      e.correlation_id, e.causation_id):
            put(headers, value)
        seq = e.sequence or 0
        headers += [seq & 0xFFFFFFFF, seq >> 32, e.attempt, len(ext) // 4, len(e.extensions), 0]
        for k, v in e.extensions.items():
            put(ext, k)
            put(ext, v)
    return bytes(data), headers, ext
