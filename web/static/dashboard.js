// The dashboard: services with their free slots and a Launch button,
// live sessions, and Stop for administrators. Refreshes every 2 seconds.
import { api, humanAge, humanBytes, setSecurityToken } from './api.js';

const $ = (sel) => document.querySelector(sel);
const msg = $('#message');

function say(text, cls = '') {
  msg.textContent = text;
  msg.className = cls;
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderServices(services) {
  const body = $('#services tbody');
  body.replaceChildren();
  // The "Opens files" column only when a service says what it opens.
  $('#services').classList.toggle('no-file-ext', !services.some((s) => (s.file_ext || []).length > 0));
  if (services.length === 0) {
    const tr = document.createElement('tr');
    const td = cell('No services are configured: start the gateway with --remote_session_config or --local_session.', 'muted');
    td.colSpan = 5;
    tr.append(td);
    body.append(tr);
  }
  for (const s of services) {
    const tr = document.createElement('tr');
    tr.dataset.service = s.name;
    tr.append(cell(s.name, 'name'), cell(String(s.free), 'num free'), cell(String(s.count), 'num count'));
    const ext = cell('', 'file-ext');
    for (const e of s.file_ext || []) {
      const t = document.createElement('span');
      t.className = 'tag';
      t.textContent = e;
      ext.append(t);
    }
    tr.append(ext);
    const act = cell('', 'actions');
    const b = document.createElement('button');
    b.className = 'launch primary';
    b.textContent = 'Launch';
    b.disabled = s.free === 0;
    b.title = s.free === 0 ? 'All slots are in use' : 'Reserve a slot and open it in a new tab';
    b.addEventListener('click', () => launch(s.name, b));
    act.append(b);
    tr.append(act);
    body.append(tr);
  }
}

function renderSessions(st) {
  const body = $('#sessions tbody');
  body.replaceChildren();
  const rows = [];
  for (const s of st.sessions) rows.push({ ...s, kind: 'session' });
  // Reservations not used yet have no session.
  const withSession = new Set(st.sessions.map((s) => s.token_prefix));
  for (const r of st.reservations) {
    if (!withSession.has(r.token_prefix)) rows.push({ ...r, kind: 'reservation', bytes_in: 0, bytes_out: 0 });
  }
  // The Stop column only when there is something this user may stop.
  $('#sessions').classList.toggle('no-actions', !rows.some((s) => s.token));
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = cell('No sessions.', 'muted');
    td.colSpan = 7;
    tr.append(td);
    body.append(tr);
  }
  for (const s of rows) {
    const tr = document.createElement('tr');
    tr.dataset.tokenPrefix = s.token_prefix;
    tr.append(cell(s.service, 'service'), cell(String(s.index), 'num index'), cell(s.state, 'state'),
      cell(humanAge(s.age_seconds), 'num age'), cell(humanBytes(s.bytes_in || 0), 'num bytes-in'),
      cell(humanBytes(s.bytes_out || 0), 'num bytes-out'));
    const act = cell('', 'actions');
    if (s.token) {
      const b = document.createElement('button');
      b.className = 'stop';
      b.textContent = 'Stop';
      b.addEventListener('click', () => stop(s, b));
      act.append(b);
    }
    tr.append(act);
    body.append(tr);
  }
}

async function refresh() {
  try {
    const st = await api('/v1/status');
    $('#auth').hidden = true;
    $('#login-link').hidden = true;
    $('#who').hidden = !st.user;
    $('#who-name').textContent = st.user ? st.user + (st.admin ? ' (admin)' : '') : '';
    renderServices(st.services);
    renderSessions(st);
    $('#summary').textContent = `${st.tunnels} open tunnel(s)` + (st.basic_target ? `, basic mode to ${st.basic_target}` : '');
    $('#refresh-state').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.status === 401 && e.message.includes('log in')) {
      $('#login-link').hidden = false;
      say('Log in to use this gateway.', 'error');
    } else if (e.status === 401) {
      $('#auth').hidden = false;
      say('This gateway needs its security token.', 'error');
    } else {
      $('#refresh-state').textContent = 'not updated: ' + e.message;
    }
  }
}

async function launch(name, button) {
  button.disabled = true;
  // Open the tab now, while the click still counts as a user gesture.
  const tab = window.open('about:blank', '_blank');
  try {
    const r = await api('/v1/reserve/' + encodeURIComponent(name));
    const url = '/wsgw/viewer.html#' + new URLSearchParams({ token: r.token, service: name });
    if (tab) tab.location = url; else location.href = url;
    say(`Reserved ${name} (slot ${r.index}).`, 'ok');
  } catch (e) {
    if (tab) tab.close();
    say(`Could not launch ${name}: ${e.message}`, 'error');
  }
  refresh();
}

async function stop(s, button) {
  button.disabled = true;
  try {
    await api('/v1/release/' + encodeURIComponent(s.token));
    say(`Stopped ${s.service} (slot ${s.index}).`, 'ok');
  } catch (e) {
    say(`Could not stop ${s.service}: ${e.message}`, 'error');
  }
  refresh();
}

$('#logout').addEventListener('click', async () => {
  try { await api('/v1/logout', { method: 'POST' }); } catch (e) { /* the cookie is gone either way */ }
  location.href = '/wsgw/login.html';
});

$('#token-save').addEventListener('click', () => {
  setSecurityToken($('#token-input').value.trim());
  $('#token-input').value = '';
  say('');
  refresh();
});

refresh();
setInterval(refresh, 2000);
