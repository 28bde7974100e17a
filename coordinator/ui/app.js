// Tracevisor dashboard: vanilla JS, no build step. Every value from the server is treated as
// hostile: the DOM is built with createElement/textContent only (never innerHTML).
'use strict';
(() => {
  const API = '/trace/api/v1.0';
  const app = document.getElementById('app');
  const session = { auth_required: false, signed_in: false, live_clients: false };
  const shared = { traceHosts: null, fleet: null };
  const STATUS = { 1: 'started', 2: 'trace running', 3: 'analysis running', 4: 'complete', '-1': 'failed' };
  const STATUS_CLASS = { 1: 'running', 2: 'running', 3: 'running', 4: 'complete', '-1': 'failed' };

  // ------------------------------------------------------------------------------------
  // DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'dataset') Object.assign(el.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden' || k === 'indeterminate') el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.append(c instanceof Node ? c : String(c));
    }
  }
  function fill(el, ...children) { el.replaceChildren(); append(el, children); return el; }
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // Any JSON value as one line of text.
  function str(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    try { return JSON.stringify(v); } catch (e) { return '?'; }
  }
  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : null);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : '-');

  // ------------------------------------------------------------------------------------
  // Formatting

  function fmtNumber(v) {
    if (typeof v !== 'number' || !isFinite(v)) return str(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    return String(Math.round(v * 1000) / 1000);
  }
  function fmtNs(ns) {
    const a = Math.abs(ns);
    if (!isFinite(ns)) return '?';
    if (a < 1e3) return fmtNumber(ns) + ' ns';
    if (a < 1e6) return (ns / 1e3).toFixed(1) + ' µs';
    if (a < 1e9) return (ns / 1e6).toFixed(3) + ' ms';
    if (a < 60e9) return (ns / 1e9).toFixed(3) + ' s';
    const s = ns / 1e9;
    return Math.trunc(s / 60) + ' min ' + (s % 60).toFixed(1) + ' s';
  }
  function fmtSecs(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '-';
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }
  function fmtBytes(b) {
    if (typeof b !== 'number' || !isFinite(b)) return '-';
    if (Math.abs(b) < 1024) return fmtNumber(b) + ' B';
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = b / 1024, u = 0;
    while (Math.abs(v) >= 1024 && u + 1 < units.length) { v /= 1024; u++; }
    return v.toFixed(1) + ' ' + units[u];
  }
  const pad = (n, w) => String(n).padStart(w || 2, '0');
  function fmtDate(d, withMs) {
    if (!(d instanceof Date) || isNaN(d)) return '-';
    const t = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    return withMs ? t + '.' + pad(d.getMilliseconds(), 3) : t;
  }
  function fmtClock(d) {
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }
  const parseTime = (v) => { const t = typeof v === 'string' ? Date.parse(v) : NaN; return isNaN(t) ? null : t; };
  function fmtTime(v) { const t = parseTime(v); return t === null ? '-' : fmtDate(new Date(t)); }
  function fmtAgo(ms) {
    if (ms === null || ms === undefined) return '-';
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return Math.floor(s) + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function timeCell(v) {
    const t = parseTime(v);
    return t === null ? '-' : h('time', { datetime: v, title: fmtAgo(t) }, fmtDate(new Date(t)));
  }
  const statusLabel = (s) => STATUS[s] || str(s);
  const statusBadge = (s, id) => h('span', { class: 'badge st-' + (STATUS_CLASS[s] || 'unknown'), id }, statusLabel(s));
  const jobRunning = (s) => s === 1 || s === 2 || s === 3;
  function truncate(s, n) { s = str(s); return s.length > n ? s.slice(0, n - 1) + '…' : s; }

  // ------------------------------------------------------------------------------------
  // CSV

  function csvCell(v) {
    let s = str(v);
    if (/^[=+\-@\t\r]/.test(s) && !/^-?\d+(\.\d+)?$/.test(s)) s = "'" + s;
    if (/[",\r\n]/.test(s)) s = '"' + s.replace(/"/g, '""') + '"';
    return s;
  }
  function downloadCsv(filename, header, rows) {
    const lines = [header.map(csvCell).join(',')];
    for (const r of rows) lines.push(r.map(csvCell).join(','));
    const blob = new Blob([lines.join('\r\n') + '\r\n'], { type: 'text/csv;charset=utf-8' });
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: filename, class: 'hidden-link' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------------------------
  // API

  class ApiError extends Error {
    constructor(status, body) {
      const b = obj(body) || {};
      super(str(b.error) || (status ? 'HTTP ' + status : 'network error'));
      this.status = status;
      this.field = typeof b.field === 'string' ? b.field : null;
      this.body = b;
    }
  }
  async function api(method, path, body, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
    let r;
    try {
      r = await fetch(path.startsWith('/') ? path : API + '/' + path, init);
    } catch (e) {
      throw new ApiError(0, { error: 'cannot reach the coordinator (' + (e && e.message ? e.message : 'network error') + ')' });
    }
    const text = await r.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch (e) { data = { error: text.slice(0, 500) }; } }
    if (r.status === 401 && !opts.noAuthRedirect) { showSignin(); throw new ApiError(401, data); }
    if (!r.ok && !(opts.accept && opts.accept.includes(r.status))) throw new ApiError(r.status, data);
    return { status: r.status, data, headers: r.headers };
  }
  const get = (path) => api('GET', path).then((r) => r.data);

  // ------------------------------------------------------------------------------------
  // Page lifecycle: each page registers timers, event sources and charts, all dropped on leave.

  let page = null;
  function newPage(name) {
    if (page) page.close();
    const p = {
      name, alive: true, timers: new Set(), sources: [], charts: [],
      close() {
        this.alive = false;
        this.timers.forEach((t) => clearTimeout(t));
        this.sources.forEach((s) => s.close());
        this.charts.forEach((c) => { try { c.u.destroy(); } catch (e) { /* gone */ } });
      },
      // setTimeout that stops when the page goes away
      later(fn, ms) {
        const t = setTimeout(() => { this.timers.delete(t); if (this.alive) fn(); }, ms);
        this.timers.add(t);
        return t;
      },
      // fn (async) every ms, never overlapping
      poll(fn, ms) {
        const loop = async () => { try { await fn(); } catch (e) { /* shown by fn */ } if (this.alive) this.later(loop, ms); };
        this.later(loop, ms);
      },
    };
    page = p;
    setLive(null);
    $$('a[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === name));
    app.replaceChildren();
    return p;
  }
  function fitCharts() {
    if (!page) return;
    for (const c of page.charts) {
      const w = chartWidth(c.el);
      if (w !== c.u.width) c.u.setSize({ width: w, height: c.u.height });
    }
  }
  window.addEventListener('resize', fitCharts);

  function errorBanner(id) { return h('p', { class: 'banner banner-error', id, hidden: true }); }
  function showError(el, msg) { el.textContent = msg || ''; el.hidden = !msg; }

  // ------------------------------------------------------------------------------------
  // Data table: sortable headers, filter, pagination and CSV of the filtered sorted rows.

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
  function compare(a, b) {
    const ea = a === null || a === undefined || a === '', eb = b === null || b === undefined || b === '';
    if (ea || eb) return ea && eb ? 0 : ea ? 1 : -1;
    if (typeof a === 'number' && typeof b === 'number') return a - b;
    return collator.compare(String(a), String(b));
  }

  function DataTable(o) {
    const cols = o.columns;
    const t = { rows: [], view: null, filter: null, query: '', page: 0, sortKey: o.sortKey || null, sortDir: o.sortDir || 1 };
    const pageSize = o.pageSize || 100;
    const search = new WeakMap();
    const colText = (c, r) => (c.text ? c.text(r) : str(c.value ? c.value(r) : r[c.key]));
    const headRow = h('tr', null, cols.map((c) => {
      const th = h('th', { class: (c.num ? 'num ' : '') + (c.sortable === false ? '' : 'sortable'), scope: 'col', dataset: c.sortable === false ? null : { sort: c.key } },
        c.head || c.title);
      if (c.sortable !== false) th.addEventListener('click', () => t.sortBy(c.key));
      return th;
    }));
    const tbody = h('tbody');
    const table = h('table', { id: o.id, class: 'data ' + (o.cls || '') },
      o.caption || null, h('thead', null, o.preHead || null, headRow), tbody);
    const info = h('span', { class: 'pager-info' });
    const prev = h('button', { type: 'button', class: 'btn btn-small', onclick: () => t.goto(t.page - 1) }, '‹ Prev');
    const next = h('button', { type: 'button', class: 'btn btn-small', onclick: () => t.goto(t.page + 1) }, 'Next ›');
    const pager = h('div', { class: 'pager', id: o.pagerId }, prev, info, next);
    const empty = h('p', { class: 'empty muted', hidden: true }, o.emptyText || 'Nothing to show.');
    t.el = h('div', { class: 'table-block' }, h('div', { class: 'table-wrap' + (o.tall ? ' tall' : '') }, table), empty, pager);
    t.table = table;

    t.text = (r) => {
      let s = search.get(r);
      if (s === undefined) { s = cols.map((c) => (c.search === false ? '' : colText(c, r))).join('\u0001').toLowerCase(); search.set(r, s); }
      return s;
    };
    t.compute = () => {
      if (t.view) return t.view;
      const terms = t.query ? t.query.split(/\s+/) : [];
      let v = t.rows.filter((r) => (!t.filter || t.filter(r)) && (!terms.length || terms.every((q) => t.text(r).includes(q))));
      const c = cols.find((x) => x.key === t.sortKey);
      if (c) {
        const key = c.sortValue || c.value || ((r) => r[c.key]);
        const dir = t.sortDir;
        v = v.map((r, i) => [key(r), i, r]).sort((a, b) => compare(a[0], b[0]) * dir || a[1] - b[1]).map((x) => x[2]);
      }
      t.view = v;
      return v;
    };
    t.pages = () => Math.max(1, Math.ceil(t.compute().length / pageSize));
    let rendered = new Map();
    const sigs = new WeakMap();
    const sig = (r) => { let x = sigs.get(r); if (x === undefined) { x = cols.map((c) => colText(c, r)).join('\u0001'); sigs.set(r, x); } return x; };
    t.render = (force) => {
      const v = t.compute();
      const pages = t.pages();
      if (t.page >= pages) t.page = pages - 1;
      if (t.page < 0) t.page = 0;
      const slice = v.slice(t.page * pageSize, (t.page + 1) * pageSize);
      // Rows whose content did not change keep their <tr> (no flicker, no stale elements).
      const fresh = new Map();
      const trs = slice.map((r) => {
        const k = o.rowKey ? o.rowKey(r) : r;
        const s = sig(r);
        const e = force ? null : rendered.get(k);
        const tr = e && e.s === s ? e.tr : t.row(r);
        fresh.set(k, { s, tr });
        return tr;
      });
      rendered = fresh;
      trs.forEach((tr, i) => { if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null); });
      while (tbody.children.length > trs.length) tbody.lastChild.remove();
      info.textContent = 'page ' + (t.page + 1) + ' of ' + pages + ' (' + v.length + ' rows)';
      prev.disabled = t.page === 0;
      next.disabled = t.page >= pages - 1;
      pager.hidden = pages <= 1 && !o.alwaysPager;
      empty.hidden = v.length > 0;
      for (const th of headRow.children) {
        const on = !!th.dataset.sort && th.dataset.sort === t.sortKey;
        th.classList.toggle('sorted-asc', on && t.sortDir > 0);
        th.classList.toggle('sorted-desc', on && t.sortDir < 0);
        if (th.dataset.sort) th.setAttribute('aria-sort', on ? (t.sortDir > 0 ? 'ascending' : 'descending') : 'none');
      }
      if (o.onRender) o.onRender(v);
    };
    t.row = (r) => {
      const tr = h('tr', o.rowAttrs ? o.rowAttrs(r) : null);
      for (const c of cols) {
        const content = c.render ? c.render(r) : colText(c, r);
        const td = h('td', { class: (c.num ? 'num ' : '') + (c.cls || ''), dataset: { col: c.key } }, content);
        if (c.tip) { const tip = c.tip(r); if (tip) td.title = tip; }
        tr.append(td);
      }
      if (o.onRowClick) {
        tr.classList.add('clickable');
        tr.addEventListener('click', (e) => { if (!e.target.closest('a,button,input,select,label')) o.onRowClick(r, e); });
      }
      return tr;
    };
    t.set = (rows) => { t.rows = rows; t.view = null; t.render(); };
    t.invalidate = () => { t.view = null; };
    t.setQuery = (q) => { t.query = q.trim().toLowerCase(); t.view = null; t.page = 0; t.render(); };
    t.setFilter = (f) => { t.filter = f; t.view = null; t.page = 0; t.render(); };
    t.sortBy = (key) => {
      if (t.sortKey === key) t.sortDir = -t.sortDir; else { t.sortKey = key; t.sortDir = 1; }
      t.view = null; t.render();
    };
    t.goto = (p) => { t.page = p; t.render(); };
    t.csv = (filename) => {
      const cs = cols.filter((c) => c.csv !== false);
      downloadCsv(filename, cs.map((c) => c.csvTitle || c.title),
        t.compute().map((r) => cs.map((c) => (typeof c.csv === 'function' ? c.csv(r) : colText(c, r)))));
    };
    return t;
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }
  // A filter input: debounced on input, at once on change (WebDriver's clear() fires only that).
  function searchInput(attrs, apply) {
    let last = null;
    const run = (e) => { if (e.target.value !== last) { last = e.target.value; apply(last); } };
    const slow = debounce(run, 150);
    return h('input', Object.assign({ type: 'search', class: 'search', autocomplete: 'off', 'aria-label': attrs.placeholder, oninput: slow, onchange: run }, attrs));
  }
  function searchBox(id, placeholder, table) {
    return searchInput({ id, placeholder }, (q) => table.setQuery(q));
  }
  function select(id, options, value, onchange, label) {
    return h('select', { id, 'aria-label': label || id, onchange },
      options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  }

  // ------------------------------------------------------------------------------------
  // Sign in

  function showSignin() {
    const p = newPage('signin');
    $('#signout').hidden = true;
    setLive(null);
    const err = h('p', { id: 'signin-error', class: 'field-msg error-text', role: 'alert' });
    const input = h('input', { id: 'signin-token', type: 'password', name: 'token', autocomplete: 'current-password', required: true, placeholder: 'API token' });
    const btn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'signin-submit' }, 'Sign in');
    const form = h('form', { id: 'signin-form', class: 'card signin', novalidate: true },
      h('h1', null, 'Sign in to Tracevisor'),
      h('p', { class: 'muted' }, 'Enter the coordinator\'s API token (the rest_token of its configuration).'),
      h('input', { type: 'text', name: 'username', autocomplete: 'username', value: 'tracevisor', hidden: true, tabindex: '-1', 'aria-hidden': 'true' }),
      h('label', { for: 'signin-token' }, 'Token'), input, err, btn);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      err.textContent = '';
      if (!input.value) { err.textContent = 'Enter the token.'; return; }
      btn.disabled = true;
      try {
        await api('POST', '/ui/session', { token: input.value }, { noAuthRedirect: true });
        session.signed_in = true;
        input.value = '';
        updateSignout();
        if (!location.hash || location.hash === '#/signin') location.hash = '#/fleet'; else route();
      } catch (ex) {
        if (p.alive) err.textContent = ex.message || 'Sign-in failed';
      } finally { btn.disabled = false; }
    });
    app.append(form);
    input.focus();
  }
  function updateSignout() { $('#signout').hidden = !(session.auth_required && session.signed_in); }
  $('#signout').addEventListener('click', async () => {
    try { await api('DELETE', '/ui/session', undefined, { noAuthRedirect: true, accept: [401, 404] }); } catch (e) { /* signed out anyway */ }
    session.signed_in = false;
    if (session.auth_required) showSignin(); else route();
  });

  function setLive(state) {
    const el = $('#live-indicator');
    el.hidden = !state;
    el.className = 'live ' + (state || '');
    el.textContent = state === 'on' ? 'live' : state === 'polling' ? 'polling' : state === 'lost' ? 'reconnecting' : '';
    el.title = state === 'on' ? 'Agent changes stream in as they happen' : state === 'polling' ? 'Refreshed every 10 s' : '';
  }

  // ------------------------------------------------------------------------------------
  // Fleet

  function fleetRow(rec) {
    const r = obj(rec) || {};
    const a = obj(r.agent);
    const caps = (a && obj(a.capabilities)) || {};
    const state = !a ? 'none' : a.connected === true ? 'connected' : 'disconnected';
    return {
      rec: r, host: str(r.hostname), ipv4: str(r.ipv4), ipv6: str(r.ipv6), state,
      version: a ? str(a.version) : '',
      kernel: a ? caps.kernel_tracer : null, kernelErr: str(caps.kernel_tracer_error),
      ust: a ? caps.userspace_tracer : null, ustErr: str(caps.userspace_tracer_error),
      lttng: str(caps.lttng_version), sessiond: a ? caps.sessiond_running : null,
      babeltrace2: a ? caps.babeltrace2 : null,
      lastSeen: a ? parseTime(a.last_seen) : null, since: a ? parseTime(a.connected_since) : null,
    };
  }

  function pageFleet() {
    const p = newPage('fleet');
    const st = shared.fleet || (shared.fleet = { selected: new Set(), query: '', state: 'all', sortKey: 'hostname', sortDir: 1 });
    let rows = [];
    let index = new Map();
    const err = errorBanner('fleet-error');
    const count = h('span', { id: 'fleet-count', class: 'count' }, 'loading…');
    const matching = h('span', { id: 'fleet-matching', class: 'muted' });
    const traceBtn = h('button', { type: 'button', id: 'fleet-trace-selected', class: 'btn btn-primary', disabled: true,
      onclick: () => { shared.traceHosts = Array.from(st.selected); location.hash = '#/trace'; } }, 'Trace selected (0)');
    const csvBtn = h('button', { type: 'button', id: 'fleet-csv', class: 'btn' }, 'Export CSV');
    const allBox = h('input', { type: 'checkbox', id: 'fleet-select-all', title: 'Select all matching hosts', 'aria-label': 'Select all matching hosts' });
    const yn = (key, errKey) => ({
      key, num: false, value: (r) => (r[key] === true ? 'yes' : r[key] === false ? 'no' : ''),
      render: (r) => h('span', { class: 'yn ' + (r[key] === true ? 'yes' : r[key] === false ? 'no' : 'na') }, yesNo(r[key])),
      tip: errKey ? (r) => r[errKey] : null, csv: (r) => yesNo(r[key]),
    });
    const table = DataTable({
      id: 'fleet-table', pagerId: 'fleet-pager', pageSize: 100, rowKey: (r) => r.host, sortKey: st.sortKey, sortDir: st.sortDir, alwaysPager: true,
      emptyText: 'No host matches.',
      rowAttrs: (r) => ({ dataset: { host: r.host }, class: 'state-' + r.state }),
      columns: [
        { key: 'select', head: allBox, title: '', sortable: false, csv: false, search: false, cls: 'sel',
          render: (r) => h('input', { type: 'checkbox', class: 'select-host', value: r.host, checked: st.selected.has(r.host), 'aria-label': 'Select ' + r.host }) },
        { key: 'hostname', title: 'Hostname', value: (r) => r.host, cls: 'mono' },
        { key: 'address', title: 'Address', value: (r) => r.ipv4 || r.ipv6, cls: 'mono', csv: (r) => [r.ipv4, r.ipv6].filter(Boolean).join(' ') },
        { key: 'agent', title: 'Agent', value: (r) => r.state, render: (r) => h('span', { class: 'badge ag-' + r.state }, r.state),
          tip: (r) => (r.since ? 'connected since ' + fmtDate(new Date(r.since)) : '') },
        { key: 'version', title: 'Version', value: (r) => r.version, cls: 'mono' },
        Object.assign(yn('kernel', 'kernelErr'), { title: 'Kernel tracer' }),
        Object.assign(yn('ust', 'ustErr'), { title: 'Userspace tracer' }),
        { key: 'lttng', title: 'LTTng', value: (r) => r.lttng, cls: 'mono' },
        Object.assign(yn('sessiond'), { title: 'Sessiond' }),
        { key: 'last_seen', title: 'Last seen', value: (r) => r.lastSeen, sortValue: (r) => (r.lastSeen === null ? null : -r.lastSeen),
          search: false, render: (r) => (r.lastSeen === null ? '-' : h('span', { class: 'ago' }, fmtAgo(r.lastSeen))),
          tip: (r) => (r.lastSeen === null ? '' : fmtDate(new Date(r.lastSeen))),
          csv: (r) => (r.lastSeen === null ? '' : new Date(r.lastSeen).toISOString()) },
      ],
      onRender: (v) => {
        st.sortKey = table.sortKey; st.sortDir = table.sortDir;
        let sel = 0;
        for (const r of v) if (st.selected.has(r.host)) sel++;
        allBox.checked = v.length > 0 && sel === v.length;
        allBox.indeterminate = sel > 0 && sel < v.length;
        matching.textContent = table.query || st.state !== 'all' ? v.length + ' matching' : '';
      },
    });
    table.query = st.query;
    const stateFilter = () => (st.state === 'all' ? null : (r) => r.state === st.state);
    table.filter = stateFilter();

    function updateSelection() {
      traceBtn.textContent = 'Trace selected (' + st.selected.size + ')';
      traceBtn.disabled = st.selected.size === 0;
    }
    table.table.addEventListener('change', (e) => {
      const box = e.target;
      if (box.classList.contains('select-host')) {
        if (box.checked) st.selected.add(box.value); else st.selected.delete(box.value);
        updateSelection();
        table.render();
      } else if (box === allBox) {
        for (const r of table.compute()) { if (allBox.checked) st.selected.add(r.host); else st.selected.delete(r.host); }
        updateSelection();
        table.render(true);
      }
    });
    csvBtn.addEventListener('click', () => table.csv('fleet.csv'));

    function counts() {
      let c = 0;
      for (const r of rows) if (r.state === 'connected') c++;
      count.textContent = rows.length + (rows.length === 1 ? ' host, ' : ' hosts, ') + c + ' connected';
    }
    function setAll(list) {
      rows = arr(list).map(fleetRow);
      index = new Map(rows.map((r, i) => [r.host, i]));
      // drop selected hosts that no longer exist
      for (const hname of Array.from(st.selected)) if (!index.has(hname)) st.selected.delete(hname);
      updateSelection();
      counts();
      table.set(rows);
      if (!document.body.dataset.fleetReady) {
        document.body.dataset.fleetReadyMs = String(Math.round(performance.now()));
        document.body.dataset.fleetReady = '1';
      }
    }
    // Agent events that arrive while GET /clients is in flight are newer than its answer:
    // they are applied again on top of it.
    let replay = null;
    async function load() {
      const mine = [];
      replay = mine;
      try {
        const list = await get('clients');
        if (replay === mine) replay = null;
        setAll(list);
        for (const m of mine) applyAgent(m);
        showError(err, '');
      } catch (e) {
        if (replay === mine) replay = null;
        if (p.alive && e.status !== 401) showError(err, 'Cannot load the fleet: ' + e.message);
      }
    }

    // Live changes, rendered at most 4 times a second.
    let pending = false, lastRender = 0;
    function scheduleRender() {
      if (pending) return;
      pending = true;
      p.later(() => { pending = false; lastRender = Date.now(); counts(); table.invalidate(); table.render(); }, Math.max(0, 250 - (Date.now() - lastRender)));
    }
    function applyAgent(msg) {
      const m = obj(msg);
      if (!m || typeof m.hostname !== 'string') return;
      if (replay) replay.push(m);
      const i = index.get(m.hostname);
      if (i === undefined) {
        const r = fleetRow({ hostname: m.hostname, agent: m.agent });
        index.set(r.host, rows.length);
        rows.push(r);
      } else {
        rows[i] = fleetRow(Object.assign({}, rows[i].rec, { agent: m.agent }));
      }
      table.rows = rows;
      scheduleRender();
    }
    function startLive() {
      if (!session.live_clients || typeof EventSource === 'undefined') {
        setLive('polling');
        p.poll(load, 10000);
        return;
      }
      const es = new EventSource(API + '/clients/events');
      p.sources.push(es);
      // the stream says who connected or left; last_seen times still need a refresh now and then
      p.poll(load, 60000);
      // Every stream (the first and each reconnection) begins with `resync`: the fleet is read
      // after the stream is open, so no change falls between the two.
      es.addEventListener('open', () => setLive('on'));
      es.addEventListener('agent', (e) => { try { applyAgent(JSON.parse(e.data)); } catch (x) { /* ignore a bad event */ } });
      es.addEventListener('resync', () => load());
      es.addEventListener('error', () => {
        if (es.readyState === EventSource.CLOSED) {
          // the server refused the stream: fall back to polling
          setLive('polling');
          load();
          p.poll(load, 10000);
        } else setLive('lost');
      });
    }
    // relative times tick
    p.poll(async () => { if (!pending) for (const el of $$('#fleet-table td[data-col="last_seen"]')) {
      const r = rows[index.get(el.parentElement.dataset.host)];
      if (r && r.lastSeen !== null) el.firstChild.textContent = fmtAgo(r.lastSeen);
    } }, 5000);

    const search = searchInput({ id: 'fleet-search', value: st.query, placeholder: 'Filter hosts (name, version, state…)' },
      (q) => { st.query = q; table.setQuery(q); });
    const stateSel = select('fleet-state', [['all', 'All states'], ['connected', 'Connected'], ['disconnected', 'Disconnected'], ['none', 'No agent']], st.state,
      (e) => { st.state = e.target.value; table.setFilter(stateFilter()); }, 'Agent state');
    app.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Fleet'), count, matching),
      err,
      h('div', { class: 'toolbar' }, search, stateSel, h('span', { class: 'spacer' }), traceBtn, csvBtn),
      table.el);
    table.query = st.query.trim().toLowerCase();
    updateSelection();
    if (session.live_clients && typeof EventSource !== 'undefined') startLive();
    else load().then(() => { if (p.alive) startLive(); });
  }

  // ------------------------------------------------------------------------------------
  // Registry

  const KINDS = {
    relays: { one: 'relay', title: 'Relays', fields: [
      ['hostname', 'Hostname', 'text'], ['ipv4', 'IPv4', 'text'], ['ipv6', 'IPv6', 'text'],
      ['ctrlport', 'Control port', 'number', '5342'], ['dataport', 'Data port', 'number', '5343'],
      ['output_dir', 'Output directory', 'text', '/var/lib/lttng-relayd']] },
    clients: { one: 'client', title: 'Clients', fields: [
      ['hostname', 'Hostname', 'text'], ['ipv4', 'IPv4', 'text'], ['ipv6', 'IPv6', 'text'],
      ['sshport', 'SSH port', 'number', '22'], ['sshuser', 'SSH user', 'text', 'root']] },
    analyses_servers: { one: 'analyses server', title: 'Analyses servers', fields: [
      ['hostname', 'Hostname', 'text'], ['ipv4', 'IPv4', 'text'], ['ipv6', 'IPv6', 'text'],
      ['sshport', 'SSH port', 'number', '22'], ['sshuser', 'SSH user', 'text', 'root']] },
  };
  let registryKind = 'relays';

  function fieldErrors(form) {
    return {
      clear() {
        $$('.field-error', form).forEach((s) => { s.textContent = ''; });
        $$('.invalid', form).forEach((i) => i.classList.remove('invalid'));
      },
      // Shows e next to its field; false when no field of the form takes it.
      show(e, alias) {
        const f = e.field && ((alias && alias[e.field]) || e.field);
        const span = f && $('span.field-error[data-field="' + CSS.escape(f) + '"]', form);
        if (!span) return false;
        span.textContent = e.message;
        const input = form.elements[f] || $('[data-field-input="' + CSS.escape(f) + '"]', form);
        if (input && input.classList) { input.classList.add('invalid'); input.focus(); }
        return true;
      },
    };
  }
  const fieldError = (name) => h('span', { class: 'field-error', dataset: { field: name }, role: 'alert' });

  function pageRegistry() {
    const p = newPage('registry');
    const kind = KINDS[registryKind] ? registryKind : 'relays';
    const K = KINDS[kind];
    let editing = null;
    const err = errorBanner('registry-error');
    const loadErr = errorBanner('registry-load-error');
    const tabs = h('div', { class: 'tabs', role: 'tablist' }, Object.entries(KINDS).map(([k, v]) =>
      h('button', { type: 'button', class: 'tab' + (k === kind ? ' active' : ''), dataset: { kind: k }, 'aria-selected': String(k === kind), role: 'tab',
        onclick: () => { registryKind = k; pageRegistry(); } }, v.title)));

    const columns = [{ key: 'id', title: 'ID', num: true, value: (r) => (typeof r.id === 'number' ? r.id : str(r.id)) }]
      .concat(K.fields.map(([name, title, type]) => ({ key: name, title, num: type === 'number', cls: type === 'number' ? '' : 'mono', value: (r) => (r[name] === null || r[name] === undefined ? '' : typeof r[name] === 'number' ? r[name] : str(r[name])) })));
    if (kind === 'clients') {
      columns.push({ key: 'agent', title: 'Agent', value: (r) => fleetRow(r).state, render: (r) => { const s = fleetRow(r).state; return h('span', { class: 'badge ag-' + s }, s); } });
    }
    columns.push({ key: 'actions', title: '', sortable: false, csv: false, search: false, cls: 'actions', render: (r) => actions(r) });
    const table = DataTable({ id: 'registry-table', pagerId: 'registry-pager', pageSize: 100, sortKey: 'id', columns,
      emptyText: 'No ' + K.title.toLowerCase() + ' registered yet.', rowAttrs: (r) => ({ dataset: { id: str(r.id) } }) });

    function actions(r) {
      const cell = h('span', { class: 'row-actions' });
      const normal = () => cell.replaceChildren(
        h('button', { type: 'button', class: 'btn btn-small edit', onclick: () => edit(r) }, 'Edit'),
        h('button', { type: 'button', class: 'btn btn-small btn-danger-ghost delete', onclick: confirm }, 'Delete'));
      const confirm = () => cell.replaceChildren(
        h('button', { type: 'button', class: 'btn btn-small btn-danger confirm-delete', onclick: del }, 'Confirm delete'),
        h('button', { type: 'button', class: 'btn btn-small cancel-delete', onclick: normal }, 'Cancel'));
      const del = async () => {
        showError(err, '');
        try {
          await api('DELETE', kind + '/' + encodeURIComponent(r.id));
          if (editing && editing.id === r.id) reset();
          await load();
        } catch (e) { if (p.alive && e.status !== 401) { showError(err, 'Cannot delete ' + r.hostname + ': ' + e.message); normal(); } }
      };
      normal();
      return cell;
    }

    const title = h('h2', { id: 'registry-form-title' });
    const save = h('button', { type: 'submit', id: 'registry-save', class: 'btn btn-primary' }, 'Add');
    const cancel = h('button', { type: 'button', id: 'registry-cancel-edit', class: 'btn', onclick: () => reset() }, 'Cancel');
    const form = h('form', { id: 'registry-form', class: 'card form-grid', novalidate: true, autocomplete: 'off' }, title,
      K.fields.map(([name, label, type, placeholder]) => h('div', { class: 'field' },
        h('label', { for: 'reg-' + name }, label, name === 'hostname' ? h('span', { class: 'req' }, ' *') : null),
        h('input', { id: 'reg-' + name, name, type: type === 'number' ? 'number' : 'text', min: type === 'number' ? 1 : null, max: type === 'number' ? 65535 : null, placeholder: placeholder || '', spellcheck: 'false' }),
        fieldError(name))),
      h('p', { class: 'muted small' }, 'A hostname and at least one of IPv4/IPv6 are required.'),
      h('div', { class: 'form-actions' }, save, cancel));
    const fe = fieldErrors(form);
    function reset() {
      editing = null;
      form.reset();
      fe.clear();
      showError(err, '');
      title.textContent = 'Add ' + K.one;
      save.textContent = 'Add ' + K.one;
      $$('tr.editing', table.table).forEach((tr) => tr.classList.remove('editing'));
    }
    function edit(r) {
      reset();
      editing = r;
      title.textContent = 'Edit ' + K.one + ' ' + str(r.id);
      save.textContent = 'Save';
      for (const [name] of K.fields) form.elements[name].value = r[name] === null || r[name] === undefined ? '' : str(r[name]);
      const tr = $('tr[data-id="' + CSS.escape(str(r.id)) + '"]', table.table);
      if (tr) tr.classList.add('editing');
      form.elements.hostname.focus();
    }
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      fe.clear();
      showError(err, '');
      const body = {};
      for (const [name, , type] of K.fields) {
        const v = form.elements[name].value.trim();
        if (v === '') continue;
        if (type === 'number') {
          const n = Number(v);
          if (!Number.isInteger(n)) { fe.show({ field: name, message: 'must be a whole number' }); return; }
          body[name] = n;
        } else body[name] = v;
      }
      if (!body.hostname) { fe.show({ field: 'hostname', message: 'is required' }); return; }
      save.disabled = true;
      try {
        if (editing) await api('PUT', kind + '/' + encodeURIComponent(editing.id), body);
        else await api('POST', kind, body);
        reset();
        await load();
      } catch (ex) {
        if (p.alive && ex.status !== 401 && !fe.show(ex)) showError(err, ex.message);
      } finally { save.disabled = false; }
    });

    async function load() {
      try { table.set(arr(await get(kind))); showError(loadErr, ''); } catch (e) { if (p.alive && e.status !== 401) showError(loadErr, 'Cannot load ' + K.title.toLowerCase() + ': ' + e.message); }
    }
    app.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Registry'), tabs),
      loadErr,
      h('div', { class: 'split' },
        h('div', { class: 'split-main' },
          h('div', { class: 'toolbar' }, searchBox('registry-search', 'Filter ' + K.title.toLowerCase(), table), h('span', { class: 'spacer' }),
            h('button', { type: 'button', id: 'registry-csv', class: 'btn', onclick: () => table.csv(kind + '.csv') }, 'Export CSV')),
          table.el),
        h('div', { class: 'split-side' }, err, form)));
    reset();
    load();
  }

  // ------------------------------------------------------------------------------------
  // Trace form

  function pageTrace() {
    const p = newPage('trace');
    const err = errorBanner('trace-error');
    const prefill = shared.traceHosts;
    shared.traceHosts = null;
    const hosts = h('textarea', { id: 'trace-hosts', name: 'hosts', rows: 4, placeholder: 'web1, web2 (commas, spaces or new lines)', spellcheck: 'false', 'data-field-input': 'hosts' });
    if (prefill && prefill.length) hosts.value = prefill.join('\n');
    const allAgents = h('input', { type: 'checkbox', id: 'trace-all-agents', name: 'all_agents' });
    const capability = select('trace-capability', [['', 'any capability'], ['kernel_tracer', 'kernel_tracer'], ['userspace_tracer', 'userspace_tracer'],
      ['babeltrace2', 'babeltrace2'], ['sessiond_running', 'sessiond_running']], '', null, 'Required capability');
    capability.name = 'capability';
    const type = h('select', { id: 'trace-type', name: 'type', 'aria-label': 'Analysis type' }, h('option', { value: '' }, 'loading…'));
    const typeDesc = h('p', { id: 'trace-type-description', class: 'muted small' });
    const duration = h('input', { id: 'trace-duration', name: 'duration', type: 'number', min: '0.1', step: 'any', value: '2' });
    const username = h('input', { id: 'trace-username', name: 'username', type: 'text', value: 'root', autocomplete: 'off', spellcheck: 'false' });
    const relay = h('select', { id: 'trace-relay', name: 'relay', 'aria-label': 'Relay' }, h('option', { value: '' }, 'none'));
    const analysisHost = h('select', { id: 'trace-analysis-host', name: 'analysis', 'aria-label': 'Analysis host' }, h('option', { value: '' }, 'same host'));
    const keep = h('input', { type: 'checkbox', id: 'trace-keep', name: 'keep_trace' });
    const start = h('button', { type: 'submit', id: 'trace-start', class: 'btn btn-primary' }, 'Start trace');
    const hostCount = h('span', { class: 'muted small', id: 'trace-host-count' });
    let analyses = [];

    const syncAll = () => {
      hosts.disabled = allAgents.checked;
      capability.disabled = !allAgents.checked;
      const n = parseHosts(hosts.value).length;
      hostCount.textContent = allAgents.checked ? 'every connected agent' : n === 1 ? '1 host' : n + ' hosts' + (n > 1 ? ' (fleet job)' : '');
    };
    allAgents.addEventListener('change', syncAll);
    hosts.addEventListener('input', syncAll);
    const syncType = () => {
      const a = analyses.find((x) => x.analysis === type.value);
      typeDesc.replaceChildren();
      if (!a) return;
      const ev = arr(a.kernel_events).length ? 'kernel events: ' + arr(a.kernel_events).length + (a.syscalls ? ' + all syscalls' : '')
        : arr(a.userspace_events).length ? 'userspace events: ' + arr(a.userspace_events).map(str).join(', ') : '';
      append(typeDesc, [str(a.description), ev ? h('span', { class: 'desc-extra' }, ' · ' + ev) : null]);
    };
    type.addEventListener('change', syncType);

    const row = (label, forId, input, field, help) => h('div', { class: 'field' },
      h('label', { for: forId }, label), input, help || null, field ? fieldError(field) : null);
    const form = h('form', { id: 'trace-form', class: 'card form-grid trace-form', novalidate: true, autocomplete: 'off' },
      h('div', { class: 'field field-wide' },
        h('label', { for: 'trace-hosts' }, 'Hosts'), hosts, hostCount, fieldError('hosts'), fieldError('host')),
      h('div', { class: 'field field-wide inline' },
        h('label', { class: 'check' }, allAgents, ' Every connected agent'),
        h('label', { for: 'trace-capability', class: 'inline-label' }, 'requiring'), capability, fieldError('capability')),
      row('Analysis', 'trace-type', type, 'type', typeDesc),
      row('Duration (seconds)', 'trace-duration', duration, 'duration'),
      row('User (SSH, for hosts without an agent)', 'trace-username', username, 'username'),
      row('Relay', 'trace-relay', relay, 'relay'),
      row('Analysis host', 'trace-analysis-host', analysisHost, 'analysis'),
      h('div', { class: 'field' }, h('label', { class: 'check' }, keep, ' Keep the trace (downloadable as .tar.gz)'), fieldError('keep_trace')),
      h('div', { class: 'form-actions field-wide' }, start));
    const fe = fieldErrors(form);

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      fe.clear();
      showError(err, '');
      const body = { type: type.value, username: username.value.trim(), duration: Number(duration.value) };
      if (allAgents.checked) {
        body.hosts = { agents: 'connected', require: capability.value ? [capability.value] : [] };
      } else {
        const list = parseHosts(hosts.value);
        if (list.length === 0) { fe.show({ field: 'hosts', message: 'enter at least one host, or choose every connected agent' }); return; }
        if (list.length === 1) body.host = list[0]; else body.hosts = list;
      }
      if (!body.type) { fe.show({ field: 'type', message: 'choose an analysis' }); return; }
      if (duration.value === '' || !(body.duration > 0)) { fe.show({ field: 'duration', message: 'must be a number of seconds above 0' }); return; }
      if (relay.value) body.relay = relay.value;
      if (analysisHost.value) body.analysis = analysisHost.value;
      if (keep.checked) body.keep_trace = true;
      start.disabled = true;
      try {
        const r = await api('POST', 'analyses', body, { headers: { Prefer: 'respond-async' } });
        const loc = r.headers.get('Location') || '';
        const m = /\/jobs\/(\d+)/.exec(loc);
        const d = obj(r.data) || {};
        const id = m ? m[1] : str(d.jobid !== undefined ? d.jobid : d.id);
        if (p.alive) location.hash = '#/jobs/' + id;
      } catch (ex) {
        if (p.alive && ex.status !== 401 && !fe.show(ex, { host: hosts.value && !allAgents.checked ? 'host' : 'hosts' })) showError(err, ex.message);
      } finally { start.disabled = false; }
    });

    app.append(h('div', { class: 'page-head' }, h('h1', null, 'Start a trace')), err, form);
    syncAll();

    // Choices from the last visit show at once; fresh ones replace them when they come.
    const options = (sel, list, first, label) => {
      const keep = sel.value;
      sel.replaceChildren(...(first ? [h('option', { value: '' }, first)] : []),
        ...list.map((x) => h('option', { value: str(first ? x.hostname : x.analysis) }, label(x))));
      if (keep && list.some((x) => str(first ? x.hostname : x.analysis) === keep)) sel.value = keep;
    };
    const fillChoices = (c) => {
      if (c.analyses) { analyses = c.analyses; options(type, analyses, null, (x) => str(x.analysis) + ' (' + str(x.summary) + ')'); syncType(); }
      if (c.relays) options(relay, c.relays, 'none', (x) => str(x.hostname));
      if (c.servers) options(analysisHost, c.servers, 'same host', (x) => str(x.hostname));
    };
    if (shared.choices) fillChoices(shared.choices);
    Promise.allSettled([get('analyses'), get('relays'), get('analyses_servers')]).then(([a, r, s]) => {
      const c = shared.choices || (shared.choices = {});
      if (a.status === 'fulfilled') c.analyses = arr(a.value).filter(obj);
      if (r.status === 'fulfilled') c.relays = arr(r.value).filter(obj);
      if (s.status === 'fulfilled') c.servers = arr(s.value).filter(obj);
      if (!p.alive) return;
      fillChoices(c);
      if (a.status === 'rejected' && a.reason.status !== 401) showError(err, 'Cannot load the analysis types: ' + a.reason.message);
    });
  }
  const parseHosts = (text) => Array.from(new Set(text.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean)));

  // ------------------------------------------------------------------------------------
  // Jobs list

  const JOBS_SHOWN = 2000;
  const jobsState = { query: '', status: 'all', sortKey: 'id', sortDir: -1, page: 0 };
  function jobHostText(j) {
    if (j.kind === 'fleet') {
      // The list is brief (no per-host entries): the outcome counts say how many hosts.
      const counts = obj(j.outcomes);
      const n = counts ? Object.values(counts).reduce((a, v) => a + (typeof v === 'number' ? v : 0), 0) : arr(j.hosts).length;
      return n + (n === 1 ? ' host' : ' hosts');
    }
    return str(j.host);
  }
  function pageJobs() {
    const p = newPage('jobs');
    const err = errorBanner('jobs-error');
    const table = DataTable({
      id: 'jobs-table', pagerId: 'jobs-pager', pageSize: 50, rowKey: (j) => str(j.id), sortKey: jobsState.sortKey, sortDir: jobsState.sortDir,
      emptyText: 'No jobs.', rowAttrs: (j) => ({ dataset: { jobId: str(j.id) } }),
      onRowClick: (j) => { location.hash = '#/jobs/' + j.id; },
      onRender: () => { jobsState.sortKey = table.sortKey; jobsState.sortDir = table.sortDir; jobsState.page = table.page; },
      columns: [
        { key: 'id', title: 'ID', num: true, value: (j) => j.id, render: (j) => h('a', { href: '#/jobs/' + j.id, class: 'mono' }, str(j.id)) },
        { key: 'kind', title: 'Kind', value: (j) => (j.kind === 'fleet' ? 'fleet' : 'single') },
        { key: 'host', title: 'Host(s)', value: (j) => jobHostText(j), cls: 'mono' },
        { key: 'type', title: 'Type', value: (j) => str(j.type) },
        { key: 'status', title: 'Status', value: (j) => statusLabel(j.status), sortValue: (j) => j.status, render: (j) => statusBadge(j.status) },
        { key: 'duration', title: 'Duration', num: true, value: (j) => j.duration, text: (j) => fmtSecs(j.duration), csv: (j) => str(j.duration) },
        { key: 'created', title: 'Created', value: (j) => parseTime(j.created), text: (j) => fmtTime(j.created), csv: (j) => str(j.created) },
        { key: 'error', title: 'Error', value: (j) => str(j.error && j.error.message), cls: 'err-cell',
          render: (j) => truncate(j.error && j.error.message, 90), tip: (j) => str(j.error && j.error.message) },
      ],
    });
    table.query = jobsState.query.trim().toLowerCase();
    const statusFilter = () => {
      const s = jobsState.status;
      return s === 'all' ? null : s === 'running' ? (j) => jobRunning(j.status) : s === 'complete' ? (j) => j.status === 4 : (j) => j.status === -1;
    };
    table.filter = statusFilter();
    table.page = jobsState.page;
    const search = searchInput({ id: 'jobs-search', value: jobsState.query, placeholder: 'Filter jobs (id, host, type, error…)' },
      (q) => { jobsState.query = q; table.setQuery(q); });
    const statusSel = select('jobs-status', [['all', 'All'], ['running', 'Running'], ['complete', 'Complete'], ['failed', 'Failed']], jobsState.status,
      (e) => { jobsState.status = e.target.value; table.setFilter(statusFilter()); }, 'Job status');
    const summary = h('span', { class: 'muted', id: 'jobs-count' });
    async function load() {
      try {
        // The newest JOBS_SHOWN jobs, without fleets' per-host entries: polled every 3 s, it
        // must not grow with a week of history or a 10,000-host fleet.
        const d = await get('list?all=true&brief=true&limit=' + JOBS_SHOWN);
        const jobs = arr(obj(d) && d.sessions).filter(obj);
        const running = jobs.filter((j) => jobRunning(j.status)).length;
        summary.textContent = (jobs.length >= JOBS_SHOWN ? 'newest ' : '') + jobs.length + ' jobs, ' + running + ' running';
        table.set(jobs);
        showError(err, '');
      } catch (e) { if (p.alive && e.status !== 401) showError(err, 'Cannot load the jobs: ' + e.message); }
    }
    app.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Jobs'), summary, h('span', { class: 'spacer' }), h('a', { href: '#/trace', class: 'btn btn-primary' }, 'New trace')),
      err,
      h('div', { class: 'toolbar' }, search, statusSel, h('span', { class: 'spacer' }),
        h('button', { type: 'button', id: 'jobs-csv', class: 'btn', onclick: () => table.csv('jobs.csv') }, 'Export CSV')),
      table.el);
    load();
    p.poll(load, 3000);
  }

  // ------------------------------------------------------------------------------------
  // One job

  function pageJob(id) {
    const p = newPage('jobs');
    const status = h('span', { id: 'job-status', class: 'badge' }, '…');
    const progress = h('progress', { id: 'job-progress', max: '1', value: '0' });
    const cancel = h('button', { type: 'button', id: 'job-cancel', class: 'btn btn-danger', hidden: true }, 'Cancel job');
    const note = h('span', { class: 'muted small', id: 'job-note' });
    const err = errorBanner('job-load-error');
    const facts = h('dl', { class: 'facts', id: 'job-facts' });
    const jobError = h('div', { id: 'job-error', class: 'job-error', hidden: true });
    const links = h('div', { class: 'job-links', id: 'job-links' });
    const fleetBox = h('div', { id: 'job-fleet' });
    const result = h('div', { id: 'job-result' });
    const view = h('section', { id: 'job-view', dataset: { jobId: id } },
      h('div', { class: 'page-head' }, h('a', { href: '#/jobs', class: 'back' }, '‹ Jobs'), h('h1', null, 'Job ' + id), status, progress, cancel, note),
      err, facts, jobError, links, fleetBox, result);
    app.append(view);
    let job = null;
    let fleetTable = null;
    let pendingHosts = false;

    function setStatus(s) {
      status.textContent = statusLabel(s);
      status.className = 'badge st-' + (STATUS_CLASS[s] || 'unknown');
      status.dataset.status = str(s);
      const running = jobRunning(s);
      cancel.hidden = !running;
      if (!running) { progress.value = 1; progress.hidden = true; } else {
        progress.hidden = false;
        if (s === 3) progress.value = 1;
      }
    }
    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        await api('DELETE', 'jobs/' + encodeURIComponent(id));
        note.textContent = 'cancel requested';
      } catch (e) { if (e.status !== 401) note.textContent = e.status === 409 ? 'already ended: ' + e.message : 'cannot cancel: ' + e.message; }
      finally { cancel.disabled = false; }
    });

    function render(j) {
      job = j;
      setStatus(j.status);
      renderFacts(j);
      renderError(j);
      renderLinks(j);
      if (j.kind === 'fleet') renderFleet(j); else fleetBox.replaceChildren();
      if (!jobRunning(j.status)) renderResultArea(j);
      else result.replaceChildren(h('p', { class: 'muted' }, j.kind === 'fleet' ? 'Per-host results appear as hosts finish.' : 'The result appears when the job completes.'));
    }
    function renderFacts(j) {
      const started = parseTime(j.trace_started || j.started), finished = parseTime(j.finished);
      const items = [
        ['Type', str(j.type)],
        [j.kind === 'fleet' ? 'Hosts' : 'Host', j.kind === 'fleet' ? jobHostText(j) : str(j.host)],
        ['Kind', j.kind === 'fleet' ? 'fleet' : 'single'],
        ['Duration', fmtSecs(j.duration)],
        ['User', str(j.username)],
        ['Via', str(j.via) + (j.analysis_via && j.analysis_via !== j.via ? ' (analysis via ' + str(j.analysis_via) + ')' : '')],
        ['Relay', str(j.relay)],
        ['Analysis host', str(j.analysis)],
        ['Created', fmtTime(j.created)],
        ['Started', fmtTime(j.started)],
        ['Trace started', fmtTime(j.trace_started)],
        ['Finished', fmtTime(j.finished)],
        ['Elapsed', started !== null && finished !== null ? fmtSecs((finished - started) / 1000) : ''],
        ['Trace window', started !== null && j.trace_started ? fmtDate(new Date(started)) + ' – ' + fmtClock(new Date(started + (j.duration || 0) * 1000)) : ''],
        ['Host timeout', j.host_timeout ? fmtSecs(j.host_timeout) : ''],
      ];
      facts.replaceChildren();
      for (const [k, v] of items) if (v && v !== '-') facts.append(h('div', { class: 'fact' }, h('dt', null, k), h('dd', null, v)));
      if (typeof j.parent === 'number') facts.append(h('div', { class: 'fact' }, h('dt', null, 'Fleet job'), h('dd', null, h('a', { href: '#/jobs/' + j.parent }, 'job ' + j.parent))));
    }
    function renderError(j) {
      const e = obj(j.error);
      jobError.hidden = !(j.status === -1 && e);
      if (jobError.hidden) { jobError.replaceChildren(); return; }
      fill(jobError,
        h('div', { class: 'job-error-head' }, h('strong', null, 'Failed'), ' at step ', h('span', { class: 'error-step' }, str(e.step) || '?'),
          e.host ? [' on ', h('span', { class: 'mono' }, str(e.host))] : null),
        h('pre', { class: 'error-message' }, str(e.message)),
        obj(e.kept_trace) ? h('p', { class: 'small' }, 'The trace was kept: ' + str(e.kept_trace.path || e.kept_trace.trace || '') + ' on ' + str(e.kept_trace.host || '')) : null);
    }
    function traceKept(j) {
      const r = obj(j.result), e = obj(j.error);
      if ((r && (r.trace_kept === true || obj(r.kept_trace))) || (e && obj(e.kept_trace))) return true;
      return arr(j.hosts).some((x) => { const hr = obj(x && x.result), he = obj(x && x.error); return (hr && (hr.trace_kept === true || obj(hr.kept_trace))) || (he && obj(he.kept_trace)); });
    }
    function renderLinks(j) {
      links.replaceChildren();
      if (!jobRunning(j.status) && traceKept(j)) {
        links.append(h('a', { href: API + '/jobs/' + encodeURIComponent(id) + '/trace', class: 'btn download-trace', id: 'job-download', download: 'tracevisor-job-' + id + '.tar.gz' }, 'Download trace'),
          h('span', { class: 'muted small' }, ' .tar.gz of the kept CTF trace (Trace Compass, babeltrace2)'));
      }
      links.append(h('a', { href: API + '/jobs/' + encodeURIComponent(id), class: 'btn btn-ghost', target: '_blank', rel: 'noopener' }, 'Raw JSON'));
    }

    function renderFleet(j) {
      const hosts = arr(j.hosts).filter(obj);
      const counts = {};
      for (const k of ['complete', 'error', 'offline', 'timeout', 'skipped', 'pending']) counts[k] = 0;
      const oc = obj(j.outcomes);
      if (oc && !jobRunning(j.status)) Object.assign(counts, oc); else for (const x of hosts) counts[x.outcome] = (counts[x.outcome] || 0) + 1;
      const summary = h('div', { id: 'fleet-summary', class: 'fleet-summary' }, Object.entries(counts).map(([k, n]) =>
        h('span', { class: 'count-chip oc-' + k + (n ? '' : ' zero'), dataset: { outcome: k } }, h('b', null, str(n)), ' ' + k)));
      if (!fleetTable) {
        fleetTable = DataTable({
          id: 'fleet-outcomes', pagerId: 'fleet-outcomes-pager', pageSize: 100, sortKey: 'host', rowKey: (x) => str(x.host),
          rowAttrs: (x) => ({ dataset: { host: str(x.host) } }),
          columns: [
            { key: 'host', title: 'Host', value: (x) => str(x.host), cls: 'mono' },
            { key: 'outcome', title: 'Outcome', value: (x) => str(x.outcome), render: (x) => h('span', { class: 'badge oc-' + str(x.outcome) }, str(x.outcome)) },
            { key: 'step', title: 'Step', value: (x) => str(x.error && x.error.step), cls: 'mono' },
            { key: 'reason', title: 'Reason', value: (x) => str((x.error && x.error.message) || (obj(x.result) && x.result.omitted) || (obj(x.result) && x.result.note)), cls: 'err-cell',
              render: (x) => (x.error ? truncate(x.error.message, 160) : h('span', { class: 'muted' }, truncate((obj(x.result) && (x.result.omitted || x.result.note)) || '', 160))),
              tip: (x) => str(x.error && x.error.message) },
            { key: 'via', title: 'Via', value: (x) => str(x.via) },
            { key: 'summary', title: 'Result', value: (x) => resultSummary(x.result) },
            { key: 'job', title: 'Job', num: true, value: (x) => x.jobid, render: (x) => (x.jobid === undefined || x.jobid === null ? '-' : h('a', { class: 'host-result', href: '#/jobs/' + str(x.jobid) }, 'job ' + str(x.jobid))) },
          ],
        });
        const search = searchBox('fleet-outcomes-search', 'Filter hosts', fleetTable);
        const ocSel = select('fleet-outcome-filter', [['all', 'All outcomes'], ['complete', 'complete'], ['error', 'error'], ['offline', 'offline'], ['timeout', 'timeout'], ['skipped', 'skipped'], ['pending', 'pending']], 'all',
          (e) => fleetTable.setFilter(e.target.value === 'all' ? null : (x) => x.outcome === e.target.value), 'Outcome');
        fleetBox.replaceChildren(h('h2', null, 'Hosts'), h('div', { id: 'fleet-summary-slot' }),
          h('div', { class: 'toolbar' }, search, ocSel, h('span', { class: 'spacer' }), h('button', { type: 'button', class: 'btn csv-export', id: 'fleet-outcomes-csv', onclick: () => fleetTable.csv('job-' + id + '-hosts.csv') }, 'Export CSV')),
          fleetTable.el);
      }
      $('#fleet-summary-slot', fleetBox).replaceChildren(summary);
      fleetTable.set(hosts);
    }
    function renderResultArea(j) {
      result.replaceChildren();
      p.charts.forEach((c) => c.u.destroy());
      p.charts.length = 0;
      if (j.kind === 'fleet') {
        const done = arr(j.hosts).filter((x) => obj(x) && obj(x.result) && (x.result.kind === 'ust' || x.result.kind === 'lami'));
        if (done.length === 0) return;
        result.append(h('h2', null, 'Results per host'));
        const pick = h('select', { id: 'fleet-result-host', 'aria-label': 'Host result' }, done.map((x) => h('option', { value: str(x.host) }, str(x.host))));
        const slot = h('div', { class: 'host-result-slot' });
        const show = () => {
          p.charts.forEach((c) => c.u.destroy());
          p.charts.length = 0;
          slot.replaceChildren();
          const x = done.find((d) => str(d.host) === pick.value);
          if (x) renderResult(slot, x.result, p, 'job-' + id + '-' + str(x.host));
        };
        pick.addEventListener('change', show);
        result.append(h('div', { class: 'toolbar' }, h('label', { for: 'fleet-result-host' }, 'Host '), pick), slot);
        show();
        return;
      }
      if (j.result === undefined || j.result === null) { if (j.status === 4) result.append(h('p', { class: 'muted' }, 'No result.')); return; }
      result.append(h('h2', null, 'Result'));
      renderResult(result, j.result, p, 'job-' + id);
    }

    function scheduleFleet() {
      if (pendingHosts) return;
      pendingHosts = true;
      p.later(() => { pendingHosts = false; if (job) { renderFleet(job); renderFacts(job); } }, 250);
    }
    let hostIndex = null;
    function follow() {
      if (typeof EventSource === 'undefined') { p.poll(refresh, 2000); return; }
      const es = new EventSource(API + '/jobs/' + encodeURIComponent(id) + '/events');
      p.sources.push(es);
      es.addEventListener('status', (e) => {
        try { const d = JSON.parse(e.data); if (job && typeof d.status === 'number') { job.status = d.status; setStatus(d.status); } } catch (x) { /* ignore */ }
      });
      es.addEventListener('progress', (e) => {
        try { const d = JSON.parse(e.data); const f = Number(d.fraction); if (isFinite(f) && job && jobRunning(job.status)) progress.value = Math.max(0, Math.min(1, f)); } catch (x) { /* ignore */ }
      });
      es.addEventListener('host', (e) => {
        try {
          const d = JSON.parse(e.data);
          if (!job || !obj(d)) return;
          const hs = arr(job.hosts);
          if (!hostIndex || hostIndex.size !== hs.length) hostIndex = new Map(hs.map((x, k) => [x && x.host, k]));
          const i = hostIndex.get(d.host);
          if (i !== undefined) hs[i] = d; else { hostIndex.set(d.host, hs.length); hs.push(d); }
          job.hosts = hs;
          scheduleFleet();
        } catch (x) { /* ignore */ }
      });
      es.addEventListener('done', (e) => {
        es.close();
        try { const d = JSON.parse(e.data); if (obj(d)) { final = true; render(d); } else refresh(); } catch (x) { refresh(); }
      });
      es.addEventListener('error', () => {
        if (es.readyState === EventSource.CLOSED) { p.poll(refresh, 2000); return; }
        // reconnecting: make sure nothing was missed
        refresh();
      });
    }
    let final = false;
    async function refresh() {
      if (final) return;
      try {
        const j = await get('jobs/' + encodeURIComponent(id));
        if (!p.alive) return;
        if (!jobRunning(j.status)) { final = true; p.sources.forEach((s) => s.close()); render(j); } else if (!job || job.status !== j.status) render(j);
      } catch (e) { /* next time */ }
    }
    get('jobs/' + encodeURIComponent(id)).then((j) => {
      if (!p.alive) return;
      if (!obj(j)) { showError(err, 'Unexpected answer for job ' + id); return; }
      render(j);
      if (jobRunning(j.status)) follow();
    }, (e) => {
      if (!p.alive || e.status === 401) return;
      showError(err, e.status === 404 ? 'Job ' + id + ' does not exist (or was deleted after its retention time).' : 'Cannot load job ' + id + ': ' + e.message);
      status.textContent = 'unknown';
      progress.hidden = true;
    });
  }

  function resultSummary(r) {
    const o = obj(r);
    if (!o) return '';
    if (o.omitted) return 'omitted';
    if (o.kind === 'ust') return fmtNumber(o.total) + ' events';
    if (o.kind === 'lami') {
      let n = 0;
      for (const a of arr(o.analyses)) n += arr(obj(a) && obj(a.result) && a.result.results).length;
      return n + ' tables';
    }
    return str(o.kind);
  }

  // ------------------------------------------------------------------------------------
  // Results: userspace summaries and LAMI documents as tables and charts

  function renderResult(container, r, p, base) {
    const o = obj(r);
    if (!o) { container.append(h('pre', { class: 'raw' }, str(r))); return; }
    if (o.omitted) container.append(h('p', { class: 'banner banner-warn' }, 'Result omitted: ' + str(o.omitted)));
    if (o.kind === 'ust') renderUst(container, o, p, base);
    else if (o.kind === 'lami') renderLami(container, o, p, base);
    else if (!o.omitted) container.append(h('pre', { class: 'raw' }, JSON.stringify(o, null, 2)));
    if (o.trace) {
      container.append(h('p', { class: 'small muted trace-path' }, 'Trace: ', h('span', { class: 'mono' }, str(o.trace)), ' on ', h('span', { class: 'mono' }, str(o.host)),
        o.trace_kept === true ? ' (kept)' : o.trace_kept === false ? ' (deleted after the analysis)' : '',
        o.trace_delete_error ? ' — delete failed: ' + str(o.trace_delete_error) : ''));
    }
  }

  function resultBlock(container, o) {
    // o: {title, range, columns:[{title, num, tip}], rows:[[{text, sort}...]], filename}
    const cols = o.columns.map((c, i) => ({
      key: 'c' + i, title: c.title, num: c.num, value: (row) => (row[i] ? row[i].sort : null), text: (row) => (row[i] ? row[i].text : ''),
      cls: c.mono ? 'mono' : '',
    }));
    const preHead = o.range ? h('tr', { class: 'range-row' }, h('td', { colspan: String(cols.length) }, h('span', { class: 'time-range' }, o.range))) : null;
    const t = DataTable({ cls: 'result-table', columns: cols, pageSize: 100, caption: h('caption', null, o.title), preHead, emptyText: 'No rows.', sortKey: o.sortKey, sortDir: o.sortDir });
    const block = h('div', { class: 'result-block' },
      h('div', { class: 'result-tools' },
        o.rows.length > 15 ? searchBox(null, 'Filter rows', t) : null,
        h('button', { type: 'button', class: 'btn btn-small csv-export', onclick: () => t.csv(o.filename) }, 'CSV')),
      t.el);
    container.append(block);
    t.set(o.rows);
    return block;
  }

  function renderUst(container, r, p, base) {
    const total = typeof r.total === 'number' ? r.total : 0;
    const begin = Number(r.begin), end = Number(r.end);
    const range = isFinite(begin) && isFinite(end) && r.begin !== null && r.end !== null
      ? fmtDate(new Date(begin * 1000), true) + ' – ' + fmtClock(new Date(end * 1000)) + ' (' + fmtNs((end - begin) * 1e9) + ')' : '';
    container.append(h('p', { class: 'result-summary' }, h('b', null, fmtNumber(total)), ' userspace events on ', h('span', { class: 'mono' }, str(r.host)),
      range ? [', ', h('span', { class: 'time-range' }, range)] : null));
    if (r.note) container.append(h('p', { class: 'banner banner-warn' }, str(r.note)));
    const share = (n) => (total > 0 ? (n * 100 / total).toFixed(1) + ' %' : '-');
    const events = Object.entries(obj(r.events) || {}).map(([k, v]) => [k, typeof v === 'number' ? v : 0]).sort((a, b) => b[1] - a[1] || compare(a[0], b[0]));
    const procs = arr(r.processes).filter(obj).map((x) => ({ name: str(x.procname) || '?', vpid: x.vpid, events: typeof x.events === 'number' ? x.events : 0,
      threads: Object.keys(obj(x.threads) || {}).length })).sort((a, b) => b.events - a.events);
    const charts = h('div', { class: 'charts' });
    container.append(charts);
    if (events.length) addBarChart(charts, p, 'Events per name' + (events.length > 20 ? ' (top 20)' : ''), events.slice(0, 20).map((e) => e[0]), events.slice(0, 20).map((e) => e[1]), fmtNumber);
    if (procs.length) addBarChart(charts, p, 'Events per process' + (procs.length > 20 ? ' (top 20)' : ''), procs.slice(0, 20).map((x) => x.name + ' (' + str(x.vpid) + ')'), procs.slice(0, 20).map((x) => x.events), fmtNumber);
    if (events.length) {
      resultBlock(container, { title: 'Events per name', filename: base + '-events.csv', sortKey: 'c1', sortDir: -1,
        columns: [{ title: 'Event', mono: true }, { title: 'Count', num: true }, { title: 'Share', num: true }],
        rows: events.map(([k, v]) => [{ text: k, sort: k }, { text: String(v), sort: v }, { text: share(v), sort: v }]) });
    }
    if (procs.length) {
      resultBlock(container, { title: 'Events per process', filename: base + '-processes.csv', sortKey: 'c2', sortDir: -1,
        columns: [{ title: 'Process' }, { title: 'VPID', num: true }, { title: 'Events', num: true }, { title: 'Share', num: true }, { title: 'Threads', num: true }],
        rows: procs.map((x) => [{ text: x.name, sort: x.name }, { text: str(x.vpid), sort: typeof x.vpid === 'number' ? x.vpid : null },
          { text: String(x.events), sort: x.events }, { text: share(x.events), sort: x.events }, { text: String(x.threads), sort: x.threads }]) });
    }
  }

  // LAMI table classes (titles, columns, units) from /ui/lami_classes.json, fetched once.
  let lamiClasses = null;
  function loadLamiClasses() {
    if (!lamiClasses) lamiClasses = api('GET', '/ui/lami_classes.json').then((r) => obj(r.data) || {}, () => ({}));
    return lamiClasses;
  }
  function parseClass(v) {
    const c = obj(v);
    if (!c || !Array.isArray(c['column-descriptions'])) return null;
    return { title: str(c.title), columns: c['column-descriptions'].map((d) => { d = obj(d) || {}; return { title: str(d.title), cls: str(d.class || d.type), unit: str(d.unit) }; }) };
  }
  function resolveClass(all, doc, command, cls) {
    const name = command.split('/').pop();
    const byName = (n) => parseClass(obj(doc['table-classes']) && doc['table-classes'][n]) ||
      parseClass(obj(all['table-classes']) && obj(all.commands) && obj(all['table-classes'][all.commands[name]]) && all['table-classes'][all.commands[name]][n]);
    if (typeof cls === 'string') return byName(cls);
    const o = obj(cls);
    if (!o) return null;
    const base = typeof o.inherit === 'string' ? byName(o.inherit) : null;
    const own = parseClass(o);
    const columns = own ? own.columns : base ? base.columns : null;
    if (!columns) return null;
    return { title: typeof o.title === 'string' ? o.title : base ? base.title : '', columns };
  }
  const classLabel = (c) => (typeof c === 'string' ? c : obj(c) ? str(c.title || c.inherit || 'table') : 'table');
  const NUMERIC = new Set(['number', 'ratio', 'duration', 'size', 'bitrate', 'fd', 'cpu', 'timestamp']);
  const lamiTs = (v) => { const o = obj(v); const n = o ? o.value : v; return typeof n === 'number' ? n : typeof n === 'string' && n !== '' && isFinite(Number(n)) ? Number(n) : null; };
  const tsText = (ns, withDate) => { const d = new Date(ns / 1e6); return withDate ? fmtDate(d, true) : fmtClock(d); };

  // One LAMI cell as {text, sort}, as the CLI renders it (render.rs lami_cell).
  function lamiCell(cell) {
    const o = obj(cell);
    if (!o) return { text: cell === null || cell === undefined ? '-' : typeof cell === 'number' ? fmtNumber(cell) : typeof cell === 'boolean' ? yesNo(cell) : str(cell), sort: typeof cell === 'number' ? cell : str(cell) };
    const cls = str(o.class), v = o.value;
    const num = (x) => (typeof x === 'number' ? x : null);
    const ranged = (fmt) => {
      if (num(v) !== null) return { text: fmt(v), sort: v };
      const lo = num(o.low), hi = num(o.high);
      if (lo !== null && hi !== null) return { text: fmt(lo) + ' – ' + fmt(hi), sort: lo };
      if (lo !== null) return { text: '≥ ' + fmt(lo), sort: lo };
      if (hi !== null) return { text: '≤ ' + fmt(hi), sort: hi };
      return { text: '?', sort: null };
    };
    switch (cls) {
      case 'unknown': return { text: '?', sort: null };
      case 'empty': return { text: '', sort: null };
      case 'bool': return { text: typeof v === 'boolean' ? yesNo(v) : '?', sort: typeof v === 'boolean' ? Number(v) : null };
      case 'number': return ranged(fmtNumber);
      case 'ratio': return ranged((x) => (x * 100).toFixed(2) + ' %');
      case 'duration': return ranged(fmtNs);
      case 'size': return ranged(fmtBytes);
      case 'bitrate': return ranged((x) => fmtBytes(x / 8) + '/s');
      case 'timestamp': { const n = lamiTs(o); return n === null ? { text: '?', sort: null } : { text: tsText(n, false), sort: n }; }
      case 'time-range': {
        const b = lamiTs(o.begin), e = lamiTs(o.end);
        return b === null || e === null ? { text: '?', sort: null } : { text: tsText(b, false) + ' – ' + tsText(e, false), sort: b };
      }
      case 'process': {
        const name = typeof o.name === 'string' ? o.name : '?';
        const tid = num(o.tid), pid = num(o.pid);
        const text = pid !== null && tid !== null && pid !== tid ? name + ' (' + pid + '/' + tid + ')' : tid !== null || pid !== null ? name + ' (' + (tid !== null ? tid : pid) + ')' : name;
        return { text, sort: name.toLowerCase() };
      }
      case 'path': return { text: str(o.path), sort: str(o.path) };
      case 'fd': return { text: o.fd === undefined ? '?' : str(o.fd), sort: num(o.fd) };
      case 'irq': {
        const nr = o.nr === undefined ? '?' : str(o.nr);
        const kind = o.hard === false ? 'softirq ' : '';
        return { text: typeof o.name === 'string' ? kind + o.name + ' (' + nr + ')' : kind + nr, sort: num(o.nr) };
      }
      case 'cpu': return { text: o.id === undefined ? '?' : str(o.id), sort: num(o.id) };
      case 'string': return { text: v === undefined ? '' : typeof v === 'string' ? v : str(v), sort: str(v) };
      default: {
        if (v !== undefined) return { text: typeof v === 'number' ? fmtNumber(v) : str(v), sort: typeof v === 'number' ? v : str(v) };
        if (typeof o.name === 'string') return { text: o.name, sort: o.name };
        const rest = Object.assign({}, o); delete rest.class;
        return { text: str(rest), sort: str(rest) };
      }
    }
  }

  function renderLami(container, r, p, base) {
    const slot = h('div', { class: 'lami' }, h('p', { class: 'muted' }, 'Loading table titles…'));
    container.append(slot);
    loadLamiClasses().then((all) => {
      if (!p.alive) return;
      slot.replaceChildren();
      const analyses = arr(r.analyses).filter(obj);
      if (!analyses.length) slot.append(h('p', { class: 'muted' }, 'No analyses in the result.'));
      const charts = h('div', { class: 'charts' });
      slot.append(charts);
      for (const a of analyses) {
        const command = str(a.command) || 'analysis';
        const doc = obj(a.result) || {};
        const group = obj(all.commands) ? str(all.commands[command.split('/').pop()]) : '';
        slot.append(h('h3', { class: 'analysis-title' }, h('span', { class: 'mono' }, command), group ? h('span', { class: 'muted' }, ' · ' + group) : null));
        if (doc['error-message'] !== undefined) { slot.append(h('pre', { class: 'error-message' }, str(doc['error-message']))); continue; }
        const tables = arr(doc.results).filter(obj);
        if (!tables.length) { slot.append(h('p', { class: 'muted' }, 'No result tables: the trace had nothing for this analysis.')); continue; }
        tables.forEach((t, ti) => {
          const tab = lamiTable(all, doc, command, t);
          resultBlock(slot, { title: tab.title, range: tab.range, columns: tab.columns, rows: tab.rows, filename: base + '-' + command.split('/').pop().replace(/[^A-Za-z0-9_-]/g, '') + '-' + ti + '.csv' });
          lamiChart(charts, p, command.split('/').pop(), typeof t.class === 'string' ? t.class : '', tab);
        });
      }
      if (!charts.childElementCount) charts.remove();
    });
  }

  function lamiTable(all, doc, command, t) {
    const cls = resolveClass(all, doc, command, t.class);
    const rows = arr(t.data).filter(Array.isArray);
    const width = rows.reduce((m, r) => Math.max(m, r.length), 0);
    const title = cls && cls.title ? cls.title : classLabel(t.class);
    const columns = (cls ? cls.columns : []).slice();
    for (let i = columns.length; i < width; i++) {
      const found = rows.map((r) => obj(r[i]) && r[i].class).find((c) => typeof c === 'string');
      columns.push({ title: found ? found[0].toUpperCase() + found.slice(1) : 'Column ' + (i + 1), cls: found || '', unit: '' });
    }
    const cellClass = (i) => columns[i].cls || rows.map((r) => obj(r[i]) && r[i].class).find((c) => typeof c === 'string') || '';
    const cols = columns.map((c, i) => ({ title: c.unit ? c.title + ' (' + c.unit + ')' : c.title || 'Column ' + (i + 1), num: NUMERIC.has(cellClass(i)), cls: cellClass(i) }));
    const tr = obj(t['time-range']);
    let range = '';
    if (tr) {
      const b = lamiTs(tr.begin), e = lamiTs(tr.end);
      if (b !== null && e !== null) range = tsText(b, true) + ' – ' + tsText(e, false) + ' (' + fmtNs(e - b) + ')';
    }
    return { title, range, columns: cols, raw: rows, rows: rows.map((r) => cols.map((_, i) => lamiCell(r[i] === undefined ? null : r[i]))) };
  }

  // Charts where a picture reads better than a table.
  function lamiChart(charts, p, command, cls, tab) {
    const idx = (pred) => tab.columns.findIndex(pred);
    if (command === 'lttng-cputop-mi' && cls === 'per-process') {
      const ri = idx((c) => c.cls === 'ratio');
      const ni = idx((c) => c.cls === 'process');
      if (ri < 0 || ni < 0) return;
      const top = tab.raw.map((r, i) => [tab.rows[i][ni].text, lamiNum(r[ri])]).filter((x) => x[1] !== null).sort((a, b) => b[1] - a[1]).slice(0, 20);
      if (top.length) addBarChart(charts, p, 'CPU usage per process (top ' + top.length + ')', top.map((x) => x[0]), top.map((x) => x[1] * 100), (v) => v.toFixed(1) + ' %');
    } else if (cls === 'freq' || /^freq/.test(cls)) {
      // a frequency distribution: lower bound, upper bound, count
      const ci = idx((c, i) => i >= 2 && c.cls === 'number');
      if (ci < 0 || !tab.raw.length) return;
      addBarChart(charts, p, tab.title, tab.raw.map((r, i) => tab.rows[i][0].text), tab.raw.map((r) => lamiNum(r[ci]) || 0), fmtNumber);
    } else if (command === 'lttng-iolatencystats-mi' && /latency-stats$/.test(cls)) {
      const ai = idx((c) => /average/i.test(c.title) && c.cls === 'duration');
      if (ai < 0 || !tab.raw.length) return;
      const vals = tab.raw.map((r) => lamiNum(r[ai]));
      if (vals.every((v) => v === null)) return;
      addBarChart(charts, p, tab.title + ': average latency', tab.rows.map((r) => r[0].text), vals.map((v) => (v === null ? 0 : v / 1e3)), (v) => fmtNs(v * 1e3));
    }
  }
  const lamiNum = (c) => { const o = obj(c); const v = o ? o.value : c; return typeof v === 'number' ? v : null; };

  function chartWidth(el) {
    const w = el.clientWidth ? el.clientWidth - 22 : (el.parentElement && el.parentElement.clientWidth) || 600;
    return Math.max(260, Math.min(1000, Math.floor(w)));
  }
  function addBarChart(parent, p, title, labels, values, fmt) {
    if (typeof uPlot === 'undefined' || !labels.length) return;
    const n = labels.length;
    const xs = labels.map((_, i) => i);
    const readout = h('div', { class: 'chart-readout' }, '\u00a0');
    const plot = h('div', { class: 'chart-plot' });
    const box = h('div', { class: 'chart' }, h('div', { class: 'chart-title' }, title), plot, readout);
    parent.append(box);
    const short = (s) => (s.length > 20 ? s.slice(0, 8) + '…' + s.slice(-11) : s);
    const rotate = n > 5;
    const u = new uPlot({
      width: chartWidth(box), height: 240, padding: [8, rotate ? 36 : 12, 0, 0],
      legend: { show: false },
      cursor: { drag: { x: false, y: false, setScale: false }, points: { show: false } },
      scales: { x: { time: false, range: () => [-0.5, n - 0.5] }, y: { range: (uu, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
      axes: [
        { splits: () => xs, values: (uu, splits) => splits.map((i) => (Number.isInteger(i) && labels[i] !== undefined ? short(labels[i]) : '')),
          rotate: rotate ? -40 : 0, size: rotate ? 90 : 30, gap: 4, grid: { show: false }, ticks: { show: false }, font: '11px system-ui, sans-serif' },
        { values: (uu, splits) => splits.map((v) => fmt(v)), size: 70, font: '11px system-ui, sans-serif', grid: { stroke: '#eef0f3' } },
      ],
      series: [{}, { label: title, fill: 'rgba(47, 109, 214, 0.75)', stroke: '#2f6dd6', width: 1, points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7, 64] }) }],
      hooks: { setCursor: [(uu) => {
        const i = uu.cursor.idx;
        readout.textContent = i === null || i === undefined ? '\u00a0' : labels[i] + ': ' + fmt(values[i]);
      }] },
    }, [xs, values], plot);
    p.charts.push({ u, el: box });
    fitCharts();
  }

  // ------------------------------------------------------------------------------------
  // Status

  function pageStatus() {
    const p = newPage('status');
    const err = errorBanner('status-error');
    const dl = h('dl', { class: 'status-list' });
    const updated = h('span', { class: 'muted small', id: 'status-updated' });
    const view = h('section', { id: 'status-view' },
      h('div', { class: 'page-head' }, h('h1', null, 'Coordinator status'), updated), err, h('div', { class: 'card' }, dl));
    app.append(view);
    const KEYS = [
      ['database', 'Database', (v) => str(v)],
      ['version', 'Version', str],
      ['schema_version', 'Schema version', str],
      ['uptime_secs', 'Uptime', (v) => (typeof v === 'number' ? fmtSecs(v) : '-')],
      ['agents_connected', 'Agents connected', str],
      ['agent_links_open', 'Agent links open', str],
      ['jobs_running', 'Jobs running', str],
      ['resident_memory_bytes', 'Resident memory', (v) => (typeof v === 'number' ? fmtBytes(v) : '-')],
      ['open_fds', 'Open file descriptors', (v) => (v === null || v === undefined ? '-' : str(v))],
    ];
    async function load() {
      try {
        const r = await api('GET', 'status', undefined, { accept: [503] });
        const d = obj(r.data) || {};
        dl.replaceChildren();
        const known = new Set(KEYS.map((k) => k[0]));
        const entries = KEYS.map(([k, label, fmt]) => [k, label, fmt(d[k])]).concat(
          Object.keys(d).filter((k) => !known.has(k)).map((k) => [k, k.replace(/_/g, ' '), str(d[k])]));
        for (const [k, label, text] of entries) {
          const dd = h('dd', { dataset: { key: k } }, text);
          if (k === 'database') dd.classList.add(d.database === 'ok' ? 'ok-text' : 'error-text');
          if (k === 'uptime_secs' && typeof d[k] === 'number') dd.title = 'since ' + fmtDate(new Date(Date.now() - d[k] * 1000));
          if (k === 'resident_memory_bytes' && typeof d[k] === 'number') dd.title = d[k] + ' bytes';
          dl.append(h('div', { class: 'status-item' }, h('dt', null, label), dd));
        }
        showError(err, r.status === 503 ? 'The coordinator cannot serve: ' + str(d.database) : '');
        updated.textContent = 'updated ' + fmtClock(new Date()).slice(0, 8) + ' · every 5 s';
      } catch (e) { if (p.alive && e.status !== 401) showError(err, 'Cannot load the status: ' + e.message); }
    }
    load();
    p.poll(load, 5000);
  }

  // ------------------------------------------------------------------------------------
  // Routing and start

  function route() {
    if (session.auth_required && !session.signed_in) { showSignin(); return; }
    const parts = (location.hash || '').replace(/^#\/?/, '').split('/').filter(Boolean);
    const [name, arg] = parts;
    if (name === 'registry') pageRegistry();
    else if (name === 'trace') pageTrace();
    else if (name === 'jobs' && arg && /^\d+$/.test(arg)) pageJob(arg);
    else if (name === 'jobs') pageJobs();
    else if (name === 'status') pageStatus();
    else pageFleet();
    const titles = { fleet: 'Fleet', registry: 'Registry', trace: 'Trace', jobs: 'Jobs', status: 'Status' };
    document.title = 'Tracevisor · ' + (page.name === 'jobs' && arg ? 'Job ' + arg : titles[page.name] || 'Fleet');
  }
  window.addEventListener('hashchange', route);

  async function start() {
    try {
      const r = await api('GET', '/ui/session', undefined, { noAuthRedirect: true, accept: [401, 404] });
      const d = r.status === 200 ? obj(r.data) : null;
      if (d) {
        session.auth_required = d.auth_required === true;
        session.signed_in = d.signed_in === true;
        session.live_clients = d.live_clients === true;
      } else if (r.status === 401) { session.auth_required = true; session.signed_in = false; }
    } catch (e) { /* older coordinator: no session endpoint, no sign-in */ }
    updateSignout();
    route();
  }
  start();
})();
