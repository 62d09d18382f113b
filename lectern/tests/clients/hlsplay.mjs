// Opens hls_page.html in headless Chromium (Debian's, driven by playwright-core) to play a
// signed master URL with hls.js; prints what the page saw as JSON once playback passed
// `minPlayed` seconds (and, when `wantCues`, a caption cue arrived), a fatal error occurred,
// or `timeoutS` ran out. Playwright gives every launch a fresh, empty profile. Usage: node hlsplay.mjs PAGE_URL [minPlayed=2.5] [wantCues=0] [timeoutS=40]
import { launchChromium } from './chromium.mjs';

const [pageUrl, minPlayed = '2.5', wantCues = '0', timeoutS = '40'] = process.argv.slice(2);
const browser = await launchChromium();
let r = { errors: ['FATAL page did not load'] };
try {
  const page = await browser.newPage();
  page.on('console', m => { if (m.type() === 'error') console.error(`page: ${m.text()}`); });
  await page.goto(pageUrl);
  const deadline = Date.now() + Number(timeoutS) * 1000;
  while (Date.now() < deadline) {
    await page.waitForTimeout(250);
    r = await page.evaluate(() => window.result);
    const done = r.played >= Number(minPlayed) && (wantCues === '0' || r.cues > 0);
    if (done || r.errors.some(e => e.startsWith('FATAL'))) break;
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(r));
