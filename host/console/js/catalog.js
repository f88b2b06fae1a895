// The catalog page: per topic, what was seen beside what was declared,
// who broke which contract, and the versions carried; and, first, which
// events the counts cover (not every event of the log: see GET /v1/catalog).

import { api } from './api.js';
import { h, put, num, pre } from './dom.js';

// Which events the counts cover, in words.
function coverageText(c) {
  if (!c.events) return 'Nothing counted yet: counting starts when someone looks (this page, the flow, the tail).';
  let text = `Counts cover ${num(c.events)} events, sequences ${c.from_sequence} to ${c.through_sequence} (from ${c.from_time}): ` +
    'the most recent ones read back from the log when someone first looked, and every one accepted since while anyone looked.';
  if (c.uncounted) text += ` ${num(c.uncounted)} in that span were not counted (accepted while nobody looked).`;
  return text + ' Violations count every check since this host started.';
}

// One declared schema held against the sampled payloads.
function heldRow(kind, d) {
  const fit = d.sampled ? `${d.fit} of ${d.sampled} sampled fit` : 'nothing sampled';
  const misfit = d.first_misfit ? ` · first misfit: ${d.first_misfit.keyword} at ${d.first_misfit.pointer || '/'}` : '';
  return h('tr', { 'data-declared': `${kind}:${d.plugin || 'topic'}`, class: d.first_misfit ? 'misfit' : null },
    h('td', null, kind),
    h('td', null, d.plugin || '(the topic)'),
    h('td', { class: 'n' }, d.major),
    h('td', null, d.mode || ''),
    h('td', null, fit + misfit),
    h('td', null, h('details', null, h('summary', null, 'schema'), pre(d.schema))));
}

function declaredView(t) {
  const d = t.declared;
  const rows = [];
  if (d.topic) rows.push(heldRow('topic', d.topic));
  for (const w of d.writers) rows.push(heldRow('writer', w));
  for (const r of d.readers) rows.push(heldRow('reader', r));
  if (!rows.length) return h('p', { class: 'empty' }, 'Nothing declared: no schema for the topic, no plugin declares it.');
  return h('table', { class: 'grid declared' },
    h('tr', null, ['declared as', 'by', 'major', 'mode', 'against what was seen', ''].map((x) => h('th', null, x))),
    rows);
}

function violationsView(t) {
  if (!t.violations.length) return h('p', { class: 'empty' }, 'No violations.');
  return h('table', { class: 'grid violations' },
    h('tr', null, ['producer', 'refused', 'warned', 'broke', 'last', 'when'].map((x) => h('th', null, x))),
    t.violations.map((v) => h('tr', { 'data-producer': v.producer },
      h('td', null, v.producer),
      h('td', { class: 'n' }, num(v.refused)),
      h('td', { class: 'n' }, num(v.warned)),
      h('td', null, v.declared_by ? `${v.declared_by}'s declaration` : 'the topic schema'),
      h('td', { class: 'data' }, `${v.keyword} at ${v.pointer || '/'}: ${v.last}`),
      h('td', null, v.last_at))));
}

function versionsText(t) {
  const seen = t.majors.map((m) => `major ${m.major}: ${num(m.events)}`).join(', ') || 'none seen';
  const declared = t.declared.topic ? `the topic's major is ${t.declared.topic.major}` : 'no topic schema';
  const up = t.declared.upcasters_from.length ? `; upcasters from ${t.declared.upcasters_from.map((m) => `${m} → ${m + 1}`).join(', ')}` : '';
  return `Versions: ${seen}; ${declared}${up}.`;
}

function topicCard(t) {
  const by = t.publishers.map((p) => `${p.plugin || 'outside'} (${num(p.events)})`).join(', ') || 'nobody yet';
  const refused = t.violations.reduce((n, v) => n + v.refused, 0);
  return h('details', { class: 'card topic', 'data-topic': t.topic },
    h('summary', null, h('strong', null, t.topic),
      ` · ${num(t.events)} events counted · ${num(t.rate)}/s · from ${by} · to ${t.consumers.join(', ') || 'nobody'}`,
      t.declared.topic ? ` · schema major ${t.declared.topic.major} (${t.declared.topic.mode})` : '',
      refused ? h('span', { class: 'badge b-failed' }, `${num(refused)} refused`) : ''),
    h('p', { class: 'versions' }, versionsText(t)),
    h('div', { class: 'cols' },
      h('div', null, h('h4', null, 'newest payload'), t.example ? pre(t.example.data) : h('p', null, '–')),
      h('div', null, h('h4', null, `observed shape of ${t.json_samples} sampled payloads`), t.schema ? pre(t.schema) : h('p', null, t.samples ? 'not JSON' : '–'))),
    h('h4', null, 'declared'), declaredView(t),
    h('h4', null, 'violations by producer'), violationsView(t));
}

export function catalog(main, app) {
  const list = h('div', { id: 'catalog' });
  const covers = h('p', { id: 'catalog-coverage' });
  put(main, h('h2', null, 'Catalog'),
    h('p', null, 'Every topic seen or declared: who publishes and who consumes it, what was seen beside what was declared, who broke which contract, and the versions carried.'),
    covers, list);
  api('/v1/catalog')
    .then((c) => {
      put(covers, coverageText(c.coverage));
      if (c.topics.length === 0) put(list, h('p', { class: 'empty' }, 'No events yet.'));
      for (const t of c.topics) put(list, topicCard(t));
      if (c.untracked_events) put(list, h('p', null, `${num(c.untracked_events)} events of topics past the catalog's bound are only counted.`));
    })
    .catch((e) => app.error('catalog', e));
}
