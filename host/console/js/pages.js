// The console's pages but the flow graph and the trace: overview, plugins,
// dead letters, live tail, catalog. Each is (main, app, params) → an
// optional {leave()}; stream events reach it through app.on().

import { api } from './api.js';
import { h, clear, put, fill, num, ms, pre, sparkline, badge, ask } from './dom.js';

function sum(values) {
  return values.reduce((a, b) => a + (b || 0), 0);
}

// A long error (a wasm backtrace) cut to its start; the whole is in the
// cell's title and in the letter's detail.
function short(text, max = 200) {
  return text.length > max ? text.slice(0, max) + '…' : text;
}

function last(values) {
  return values.length ? values[values.length - 1] : 0;
}

// What holds a plugin back, one line each: deliveries held for its publish
// rate, a batch size cut for its deadline, a worker that panicked.
function conditions(p) {
  return [p.held, p.batch_note, p.worker_death]
    .filter(Boolean)
    .map((why) => h('div', { class: 'why' }, why));
}

// ---------------------------------------------------------------- overview

export function overview(main, app) {
  const cards = h('div', { class: 'cards' });
  const table = h('table', { class: 'grid', id: 'overview-plugins' });
  put(main, h('h2', null, 'Overview'), cards, h('h3', null, 'Plugins'), table);
  let dead = null;
  let deadError = null;
  let unaccounted = null;
  let auditError = null;
  const countDead = () => {
    api('/v1/dead')
      .then((d) => {
        dead = d.dead_letters.length;
        deadError = null;
      })
      .catch((e) => {
        dead = null;
        deadError = e;
      });
  };
  // Dead letters as the host keeps them; in memory mode none are kept
  // (409), and what failed for good is dropped and counted.
  const deadCard = (plugins) => {
    if (dead != null) return card('dead letters', num(dead), 'stat-dead');
    if (deadError && deadError.status === 409) {
      return card('dropped (memory mode keeps no dead letters)', num(sum(plugins.map((p) => p.dropped || 0))), 'stat-dead');
    }
    return card(deadError ? `dead letters: ${deadError.message}` : 'dead letters (reading…)', '?', 'stat-dead');
  };
  // Every event accounted for (memory mode answers 501). The audit reads
  // the whole log, so once a minute.
  const countUnaccounted = () => {
    api('/v1/audit')
      .then((a) => {
        unaccounted = a.unaccounted;
        auditError = null;
      })
      .catch((e) => {
        unaccounted = null;
        auditError = e;
      });
  };
  countDead();
  countUnaccounted();
  const card = (label, value, id) => h('div', { class: 'card stat', id }, h('div', { class: 'value' }, value), h('div', { class: 'label' }, label));
  const draw = () => {
    const plugins = [...app.plugins.values()];
    const handled = sum(plugins.map((p) => last(app.rates(p.name))));
    const lag = sum(plugins.map((p) => p.lag));
    fill(cards, 
      card('events in / s', num(app.publishedRate()), 'stat-in'),
      card('handled / s', num(handled), 'stat-handled'),
      card('lag (events)', num(lag), 'stat-lag'),
      deadCard(plugins),
      unaccounted != null
        ? card('unaccounted', num(unaccounted), 'stat-unaccounted')
        : card(auditError ? `unaccounted: ${auditError.message}` : 'unaccounted (auditing…)', '?', 'stat-unaccounted'),
      card('plugins running', `${plugins.filter((p) => p.state === 'running').length} / ${plugins.length}`, 'stat-running'),
    );
    fill(table, 
      h('tr', null, ['plugin', 'state', 'handled / s', 'last 2 min', 'handled', 'failed', 'queue', 'lag'].map((t) => h('th', null, t))),
      plugins.map((p) =>
        h('tr', { 'data-plugin': p.name },
          h('td', null, h('a', { href: `#/plugins?name=${encodeURIComponent(p.name)}` }, p.name)),
          h('td', null, badge(p.state), conditions(p)),
          h('td', { class: 'n' }, num(last(app.rates(p.name)))),
          h('td', null, sparkline(app.rates(p.name))),
          h('td', { class: 'n' }, num(p.handled)),
          h('td', { class: 'n' }, num(p.failed)),
          h('td', { class: 'n' }, num(p.queue_depth)),
          h('td', { class: 'n' }, num(p.lag)))),
    );
  };
  let ticks = 0;
  app.on('rates', () => {
    if (++ticks % 5 === 0) countDead();
    if (ticks % 60 === 0) countUnaccounted();
    draw();
  });
  app.on('plugin', draw);
  draw();
}

