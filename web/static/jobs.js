// The jobs view: submit a job from a service's declared parameters, the
// queue (reorder, remove), live output and progress of a job, stop, and
// the history. It speaks JSON-RPC 2.0 to /v1/rpc and listens to events.
const $ = (sel) => document.querySelector(sel);
const state = { ws: null, next: 1, pending: new Map(), services: [], jobs: new Map(), queue: [], watching: '', offset: 0 };
window.wsgwJobs = state;

function say(text, cls = '') {
  $('#message').textContent = text;
  $('#message').className = cls;
}

function call(method, params) {
  return new Promise((resolve, reject) => {
    const id = state.next++;
    state.pending.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
  });
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const t = sessionStorage.getItem('wsgw-security-token');
  const q = t ? '?security_token=' + encodeURIComponent(t) : '';
  const ws = new WebSocket(`${scheme}//${location.host}/v1/rpc${q}`);
  state.ws = ws;
  ws.addEventListener('open', async () => {
    $('#conn').textContent = 'connected';
    $('#conn').dataset.state = 'connected';
    try {
      await load();
      await call('events.subscribe', { topics: ['job.state', 'job.progress', 'logs.append', 'queue.changed'] });
    } catch (e) {
      say(e.message, 'error');
    }
  });
  ws.addEventListener('close', (e) => {
    $('#conn').textContent = 'disconnected' + (e.reason ? ': ' + e.reason : '') + '; reconnecting…';
    $('#conn').dataset.state = 'disconnected';
    for (const p of state.pending.values()) p.reject(new Error('disconnected'));
    state.pending.clear();
    setTimeout(connect, 2000);
  });
  ws.addEventListener('message', (e) => {
    const m = JSON.parse(e.data);
    if (m.id !== undefined && state.pending.has(m.id)) {
      const p = state.pending.get(m.id);
      state.pending.delete(m.id);
      if (m.error) p.reject(new Error(m.error.message));
      else p.resolve(m.result);
      return;
    }
    if (m.method) onEvent(m.method, m.params.data);
  });
}

async function load() {
  const s = await call('services.list', {});
  state.services = s.services.filter((x) => x.kind === 'job');
  renderServiceSelect();
  const l = await call('jobs.list', { limit: 100 });
  state.jobs = new Map(l.jobs.map((j) => [j.id, j]));
  const q = await call('queue.list', {});
  state.queue = (q.jobs || q.queue || []).map((j) => (typeof j === 'string' ? j : j.id));
  render();
}

function onEvent(topic, d) {
  if (topic === 'job.state') {
    const j = state.jobs.get(d.id) || { id: d.id, service: d.service };
    if (d.state === 'removed') state.jobs.delete(d.id);
    else state.jobs.set(d.id, { ...j, ...d });
  } else if (topic === 'job.progress') {
    const j = state.jobs.get(d.id);
    if (j) j.progress = d;
  } else if (topic === 'queue.changed') {
    if (d.kind === 'reservations') return; // reservations waiting for a slot, not jobs
    state.queue = d.queue || [];
  } else if (topic === 'logs.append' && d.id === state.watching) {
    if (d.offset === state.offset && d.data !== undefined) {
      $('#output').textContent += d.data;
      state.offset += d.length;
    } else {
      readLog();
    }
    return;
  }
  render();
}

function renderServiceSelect() {
  // With no job service, say so instead of showing an empty form.
  const none = state.services.length === 0;
  $('#no-job-services').hidden = !none;
  $('#submit').hidden = none;
  $('#submit-title').hidden = none;
  const sel = $('#service');
  sel.replaceChildren(...state.services.map((s) => new Option(s.name, s.name)));
  renderParams();
}

