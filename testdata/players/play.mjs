import { chromium } from 'playwright-core';
const [pageUrl] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--autoplay-policy=no-user-gesture-required', '--disable-background-networking', '--disable-component-update', '--no-first-run'] });
const page = await browser.newPage();
await page.goto(pageUrl);
let r;
for (let i = 0; i < 40; i++) {
  await page.waitForTimeout(250);
  r = await page.evaluate(() => window.result);
  if (r.played > 2 || r.errors.some(e => e.startsWith('FATAL'))) break;
}
console.log(JSON.stringify(r));
await browser.close();
process.exit(r.played > 2 && !r.errors.some(e => e.startsWith('FATAL')) ? 0 : 1);
