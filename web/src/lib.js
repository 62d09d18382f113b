// What every page shares: the token from the URL fragment, API calls with {code, message}
// errors, safe DOM building, and the wording instructors and admins see for error codes.

/** Reads `#token=…` (and other fragment keys) once, keeps the token for this tab, and removes
 * the fragment from the address bar so it is neither bookmarked nor shown over a shoulder. */
export function fragment(page) {
  const params = new URLSearchParams(location.hash.slice(1));
  // Per page and path: two players of one origin in one tab share sessionStorage.
  const key = `lectern:${page}:${location.pathname}:token`;
  const token = params.get("token");
  if (token) sessionStorage.setItem(key, token);
  if (location.hash) history.replaceState(null, "", location.pathname);
  return { params, token: token || sessionStorage.getItem(key) };
}

/** An error answered by Lectern's API (or the network), with its stable code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API with the bearer token; resolves to the JSON body, or throws `ApiError`. */
export async function api(token, method, path, body, headers = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let payload = body;
  if (body !== undefined && typeof body !== "string") {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers: h, body: payload });
  } catch (e) {
    throw new ApiError(0, "network", "Lectern could not be reached. Check your connection; this page retries by itself.");
  }
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!r.ok) {
    throw new ApiError(r.status, json?.code || `http-${r.status}`, json?.message || r.statusText);
  }
  return json;
}

const WORDS = {
  network: "Lectern could not be reached.",
  unauthorized: "Your sign-in link has expired or is not valid. Open the page again from your LMS or ask for a new link.",
  forbidden: "Your account may not do this.",
  "not-found": "This lecture no longer exists.",
  "not-ready": "This lecture is not ready to play yet.",
  "over-capacity": "Lectern is busy right now; the upload retries by itself.",
  "storage-full": "Your organisation's storage is full. Delete old lectures or ask your admin for more space.",
  "storage-quota-exceeded": "Your organisation's storage quota is used up. Delete old lectures or ask your admin for more.",
  "queue-quota-exceeded": "Your organisation already has many lectures waiting. Upload this one when some have finished.",
  "too-large": "This file is over the 2 GiB limit. Export a smaller file (for example at 1080p) and upload that.",
  "upload-too-large": "This file is over the 2 GiB limit. Export a smaller file (for example at 1080p) and upload that.",
  "rate-limited": "Too many requests at once; Lectern slows down and retries.",
  "invalid-language": "The language must be a code such as en, fr or pt-BR.",
  "invalid-label": "The caption label must be short plain text.",
  "unsupported-input": "This file is not a video Lectern can read. Export it again as MP4 (H.264) and upload that.",
  "corrupt-input": "This file is damaged or was cut short. Upload the original again.",
  "no-video-stream": "This file has sound but no picture. Upload the video recording instead.",
  "encoder-crashed": "Encoding this file crashed twice. An admin can retry it; if it fails again, re-export the video.",
  "transcode-failed": "Encoding failed after several tries. An admin can retry it.",
  "invalid-webvtt": "The captions file is not valid WebVTT. It must start with the line WEBVTT.",
  "invalid-title": "A title must be 1 to 300 characters, without control characters.",
  "not-cancelable": "Only waiting or encoding jobs can be canceled.",
  "not-retryable": "Only failed or canceled jobs can be retried.",
  "not-queued": "Only a waiting job's priority can change.",
  "invalid-priority": "Priority must be a whole number from 0 to 100.",
};

/** An error in words a person understands, with the API's own code and message after them. */
export function explain(err) {
  const code = err?.code || "error";
  const words = WORDS[code];
  const detail = err?.message ? `${err.message}` : "";
  return words ? `${words} (${code}: ${detail})` : `${detail || "Something went wrong."} (${code})`;
}

/** Builds an element; strings become text nodes, so user text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** `m:ss` or `h:mm:ss`. */
export function clock(s) {
  if (!Number.isFinite(s) || s < 0) return "0:00";
  s = Math.floor(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** A duration in words for ETAs: "about 2 min". */
export function eta(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 60) return `about ${Math.max(1, Math.round(s))} s`;
  if (s < 3600) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} h`;
}

/** Shows a page-level message in the `role=alert` region. */
export function notice(text, kind = "error") {
  const box = document.getElementById("notice");
  if (!box) return;
  box.replaceChildren(text ? el("p", { class: kind }, text) : "");
}

/** The page's sign-in state: without a token, says how to get one and stops. */
export function requireToken(token, role) {
  if (token) return true;
  notice(
    `This page needs a ${role} token in its address: …#token=JWT. Create one with \`lectern token --role ${role} --user you --org your-org\`.`,
  );
  return false;
}
