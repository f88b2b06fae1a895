// The console's only way to the host: the public HTTP API (/v1/...), with
// the operator's token when the host asks for one (kept for the tab in
// sessionStorage, sent as a bearer header, never in a URL).

const KEY = 'plugbus.token';

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => (t ? sessionStorage.setItem(KEY, t) : sessionStorage.removeItem(KEY)),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const out = { ...(extra || {}) };
  const t = token.get();
  if (t) out.authorization = 'Bearer ' + t;
  return out;
}

// GET (or POST with a JSON body) `path`; the answer's JSON, or an ApiError
// with the host's own message.
export async function api(path, { method = 'GET', body } = {}) {
  const init = { method, headers: headers(body === undefined ? null : { 'content-type': 'application/json' }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch (_) {
    json = null;
  }
  if (!r.ok) throw new ApiError(r.status, (json && json.error) || text || r.statusText);
  return json;
}

// The page's one server-sent-events stream (GET /v1/stream), read with
// fetch so that the token goes in a header. It reconnects by itself with
// Last-Event-ID, so the tail resumes from the log where it stopped.
export class Stream {
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.ctrl = null;
    this.lastId = null;
    this.key = null;
  }

  open(params) {
    const key = new URLSearchParams(params).toString();
    if (key === this.key && this.ctrl) return;
    this.close();
    // Another filter: resuming the old one's position would mislead.
    if (key !== this.key) this.lastId = null;
    this.key = key;
    this.ctrl = new AbortController();
    this.run(this.ctrl, key);
  }

  close() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }

  async run(ctrl, key) {
    let backoff = 500;
    while (!ctrl.signal.aborted) {
      try {
        const h = headers(this.lastId == null ? null : { 'last-event-id': String(this.lastId) });
        const r = await fetch('/v1/stream?' + key, { headers: h, signal: ctrl.signal });
        if (r.status === 401 || r.status === 403) {
          this.onState('unauthorized', r.status);
          return;
        }
        if (!r.ok) {
          const j = await r.json().catch(() => null);
          this.onState('error', (j && j.error) || r.statusText);
          return;
        }
        this.onState('open');
        backoff = 500;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const raw = buf.slice(0, i);
            buf = buf.slice(i + 2);
            this.frame(raw);
          }
        }
      } catch (_) {
        if (ctrl.signal.aborted) return;
      }
      if (ctrl.signal.aborted) return;
      this.onState('reconnecting');
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  frame(raw) {
    let event = 'message';
    let id = null;
    const data = [];
    for (const line of raw.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const k = line.indexOf(':');
      const field = k < 0 ? line : line.slice(0, k);
      let v = k < 0 ? '' : line.slice(k + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'event') event = v;
      else if (field === 'id') id = v;
      else if (field === 'data') data.push(v);
    }
    if (data.length === 0) return;
    if (id != null) this.lastId = Number(id);
    let payload = data.join('\n');
    try {
      payload = JSON.parse(payload);
    } catch (_) {
      /* text */
    }
    this.onEvent(event, payload, id);
  }
}
