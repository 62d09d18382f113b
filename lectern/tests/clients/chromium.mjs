// Debian's Chromium, headless, as every browser test here launches it: no sandbox (root in
// CI), no background traffic, and autoplay without a gesture. Playwright gives every launch a
// fresh, empty profile.
import { chromium } from 'playwright-core';

/** Launches Chromium (`$CHROMIUM` or /usr/bin/chromium). */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required'],
  });
}
