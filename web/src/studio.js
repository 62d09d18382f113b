// The instructor's studio at /studio: drop lectures in, watch each upload and transcode, then
// manage the lecture list (rename, captions, embed snippet, delete).
import * as tus from "tus-js-client";
import { api, el, eta, explain, fragment, notice, requireToken } from "./lib.js";

const { token } = fragment("studio");
const POLL_MS = 2000;

const fileInput = el("input", { id: "files", type: "file", accept: "video/*", multiple: true, class: "visually-hidden" });
const drop = el(
  "label",
  { id: "drop", class: "drop", for: "files" },
  el("strong", {}, "Drop lecture recordings here"),
  el("span", {}, " or choose files (up to 2 GiB each). Uploads resume if the connection drops."),
);
const uploads = el("ul", { id: "uploads", class: "uploads", "aria-label": "Uploads" });
const resumable = el("div", { id: "resumable" });
const list = el("tbody", { id: "lectures" });
const table = el(
  "table",
  { class: "lectures" },
  el("caption", {}, "Your lectures"),
  el("thead", {}, el("tr", {}, ["Title", "State", "Length", "Actions"].map((h) => el("th", { scope: "col" }, h)))),
  list,
);
document.getElementById("app").replaceChildren(
  el("h1", {}, "Lectern studio"),
  el("div", { id: "notice", role: "alert" }),
  el("section", { "aria-labelledby": "up-h" }, el("h2", { id: "up-h" }, "Upload"), fileInput, drop, resumable, uploads),
  el("section", { "aria-labelledby": "list-h" }, el("h2", { id: "list-h" }, "Lectures"), table),
  el("dialog", { id: "preview", "aria-label": "Preview" }),
);

if (requireToken(token, "instructor")) {
  showResumable();
  refreshList();
  setInterval(refreshList, 5000);
}

// ---- uploading ----
fileInput.addEventListener("change", () => {
  [...fileInput.files].forEach(upload);
  fileInput.value = "";
});
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  [...e.dataTransfer.files].forEach(upload);
});

async function showResumable() {
  // Uploads cut short by a reload: tus keeps their URLs, the browser cannot keep the file.
  const prev = await tus.defaultOptions.urlStorage.findAllUploads().catch(() => []);
  if (!prev.length) return resumable.replaceChildren();
  resumable.replaceChildren(
    el(
      "p",
      { class: "info" },
      `${prev.length} unfinished upload${prev.length > 1 ? "s" : ""} (${prev.map((p) => p.metadata?.filename).join(", ")}): choose the same file again and it continues where it stopped.`,
    ),
  );
}

function upload(file) {
  const bar = el("progress", { max: 100, value: 0, "aria-label": `Upload of ${file.name}` });
  const pct = el("span", { class: "pct" }, "0 %");
  const encBar = el("progress", { class: "encode", max: 100, value: 0, hidden: true, "aria-label": `Encoding of ${file.name}` });
  const encPct = el("span", { class: "encode-pct", hidden: true }, "");
  const stateText = el("span", { class: "state", "aria-live": "polite" }, "Starting upload…");
  const pause = el("button", { type: "button" }, "Pause");
  const retry = el("button", { type: "button", hidden: true }, "Retry");
  const extra = el("div", { class: "extra" });
  const row = el("li", { class: "upload" }, el("span", { class: "name" }, file.name), bar, pct, encBar, encPct, stateText, pause, retry, extra);
  uploads.prepend(row);

  const up = new tus.Upload(file, {
    endpoint: "/files/",
    headers: { Authorization: `Bearer ${token}` },
    metadata: { filename: file.name, filetype: file.type || "application/octet-stream", title: file.name.replace(/\.[^.]+$/, "") },
    chunkSize: 16 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      const p = total ? Math.floor((sent / total) * 100) : 0;
      bar.value = p;
      pct.textContent = `${p} %`;
      stateText.textContent = "Uploading";
    },
    onError(err) {
      const res = err.originalResponse;
      let body = null;
      try {
        body = res ? JSON.parse(res.getBody()) : null;
      } catch (_) {
        body = null;
      }
      stateText.textContent = body ? explain({ code: body.code, message: body.message }) : `Upload stopped: ${err.message}`;
      row.dataset.state = "error";
      retry.hidden = false;
      pause.hidden = true;
    },
    onSuccess() {
      bar.value = 100;
      pct.textContent = "100 %";
      pause.hidden = true;
      const id = up.url.split("/").filter(Boolean).pop();
      row.dataset.video = id;
      encBar.hidden = false;
      encPct.hidden = false;
      follow(id, row, stateText, encBar, encPct, extra);
      refreshList();
      showResumable();
    },
  });
  let paused = false;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      up.abort();
      stateText.textContent = "Paused";
    } else up.start();
  });
  retry.addEventListener("click", () => {
    retry.hidden = true;
    pause.hidden = false;
    row.dataset.state = "";
    up.start();
  });
  up.findPreviousUploads().then((prev) => {
    if (prev.length) {
      up.resumeFromPreviousUpload(prev[0]);
      stateText.textContent = "Resuming";
    }
    up.start();
  });
}

const WAITING = { uploading: "Finishing upload", queued: "Waiting to encode", processing: "Encoding", ready: "Ready", failed: "Failed", canceled: "Canceled" };

