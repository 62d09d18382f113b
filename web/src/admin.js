// The admin dashboard at /admin: the job queue by state (live), cancel, retry and priority,
// the worker fleet (operators), and failures grouped by code.
import { api, clock, el, eta, explain, fragment, notice, requireToken } from "./lib.js";

const { token } = fragment("admin");
const POLL_MS = 2000;
const STATES = ["queued", "processing", "failed", "canceled", "ready"];

const filter = el(
  "select",
  { id: "state-filter", "aria-label": "Show jobs in state" },
  el("option", { value: "" }, "All states"),
  STATES.map((s) => el("option", { value: s }, s)),
);
const counts = el("ul", { id: "counts", class: "counts", "aria-label": "Jobs by state" });
const jobs = el("tbody", { id: "jobs" });
const workers = el("div", { id: "workers" });
const failures = el("ul", { id: "failures", class: "failures" });
const updated = el("p", { id: "updated", class: "muted", "aria-live": "off" });
document.getElementById("app").replaceChildren(
  el("h1", {}, "Lectern admin"),
  el("div", { id: "notice", role: "alert" }),
  el(
    "section",
    { "aria-labelledby": "q-h" },
    el("h2", { id: "q-h" }, "Transcode queue"),
    counts,
    el("label", { class: "inline" }, "Filter ", filter),
    el(
      "table",
      { class: "jobs" },
      el("caption", { class: "visually-hidden" }, "Jobs"),
      el(
        "thead",
        {},
        el("tr", {}, ["Video", "Org", "State", "Progress", "ETA", "Priority", "Attempts", "Worker", "Error", "Actions"].map((h) => el("th", { scope: "col" }, h))),
      ),
      jobs,
    ),
    updated,
  ),
  el("section", { "aria-labelledby": "w-h" }, el("h2", { id: "w-h" }, "Workers"), workers),
  el("section", { "aria-labelledby": "f-h" }, el("h2", { id: "f-h" }, "Failures by code"), failures),
);

filter.addEventListener("change", refresh);
if (requireToken(token, "admin")) {
  refresh();
  setInterval(refresh, POLL_MS);
}

let busy = false;
let fleetForbidden = null;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const q = filter.value ? `&state=${filter.value}` : "";
    const [page, failed, fleet] = await Promise.all([
      api(token, "GET", `/api/v1/admin/jobs?limit=100${q}`),
      api(token, "GET", "/api/v1/admin/jobs?limit=100&state=failed"),
      // Only operators see the fleet; an admin is told once instead of asking every 2 s.
      fleetForbidden ? fleetForbidden : api(token, "GET", "/api/v1/admin/workers").catch((err) => err),
    ]);
    if (fleet instanceof Error && fleet.status === 403) fleetForbidden = fleet;
    notice("");
    renderCounts(page.jobs, !filter.value);
    // Rebuilding a row under the pointer would eat a click or a priority being typed.
    if (!editing(jobs)) jobs.replaceChildren(...page.jobs.map(jobRow));
    if (!page.jobs.length) jobs.replaceChildren(el("tr", {}, el("td", { colspan: 10 }, "No jobs.")));
    renderFailures(failed.jobs);
    renderWorkers(fleet);
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    notice(explain(err));
  } finally {
    busy = false;
  }
}

/** Whether the admin is typing in a field of `root` (a priority), which a refresh would reset. */
function editing(root) {
  const a = document.activeElement;
  return a && a.tagName === "INPUT" && root.contains(a);
}

function renderCounts(list, all) {
  const n = {};
  for (const j of list) n[j.state] = (n[j.state] || 0) + 1;
  counts.replaceChildren(
    ...STATES.filter((s) => n[s] || all).map((s) => el("li", { "data-state": s }, el("strong", {}, String(n[s] || 0)), ` ${s}`)),
  );
}

function jobRow(j) {
  const msg = el("div", { class: "row-msg", role: "status" });
  const act = (label, fn) =>
    el("button", { type: "button", onclick: () => fn().then(refresh).catch((err) => (msg.textContent = explain(err))) }, label);
  const base = `/api/v1/admin/jobs/${encodeURIComponent(j.id)}`;
  const actions = [];
  if (j.state === "queued" || j.state === "processing")
    actions.push(
      act("Cancel", async () => {
        if (confirm(`Cancel the job of ${j.video_id}?`)) await api(token, "POST", `${base}/cancel`);
      }),
    );
  if (j.state === "failed" || j.state === "canceled") actions.push(act("Retry", () => api(token, "POST", `${base}/retry`)));
  let prio = String(j.priority);
  if (j.state === "queued") {
    const input = el("input", { type: "number", min: 0, max: 100, value: j.priority, size: 3, "aria-label": `Priority of ${j.video_id}` });
    prio = el("span", {}, input, act("Set", () => api(token, "PATCH", base, { priority: Number(input.value) })));
  }
  const pct = Math.round((j.progress || 0) * 100);
  const chunks = j.chunks ? ` · ${j.chunks.done}/${j.chunks.total} chunks` : "";
  return el(
    "tr",
    { "data-job": j.id, "data-state": j.state },
    el("td", { class: "mono" }, j.video_id),
    el("td", {}, j.org),
    el("td", {}, j.state, j.queue_position ? ` (#${j.queue_position})` : ""),
    el("td", {}, el("progress", { max: 100, value: pct, "aria-label": `Progress of ${j.video_id}: ${pct} %` }), ` ${pct} %${chunks}`),
    el("td", {}, eta(j.eta_s)),
    el("td", {}, prio),
    el("td", {}, String(j.attempts ?? "")),
    el("td", {}, j.worker || "", j.fps ? ` (${j.fps.toFixed(0)} fps)` : ""),
    el("td", {}, j.error ? el("abbr", { title: j.error.message }, j.error.code) : ""),
    el("td", { class: "actions" }, actions, msg),
  );
}

function renderFailures(list) {
  const by = new Map();
  for (const j of list) {
    const code = j.error?.code || "unknown";
    if (!by.has(code)) by.set(code, []);
    by.get(code).push(j);
  }
  failures.replaceChildren(
    ...[...by.entries()]
      .sort((a, b) => b[1].length - a[1].length)
      .map(([code, js]) => el("li", { "data-code": code }, el("strong", {}, code), ` × ${js.length}: `, js[0].error?.message || "")),
  );
  if (!by.size) failures.append(el("li", {}, "No failed jobs."));
}

function renderWorkers(fleet) {
  if (fleet instanceof Error) {
    workers.replaceChildren(el("p", { class: "muted" }, fleet.status === 403 ? "The worker fleet is shown to operators (a token with --role operator)." : explain(fleet)));
    return;
  }
  const rows = fleet.workers.map((w) =>
    el(
      "tr",
      { "data-worker": w.name },
      el("td", { class: "mono" }, w.name),
      el("td", {}, w.alive ? "alive" : "silent"),
      el("td", {}, `${w.busy} / ${w.slots}`),
      el("td", {}, w.running.map((r) => `${r.video_id} ${Math.round((r.progress || 0) * 100)} %${r.fps ? ` at ${r.fps.toFixed(0)} fps` : ""}`).join(", ") || "idle"),
      el("td", {}, clock((Date.now() - Date.parse(w.started_at)) / 1000)),
    ),
  );
  workers.replaceChildren(
    el(
      "table",
      { class: "workers" },
      el("caption", { class: "visually-hidden" }, "Workers"),
      el("thead", {}, el("tr", {}, ["Worker", "Health", "Busy slots", "Running (speed)", "Up for"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5 }, "No worker has reported in."))),
    ),
  );
}
