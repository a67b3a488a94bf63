/* hpod web page: the overview (GET /).
 *
 * Every study's status is read once (GET /studies, then GET /studies/{name}); afterwards
 * only the study an event concerns is re-read, at most once a second. The workers and
 * resources panels read GET /doctor and GET /workers every 10 s while the tab is visible,
 * and hide themselves for good on a daemon that does not have those routes.
 */
"use strict";

(() => {
  const { $, el, num, config } = hpod;
  const STUDY_REFRESH_MS = 1000;
  const HEALTH_REFRESH_MS = 2000;
  const RESOURCES_MS = 10000;
  const FETCH_CONCURRENCY = 6;

  /** name -> {status, meter, refresh, row} */
  const studies = new Map();

  // --- studies ---------------------------------------------------------------------

  function entry(name) {
    let item = studies.get(name);
    if (!item) {
      item = { status: null, meter: new hpod.RateMeter(), row: null };
      item.refresh = hpod.refresher(() => loadStudy(name), STUDY_REFRESH_MS);
      studies.set(name, item);
    }
    return item;
  }

  async function loadStudy(name) {
    const item = entry(name);
    try {
      item.status = await hpod.getJSON(`/studies/${encodeURIComponent(name)}`);
    } catch (err) {
      if (err.status === 404) { studies.delete(name); if (item.row) item.row.remove(); return; }
      throw err;
    }
    item.meter.seed = hpod.averageRate(item.status);
    render(name);
  }

  async function loadAll() {
    const { studies: rows } = await hpod.getJSON("/studies");
    const names = rows.map((r) => r.name);
    for (const name of [...studies.keys()]) {
      if (!names.includes(name)) { const gone = studies.get(name); if (gone.row) gone.row.remove(); studies.delete(name); }
    }
    const queue = [...names];
    const workers = Array.from({ length: FETCH_CONCURRENCY }, async () => {
      while (queue.length) await loadStudy(queue.shift()).catch((err) => console.warn(err));
    });
    await Promise.all(workers);
    sortRows();
    $("no-studies").hidden = studies.size > 0;
    hpod.setText("studies-note", studies.size ? `${studies.size} ${studies.size === 1 ? "study" : "studies"}` : "");
  }

  function sortKey(status) {
    const order = { running: 0, stopped: 1, completed: 2 };
    return [status.running ? 0 : 1, order[status.state] ?? 3, -(status.created_at || 0)];
  }

  function sortRows() {
    const tbody = $("studies").tBodies[0];
    const items = [...studies.values()].filter((i) => i.status && i.row);
    items.sort((a, b) => {
      const ka = sortKey(a.status), kb = sortKey(b.status);
      for (let i = 0; i < ka.length; i += 1) if (ka[i] !== kb[i]) return ka[i] < kb[i] ? -1 : 1;
      return 0;
    });
    for (const item of items) tbody.append(item.row);
  }

  function bestText(status) {
    if (status.best) return num(status.best.value);
    if (status.best_trials && status.best_trials.length) return `Pareto front: ${status.best_trials.length}`;
    return "–";
  }

  function render(name) {
    const item = studies.get(name);
    if (!item || !item.status) return;
    const s = item.status;
    const progress = hpod.progress(s);
    const state = el("span");
    hpod.stateBadge(state, s.state, s.running);
    const row = el("tr", { dataset: { study: name, state: s.state } },
      el("td", {}, el("a", { href: `/study/${encodeURIComponent(name)}`, class: "study-link" }, name)),
      el("td", {}, state),
      el("td", { class: "mode" }, el("span", { class: "badge mode" }, s.mode)),
      el("td", { class: "progress-col" },
        el("div", { class: "bar small" }, el("div", { style: `width:${(progress.fraction * 100).toFixed(1)}%` })),
        el("div", { class: "sub" }, progress.text)),
      el("td", { class: "num best" }, bestText(s)),
      el("td", { class: "num rate" }, hpod.rateText(item.meter)),
      el("td", { class: "num inflight" }, String(s.in_flight)),
      el("td", { class: "num compute" }, computeText(s.efficiency, "cpu_seconds")),
      el("td", { class: "num saved" }, computeText(s.efficiency, "saved_cpu_seconds")),
      el("td", { class: "muted" }, s.objective || "external"));
    const added = !item.row;
    if (item.row) item.row.replaceWith(row); else $("studies").tBodies[0].append(row);
    item.row = row;
    if (added) sortRows();
    $("no-studies").hidden = true;
    hpod.setText("studies-note", `${studies.size} ${studies.size === 1 ? "study" : "studies"}`);
  }

  function renderRates() {
    for (const item of studies.values()) {
      const cell = item.row && item.row.querySelector(".rate");
      if (cell) cell.textContent = hpod.rateText(item.meter);
    }
  }

  // --- daemon-wide cards -----------------------------------------------------------

  function computeText(efficiency, key) {
    const value = efficiency ? efficiency[key] : null;
    if (value === null || value === undefined) return "–";
    return Math.abs(value) >= 100 ? `${value.toFixed(0)} s` : `${value.toFixed(1)} s`;
  }

  async function loadHealth() {
    const health = await hpod.getJSON("/health");
    hpod.setText("card-running", String(health.running_studies));
    hpod.setText("card-inflight", String(health.in_flight));
  }

  let hasDoctor = true;
  let hasWorkers = true;

  function showPanels(name, on) {
    for (const node of document.querySelectorAll(`[data-panel="${name}"]`)) node.hidden = !on;
  }

  async function loadDoctor() {
    let doctor;
    try {
      doctor = await hpod.getJSON("/doctor");
    } catch (err) {
      if (err.status === 404 || err.status === 405) { hasDoctor = false; showPanels("doctor", false); return; }
      throw err;
    }
    const r = doctor.resources || {};
    showPanels("doctor", true);
    hpod.setText("card-workers", r.workers === null || r.workers === undefined ? "–" : String(r.workers));
    const depth = r.queue_depth || {};
    hpod.setText("card-queue", depth["hpod.trials"] === undefined ? "–" : String(depth["hpod.trials"]));
    const cpuMem = (g) => (g ? `${num(g.cpu_percent, 3)}% · ${hpod.bytes(g.rss_bytes)}` : "–");
    hpod.setText("card-daemon", cpuMem(r.daemon));
    hpod.setText("card-workers-res", cpuMem(r.local_workers));
    hpod.setText("card-inflight-sub", r.max_inflight === undefined ? "" : `at most ${r.max_inflight}`);
    $("backpressure").hidden = !r.backpressure;
  }

  async function loadWorkers() {
    let answer;
    try {
      answer = await hpod.getJSON("/workers");
    } catch (err) {
      if (err.status === 404 || err.status === 405) { hasWorkers = false; showPanels("workers", false); return; }
      throw err;
    }
    showPanels("workers", true);
    hpod.setText("workers-broker", answer.broker ? `broker: ${answer.broker}` : "");
    const rows = (answer.workers || []).map((w) => el("tr", {},
      el("td", {}, w.name),
      el("td", { class: "num" }, w.pool ?? "–"),
      el("td", { class: "num" }, w.active ?? "–"),
      el("td", { class: "num" }, w.cpu_percent === null || w.cpu_percent === undefined ? "–" : `${num(w.cpu_percent, 3)}%`),
      el("td", { class: "num" }, hpod.bytes(w.rss_bytes))));
    $("workers").tBodies[0].replaceChildren(...rows);
    $("no-workers").hidden = rows.length > 0;
  }

  async function loadResources() {
    const jobs = [];
    if (hasDoctor) jobs.push(loadDoctor());
    if (hasWorkers) jobs.push(loadWorkers());
    const results = await Promise.allSettled(jobs);
    for (const r of results) if (r.status === "rejected") console.warn(r.reason);
  }

  // --- actions ---------------------------------------------------------------------

  function setupDefaultMode() {
    const select = $("default-mode");
    hpod.fillModes(select, config.default_mode);
    $("default-mode-set").addEventListener("click", async () => {
      const mode = select.value;
      const outcome = await hpod.send({ type: "mode.set", mode });
      hpod.showOutcome(outcome, `Default mode switched to ${mode}.`);
    });
  }

  // --- live ------------------------------------------------------------------------

  const refreshHealth = hpod.refresher(loadHealth, HEALTH_REFRESH_MS);

  function onEvent(event) {
    hpod.logActivity(event);
    const name = event.study;
    switch (event.event) {
      case "study.created":
        entry(name).refresh();
        refreshHealth();
        break;
      case "trial.completed":
      case "trial.pruned":
      case "trial.failed":
        entry(name).meter.add();
        entry(name).refresh();
        refreshHealth();
        break;
      case "study.completed":
        entry(name).refresh();
        refreshHealth();
        break;
      case "study.paused":
      case "study.resumed":
      case "study.budget_changed":
        entry(name).refresh();
        break;
      case "mode.changed":
        if (name && studies.has(name) && studies.get(name).status) {
          studies.get(name).status.mode = event.mode;
          render(name);
        } else if (!name) {
          hpod.fillModes($("default-mode"), event.mode);
        }
        break;
      default:
        break;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupDefaultMode();
    hpod.connectEvents("", onEvent, () => { loadAll().catch(console.warn); refreshHealth(); });
    loadAll().catch((err) => console.warn("loading studies failed", err));
    hpod.whileVisible(() => { refreshHealth(); loadResources(); }, RESOURCES_MS);
    setInterval(renderRates, 5000);
  });
})();