// ----------------------------------------------------------------- plugins

// A plugin's limits, folded: from its manifest or the host's defaults.
function limitsView(limits) {
  if (!limits) return '';
  const lines = Object.entries(limits)
    .filter(([k, v]) => v != null && typeof v !== 'object' && k !== 'manifest')
    .map(([k, v]) => h('div', null, `${k} = ${v}`));
  return h('details', null, h('summary', null, limits.manifest ? 'manifest' : 'defaults'), lines);
}

// A plugin's timers: how many are set, when the next is due, how late the
// last one fired.
function timersCell(p) {
  const next = p.timer_next_due ? new Date(p.timer_next_due) : null;
  return h('td', {
    class: 'n timers',
    'data-next-due': p.timer_next_due || null,
    'data-late-ms': p.timer_lateness_ms == null ? null : String(p.timer_lateness_ms),
    title: 'timers set, waiting for their time; when the next is due; how late the last one fired',
  },
  num(p.timers),
  next ? h('div', { class: 'small' }, 'next ' + next.toLocaleTimeString()) : null,
  p.timer_lateness_ms == null ? null : h('div', { class: 'small' }, 'last ' + ms(p.timer_lateness_ms) + ' late'));
}

export function plugins(main, app, params) {
  const table = h('table', { class: 'grid', id: 'plugins' });
  const detail = h('div', { id: 'plugin-detail' });
  put(main, h('h2', null, 'Plugins'), table, detail);
  const draw = () => {
    fill(table, 
      h('tr', null, ['plugin', 'state', 'version', 'file', 'tier', 'subscriptions', 'handled / s', 'handled', 'failed', 'retried', 'queue', 'lag', 'timers', 'limits', ''].map((t) => h('th', null, t))),
      [...app.plugins.values()].map((p) =>
        h('tr', { 'data-plugin': p.name, class: params.get('name') === p.name ? 'selected' : null },
          h('td', null, p.name),
          h('td', null, badge(p.state), p.error ? h('div', { class: 'why' }, p.error) : null, conditions(p)),
          h('td', null, p.version),
          h('td', { title: p.file }, p.content_hash),
          h('td', null, p.tier),
          h('td', null, (p.subscriptions || []).join(' ')),
          h('td', { class: 'n' }, num(last(app.rates(p.name)))),
          h('td', { class: 'n' }, num(p.handled)),
          h('td', { class: 'n' }, num(p.failed)),
          h('td', { class: 'n' }, num(p.retried)),
          h('td', { class: 'n' }, num(p.queue_depth)),
          h('td', { class: 'n' }, num(p.lag)),
          timersCell(p),
          h('td', { class: 'small' }, limitsView(p.limits)),
          h('td', { class: 'actions' },
            h('button', { onclick: () => replay(app, p.name), 'data-action': 'replay' }, 'Replay…'),
            h('a', { class: 'button', href: `#/dead?plugin=${encodeURIComponent(p.name)}` }, 'Dead letters'),
            h('button', { onclick: () => showState(detail, p.name), 'data-action': 'state' }, 'State'),
            h('a', { class: 'button', href: `#/tail?plugin=${encodeURIComponent(p.name)}` }, 'Tail')))),
    );
  };
  app.on('rates', draw);
  app.on('plugin', draw);
  app.on('plugin_gone', draw);
  draw();
}

async function replay(app, name) {
  const from = h('input', { type: 'number', min: 1, value: 1, id: 'replay-from' });
  const reset = h('input', { type: 'checkbox', id: 'replay-reset' });
  const body = h('div', null,
    h('p', null, `Deliver the log to ${name} again, from this sequence on, to a fresh instance.`),
    h('label', null, 'from sequence ', from),
    h('label', null, reset, ' empty its state first (rebuild a projection)'));
  if (!(await ask(`Replay ${name}?`, body, 'Replay'))) return;
  try {
    await api(`/v1/plugins/${encodeURIComponent(name)}/replay`, {
      method: 'POST',
      body: { from_sequence: Number(from.value), reset_state: reset.checked },
    });
  } catch (e) {
    app.error('replay', e);
  }
}

