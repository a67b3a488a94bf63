/* hpod web page: what both pages share.
 *
 * - the API token, entered once and kept in sessionStorage (gone when the tab closes),
 *   sent as "Authorization: Bearer …" with every action;
 * - reads (GET, no token) and actions (POST /requests, the same envelope as on the queue);
 * - the live stream (GET /events, Server-Sent Events) with reconnection: after a break or a
 *   "lagged" notice the page re-reads its state, since events may have been missed;
 * - a refresher that coalesces bursts of events into at most one fetch per interval;
 * - formatting and a small DOM builder that only ever sets text (never HTML from data).
 */
"use strict";

const hpod = (() => {
  const config = JSON.parse(document.getElementById("hpod-config").textContent);
  const TOKEN_KEY = "hpod.token";
  const ACTIVITY_MAX = 100;

  // --- DOM -------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** Create an element: el("td", {class: "num", title: "x"}, "text", child, …). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node) node.textContent = text;
  }

  // --- formatting ------------------------------------------------------------------

  function num(value, digits = 4) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(digits - 1);
    return String(Number(value.toPrecision(digits)));
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function clock(date) {
    if (!date) return "–";
    const d = date instanceof Date ? date : new Date(date);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function paramsText(params) {
    return Object.entries(params || {}).map(([k, v]) => `${k}=${num(v)}`).join(", ");
  }

  // --- reads and actions -----------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      const message = body && body.error ? body.error.message : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON (a 404 page, say) */ }
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  /** POST one request envelope to /requests; returns {status, body}; never throws on HTTP errors. */
  async function send(envelope) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    let response;
    try {
      response = await fetch("/requests", { method: "POST", headers, body: JSON.stringify({ v: 1, ...envelope }) });
    } catch (err) {
      return { status: 0, body: { ok: false, error: { code: "network", message: String(err) } } };
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { status: response.status, body };
  }

  /** Show the outcome of an action in the page's message line. */
  function showOutcome(outcome, successText) {
    const box = $("action-message");
    if (!box) return;
    box.hidden = false;
    const { status, body } = outcome;
    if (status === 200 && body && body.ok) {
      box.className = "message ok";
      box.textContent = successText;
    } else if (status === 401) {
      box.className = "message error";
      box.textContent = token()
        ? "Refused (401 unauthorized): the API token is wrong. Enter the daemon's token above."
        : "Refused (401 unauthorized): this action needs the API token. Enter it above.";
    } else {
      const err = (body && body.error) || {};
      box.className = "message error";
      box.textContent = `Refused (${status || "no answer"} ${err.code || ""}): ${err.message || "unknown error"}`;
    }
  }

  // --- the token -------------------------------------------------------------------

  function setupToken() {
    const form = $("token-form");
    const input = $("token-input");
    const forget = $("token-forget");
    const render = () => {
      const has = Boolean(token());
      input.value = "";
      input.placeholder = has ? "saved for this tab" : "needed for actions";
      forget.hidden = !has;
      setText("token-state", has ? "✓" : "");
      document.body.classList.toggle("has-token", has);
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      render();
    });
    forget.addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); render(); });
    render();
  }

  // --- live updates ----------------------------------------------------------------

  /**
   * Follow GET /events. `onEvent(event)` gets every event; `onResync()` is called when
   * events may have been missed (reconnected after a break, or the server dropped some
   * because this page fell behind), so the page re-reads its state. The browser retries a
   * broken stream by itself, but gives up on an HTTP error (a proxy's 502 while the daemon
   * restarts, say): then a new stream is opened after a pause.
   */
  function connectEvents(query, onEvent, onResync) {
    const live = $("live");
    const url = `/events${query ? `?${query}` : ""}`;
    const setState = (state, text) => {
      if (!live) return;
      live.dataset.state = state;
      live.textContent = text;
    };
    let source = null;
    let opened = false;
    let broken = false;
    let closedByPage = false;
    const open = () => {
      source = new EventSource(url);
      source.onopen = () => {
        setState("live", "live");
        if (opened && broken) onResync("reconnected");
        opened = true;
        broken = false;
      };
      source.onerror = () => {
        broken = true;
        setState("down", "reconnecting…");
        if (source.readyState === EventSource.CLOSED && !closedByPage) setTimeout(open, 5000);
      };
      source.onmessage = (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (_) { return; }
        onEvent(event);
      };
      source.addEventListener("lagged", () => onResync("lagged"));
    };
    window.addEventListener("pagehide", () => { closedByPage = true; if (source) source.close(); });
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted) return; // back from the back-forward cache: start afresh
      closedByPage = false;
      open();
      onResync("restored");
    });
    open();
  }

  /**
   * A refresher: `trigger()` asks for `fn` to run; bursts are coalesced so that `fn` runs
   * at most once per `interval` ms and never twice at the same time, and a trigger that
   * arrives while it runs causes one more run afterwards.
   */
  function refresher(fn, interval) {
    let running = false;
    let pending = false;
    let timer = null;
    let last = 0;
    const run = async () => {
      timer = null;
      if (running) { pending = true; return; }
      running = true;
      pending = false;
      last = Date.now();
      try { await fn(); } catch (err) { console.warn("refresh failed", err); }
      running = false;
      if (pending) trigger();
    };
    function trigger() {
      if (running) { pending = true; return; }
      if (timer !== null) return;
      timer = setTimeout(run, Math.max(0, last + interval - Date.now()));
    }
    return trigger;
  }

  /** Run `fn` every `ms` while the tab is visible (and once when it becomes visible). */
  function whileVisible(fn, ms) {
    let timer = null;
    const start = () => { if (timer === null) { fn(); timer = setInterval(fn, ms); } };
    const stop = () => { if (timer !== null) { clearInterval(timer); timer = null; } };
    document.addEventListener("visibilitychange", () => (document.hidden ? stop() : start()));
    if (!document.hidden) start();
    return stop;
  }

  /** Finished trials per minute: a sliding window over trial events, seeded by an average. */
  class RateMeter {
    constructor(windowMs = 60000) {
      this.windowMs = windowMs;
      this.times = [];
      this.since = Date.now();
      this.seed = null;
    }
    add(time = Date.now()) {
      this.times.push(time);
      this.prune();
    }
    prune() {
      const cutoff = Date.now() - this.windowMs;
      while (this.times.length && this.times[0] < cutoff) this.times.shift();
    }
    /** {value, estimate}: estimate is true while the page has watched less than a window. */
    read() {
      this.prune();
      const watched = Date.now() - this.since;
      if (watched >= this.windowMs) return { value: this.times.length * (60000 / this.windowMs), estimate: false };
      if (this.times.length && watched > 5000) return { value: this.times.length * 60000 / watched, estimate: false };
      return { value: this.seed, estimate: true };
    }
  }

  function rateText(meter) {
    const { value, estimate } = meter.read();
    if (value === null || value === undefined) return "–";
    return `${estimate ? "~" : ""}${num(value, 3)}`;
  }

  // --- activity log ----------------------------------------------------------------

  const EVENT_TEXT = {
    "study.created": (e) => "created",
    "trial.completed": (e) => `trial ${e.trial} completed: ${(e.values || []).map((v) => num(v)).join(", ")}${e.duration != null ? ` in ${duration(e.duration)}` : ""}`,
    "trial.pruned": (e) => `trial ${e.trial} pruned`,
    "trial.failed": (e) => `trial ${e.trial} failed${e.error ? `: ${String(e.error).split("\n")[0]}` : ""}`,
    "study.completed": (e) => `${e.reason === "stopped" ? "stopped" : "completed"} after ${e.n_trials} trials`,
    "mode.changed": (e) => `mode changed to ${e.mode}${e.study ? "" : " (default mode)"}`,
    "study.paused": () => "paused",
    "study.resumed": () => "resumed",
    "study.budget_changed": (e) => `budget changed to ${budgetText(e.budget)}`,
    "strategy.chosen": (e) => `strategy ${e.strategy} (${e.source}) at ${e.told} told${e.previous_reward != null ? `; the last window earned ${num(e.previous_reward)}` : ""}`,
    "study.transfer": (e) => `transfer ${e.change}: ${e.transferred} transferred, ${e.held} held, ${e.dropped} dropped${(e.sources || []).length ? ` (from ${e.sources.map((s) => `${s.study}${s.state === "active" ? "" : ` ${s.state}`}`).join(", ")})` : ""}`,
    "request.rejected": (e) => `request rejected (${e.channel}): ${e.error ? e.error.message : ""}`,
  };

  function budgetText(budget) {
    const units = { trials: "trials", seconds: "s", cpu_seconds: "CPU s", full_evaluations: "full evaluations" };
    const limits = Object.entries(budget || {}).filter(([k, v]) => v != null && units[k]);
    return limits.length ? limits.map(([k, v]) => `${num(v)} ${units[k]}`).join(", ") : "no limit";
  }

  function logActivity(event) {
    const list = $("activity");
    if (!list) return;
    const describe = EVENT_TEXT[event.event] || (() => "");
    const kind = event.event.replace(".", "-");
    const item = el("li", { class: kind, dataset: { event: event.event, study: event.study || "" } },
      el("time", {}, clock(new Date((event.time || Date.now() / 1000) * 1000))),
      el("span", { class: "tag" }, event.event),
      event.study && config.study === null ? el("a", { href: `/study/${encodeURIComponent(event.study)}` }, event.study) : null,
      el("span", { class: "text" }, describe(event)));
    list.prepend(item);
    while (list.children.length > ACTIVITY_MAX) list.lastElementChild.remove();
  }

  // --- shared bits of both pages ---------------------------------------------------

  function stateBadge(node, state, running) {
    node.textContent = state || "–";
    node.className = `badge state-${state || "unknown"}`;
    node.title = running ? "this daemon is working on it" : "no loop on this daemon";
  }

  function progress(status) {
    const budget = status.budget || {};
    const parts = [];
    let fraction = 0;
    if (budget.trials) {
      parts.push(`${status.n_trials} / ${budget.trials} trials`);
      fraction = Math.max(fraction, status.n_trials / budget.trials);
    } else {
      parts.push(`${status.n_trials} trials`);
    }
    if (budget.seconds && status.created_at) {
      const elapsed = status.state === "running" ? Date.now() / 1000 - status.created_at : null;
      if (elapsed !== null) {
        parts.push(`${duration(Math.min(elapsed, budget.seconds))} / ${duration(budget.seconds)}`);
        fraction = Math.max(fraction, elapsed / budget.seconds);
      } else {
        parts.push(`time budget ${duration(budget.seconds)}`);
      }
    }
    // A budget in compute: the status of one study carries what it spent (`spent`).
    const spent = status.spent || {};
    for (const [key, unit] of [["cpu_seconds", "CPU s"], ["full_evaluations", "full evaluations"]]) {
      if (!budget[key]) continue;
      if (spent[key] != null) {
        parts.push(`${num(spent[key])} / ${num(budget[key])} ${unit}`);
        fraction = Math.max(fraction, spent[key] / budget[key]);
      } else {
        parts.push(`budget ${num(budget[key])} ${unit}`);
      }
    }
    if (status.state === "completed") fraction = 1;
    return { text: parts.join(" · "), fraction: Math.min(1, fraction) };
  }

  function finished(counts) {
    counts = counts || {};
    return (counts.complete || 0) + (counts.pruned || 0) + (counts.fail || 0);
  }

  /** Average finished trials per minute since creation (the seed of a RateMeter). */
  function averageRate(status) {
    if (!status.created_at || status.state !== "running") return null;
    const minutes = (Date.now() / 1000 - status.created_at) / 60;
    return minutes > 0 ? finished(status.counts) / minutes : null;
  }

  function fillModes(select, current) {
    const modes = config.modes.includes(current) || !current ? config.modes : [...config.modes, current];
    select.replaceChildren(...modes.map((m) => el("option", { value: m, selected: m === current }, m)));
  }

  document.addEventListener("DOMContentLoaded", () => {
    setText("version", config.version);
    setupToken();
  });

  return {
    config, $, el, setText, num, duration, bytes, clock, paramsText, HttpError, getJSON, send,
    showOutcome, token, connectEvents, refresher, whileVisible, RateMeter, rateText,
    logActivity, stateBadge, progress, finished, averageRate, fillModes,
  };
})();
