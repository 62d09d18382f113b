// Bundles the pages into dist/ with content-hashed names and writes dist/manifest.json, which
// web/build.rs reads to embed every file in the binary. Fails when a page's own script (its
// entry and the chunks it imports statically) is over the 100 KB budget; hls.js is a chunk of
// its own that only the player imports, lazily.
import * as esbuild from "esbuild";
import { rmSync, writeFileSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import path from "node:path";

const BUDGET = 100 * 1024;
const here = path.dirname(new URL(import.meta.url).pathname);
const out = path.join(here, "dist");
rmSync(out, { recursive: true, force: true });

const pages = ["embed", "studio", "admin"];
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: Object.fromEntries([
    ...pages.map((p) => [p, `src/${p}.js`]),
    ["style", "src/style.css"],
  ]),
  bundle: true,
  splitting: true,
  format: "esm",
  minify: true,
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  entryNames: "[name]-[hash]",
  chunkNames: "chunk-[hash]",
  outdir: out,
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});

const outputs = result.metafile.outputs;
const name = (p) => path.basename(p);
const files = Object.keys(outputs).map(name);
// Every chunk a file pulls in with a static import, transitively.
const staticClosure = (file, seen = new Set()) => {
  if (seen.has(file)) return seen;
  seen.add(file);
  for (const imp of outputs[file].imports) {
    if (imp.kind === "import-statement") staticClosure(imp.path, seen);
  }
  return seen;
};
const entryOf = (src) =>
  Object.keys(outputs).find((o) => outputs[o].entryPoint === src);
const manifest = { style: name(entryOf("src/style.css")), pages: {}, files, sizes: {} };
let over = [];
for (const p of pages) {
  const entry = entryOf(`src/${p}.js`);
  const closure = [...staticClosure(entry)];
  const bytes = closure.reduce((n, f) => n + outputs[f].bytes, 0);
  const gz = closure.reduce((n, f) => n + gzipSync(readFileSync(path.join(here, f))).length, 0);
  const lazy = outputs[entry].imports
    .filter((i) => i.kind === "dynamic-import")
    .map((i) => ({ file: name(i.path), bytes: outputs[i.path].bytes }));
  manifest.pages[p] = {
    script: name(entry),
    preload: closure.filter((f) => f !== entry).map(name),
    lazy: lazy.map((l) => l.file),
  };
  manifest.sizes[p] = { own_bytes: bytes, own_gzip_bytes: gz, lazy };
  console.log(
    `${p.padEnd(7)} own script ${(bytes / 1024).toFixed(1)} KB minified, ${(gz / 1024).toFixed(1)} KB gzip` +
      lazy.map((l) => `; lazy ${l.file} ${(l.bytes / 1024).toFixed(1)} KB`).join(""),
  );
  if (bytes > BUDGET) over.push(`${p}: ${bytes} bytes`);
}
writeFileSync(path.join(out, "manifest.json"), JSON.stringify(manifest, null, 2));
if (over.length) {
  console.error(`over the ${BUDGET}-byte budget per page: ${over.join(", ")}`);
  process.exit(1);
}
