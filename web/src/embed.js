// The learner's player at /embed/{video_id}, made to sit in an LMS iframe. It plays with hls.js
// (loaded only here, lazily) or the browser's own HLS (Safari), resumes where the learner
// stopped, sends progress heartbeats, and talks to the host page with postMessage.
import { api, clock, el, explain, fragment } from "./lib.js";

const SPEEDS = [0.75, 1, 1.25, 1.5, 1.75, 2];
const HEARTBEAT_MS = 10_000;
const videoId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const { params, token: fragToken } = fragment("embed");

let token = fragToken;
const lessonKey = `lectern:embed:${videoId}:lesson`;
let lesson = params.get("lesson") || sessionStorage.getItem(lessonKey);
if (params.get("lesson")) sessionStorage.setItem(lessonKey, params.get("lesson"));
const srcKey = `lectern:embed:${videoId}:src`;
if (params.get("src")) sessionStorage.setItem(srcKey, params.get("src"));
const signedSrc = params.get("src") || sessionStorage.getItem(srcKey);

// ---- the page ----
const ICONS = {
  play: "M8 5v14l11-7z",
  pause: "M6 5h4v14H6zm8 0h4v14h-4z",
  sound: "M3 9v6h4l5 5V4L7 9H3zm13.5 3A4.5 4.5 0 0 0 14 8v8a4.5 4.5 0 0 0 2.5-4z",
  muted: "M3 9v6h4l5 5V4L7 9H3zm13.6 0L15 10.6l1.4 1.4-1.4 1.4 1.6 1.6 1.4-1.4 1.4 1.4 1.6-1.6-1.4-1.4 1.4-1.4L19.4 9 18 10.4z",
  full: "M4 4h6v2H6v4H4zm10 0h6v6h-2V6h-4zM4 14h2v4h4v2H4zm14 0h2v6h-6v-2h4z",
};
/** An inline SVG icon (no icon font or image to fetch); the button around it carries the label. */
function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "20");
  svg.setAttribute("height", "20");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}
const video = el("video", { id: "video", playsinline: true, preload: "metadata", "aria-label": "Lecture video" });
const message = el("div", { id: "message", role: "alert", class: "message", hidden: true });
const badge = el("div", { id: "badge", class: "badge", hidden: true }, "Still encoding: the lecture grows as it is processed");
const playBtn = el("button", { id: "play", type: "button", "aria-label": "Play" }, icon("play"));
const seek = el("input", { id: "seek", type: "range", min: 0, max: 0, step: 0.1, value: 0, "aria-label": "Seek" });
const time = el("span", { id: "time", class: "time", "aria-live": "off" }, "0:00 / 0:00");
const quality = el("select", { id: "quality", "aria-label": "Quality" }, el("option", { value: "-1" }, "Auto"));
const captions = el("select", { id: "captions", "aria-label": "Captions" }, el("option", { value: "-1" }, "Captions off"));
const speed = el(
  "select",
  { id: "speed", "aria-label": "Playback speed" },
  SPEEDS.map((s) => el("option", { value: s, selected: s === 1 }, `${s}×`)),
);
const muteBtn = el("button", { id: "mute", type: "button", "aria-label": "Mute" }, icon("sound"));
const fullBtn = el("button", { id: "fullscreen", type: "button", "aria-label": "Full screen" }, icon("full"));
const controls = el(
  "div",
  { class: "controls", role: "group", "aria-label": "Player controls" },
  playBtn,
  seek,
  time,
  quality,
  captions,
  speed,
  muteBtn,
  fullBtn,
);
const player = el(
  "div",
  { id: "player", class: "player", tabindex: "0", "aria-label": "Lecture player. Space plays or pauses, arrows seek, f is full screen, c toggles captions." },
  video,
  badge,
  message,
  controls,
);
document.getElementById("app").replaceChildren(player);

let hls = null;
let state = null;
let readySent = false;

function show(text) {
  message.hidden = !text;
  message.textContent = text || "";
  player.dataset.message = text ? "1" : "";
}

// ---- the host page (postMessage) ----
const host = window.parent !== window ? window.parent : null;
function post(event, extra = {}) {
  if (!host) return;
  // Events carry no secret (times and the video id), so any embedding origin may read them.
  host.postMessage({ source: "lectern", event, videoId, currentTime: video.currentTime, duration: length(), ...extra }, "*");
}
window.addEventListener("message", (e) => {
  if (!host || e.source !== host || typeof e.data !== "object" || e.data === null) return;
  const { command } = e.data;
  if (command === "play") video.play().catch(() => {});
  else if (command === "pause") video.pause();
  else if (command === "seek" && Number.isFinite(e.data.time)) video.currentTime = Math.max(0, e.data.time);
  else if (command === "token" && typeof e.data.token === "string" && !token) {
    token = e.data.token;
    if (typeof e.data.lesson === "string") lesson = e.data.lesson;
    start();
  }
});

