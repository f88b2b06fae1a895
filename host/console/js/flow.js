// The flow graph: topics and plugins as nodes, subscriptions and observed
// publishes as edges (GET /v1/flow), laid out by dagre only when the graph
// changes (its `revision`); between layouts only the rates are redrawn.
// Clicking a node opens the live tail filtered to it.

import { api } from './api.js';
import { h, s, clear, put, fill, num, ms } from './dom.js';

const REFRESH_MS = 2000;
const NODE_H = 34;

function label(n) {
  return n.kind === 'plugin' ? n.name : n.name;
}

function nodeWidth(n) {
  return Math.max(90, label(n).length * 7.5 + 28);
}

function edgeText(e) {
  const rate = `${num(e.rate)}/s`;
  return e.kind === 'publishes' ? `${rate} · ${ms(e.latency_ms)}` : rate;
}

function layout(flow) {
  const g = new window.dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: 'LR', nodesep: 24, ranksep: 70, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of flow.nodes) g.setNode(n.id, { width: nodeWidth(n), height: NODE_H });
  for (const e of flow.edges) g.setEdge(e.from, e.to, { width: 80, height: 14, labelpos: 'c' }, e.kind);
  window.dagre.layout(g);
  return g;
}

export function flowPage(main, app) {
  const svg = s('svg', { id: 'flow-graph', class: 'flow' });
  const info = h('p', { class: 'status', id: 'flow-info' });
  put(main, h('h2', null, 'Flow'),
    h('p', null, 'Topics (ovals) and plugins (boxes). Grey: a plugin consumes a topic; orange: it was seen publishing to it, with the mean time from cause to follow-up. Click a node to tail it.'),
    info, h('div', { class: 'flow-wrap' }, svg));
  let revision = null;
  let graph = null;
  let stopped = false;

  const draw = (flow) => {
    graph = layout(flow);
    const { width, height } = graph.graph();
    clear(svg);
    svg.setAttribute('viewBox', `0 0 ${Math.max(width, 200)} ${Math.max(height, 100)}`);
    svg.setAttribute('width', Math.max(width, 200));
    svg.setAttribute('height', Math.max(height, 100));
    put(svg, s('defs', null,
      s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }))));
    for (const e of flow.edges) {
      const pts = graph.edge(e.from, e.to, e.kind).points;
      const d = 'M ' + pts.map((p) => `${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(' L ');
      const mid = pts[Math.floor(pts.length / 2)];
      put(svg, s('g', { class: `edge edge-${e.kind}`, 'data-from': e.from, 'data-to': e.to, 'data-kind': e.kind },
        s('path', { d, 'marker-end': 'url(#arrow)' }),
        s('text', { x: mid.x, y: mid.y - 4, 'text-anchor': 'middle', class: 'edge-label' }, edgeText(e))));
    }
    for (const n of flow.nodes) {
      const { x, y, width: w } = graph.node(n.id);
      const shape = n.kind === 'plugin'
        ? s('rect', { x: x - w / 2, y: y - NODE_H / 2, width: w, height: NODE_H, rx: 4 })
        : s('ellipse', { cx: x, cy: y, rx: w / 2, ry: NODE_H / 2 });
      const node = s('g', { class: `node node-${n.kind} state-${n.state || ''}`, 'data-id': n.id, 'data-name': n.name, tabindex: 0 },
        shape,
        s('text', { x, y: y + 4, 'text-anchor': 'middle' }, label(n)),
        s('title', null, n.kind === 'plugin' ? `${n.name} (${n.state}): ${num(n.handled)} handled, lag ${num(n.lag)}` : `${n.name}: ${num(n.total)} events, ${num(n.rate)}/s`));
      node.addEventListener('click', () => {
        const q = n.kind === 'plugin' ? `plugin=${encodeURIComponent(n.name)}` : `topic=${encodeURIComponent(n.name)}`;
        app.navigate(`#/tail?${q}`);
      });
      put(svg, node);
    }
  };

  // Rates only: the same nodes and edges, new labels and widths.
  const restyle = (flow) => {
    for (const e of flow.edges) {
      const g = svg.querySelector(`g.edge[data-from="${CSS.escape(e.from)}"][data-to="${CSS.escape(e.to)}"][data-kind="${e.kind}"]`);
      if (!g) continue;
      g.querySelector('text').textContent = edgeText(e);
      g.querySelector('path').style.strokeWidth = String(1.5 + Math.min(5, Math.log10(1 + e.rate) * 2));
    }
  };

  const refresh = async () => {
    try {
      const flow = await api('/v1/flow?window=10');
      if (stopped) return;
      info.textContent = `${flow.nodes.length} nodes, ${flow.edges.length} edges; rates over the last ${flow.window_seconds} s` +
        (flow.untracked_events ? `; ${num(flow.untracked_events)} events of untracked topics` : '');
      if (flow.revision !== revision) {
        revision = flow.revision;
        svg.dataset.revision = revision;
        draw(flow);
      }
      restyle(flow);
    } catch (e) {
      app.error('flow', e);
    }
  };
  const timer = setInterval(refresh, REFRESH_MS);
  if (window.dagre) refresh();
  else window.addEventListener('load', refresh, { once: true });
  return {
    leave() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
