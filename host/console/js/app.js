// The console's shell: hash routes (#/page?query), one event stream for
// the page, the plugins and their rate history shared by every page.

import { api, ApiError, Stream, token } from './api.js';
import { h, clear, put } from './dom.js';
import * as pages from './pages.js';
import { flowPage } from './flow.js';
import { tracePage } from './trace.js';
import { catalog } from './catalog.js';

const routes = {
  overview: pages.overview,
  plugins: pages.plugins,
  dead: pages.dead,
  tail: pages.tail,
  flow: flowPage,
  trace: tracePage,
  catalog,
};

// Seconds of rate history kept per plugin.
const HISTORY = 120;

const app = {
  plugins: new Map(), // name → the latest status (GET /v1/plugins, `plugin` events)
  history: new Map(), // name → [{at_ms, handled, failed}]
  published: [], // [{at_ms, published}]
  mode: null,
  listeners: new Map(), // event → Set of handlers (of the page shown)
  stream: null,
  // Subscribe the page shown to a stream event; forgotten on navigation.
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
  },
  emit(event, data, id) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(data, id);
      } catch (e) {
        console.error(e);
      }
    }
  },
  // The stream's tail part: a page that shows the tail asks for it with its
  // filter; the others turn it off.
  tail(params) {
    const base = { tail: params ? '1' : '0' };
    this.stream.open({ ...base, ...(params || {}) });
  },
  // Per-second rate of `field` over a plugin's history.
  rates(name, field = 'handled') {
    const hist = this.history.get(name) || [];
    const out = [];
    for (let i = 1; i < hist.length; i++) {
      const dt = (hist[i].at_ms - hist[i - 1].at_ms) / 1000 || 1;
      out.push(Math.max(0, (hist[i][field] - hist[i - 1][field]) / dt));
    }
    return out;
  },
  publishedRate() {
    const p = this.published;
    if (p.length < 2) return 0;
    const a = p[p.length - 2];
    const b = p[p.length - 1];
    return Math.max(0, (b.published - a.published) / ((b.at_ms - a.at_ms) / 1000 || 1));
  },
  navigate(hash) {
    location.hash = hash;
  },
  error(where, e) {
    const el = document.getElementById('main');
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      askToken(e.message);
      return;
    }
    const box = h('div', { class: 'error' }, `${where}: ${e.message || e}`);
    el.prepend(box);
  },
};

function setConn(state, detail) {
  const el = document.getElementById('conn');
  el.textContent = state;
  el.className = 'conn conn-' + state;
  if (state === 'unauthorized') askToken('this host needs a token with the read scope');
  if (state === 'error' && detail) el.title = detail;
}

function askToken(why) {
  const main = clear(document.getElementById('main'));
  const input = h('input', { type: 'password', id: 'token', placeholder: 'token', size: 40 });
  put(main, 
    h('section', { class: 'card' },
      h('h2', null, 'Sign in'),
      h('p', null, `The host answered: ${why}. Give a token from its --auth file (plugbus token new …); it is kept for this tab only.`),
      h('form', {
        onsubmit: (ev) => {
          ev.preventDefault();
          token.set(input.value.trim());
          app.stream.key = null;
          route();
        },
      }, input, ' ', h('button', null, 'Use token'))),
  );
}

function onStreamEvent(event, data, id) {
  if (event === 'hello') app.mode = data.mode;
  if (event === 'plugin') app.plugins.set(data.name, data);
  if (event === 'plugin_gone') {
    app.plugins.delete(data.name);
    app.history.delete(data.name);
  }
  if (event === 'rates') {
    for (const p of data.plugins) {
      const hist = app.history.get(p.name) || [];
      hist.push({ at_ms: data.at_ms, handled: p.handled, failed: p.failed, dead: p.dead_lettered });
      if (hist.length > HISTORY) hist.shift();
      app.history.set(p.name, hist);
      const known = app.plugins.get(p.name);
      if (known) Object.assign(known, { handled: p.handled, failed: p.failed, retried: p.retried, queue_depth: p.queue_depth, lag: p.lag, dropped: p.dropped });
    }
    app.published.push({ at_ms: data.at_ms, published: data.published });
    if (app.published.length > HISTORY) app.published.shift();
  }
  app.emit(event, data, id);
}

let current = null;

function route() {
  const raw = location.hash.replace(/^#\/?/, '') || 'overview';
  const [path, query] = raw.split('?');
  const [page, ...rest] = path.split('/');
  const show = routes[page] || routes.overview;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.getAttribute('href') === '#/' + page);
  }
  if (current && current.leave) current.leave();
  app.listeners.clear();
  const main = clear(document.getElementById('main'));
  main.dataset.page = page;
  const params = new URLSearchParams(query || '');
  if (page !== 'tail') app.tail(null);
  try {
    current = show(main, app, params, rest.map(decodeURIComponent)) || null;
  } catch (e) {
    app.error(page, e);
  }
}

async function start() {
  app.stream = new Stream(onStreamEvent, setConn);
  try {
    const all = await api('/v1/plugins');
    for (const p of all.plugins) app.plugins.set(p.name, p);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      askToken(e.message);
      window.addEventListener('hashchange', route);
      return;
    }
    console.warn('plugins', e);
  }
  window.addEventListener('hashchange', route);
  route();
  document.addEventListener('visibilitychange', () => {
    // A hidden tab holds no stream open (browsers allow 6 per host).
    if (document.hidden) app.stream.close();
    else {
      app.stream.key = null;
      route();
    }
  });
  // When the first page was drawn, from the start of navigation (the
  // browser tests report it).
  window.__firstRender = performance.now();
  document.body.dataset.ready = '1';
}

start();