function renderParams() {
  const svc = state.services.find((s) => s.name === $('#service').value);
  const box = $('#params');
  box.replaceChildren();
  if (!svc) return;
  for (const [name, p] of Object.entries(svc.params || {})) {
    const row = document.createElement('p');
    const label = document.createElement('label');
    label.textContent = name + (p.required ? ' *' : '') + ' ';
    let input;
    if (p.type === 'enum') {
      input = document.createElement('select');
      for (const v of p.values || []) input.append(new Option(v, v));
    } else if (p.type === 'bool') {
      input = document.createElement('input');
      input.type = 'checkbox';
      input.checked = p.default === true;
    } else {
      input = document.createElement('input');
      input.type = p.type === 'string' ? 'text' : 'number';
      if (p.type === 'number') input.step = 'any';
      if (p.min !== undefined) input.min = p.min;
      if (p.max !== undefined) input.max = p.max;
      if (p.default !== undefined) input.value = p.default;
      input.required = !!p.required;
      if (p.pattern) input.placeholder = p.pattern;
    }
    input.name = name;
    input.dataset.type = p.type;
    input.title = p.help || '';
    label.append(input);
    row.append(label);
    box.append(row);
  }
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function button(label, cls, onclick) {
  const b = document.createElement('button');
  b.textContent = label;
  b.className = cls;
  b.addEventListener('click', onclick);
  return b;
}

async function act(fn, what) {
  try {
    await fn();
  } catch (e) {
    say(`${what}: ${e.message}`, 'error');
  }
}

function render() {
  const qb = $('#queue tbody');
  qb.replaceChildren();
  state.queue.forEach((id, i) => {
    const j = state.jobs.get(id) || { id };
    const tr = document.createElement('tr');
    tr.dataset.job = id;
    const acts = document.createElement('td');
    // queue.move positions count from 1 (next to start).
    if (i > 0) acts.append(button('Up', 'up', () => act(() => call('queue.move', { id, position: i }), 'move')));
    if (i < state.queue.length - 1) acts.append(button('Down', 'down', () => act(() => call('queue.move', { id, position: i + 2 }), 'move')));
    acts.append(button('Remove', 'remove', () => act(() => call('jobs.stop', { id }), 'remove')));
    tr.append(cell(id), cell(j.service || ''), cell(String(i + 1), 'num'), acts);
    qb.append(tr);
  });
  const jb = $('#jobs tbody');
  jb.replaceChildren();
  const jobs = [...state.jobs.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
  for (const j of jobs) {
    const tr = document.createElement('tr');
    tr.dataset.job = j.id;
    const pr = j.progress && j.progress.percent !== undefined
      ? `${Math.round(j.progress.percent)} %` + (j.progress.eta_seconds !== undefined ? `, ${Math.round(j.progress.eta_seconds)} s left` : '')
      : '';
    const acts = document.createElement('td');
    acts.append(button('Output', 'watch', () => watch(j.id)));
    if (['queued', 'starting', 'running'].includes(j.state)) acts.append(button('Stop', 'stop', () => act(() => call('jobs.stop', { id: j.id }), 'stop')));
    else acts.append(button('Delete', 'delete', () => act(() => call('jobs.remove', { id: j.id }), 'delete')));
    tr.append(cell(j.id), cell(j.service || ''), cell(j.state || '', 'state'), cell(pr, 'progress'),
      cell(j.exit_status === undefined || j.exit_status === null ? '' : String(j.exit_status), 'exit'), acts);
    jb.append(tr);
  }
}

async function readLog() {
  const id = state.watching;
  try {
    for (let i = 0; i < 64; i++) {
      const r = await call('logs.read', { id, offset: state.offset, limit: 65536 });
      if (id !== state.watching) return;
      $('#output').textContent += r.data;
      state.offset = r.next_offset;
      if (r.next_offset >= r.size) break;
    }
  } catch (e) {
    say('output: ' + e.message, 'error');
  }
}

function watch(id) {
  state.watching = id;
  state.offset = 0;
  $('#output').textContent = '';
  $('#output-job').textContent = id;
  readLog();
}

$('#service').addEventListener('change', renderParams);
$('#submit').addEventListener('submit', async (e) => {
  e.preventDefault();
  const params = {};
  for (const input of $('#params').querySelectorAll('input, select')) {
    const t = input.dataset.type;
    if (t === 'bool') params[input.name] = input.checked;
    else if (input.value === '') continue;
    else if (t === 'int' || t === 'number') params[input.name] = Number(input.value);
    else params[input.name] = input.value;
  }
  try {
    const j = await call('jobs.submit', { service: $('#service').value, params });
    state.jobs.set(j.id, j);
    say(`Submitted ${j.id} (${j.state}).`, 'ok');
    watch(j.id);
    render();
  } catch (err) {
    say('Not submitted: ' + err.message, 'error');
  }
});

connect();