async function showState(detail, name) {
  fill(detail, h('h3', null, `State of ${name}`));
  try {
    const kv = await api(`/v1/plugins/${encodeURIComponent(name)}/kv?limit=200`);
    put(detail, 
      kv.entries.length === 0
        ? h('p', null, 'No keys.')
        : h('table', { class: 'grid' }, h('tr', null, h('th', null, 'key'), h('th', null, 'value')),
          kv.entries.map((e) => h('tr', null, h('td', null, e.key), h('td', null, pre(e.value))))),
      kv.next_after ? h('p', null, `More after ${kv.next_after} (GET /v1/plugins/${name}/kv?after=…).`) : null,
    );
  } catch (e) {
    put(detail, h('div', { class: 'error' }, e.message));
  }
}

// ------------------------------------------------------------ dead letters

export function dead(main, app, params) {
  const plugin = h('select', { id: 'dead-plugin' }, h('option', { value: '' }, 'every plugin'),
    [...app.plugins.keys()].map((n) => h('option', { value: n, selected: params.get('plugin') === n }, n)));
  const topic = h('input', { id: 'dead-topic', placeholder: 'topic contains', value: params.get('topic') || '' });
  const text = h('input', { id: 'dead-error', placeholder: 'error contains', value: params.get('error') || '' });
  const list = h('div', { id: 'dead-list' });
  const detail = h('div', { id: 'dead-detail' });
  const status = h('p', { id: 'dead-status', class: 'status' });
  let letters = [];
  const shown = () =>
    letters.filter((l) =>
      (!plugin.value || l.plugin === plugin.value) &&
      (!topic.value || l.type.includes(topic.value)) &&
      (!text.value || l.error.toLowerCase().includes(text.value.toLowerCase())));
  const selected = () =>
    [...list.querySelectorAll('input[type=checkbox]:checked')].map((c) => ({ plugin: c.dataset.plugin, sequence: Number(c.dataset.sequence) }));
  const byPlugin = (items) => {
    const out = new Map();
    for (const it of items) {
      if (!out.has(it.plugin)) out.set(it.plugin, []);
      out.get(it.plugin).push(it.sequence);
    }
    return out;
  };
  const act = async (what, items) => {
    if (items.length === 0) return;
    const verb = what === 'redrive' ? 'Re-drive' : 'Purge';
    const ok = await ask(`${verb} ${items.length} dead letter${items.length === 1 ? '' : 's'}?`,
      h('p', null, what === 'redrive'
        ? 'Each is delivered again to its plugin, with its id, from attempt 1.'
        : 'They are deleted for good; the events stay in the log.'), verb);
    if (!ok) return;
    let n = 0;
    for (const [p, sequences] of byPlugin(items)) {
      try {
        const r = await api(`/v1/dead/${encodeURIComponent(p)}/${what}`, { method: 'POST', body: { sequences } });
        n += r.redriven ?? r.purged ?? 0;
      } catch (e) {
        app.error(what, e);
      }
    }
    status.textContent = `${what === 'redrive' ? 're-driven' : 'purged'}: ${n}`;
    load();
  };
  const draw = () => {
    const items = shown();
    fill(list, 
      items.length === 0 ? h('p', { class: 'empty' }, 'No dead letters.') :
        h('table', { class: 'grid' },
          h('tr', null, ['', 'sequence', 'plugin', 'type', 'attempts', 'error', 'dead at'].map((t) => h('th', null, t))),
          items.map((l) =>
            h('tr', { 'data-sequence': l.sequence, 'data-plugin': l.plugin },
              h('td', null, h('input', { type: 'checkbox', 'data-plugin': l.plugin, 'data-sequence': l.sequence })),
              h('td', null, h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); inspect(l); } }, l.sequence)),
              h('td', null, l.plugin),
              h('td', null, l.type),
              h('td', { class: 'n' }, l.attempts),
              h('td', { class: 'why', title: l.error }, short(l.error)),
              h('td', null, l.dead_at)))),
    );
  };
  const inspect = async (l) => {
    fill(detail, h('h3', null, `${l.plugin} · sequence ${l.sequence}`));
    try {
      const full = await api(`/v1/dead/${encodeURIComponent(l.plugin)}/${l.sequence}`);
      put(detail, 
        h('p', null, `${full.attempts} attempts; last error: ${full.error}`),
        h('button', { onclick: () => act('redrive', [l]), 'data-action': 'redrive-one' }, 'Re-drive this one'),
        ' ',
        full.event.correlationid || full.event.id ? h('a', { href: `#/trace/${encodeURIComponent(full.event.correlationid || full.event.id)}` }, 'its trace') : null,
        pre(full.event));
    } catch (e) {
      put(detail, h('div', { class: 'error' }, e.message));
    }
  };
  const load = async () => {
    try {
      letters = (await api('/v1/dead')).dead_letters;
      draw();
    } catch (e) {
      fill(list, h('div', { class: 'error' }, e.message));
    }
  };
  for (const el of [plugin, topic, text]) el.addEventListener('input', draw);
  put(main, 
    h('h2', null, 'Dead letters'),
    h('div', { class: 'toolbar' }, plugin, topic, text,
      h('button', { id: 'dead-redrive', onclick: () => act('redrive', selected()) }, 'Re-drive selected'),
      h('button', { id: 'dead-redrive-all', onclick: () => act('redrive', shown()) }, 'Re-drive all shown'),
      h('button', { id: 'dead-purge', class: 'danger', onclick: () => act('purge', selected()) }, 'Purge selected'),
      h('button', { id: 'dead-purge-all', class: 'danger', onclick: () => act('purge', shown()) }, 'Purge all shown'),
      h('button', { id: 'dead-refresh', class: 'secondary', onclick: load }, 'Refresh')),
    status, list, detail);
  load();
}

