// Drives Lectern's own web pages (/studio, /embed/{id}, /admin) in Debian's Chromium through
// playwright-core, the way their users do, and prints one JSON line of what happened: the
// upload's progress and state, the player's quality/captions/speed/heartbeats/resume and its
// postMessage events, the admin's cancel and retry, axe-core's serious and critical violations
// on each page, CSP violations, Largest Contentful Paint, and screenshots saved to `shots`.
// Usage: node pages.mjs '{"scenario": "studio|player|admin", "base": …, …}'
import { launchChromium } from './chromium.mjs';
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import http from 'node:http';

const args = JSON.parse(process.argv[2]);
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
mkdirSync(args.shots, { recursive: true });

const browser = await launchChromium();
const out = { scenario: args.scenario, axe: {}, lcp_ms: {}, csp: [], console_errors: [], shots: [] };

async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
  page.on('pageerror', (e) => out.console_errors.push(`pageerror: ${e.message}`));
  page.on('dialog', (d) => d.accept());
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
    window.__lcp = 0;
    new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__lcp = e.startTime; })
      .observe({ type: 'largest-contentful-paint', buffered: true });
  });
  await page.goto(url);
  return page;
}

// axe-core is evaluated through the DevTools protocol, which the page's CSP does not govern.
async function axe(page, name) {
  await page.evaluate(axeSource);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  out.axe[name] = r.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.impact} ${v.id}: ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`);
}

async function finish(page, name) {
  // LCP settles at the first input or when the page is hidden; read what it reached.
  out.lcp_ms[name] = Math.round(await page.evaluate(() => new Promise((done) => {
    new PerformanceObserver((l) => done(l.getEntries().pop().startTime))
      .observe({ type: 'largest-contentful-paint', buffered: true });
    setTimeout(() => done(window.__lcp), 1000);
  })));
  out.csp.push(...(await page.evaluate(() => window.__csp)).map((v) => `${name}: ${v}`));
  await axe(page, name);
}

async function shot(page, name) {
  const path = `${args.shots}/${name}.png`;
  await page.screenshot({ path });
  out.shots.push(path);
}

async function until(page, fn, arg, timeoutS = 60) {
  await page.waitForFunction(fn, arg, { timeout: timeoutS * 1000, polling: 200 });
}

try {
  if (args.scenario === 'studio') {
    const page = await open(`${args.base}/studio#token=${args.token}`);
    out.url_after_load = page.url();
    await until(page, () => document.querySelectorAll('#lectures tr').length > 0);
    await finish(page, 'studio');
    out.hostile_title_text = await page.evaluate((id) =>
      document.querySelector(`tr[data-video="${id}"] td.title`)?.textContent, args.hostile);
    let max = 0;
    const watch = setInterval(async () => {
      const t = await page.evaluate(() => document.querySelector('li.upload .pct')?.textContent).catch(() => null);
      const n = parseInt(t || '0', 10);
      if (n > max) max = n;
    }, 100);
    await page.setInputFiles('#files', args.file);
    await until(page, () => document.querySelector('li.upload')?.dataset.video, null, 60);
    out.upload_pct_at_done = await page.evaluate(() => document.querySelector('li.upload .pct').textContent);
    out.video_id = await page.evaluate(() => document.querySelector('li.upload').dataset.video);
    await until(page, () => ['ready', 'failed', 'canceled'].includes(document.querySelector('li.upload')?.dataset.state), null, 180);
    clearInterval(watch);
    out.max_upload_pct = max;
    out.state = await page.evaluate(() => document.querySelector('li.upload').dataset.state);
    out.state_text = await page.evaluate(() => document.querySelector('li.upload .state').textContent);
    // Captions through the lecture list's file input.
    await until(page, (id) => document.querySelector(`#vtt-${id}`), out.video_id, 20);
    await page.setInputFiles(`#vtt-${out.video_id}`, args.captions);
    await until(page, (id) => /added/.test(document.querySelector(`tr[data-video="${id}"] .row-msg`)?.textContent), out.video_id, 20);
    out.captions_message = await page.evaluate((id) => document.querySelector(`tr[data-video="${id}"] .row-msg`).textContent, out.video_id);
    await until(page, () => document.querySelector('li.upload iframe.preview'), null, 30);
    await page.waitForTimeout(1500);
    await shot(page, 'studio');
    out.pwned = await page.evaluate(() => window.pwned === 1);
  } else if (args.scenario === 'player') {
    const beats = [];
    const embed = `${args.base}/embed/${args.video}#token=${args.token}&lesson=${args.lesson}`;
    const page = await open(embed);
    page.on('response', (r) => {
      if (r.url().endsWith('/progress') && r.request().method() === 'POST') beats.push(r.status());
    });
    out.url_after_load = page.url();
    await until(page, () => document.querySelector('#player')?.dataset.ready === '1', null, 30);
    out.qualities = await page.$$eval('#quality option', (os) => os.map((o) => o.textContent));
    await page.click('#play');
    await until(page, () => document.querySelector('video').currentTime > 1);
    // Quality: pick each rung by name and see hls.js switch to it.
    out.switched = [];
    for (const label of out.qualities.filter((q) => q !== 'Auto')) {
      await page.selectOption('#quality', { label });
      await until(page, (l) => document.querySelector('#player').dataset.level === l, label, 20);
      out.switched.push(label);
    }
    await page.selectOption('#quality', { label: 'Auto' });
    out.caption_options = await page.$$eval('#captions option', (os) => os.map((o) => o.textContent));
    await page.selectOption('#captions', { index: 1 });
    await until(page, () => [...document.querySelector('video').textTracks]
      .some((t) => t.mode === 'showing' && t.cues && t.cues.length > 0), null, 20);
    out.captions_showing = true;
    await page.selectOption('#speed', '1.5');
    out.rate = await page.evaluate(() => document.querySelector('video').playbackRate);
    await page.selectOption('#speed', '1');
    await until(page, () => document.querySelector('video').currentTime > 4, null, 30);
    await shot(page, 'embed');
    // Keyboard: Space pauses (and the pause sends a heartbeat), c turns captions off.
    await page.focus('#player');
    await page.keyboard.press(' ');
    await until(page, () => document.querySelector('video').paused, null, 5);
    out.paused_by_space = true;
    await page.keyboard.press('c');
    out.captions_after_c = await page.evaluate(() => document.querySelector('#captions').value);
    out.paused_at = await page.evaluate(() => document.querySelector('video').currentTime);
    await page.waitForTimeout(1500);
    out.heartbeats = [...beats];
    await finish(page, 'embed');
    // Reload: the token stayed in this tab's session, and playback resumes where it paused.
    await page.reload();
    await until(page, () => document.querySelector('#player')?.dataset.ready === '1', null, 30);
    await until(page, () => document.querySelector('video').readyState >= 1, null, 30);
    await page.waitForTimeout(1000);
    out.resumed_at = await page.evaluate(() => document.querySelector('video').currentTime);
    await page.close();

    // An LMS page of another origin (a second loopback port) that embeds the player and
    // drives it with postMessage.
    const lmsHtml = `<!doctype html><html lang="en"><title>LMS</title><iframe id="f" width="640" height="360" allow="autoplay; fullscreen" src="${embed}"></iframe>
<script>window.events=[];addEventListener('message',e=>{if(e.data&&e.data.source==='lectern')events.push(e.data)});
window.send=c=>document.getElementById('f').contentWindow.postMessage(c,'*');</script></html>`;
    const lms = http.createServer((_, res) => res.writeHead(200, { 'Content-Type': 'text/html' }).end(lmsHtml));
    await new Promise((ok) => lms.listen(0, '127.0.0.1', ok));
    const host = await browser.newPage();
    await host.goto(`http://127.0.0.1:${lms.address().port}/course`);
    await until(host, () => events.some((e) => e.event === 'ready'), null, 30);
    await host.evaluate(() => send({ command: 'seek', time: 2 }));
    await host.evaluate(() => send({ command: 'play' }));
    await until(host, () => events.some((e) => e.event === 'timeupdate' && e.currentTime > 2.5), null, 20);
    await host.evaluate(() => send({ command: 'seek', time: events.filter((e) => e.duration > 0).pop().duration - 1 }));
    await until(host, () => events.some((e) => e.event === 'ended'), null, 20);
    await host.evaluate(() => send({ command: 'pause' }));
    out.host_events = await host.evaluate(() => [...new Set(events.map((e) => e.event))]);
    lms.close();
  } else if (args.scenario === 'message') {
    // What the player says when it cannot play.
    const page = await open(args.url);
    await until(page, () => document.querySelector('#player')?.dataset.message === '1', null, 20);
    out.message = await page.evaluate(() => document.querySelector('#message').textContent);
    await finish(page, 'embed-message');
  } else if (args.scenario === 'admin') {
    const page = await open(`${args.base}/admin#token=${args.token}`);
    await until(page, (id) => document.querySelector(`tr[data-job="${id}"]`), args.video, 30);
    out.row_state = await page.evaluate((id) => document.querySelector(`tr[data-job="${id}"]`).dataset.state, args.video);
    await shot(page, 'admin');
    await finish(page, 'admin');
    await page.click(`tr[data-job="${args.video}"] button:has-text("Cancel")`);
    await until(page, (id) => document.querySelector(`tr[data-job="${id}"]`)?.dataset.state === 'canceled', args.video, 20);
    out.after_cancel = 'canceled';
    await page.click(`tr[data-job="${args.video}"] button:has-text("Retry")`);
    await until(page, (id) => document.querySelector(`tr[data-job="${id}"]`)?.dataset.state === 'queued', args.video, 20);
    out.after_retry = 'queued';
    out.failures_text = await page.evaluate(() => document.querySelector('#failures').textContent);
    out.workers_text = await page.evaluate(() => document.querySelector('#workers').textContent);
  }
} catch (e) {
  out.error = String(e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
