// The playback page: lists the recordings the caller may see
// (GET /v1/recordings) and plays one (#id=<dir>/<name>) with noVNC, fed
// from the recording instead of a websocket. Recordings are in
// websockify's --record format; they are parsed here as data, never run
// as a script. Seeking back replays from the start at full speed.
import RFB from './novnc/core/rfb.js';
import { api, authHeaders, humanBytes } from './api.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.hash.slice(1));
const player = { state: 'loading', position: 0, duration: 0, delivered: 0, frames: [], error: '' };
window.wsgwPlayback = player;

function status(text) { $('#status').textContent = text; }

function clock(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

// parseRecording reads the lines '{ms{data', (server to client) and
// '}ms}data', (client to server) between the header and 'EOF'];: data
// is one character per byte, with \xHH (and the usual JavaScript
// escapes) for the rest. Client frames are skipped.
export function parseRecording(text) {
  const frames = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith("'{") && !line.startsWith("'}")) continue;
    const end = line.endsWith("',") ? line.length - 2 : line.lastIndexOf("'");
    if (end <= 1) continue;
    const body = line.slice(1, end);
    const mark = body[0];
    const at = body.indexOf(mark, 1);
    if (at < 0) continue;
    const t = parseInt(body.slice(1, at), 10);
    const bytes = [];
    for (let i = at + 1; i < body.length; i++) {
      const c = body[i];
      if (c !== '\\') { bytes.push(c.charCodeAt(0) & 0xff); continue; }
      const n = body[i + 1];
      if (n === 'x') { bytes.push(parseInt(body.substr(i + 2, 2), 16)); i += 3; continue; }
      const simple = { n: 10, r: 13, t: 9, '0': 0, b: 8, f: 12, v: 11 };
      bytes.push(n in simple ? simple[n] : n.charCodeAt(0) & 0xff);
      i += 1;
    }
    if (mark === '{') frames.push({ t, data: new Uint8Array(bytes) });
  }
  return frames;
}

// A channel noVNC accepts in place of a websocket: what it sends is
// dropped, what the recording holds is handed to it.
function fakeChannel() {
  return {
    binaryType: 'arraybuffer', protocol: '', readyState: 'open',
    onerror: null, onmessage: null, onopen: null, onclose: null,
    send() {}, close() { this.readyState = 'closed'; },
  };
}

let rfb = null;
let channel = null;
let timer = null;
let startedAt = 0; // performance.now() at position 0 while playing

function restart() {
  if (rfb) { try { rfb.disconnect(); } catch (e) { /* already gone */ } }
  $('#screen').replaceChildren();
  channel = fakeChannel();
  rfb = new RFB($('#screen'), channel);
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  player.delivered = 0;
  player.position = 0;
}

// deliver hands noVNC every frame up to position ms.
function deliver(upTo) {
  const f = player.frames;
  while (player.delivered < f.length && f[player.delivered].t <= upTo) {
    const d = f[player.delivered].data;
    channel.onmessage({ data: d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength) });
    player.delivered++;
  }
  player.position = Math.min(upTo, player.duration);
  $('#seek').value = String(player.position);
  $('#clock').textContent = `${clock(player.position)} / ${clock(player.duration)}`;
}

function tick() {
  deliver(performance.now() - startedAt);
  if (player.delivered >= player.frames.length) {
    pause();
    player.state = 'ended';
    status('Ended');
  }
}

function play() {
  if (player.state === 'ended') { restart(); }
  startedAt = performance.now() - player.position;
  player.state = 'playing';
  status('Playing');
  clearInterval(timer);
  timer = setInterval(tick, 20);
}

function pause() {
  clearInterval(timer);
  timer = null;
  if (player.state === 'playing') { player.state = 'paused'; status('Paused'); }
}

function seek(ms) {
  const wasPlaying = player.state === 'playing';
  pause();
  if (ms < player.position || player.state === 'ended') restart();
  deliver(ms);
  player.state = wasPlaying ? 'playing' : 'paused';
  if (wasPlaying) play(); else status('Paused');
}
player.seek = seek;
player.play = play;
player.pause = pause;

async function load(id) {
  status('Loading…');
  const resp = await fetch('/v1/recordings/' + id, { headers: authHeaders(), cache: 'no-store' });
  if (!resp.ok) {
    let msg = 'HTTP ' + resp.status;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  player.frames = parseRecording(await resp.text());
  player.duration = player.frames.length ? player.frames[player.frames.length - 1].t : 0;
  $('#seek').max = String(player.duration);
  for (const b of ['#play', '#pause', '#seek']) $(b).disabled = false;
  $('#title').textContent = 'Recording ' + id;
  restart();
  deliver(0);
  player.state = 'paused';
  status('Ready');
}

async function list() {
  const r = await api('/v1/recordings');
  const tbody = $('#list tbody');
  tbody.replaceChildren();
  for (const rec of r.recordings) {
    const tr = document.createElement('tr');
    const len = rec.end ? clock(new Date(rec.end) - new Date(rec.start)) : 'recording…';
    for (const v of [new Date(rec.start).toLocaleString(), rec.service, rec.user || '(anonymous)', len, humanBytes(rec.size)]) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.append(td);
    }
    const td = document.createElement('td');
    const a = document.createElement('a');
    a.href = '#id=' + rec.id;
    a.textContent = 'Play';
    a.addEventListener('click', () => setTimeout(() => location.reload(), 0));
    td.append(a);
    tr.append(td);
    tbody.append(tr);
  }
  $('#list').hidden = false;
  status(r.recordings.length ? '' : 'No recordings');
  player.state = 'list';
}

$('#play').addEventListener('click', play);
$('#pause').addEventListener('click', pause);
$('#seek').addEventListener('change', (e) => seek(Number(e.target.value)));

const id = params.get('id');
(id ? load(id) : list()).catch((e) => {
  player.state = 'error';
  player.error = e.message;
  status('Error: ' + e.message);
});
