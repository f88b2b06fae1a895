// One causal chain (GET /v1/trace/{correlationid}) as a tree by causation
// with a timeline: each event's offset from the start of the chain, the
// time from its cause (queueing and handling), the plugin that published
// it, and what each consumer did with it.

import { api } from './api.js';
import { h, clear, put, fill, ms, pre, badge } from './dom.js';

function millis(t) {
  return Date.parse(t);
}

export function tracePage(main, app, params, rest) {
  const input = h('input', { id: 'trace-id', size: 40, placeholder: 'correlation id (the id of the event that started the chain)', value: rest[0] || params.get('id') || '' });
  const out = h('div', { id: 'trace' });
  put(main, h('h2', null, 'Trace'),
    h('form', { class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); app.navigate(`#/trace/${encodeURIComponent(input.value.trim())}`); } },
      input, h('button', null, 'Trace')),
    out);
  if (!input.value) {
    put(out, h('p', null, 'Open a chain from the live tail (its chain column) or paste an id.'));
    return;
  }
  api(`/v1/trace/${encodeURIComponent(input.value)}`)
    .then((t) => render(out, t))
    .catch((e) => put(out, h('div', { class: 'error' }, e.message)));
}

function render(out, t) {
  const events = t.events;
  const start = Math.min(...events.map((e) => millis(e.time)));
  const end = Math.max(...events.map((e) => millis(e.time)));
  const span = Math.max(1, end - start);
  const byId = new Map(events.map((e) => [e.id, e]));
  const children = new Map();
  const roots = [];
  for (const e of events) {
    const parent = e.causationid && byId.has(e.causationid) ? e.causationid : null;
    if (parent) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(e);
    } else roots.push(e);
  }
  const rows = h('div', { class: 'trace-rows' });
  const row = (e, depth) => {
    const offset = millis(e.time) - start;
    const detail = h('div', { class: 'trace-detail', hidden: true }, pre(e));
    const bar = h('div', { class: 'bar-track' }, h('div', { class: 'bar' }));
    bar.firstChild.style.marginLeft = `${(offset / span) * 100}%`;
    put(rows, 
      h('div', { class: 'trace-row', 'data-sequence': e.sequence, 'data-type': e.type },
        h('div', { class: 'trace-name' },
          h('span', { class: 'indent' }, '· '.repeat(depth)),
          h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); detail.hidden = !detail.hidden; } }, e.type),
          h('span', { class: 'small' }, ` #${e.sequence} by ${e.published_by || 'outside'}`)),
        h('div', { class: 'trace-times small' }, `+${ms(offset)}`, e.after_cause_ms != null ? ` · after cause ${ms(e.after_cause_ms)}` : ''),
        bar,
        h('div', { class: 'trace-outcomes' },
          (e.deliveries || []).map((d) =>
            h('span', { class: 'delivery', 'data-plugin': d.plugin, 'data-outcome': d.outcome, title: d.error || '' },
              d.plugin, ' ', badge(d.outcome), d.attempts ? ` ×${d.attempts}` : '')))),
      detail);
    for (const c of children.get(e.id) || []) row(c, depth + 1);
  };
  for (const r of roots) row(r, 0);
  fill(out, 
    h('p', { class: 'status', id: 'trace-summary' },
      `${events.length} events over ${ms(end - start)}`, t.truncated ? ' (truncated: the chain is longer)' : ''),
    rows);
}
