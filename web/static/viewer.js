// The viewer: opens noVNC's RFB against the gateway with the token from
// the URL fragment (#token=…&service=…), which never reaches a server log.
// With #service=NAME and no token it reserves a slot itself; other
// fragment parameters become reservation options (e.g. geometry=1600x900).
import RFB from './novnc/core/rfb.js';
import { api } from './api.js';

const $ = (sel) => document.querySelector(sel);
const statusEl = $('#status');
const reasonEl = $('#reason');
const reconnectBtn = $('#reconnect');
const params = new URLSearchParams(location.hash.slice(1));
let token = params.get('token') || '';
// A share link (#share=…) opens someone else's desktop: view-only or with
// control, as the gateway enforces.
const share = params.get('share') || '';
const service = params.get('service') || '';
const viewer = { state: 'reserving', rfb: null, closeCode: 0, closeReason: '' };
window.wsgwViewer = viewer;

if (service) {
  $('#title').textContent = service;
  document.title = service + ' · wsgateway';
}

function setState(state, text, reason = '') {
  viewer.state = state;
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  reasonEl.textContent = reason;
  reconnectBtn.hidden = !(state === 'disconnected' || state === 'error');
}

async function reserve() {
  setState('reserving', `Reserving ${service}…`);
  const opts = new URLSearchParams();
  for (const [k, v] of params) if (k !== 'token' && k !== 'service') opts.set(k, v);
  const q = opts.toString();
  const r = await api('/v1/reserve/' + encodeURIComponent(service) + (q ? '?' + q : ''));
  token = r.token;
  params.set('token', token);
  history.replaceState(null, '', '#' + params.toString());
}

// explain asks the gateway why a websocket was refused: browsers hide the
// HTTP answer of a refused upgrade, so the page asks the same question
// over plain HTTP, with the token in a header rather than a URL.
async function explain() {
  if (share) {
    try {
      await api('/v1/viewers', { headers: { 'X-Wsgw-Share': share } });
      return '';
    } catch (e) {
      if (e.status === 403) return 'This share link was revoked or has expired, or its desktop has ended.';
      return plainReason(e.status, e.message);
    }
  }
  try {
    await api('/v1/check_token', { headers: { 'X-Wsgw-Token': token } });
    return '';
  } catch (e) {
    return plainReason(e.status, e.message);
  }
}

// plainReason says a refusal in words for the person at the screen (the
// gateway's own words are for API clients); it is shown whole, never cut.
function plainReason(status, gatewaySays) {
  const again = service ? 'Reconnect reserves a new one.' : 'Launch a new one from the dashboard.';
  const says = (gatewaySays || '').toLowerCase();
  switch (status) {
    case 0:
      return 'The gateway cannot be reached. Check the network, then Reconnect.';
    case 401:
      return 'The gateway asks you to log in first (the dashboard has the login page).';
    case 403:
      if (says.includes('expired')) return `This desktop's reservation expired before it was used. ${again}`;
      if (says.includes('ending')) return `This desktop is shutting down. ${again}`;
      if (says.includes('unknown token')) return `The gateway does not know this link's desktop: it was stopped or has ended, or the gateway restarted. ${again}`;
      return gatewaySays;
    case 409:
      return 'This desktop is already open in another tab or window, and it can be shown in one place at a time. Close it there, then Reconnect.';
    case 429:
      return 'Too many attempts from your address. Wait a minute, then Reconnect.';
    case 503:
      return 'The gateway is too busy or is shutting down. Try again in a moment.';
    default:
      return gatewaySays || `The gateway refused the connection (HTTP ${status}).`;
  }
}

// plainClose says why an open connection ended. A close frame holds at
// most 123 bytes of reason, so the gateway's may end mid-word: a cut log
// path is left out rather than shown cut (the gateway's log has it whole).
function plainClose(code, reason) {
  if (reason === 'Target closed') return 'The desktop has ended (its programs exited).';
  if (!reason && code === 1001) return 'The gateway is shutting down.';
  if (code === 1011) {
    const at = reason.indexOf(' (log: ');
    const why = at >= 0 ? reason.slice(0, at) : reason;
    return `The desktop could not be started: ${why}. The session log on the gateway has the details.`;
  }
  return reason;
}

// watchCluster follows the session.state events of this token's session
// over /v1/rpc while its service starts: a cluster job waiting in its
// scheduler's queue is shown as "waiting for the cluster: <reason>,
// position N". It resolves, once subscribed (or after 3 s, or on an
// error: the viewer does not depend on it), to a function that stops
// following; the websocket that starts the service opens after it, so no
// event is missed.
function watchCluster() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const t = sessionStorage.getItem('wsgw-security-token');
  const q = t ? '?security_token=' + encodeURIComponent(t) : '';
  let ws;
  try { ws = new WebSocket(`${scheme}//${location.host}/v1/rpc${q}`); } catch (e) { return Promise.resolve(() => {}); }
  const stop = () => ws.close();
  let ready;
  const subscribed = new Promise((resolve) => { ready = () => resolve(stop); });
  setTimeout(ready, 3000);
  ws.addEventListener('error', ready);
  ws.addEventListener('close', ready);
  const prefix = token.slice(0, 8);
  ws.addEventListener('open', () => {
    ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'events.subscribe', params: { topics: ['session.state'] } }));
  });
  ws.addEventListener('message', (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch (err) { return; }
    if (m.id === 1) { ready(); return; }
    const d = m.method === 'session.state' && m.params && m.params.data;
    if (!d || d.token_prefix !== prefix || viewer.state === 'connected') return;
    if (d.job_state === 'PENDING') {
      const why = d.reason && d.reason !== 'None' ? d.reason : 'queued';
      const pos = d.position ? `, position ${d.position}` : '';
      setState('waiting', `waiting for the cluster: ${why}${pos}`);
    } else if (d.job_state === 'RUNNING' || d.job_state === 'CONFIGURING') {
      setState('starting', `Starting ${service || 'the desktop'} on ${d.node || 'the cluster'}…`);
    } else if (d.job_state === 'SUBMITTED') {
      setState('waiting', 'waiting for the cluster: submitted');
    }
  });
  return subscribed;
}