// --------------------------------------------------------------- live tail

const TAIL_ROWS = 500;

export function tail(main, app, params) {
  const field = (name, placeholder) => h('input', { id: `tail-${name}`, name, placeholder, value: params.get(name) || '' });
  const inputs = {
    topic: field('topic', 'topics, e.g. order.*,inventory.>'),
    correlationid: field('correlationid', 'correlation id'),
    subject: field('subject', 'subject'),
    ext: field('ext', 'extension NAME=VALUE'),
    plugin: field('plugin', 'plugin'),
    rate: h('input', { id: 'tail-rate', name: 'rate', type: 'number', min: 1, max: 5000, value: params.get('rate') || 200, title: 'events per second at most; the rest are counted as sampled out' }),
  };
  const rows = h('tbody', { id: 'tail-rows' });
  const missed = h('span', { id: 'tail-missed', class: 'status' }, 'missed: none');
  const held = [];
  let paused = false;
  const pause = h('button', { id: 'tail-pause', onclick: () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) held.splice(0).forEach(add);
    heldNote.textContent = '';
  } }, 'Pause');
  const heldNote = h('span', { class: 'status', id: 'tail-held' });
  const add = (e) => {
    const tr = h('tr', { 'data-sequence': e.sequence, 'data-type': e.type },
      h('td', { class: 'n' }, e.sequence),
      h('td', null, (e.time || '').replace('T', ' ').replace(/\..*Z$/, 'Z')),
      h('td', null, e.type),
      h('td', null, e.subject || ''),
      h('td', null, e.published_by || 'outside'),
      h('td', null, h('a', { href: `#/trace/${encodeURIComponent(e.correlationid || e.id)}`, class: 'trace-link' }, (e.correlationid || e.id).slice(0, 13) + '…')),
      h('td', { class: 'data' }, JSON.stringify(e.data)));
    tr.addEventListener('click', (ev) => {
      if (ev.target.tagName === 'A') return;
      const next = tr.nextSibling;
      if (next && next.classList.contains('expanded')) next.remove();
      else tr.after(h('tr', { class: 'expanded' }, h('td', { colspan: 7 }, pre(e))));
    });
    rows.prepend(tr);
    while (rows.children.length > TAIL_ROWS) rows.lastChild.remove();
  };
  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) if (el.value) q.set(k, el.value);
    history.replaceState(null, '', '#/tail?' + q);
    clear(rows);
    app.tail(Object.fromEntries(q));
  };
  put(main, 
    h('h2', null, 'Live tail'),
    h('form', { class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); apply(); } },
      Object.values(inputs), h('button', { id: 'tail-apply' }, 'Filter'), pause, heldNote, missed),
    h('table', { class: 'grid tail' },
      h('thead', null, h('tr', null, ['seq', 'time', 'type', 'subject', 'published by', 'chain', 'data'].map((t) => h('th', null, t)))),
      rows));
  app.on('tail', (e) => {
    if (paused) {
      held.push(e);
      if (held.length > TAIL_ROWS) held.shift();
      heldNote.textContent = `${held.length} new while paused`;
    } else add(e);
  });
  app.on('missed', (m) => {
    missed.textContent = `missed: ${num(m.rate_cap)} sampled out (over the rate), ${num(m.queue_full)} while the page read too slowly` +
      (m.backlog_skipped ? `, ${num(m.backlog_skipped)} of the backlog` : '');
  });
  app.on('error', (e) => app.error('tail', e));
  const q = {};
  for (const [k, el] of Object.entries(inputs)) if (el.value) q[k] = el.value;
  app.tail(q);
}
