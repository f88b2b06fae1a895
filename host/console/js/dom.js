// Building DOM and SVG without a framework: h() for HTML, s() for SVG.

function build(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of kids.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function h(tag, attrs, ...kids) {
  return build(document.createElement(tag), attrs, kids);
}

export function s(tag, attrs, ...kids) {
  return build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, kids);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Append `kids` (arrays flattened, null and false skipped) to `el`.
export function put(el, ...kids) {
  return build(el, null, kids);
}

// Replace what `el` holds with `kids`.
export function fill(el, ...kids) {
  return put(clear(el), ...kids);
}

// A number for people: 1234567 → "1.23M", 0.5 → "0.5".
export function num(n, digits = 3) {
  if (n == null || Number.isNaN(n)) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toPrecision(digits) + 'G';
  if (a >= 1e6) return (n / 1e6).toPrecision(digits) + 'M';
  if (a >= 1e4) return (n / 1e3).toPrecision(digits) + 'k';
  if (Number.isInteger(n)) return String(n);
  return n.toPrecision(Math.min(digits, 3)).replace(/\.?0+$/, '');
}

export function ms(v) {
  return v == null ? '–' : num(v) + ' ms';
}

// JSON, pretty, in a <pre>.
export function pre(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

// A small line chart of the last values: an SVG polyline.
export function sparkline(values, width = 120, height = 24) {
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`)
    .join(' ');
  return s('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}` },
    s('polyline', { points, fill: 'none' }));
}

// A badge for a state or an outcome.
export function badge(text) {
  return h('span', { class: 'badge b-' + String(text).replace(/[^a-z_]/g, '') }, text);
}

// Ask in the page (no window.confirm): resolves true on OK.
export function ask(title, body, okText = 'OK') {
  const dialog = document.getElementById('dialog');
  const form = clear(document.getElementById('dialog-form'));
  form.append(
    h('h3', null, title),
    body,
    h('menu', null,
      h('button', { value: 'cancel', class: 'secondary' }, 'Cancel'),
      h('button', { value: 'ok', id: 'dialog-ok' }, okText)),
  );
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
  });
}
