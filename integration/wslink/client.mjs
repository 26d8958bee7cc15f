// Drives the wslink test page in headless Chromium and prints what the page
// reports as one JSON line: node client.mjs URL [timeout_ms]
// CHROMIUM names the browser (default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 30000);
if (!url) {
  console.error('usage: node client.mjs URL [timeout_ms]');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  timeout,
});
const logs = [];
const posts = [];
let result;
try {
  const page = await browser.newPage();
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    if (r.method() === 'POST') posts.push({ url: r.url(), contentType: r.headers()['content-type'] || null, body: r.postData() });
  });
  await page.goto(url, { timeout });
  await page.waitForFunction(() => window.result !== null, null, { timeout });
  result = await page.evaluate(() => window.result);
} catch (e) {
  result = { ok: false, stage: 'driver', error: String(e) };
} finally {
  await browser.close();
}
result.logs = logs;
result.posts = posts;
process.stdout.write(JSON.stringify(result) + '\n');
