// tus-js-client against Lectern: upload part of a file, abort, then resume with a new client
// instance from the upload URL. Prints the upload URL when done.
// Usage: node tusjs.mjs ENDPOINT TOKEN FILE
import { readFileSync } from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, token, file] = process.argv.slice(2);
const data = readFileSync(file);
const common = {
  headers: { Authorization: `Bearer ${token}` },
  chunkSize: 3 * 1024 * 1024 + 11,
  metadata: { filename: 'lecture.mp4', filetype: 'video/mp4', title: 'tus-js-client' },
  retryDelays: [0, 500, 1000],
};

const firstUrl = await new Promise((resolve, reject) => {
  const up = new tus.Upload(data, {
    ...common,
    endpoint,
    onProgress(sent, total) {
      if (sent / total >= 0.4 && up.url) {
        up.abort().then(() => resolve(up.url), reject);
      }
    },
    onError: reject,
    onSuccess: () => reject(new Error('finished before the abort')),
  });
  up.start();
});

const url = await new Promise((resolve, reject) => {
  const up = new tus.Upload(data, {
    ...common,
    uploadUrl: firstUrl,
    onError: reject,
    onSuccess: () => resolve(up.url),
  });
  up.start();
});
console.log(url);