async function connect() {
  if (viewer.rfb) {
    viewer.rfb.disconnect();
    viewer.rfb = null;
  }
  $('#screen').replaceChildren();
  setState('starting', 'Connecting to the gateway…');
  const stopWatch = await watchCluster();
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = share ? 'share=' + encodeURIComponent(share) : 'token=' + encodeURIComponent(token);
  const ws = new WebSocket(`${scheme}//${location.host}/websockify?${q}`);
  ws.binaryType = 'arraybuffer';
  let opened = false;
  ws.addEventListener('open', () => {
    opened = true;
    // A cluster job's wait may have been told already.
    if (viewer.state !== 'waiting') setState('starting', `Starting ${service || 'the desktop'}…`);
  });
  ws.addEventListener('close', (e) => {
    viewer.closeCode = e.code;
    viewer.closeReason = e.reason;
  });
  ws.addEventListener('close', stopWatch);
  const rfb = new RFB($('#screen'), ws, { wsProtocols: [] });
  viewer.rfb = rfb;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  // The gateway drops a view share's input; the browser need not send it.
  if (share && viewer.shareMode === 'view') rfb.viewOnly = true;
  rfb.addEventListener('connect', () => {
    stopWatch();
    setState('connected', 'Connected');
    rfb.focus();
  });
  rfb.addEventListener('desktopname', (e) => {
    if (!service) $('#title').textContent = e.detail.name;
  });
  rfb.addEventListener('clipboard', (e) => { $('#clipboard').value = e.detail.text; });
  rfb.addEventListener('disconnect', async (e) => {
    if (viewer.rfb !== rfb) return;
    // The close event carries the gateway's reason; it may arrive just
    // after noVNC's disconnect.
    await new Promise((r) => setTimeout(r, 50));
    let reason = plainClose(viewer.closeCode, viewer.closeReason);
    if (!opened) reason = (await explain()) || 'The gateway refused the connection.';
    if (!reason && !e.detail.clean) reason = 'The connection was lost.';
    if (!opened) setState('error', 'Could not connect', reason);
    else setState('disconnected', 'Disconnected', reason);
  });
  rfb.addEventListener('securityfailure', (e) => {
    setState('error', 'Authentication failed', e.detail.reason || '');
  });
}

reconnectBtn.addEventListener('click', async () => {
  // Within the service's reconnect grace the same token reattaches to the
  // running desktop; once it has ended, a named service is reserved anew.
  if (service) {
    const why = await explain();
    if (why) {
      token = '';
      try { await reserve(); } catch (e) { setState('error', 'Could not reserve', e.message); return; }
    }
  }
  connect();
});

$('#fullscreen').addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
});

$('#clipboard-toggle').addEventListener('click', () => $('#clipboard-panel').classList.toggle('open'));
$('#clipboard').addEventListener('input', () => {
  if (viewer.rfb) viewer.rfb.clipboardPasteFrom($('#clipboard').value);
});

// presence polls who watches this desktop and shows it in the header.
async function presence() {
  const hdr = share ? { 'X-Wsgw-Share': share } : { 'X-Wsgw-Token': token };
  try {
    const r = await api('/v1/viewers', { headers: hdr });
    viewer.viewers = r.viewers;
    const el = $('#presence');
    const who = r.viewers.map((v) => `${v.name || 'anonymous'} (${v.mode})`).join(', ');
    el.textContent = r.viewers.length > 1 ? `${r.viewers.length} watching: ${who}` : '';
    el.title = r.viewers.map((v) => `${v.name} (${v.mode})`).join('\n');
    el.dataset.names = r.viewers.map((v) => v.name).join(',');
  } catch (e) { /* presence is a courtesy: errors leave it as it was */ }
}

async function main() {
  if (share) {
    viewer.shareMode = params.get('mode') || 'view';
    $('#title').textContent = 'Shared desktop';
    connect();
    presence();
    setInterval(presence, 3000);
    return;
  }
  if (!token && !service) {
    setState('error', 'Nothing to open', 'this page needs #token=<token> or #service=<name> in its address');
    return;
  }
  if (!token) {
    try { await reserve(); } catch (e) { setState('error', 'Could not reserve', e.message); return; }
  }
  connect();
  presence();
  setInterval(presence, 3000);
}

main();
