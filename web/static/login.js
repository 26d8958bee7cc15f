// The login page: posts the user name and password as JSON; the gateway
// answers with an HttpOnly session cookie and the dashboard takes over.
const form = document.querySelector('#login');
const msg = document.querySelector('#message');

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  msg.textContent = 'Checking…';
  msg.className = '';
  try {
    const resp = await fetch('/v1/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: form.user.value, password: form.password.value }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || 'HTTP ' + resp.status);
    const next = new URLSearchParams(location.search).get('next');
    location.href = next && next.startsWith('/wsgw/') ? next : '/wsgw/';
  } catch (err) {
    msg.textContent = err.message;
    msg.className = 'error';
  }
});