// ---- watch state ----
const localKey = `lectern:pos:${videoId}`;
let rangeStart = null;
let lastPos = 0;
let pending = [];
let timer = null;

function length() {
  if (Number.isFinite(video.duration)) return video.duration;
  const s = video.seekable;
  return s.length ? s.end(s.length - 1) : 0;
}

function closeRange() {
  if (rangeStart !== null && lastPos > rangeStart) pending.push([round(rangeStart), round(lastPos)]);
  rangeStart = video.paused ? null : lastPos;
}
const round = (x) => Math.round(x * 10) / 10;

function heartbeat(final = false) {
  closeRange();
  localStorage.setItem(localKey, String(video.currentTime));
  if (!token || !lesson) return;
  const body = JSON.stringify({ position_s: round(video.currentTime), watched: pending.splice(0, 1000) });
  const req = fetch(`/api/v1/lessons/${encodeURIComponent(lesson)}/progress`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body,
    // A final beat on pagehide must outlive the page; sendBeacon cannot carry the bearer header.
    keepalive: final,
  });
  req.catch(() => {});
}

function schedule() {
  clearInterval(timer);
  timer = null;
  if (!video.paused && document.visibilityState === "visible") timer = setInterval(() => heartbeat(), HEARTBEAT_MS);
}

video.addEventListener("timeupdate", () => {
  const t = video.currentTime;
  if (rangeStart !== null && Math.abs(t - lastPos) > 3 * Math.max(1, video.playbackRate)) {
    closeRange();
    rangeStart = t;
  }
  lastPos = t;
  paint();
  post("timeupdate");
});
video.addEventListener("seeking", () => {
  closeRange();
  lastPos = video.currentTime;
  rangeStart = video.paused ? null : lastPos;
});
video.addEventListener("play", () => {
  rangeStart = video.currentTime;
  lastPos = rangeStart;
  schedule();
  paint();
});
video.addEventListener("pause", () => {
  heartbeat();
  schedule();
  paint();
});
video.addEventListener("ended", () => {
  heartbeat();
  post("ended");
});
video.addEventListener("ratechange", () => (speed.value = String(video.playbackRate)));
video.addEventListener("volumechange", paint);
video.addEventListener("durationchange", paint);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden" && !video.paused) heartbeat();
  schedule();
});
window.addEventListener("pagehide", () => heartbeat(true));

// ---- controls ----
function paint() {
  const d = length();
  if (playBtn.dataset.icon !== String(video.paused)) {
    playBtn.dataset.icon = String(video.paused);
    playBtn.replaceChildren(icon(video.paused ? "play" : "pause"));
  }
  playBtn.setAttribute("aria-label", video.paused ? "Play" : "Pause");
  const quiet = video.muted || video.volume === 0;
  if (muteBtn.dataset.icon !== String(quiet)) {
    muteBtn.dataset.icon = String(quiet);
    muteBtn.replaceChildren(icon(quiet ? "muted" : "sound"));
  }
  muteBtn.setAttribute("aria-label", video.muted ? "Unmute" : "Mute");
  seek.max = String(d || 0);
  if (document.activeElement !== seek) seek.value = String(video.currentTime);
  seek.setAttribute("aria-valuetext", `${clock(video.currentTime)} of ${clock(d)}`);
  time.textContent = `${clock(video.currentTime)} / ${clock(d)}`;
}
const toggle = () => (video.paused ? video.play().catch(() => {}) : video.pause());
playBtn.addEventListener("click", toggle);
video.addEventListener("click", toggle);
seek.addEventListener("input", () => (video.currentTime = Number(seek.value)));
speed.addEventListener("change", () => (video.playbackRate = Number(speed.value)));
muteBtn.addEventListener("click", () => (video.muted = !video.muted));
const fullscreen = () =>
  document.fullscreenElement ? document.exitFullscreen() : player.requestFullscreen?.().catch(() => {});
fullBtn.addEventListener("click", fullscreen);
quality.addEventListener("change", () => {
  if (hls) hls.currentLevel = Number(quality.value);
});
captions.addEventListener("change", () => setCaptions(Number(captions.value)));

function setCaptions(i) {
  captions.value = String(i);
  player.dataset.captions = String(i);
  if (hls) {
    hls.subtitleDisplay = i >= 0;
    hls.subtitleTrack = i;
  } else {
    [...video.textTracks].forEach((t, j) => (t.mode = j === i ? "showing" : "disabled"));
  }
}