async function follow(id, row, stateText, bar, pct, extra) {
  let st;
  try {
    st = await api(token, "GET", `/api/v1/videos/${encodeURIComponent(id)}`);
  } catch (err) {
    stateText.textContent = explain(err);
    if (err.status === 0 || err.status >= 500) setTimeout(() => follow(id, row, stateText, bar, pct, extra), POLL_MS);
    return;
  }
  row.dataset.state = st.state;
  const p = Math.round((st.progress || 0) * 100);
  bar.value = p;
  bar.setAttribute("aria-label", `${WAITING[st.state] || st.state}: ${p} %`);
  pct.textContent = `${p} % encoded`;
  let words = WAITING[st.state] || st.state;
  if (st.state === "queued" && st.queue_position) words += ` (position ${st.queue_position})`;
  if (st.state === "processing" && st.chunks) words += ` (${st.chunks.done} of ${st.chunks.total} parts)`;
  if (st.eta_s && (st.state === "queued" || st.state === "processing")) words += `, ${eta(st.eta_s)} left`;
  if (st.state === "failed" && st.error) words = `Failed: ${explain(st.error)}`;
  stateText.textContent = words;
  if (st.playable && !row.querySelector("iframe")) {
    extra.replaceChildren(
      st.poster_url ? el("img", { src: st.poster_url, alt: `Poster of ${st.title || id}`, class: "poster" }) : "",
      el("iframe", { src: `/embed/${encodeURIComponent(id)}#token=${encodeURIComponent(token)}`, title: `Preview of ${st.title || id}`, class: "preview", allow: "fullscreen" }),
    );
  } else if (st.poster_url && !row.querySelector("img.poster")) {
    extra.prepend(el("img", { src: st.poster_url, alt: `Poster of ${st.title || id}`, class: "poster" }));
  }
  if (!["ready", "failed", "canceled"].includes(st.state)) setTimeout(() => follow(id, row, stateText, bar, pct, extra), POLL_MS);
  else refreshList();
}

// ---- the lecture list ----
async function refreshList() {
  let page;
  try {
    page = await api(token, "GET", "/api/v1/videos?limit=100");
  } catch (err) {
    notice(explain(err));
    return;
  }
  notice("");
  // A refresh under a caption language being typed would reset it.
  const a = document.activeElement;
  if (a && a.tagName === "INPUT" && list.contains(a)) return;
  list.replaceChildren(...page.videos.map(lectureRow));
  if (!page.videos.length) list.append(el("tr", {}, el("td", { colspan: 4 }, "No lectures yet: upload one above.")));
}

function lectureRow(v) {
  const title = v.title || v.filename || v.id;
  const msg = el("div", { class: "row-msg", role: "status" });
  const act = (label, fn, attrs = {}) =>
    el("button", { type: "button", ...attrs, onclick: () => fn().catch((err) => (msg.textContent = explain(err))) }, label);

  const rename = act("Rename", async () => {
    const next = prompt("New title", title);
    if (next === null) return;
    await api(token, "PATCH", `/api/v1/videos/${encodeURIComponent(v.id)}`, { title: next });
    msg.textContent = "Renamed.";
    refreshList();
  });
  const del = act("Delete", async () => {
    if (!confirm(`Delete “${title}”? Learners lose access at once.`)) return;
    await api(token, "DELETE", `/api/v1/videos/${encodeURIComponent(v.id)}`);
    refreshList();
  });
  const snippet = `<iframe src="${location.origin}/embed/${v.id}" width="960" height="540" allow="fullscreen; autoplay" style="border:0"></iframe>`;
  const copy = act("Copy embed", async () => {
    try {
      await navigator.clipboard.writeText(snippet);
      msg.textContent = "Embed snippet copied. Pass the learner's token as #token=… in the src.";
    } catch (_) {
      msg.replaceChildren(el("textarea", { readonly: true, rows: 2, cols: 60, "aria-label": "Embed snippet" }, snippet));
    }
  });
  const vtt = el("input", { type: "file", accept: ".vtt,text/vtt", class: "visually-hidden", id: `vtt-${v.id}` });
  const lang = el("input", { type: "text", value: "en", size: 5, "aria-label": `Caption language for ${title}`, pattern: "[A-Za-z-]{2,12}" });
  vtt.addEventListener("change", async () => {
    const f = vtt.files[0];
    if (!f) return;
    try {
      const code = lang.value.trim();
      let label = code;
      try {
        label = new Intl.DisplayNames(["en"], { type: "language" }).of(code) || code;
      } catch (_) {
        label = code;
      }
      const q = `?label=${encodeURIComponent(label)}`;
      await api(token, "PUT", `/api/v1/videos/${encodeURIComponent(v.id)}/captions/${encodeURIComponent(code)}${q}`, await f.text(), { "Content-Type": "text/vtt" });
      msg.textContent = `Captions (${lang.value}) added.`;
    } catch (err) {
      msg.textContent = explain(err);
    }
    vtt.value = "";
  });
  const capLabel = el("label", { for: `vtt-${v.id}`, class: "button" }, "Add captions");
  const progress = v.state === "ready" ? "" : ` ${Math.round((v.progress || 0) * 100)} %`;
  return el(
    "tr",
    { "data-video": v.id },
    el("td", { class: "title" }, title),
    el("td", {}, `${WAITING[v.state] || v.state}${progress}`),
    el("td", {}, v.duration_s ? `${Math.round(v.duration_s)} s` : ""),
    el("td", { class: "actions" }, rename, lang, capLabel, vtt, copy, del, msg),
  );
}
