// Shared helpers for the gateway's pages: REST calls with the optional
// security token (kept in sessionStorage, never in a URL).

export function authHeaders() {
  const t = sessionStorage.getItem('wsgw-security-token');
  return t ? { Authorization: 'Bearer ' + t } : {};
}

export function setSecurityToken(t) {
  if (t) sessionStorage.setItem('wsgw-security-token', t);
  else sessionStorage.removeItem('wsgw-security-token');
}

// api calls a REST endpoint and returns its JSON, or throws an Error whose
// message is the gateway's reason and whose status is the HTTP status.
export async function api(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...opts, headers: { ...authHeaders(), ...(opts.headers || {}) }, cache: 'no-store' });
  } catch (e) {
    const err = new Error('the gateway cannot be reached (' + e.message + ')');
    err.status = 0;
    throw err;
  }
  let body = {};
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const err = new Error(body.error || ('HTTP ' + resp.status));
    err.status = resp.status;
    throw err;
  }
  return body;
}

export function humanBytes(n) {
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}

export function humanAge(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}