player.addEventListener("keydown", (e) => {
  const tag = e.target.tagName;
  if (tag === "SELECT" || (tag === "INPUT" && e.key !== " ")) return;
  if (tag === "BUTTON" && (e.key === " " || e.key === "Enter")) return;
  const k = e.key;
  if (k === " " || k === "k") toggle();
  else if (k === "ArrowLeft") video.currentTime = Math.max(0, video.currentTime - 5);
  else if (k === "ArrowRight") video.currentTime = Math.min(length(), video.currentTime + 5);
  else if (k === "ArrowUp") video.volume = Math.min(1, video.volume + 0.1);
  else if (k === "ArrowDown") video.volume = Math.max(0, video.volume - 0.1);
  else if (k === "f") fullscreen();
  else if (k === "m") video.muted = !video.muted;
  else if (k === "c") {
    const n = captions.options.length - 1;
    if (n > 0) setCaptions(Number(captions.value) >= 0 ? -1 : 0);
  } else return;
  e.preventDefault();
});

// ---- starting ----
async function resumeAt() {
  let at = Number(localStorage.getItem(localKey) || 0);
  if (token && lesson) {
    try {
      const p = await api(token, "GET", `/api/v1/lessons/${encodeURIComponent(lesson)}/progress`);
      if (p && Number.isFinite(p.position_s)) at = p.position_s;
    } catch (_) {
      // No progress yet, or no LMS: start from the local position.
    }
  }
  return Number.isFinite(at) && at > 0 ? at : 0;
}

async function source() {
  if (signedSrc) {
    const u = new URL(signedSrc, location.href);
    if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error("the src must be an http(s) URL");
    return { url: u.href, state: "ready", poster_url: null };
  }
  const path = lesson
    ? `/api/v1/lessons/${encodeURIComponent(lesson)}/playback`
    : `/api/v1/videos/${encodeURIComponent(videoId)}/playback`;
  return api(token, "GET", path);
}

function failed(err) {
  if (err?.code === "not-ready") {
    const f = /failed|canceled/.test(err.message || "");
    show(f ? "This lecture could not be prepared for playback. Ask your instructor." : "This lecture is still being prepared. It starts here by itself when it is ready.");
    if (!f) setTimeout(start, 5000);
  } else if (err?.code === "not-found" || err?.status === 404) {
    show("This lecture is not available: it was deleted or the link is wrong.");
  } else if (err?.status === 401) {
    show("Your viewing link has expired. Reload the page from your course to watch.");
  } else show(explain(err));
  post("error", { code: err?.code || "error" });
}

async function start() {
  if (!videoId) return show("No lecture id in this address.");
  if (!token && !signedSrc) {
    show("Waiting for the course page to sign you in…");
    post("auth-required");
    return;
  }
  let src;
  try {
    src = await source();
  } catch (err) {
    return failed(err);
  }
  show("");
  state = src.state;
  badge.hidden = state !== "processing";
  if (src.poster_url) video.poster = src.poster_url;
  const at = await resumeAt();
  const mse = window.MediaSource || window.ManagedMediaSource;
  if (!mse && video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = src.url;
    video.addEventListener("loadedmetadata", () => {
      if (at) video.currentTime = at;
      [...video.textTracks].forEach((t, i) => captions.append(el("option", { value: i }, t.label || t.language)));
      quality.hidden = true;
      ready();
    }, { once: true });
    return;
  }
  const { default: Hls } = await import("hls.js");
  if (!Hls.isSupported()) return show("This browser cannot play HLS video. Use a current Chrome, Firefox, Edge or Safari.");
  hls = new Hls({ enableWorker: false, startPosition: at || 0, subtitleDisplay: false });
  hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
    quality.replaceChildren(
      el("option", { value: "-1" }, "Auto"),
      ...data.levels.map((l, i) => el("option", { value: i }, `${Math.min(l.height, l.width)}p`)),
    );
    ready();
  });
  hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, (_, data) => {
    captions.replaceChildren(
      el("option", { value: "-1" }, "Captions off"),
      ...data.subtitleTracks.map((t, i) => el("option", { value: i }, t.name || t.lang)),
    );
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
    const l = hls.levels[data.level];
    player.dataset.level = l ? `${Math.min(l.height, l.width)}p` : "";
  });
  hls.on(Hls.Events.LEVEL_UPDATED, (_, data) => {
    if (data.details.live === false && state === "processing") {
      state = "ready";
      badge.hidden = true;
    }
    paint();
  });
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (!data.fatal) return;
    const code = data.response?.code;
    if (code === 404 || code === 410) failed({ code: "not-found", status: 404 });
    else if (code === 403) show("Your viewing link has expired. Reload the page to keep watching.");
    else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    else if (data.type === Hls.ErrorTypes.NETWORK_ERROR) setTimeout(() => hls.startLoad(), 2000);
    else show(`Playback stopped (${data.details}). Reload the page to try again.`);
  });
  hls.loadSource(src.url);
  hls.attachMedia(video);
}

function ready() {
  paint();
  if (readySent) return;
  readySent = true;
  player.dataset.ready = "1";
  post("ready");
}

start();
