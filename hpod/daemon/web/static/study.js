/* hpod web page: one study (GET /study/{name}).
 *
 * The page reads the study's status and its trials once, then follows the study's events:
 * each trial event asks for one coalesced refresh (at most one a second) that reads the
 * status and only the trials from the lowest one not yet finished on (`next_from`). While
 * trials are in flight it also re-reads them every 5 s (their intermediate values change
 * without events). It keeps at most MAX_KEEP trials, so a page left open for days on a
 * large study stays light; the plots are rebuilt from that bounded set with Plotly.react.
 */
"use strict";

(() => {
  const { $, el, num, config } = hpod;
  const NAME = config.study;
  const PATH = `/studies/${encodeURIComponent(NAME)}`;
  const MAX_KEEP = 5000;
  const INTERMEDIATE_MAX = 100;
  const TABLE_ROWS = 100;
  const REFRESH_MS = 1000;
  const IMPORTANCE_MS = 5000;
  const INFLIGHT_POLL_MS = 5000;
  const REREAD_WINDOW = 200;
  const FINISHED = new Set(["complete", "pruned", "fail", "dropped"]);
  const EVENT_STATES = { "trial.completed": "complete", "trial.pruned": "pruned", "trial.failed": "fail" };
  const COLORS = { complete: "#2f6fde", pruned: "#e8871e", fail: "#d64545", running: "#2a9d5c", waiting: "#8a94a6", best: "#10284f" };
  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"] };
  const BASE_LAYOUT = {
    margin: { l: 56, r: 16, t: 8, b: 44 },
    height: 320,
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif", size: 12, color: "#1f2937" },
    xaxis: { gridcolor: "#e5e7eb", zeroline: false },
    yaxis: { gridcolor: "#e5e7eb", zeroline: false },
    legend: { orientation: "h", y: 1.02, yanchor: "bottom", x: 0 },
    hoverlabel: { align: "left" },
  };

  let status = null;
  let space = {};
  let directions = ["minimize"];
  let objective = 0;
  let nextFrom = 0;
  const trials = new Map(); // number -> trial row
  const meter = new hpod.RateMeter();
  let completeSeen = -1;
  const hasPlotly = () => typeof window.Plotly !== "undefined";

  // --- reading -----------------------------------------------------------------------

  async function loadStatus() {
    status = await hpod.getJSON(PATH);
    directions = status.directions;
    meter.seed = hpod.averageRate(status);
  }

  /**
   * Read the trials from `nextFrom` on (paging through `more`), then set `nextFrom` to the
   * lowest trial still unfinished: its state and intermediate values may change. A trial
   * left unfinished far behind the newest (an external ask never told) is not re-read
   * forever: reads go back at most REREAD_WINDOW trials, and its event still updates it.
   */
  async function loadTrials() {
    let from = nextFrom;
    let lowest = null;
    let highest = -1;
    for (;;) {
      const page = await hpod.getJSON(`${PATH}/trials?from=${from}`);
      space = page.space;
      for (const t of page.trials) {
        trials.set(t.number, t);
        highest = Math.max(highest, t.number);
        if (!FINISHED.has(t.state) && (lowest === null || t.number < lowest)) lowest = t.number;
      }
      if (!page.more || !page.trials.length) {
        const next = lowest === null ? page.next_from : lowest;
        nextFrom = Math.max(next, highest + 1 - REREAD_WINDOW, 0);
        break;
      }
      from = page.trials[page.trials.length - 1].number + 1;
    }
    if (trials.size > MAX_KEEP) {
      const numbers = [...trials.keys()].sort((a, b) => a - b);
      for (const n of numbers.slice(0, trials.size - MAX_KEEP)) trials.delete(n);
    }
  }

  /** A trial event updates the trial at once (the coalesced refresh brings the rest). */
  function applyEvent(event) {
    const t = trials.get(event.trial);
    if (!t) return;
    t.state = EVENT_STATES[event.event];
    t.values = event.values;
    if (event.error) t.error = event.error;
  }

  async function refresh() {
    await Promise.all([loadStatus(), loadTrials()]);
    renderAll();
  }

  async function loadImportance() {
    if (!hasPlotly()) return;
    const answer = await hpod.getJSON(`${PATH}/importance?objective=${objective}`);
    renderImportance(answer);
  }

  const refreshSoon = hpod.refresher(refresh, REFRESH_MS);
  const importanceSoon = hpod.refresher(loadImportance, IMPORTANCE_MS);

  async function start() {
    try {
      await loadStatus();
    } catch (err) {
      showError(err.status === 404 ? `No hpod study named ${NAME}.` : `Cannot read the study: ${err.message}`);
      return;
    }
    nextFrom = Math.max(0, status.n_trials - MAX_KEEP);
    await loadTrials();
    renderAll();
  }

  async function resync() {
    trials.clear();
    nextFrom = 0;
    completeSeen = -1;
    await start();
  }

  function showError(text) {
    const box = $("study-error");
    box.textContent = text;
    box.hidden = false;
  }

  // --- derived data ------------------------------------------------------------------

  function sortedTrials() {
    return [...trials.values()].sort((a, b) => a.number - b.number);
  }

  function better(a, b) {
    return directions[objective] === "maximize" ? a > b : a < b;
  }

  function lastIntermediate(t) {
    for (let i = t.intermediate.length - 1; i >= 0; i -= 1) if (t.intermediate[i][1] !== null) return t.intermediate[i][1];
    return null;
  }

  // --- rendering: header, cards, actions -------------------------------------------

  function renderHeader() {
    document.title = `hpod: ${NAME}`;
    hpod.setText("study-name", NAME);
    hpod.setText("crumb-name", NAME);
    hpod.stateBadge($("study-state"), status.state, status.running);
    $("study-mode").textContent = status.mode;
    $("study-mode").dataset.mode = status.mode;
    const created = status.created_at ? `created ${hpod.clock(new Date(status.created_at * 1000))}` : "";
    const dirs = directions.length === 1 ? directions[0] : directions.join(" / ");
    hpod.setText("study-meta", [status.objective || "external evaluator", dirs, created].filter(Boolean).join(" · "));
    $("json-link").href = PATH;
  }

  function renderCards() {
    const p = hpod.progress(status);
    hpod.setText("card-progress", p.text);
    $("card-progress-bar").style.width = `${(p.fraction * 100).toFixed(1)}%`;
    if (status.best) {
      hpod.setText("card-best-label", `Best value (${directions[0]})`);
      hpod.setText("card-best", num(status.best.value));
      hpod.setText("card-best-sub", `trial ${status.best.number}`);
    } else if (directions.length > 1) {
      hpod.setText("card-best-label", "Pareto front");
      hpod.setText("card-best", `${status.best_trials.length} trials`);
      hpod.setText("card-best-sub", directions.join(" / "));
    }
    const c = status.counts || {};
    hpod.setText("card-counts", String(status.n_trials));
    hpod.setText("card-counts-sub", `${c.complete || 0} complete · ${c.pruned || 0} pruned · ${c.fail || 0} failed`);
    hpod.setText("card-inflight", String(status.in_flight));
    hpod.setText("card-rate", hpod.rateText(meter));
  }

  function studyField(type) {
    const spec = config.requests[type];
    if (!spec) return null;
    const field = spec.required.includes("name") ? "name" : spec.required.includes("study") ? "study" : null;
    const unknown = spec.required.filter((f) => f !== field);
    return field && unknown.length === 0 ? field : null;
  }

  async function act(envelope, successText) {
    const outcome = await hpod.send(envelope);
    hpod.showOutcome(outcome, successText);
    if (outcome.status === 200) refreshSoon();
    return outcome;
  }

  function setupActions() {
    $("mode-set").addEventListener("click", () => {
      const mode = $("mode-select").value;
      act({ type: "mode.set", study: NAME, mode }, `Mode switched to ${mode}.`);
    });
    $("study-stop").addEventListener("click", () => {
      if (!window.confirm(`Stop study ${NAME}? It asks no new trials; trials in flight still finish.`)) return;
      act({ type: "study.stop", [studyField("study.stop") || "name"]: NAME }, "Stop requested.");
    });
    // Pause, resume and a budget change exist only once the daemon accepts those request
    // types: the buttons appear when the daemon lists them, with the fields it names.
    for (const [type, id, text] of [["study.pause", "study-pause", "Pause requested."], ["study.resume", "study-resume", "Resume requested."]]) {
      const field = studyField(type);
      if (!field) continue;
      $(id).hidden = false;
      $(id).addEventListener("click", () => act({ type, [field]: NAME }, text));
    }
    const budget = config.requests["study.budget"];
    const budgetField = budget && ["name", "study"].find((f) => budget.properties.includes(f));
    if (budget && budgetField && (budget.properties.includes("budget") || budget.properties.includes("trials"))) {
      $("budget-action").hidden = false;
      $("budget-set").addEventListener("click", () => {
        const trialsBudget = Number($("budget-trials").value);
        if (!Number.isInteger(trialsBudget) || trialsBudget < 1) return;
        const body = budget.properties.includes("budget") ? { budget: { trials: trialsBudget } } : { trials: trialsBudget };
        act({ type: "study.budget", [budgetField]: NAME, ...body }, `Budget changed to ${trialsBudget} trials.`);
      });
    }
  }

  // The mode the select was last filled with: it is filled again only when the daemon's
  // mode changes, so a refresh between a user's choice and their click on "Set" (trials are
  // told several times a second) does not put the old mode back under the click.
  let filledMode = null;

  function renderActions() {
    const select = $("mode-select");
    if (status.mode !== filledMode && !select.matches(":focus")) {
      hpod.fillModes(select, status.mode);
      filledMode = status.mode;
    }
    const live = status.running && (status.state === "running" || status.state === "paused");
    $("study-stop").disabled = !live;
    $("study-pause").disabled = !live || status.state === "paused";
    $("study-resume").disabled = !live || status.state !== "paused";
    $("budget-set").disabled = !live;
    if (!$("budget-action").hidden && status.budget.trials && !$("budget-trials").value) {
      $("budget-trials").value = status.budget.trials;
    }
  }

  // --- rendering: plots --------------------------------------------------------------

  function layout(extra) {
    return { ...BASE_LAYOUT, ...extra, xaxis: { ...BASE_LAYOUT.xaxis, ...(extra.xaxis || {}) }, yaxis: { ...BASE_LAYOUT.yaxis, ...(extra.yaxis || {}) } };
  }

  function hoverParams(t) {
    return Object.entries(t.params).map(([k, v]) => `${k}: ${num(v)}`).join("<br>");
  }

  function renderHistory(rows) {
    const k = objective;
    const complete = rows.filter((t) => t.state === "complete" && t.values && t.values[k] !== null);
    const pruned = rows.filter((t) => t.state === "pruned");
    const prunedValued = pruned.filter((t) => lastIntermediate(t) !== null);
    const prunedBare = pruned.filter((t) => lastIntermediate(t) === null);
    const failed = rows.filter((t) => t.state === "fail");
    const points = (list, y, name, color, symbol, axis) => ({
      type: "scatter", mode: "markers", name, meta: "trials", x: list.map((t) => t.number), y,
      yaxis: axis, marker: { color, symbol, size: 7, line: { width: symbol === "circle" ? 0 : 1.5, color } },
      text: list.map(hoverParams),
      hovertemplate: `trial %{x} (${name})<br>%{text}<extra></extra>`,
    });
    const traces = [
      { ...points(complete, complete.map((t) => t.values[k]), "complete", COLORS.complete, "circle", "y"),
        hovertemplate: "trial %{x}: %{y:.5g}<br>%{text}<extra></extra>" },
      points(prunedValued, prunedValued.map(lastIntermediate), "pruned", COLORS.pruned, "x", "y"),
      // Trials without a value sit on a strip at the bottom (second, hidden y axis).
      points(prunedBare, prunedBare.map(() => 0.03), "pruned (no value)", COLORS.pruned, "x-open", "y2"),
      points(failed, failed.map(() => 0.03), "failed", COLORS.fail, "x", "y2"),
    ];
    if (directions.length === 1 && complete.length) {
      const xs = [], ys = [];
      let best = null;
      for (const t of complete) {
        if (best === null || better(t.values[k], best)) best = t.values[k];
        xs.push(t.number); ys.push(best);
      }
      const last = rows.length ? rows[rows.length - 1].number : xs[xs.length - 1];
      if (last > xs[xs.length - 1]) { xs.push(last); ys.push(best); }
      traces.push({ type: "scatter", mode: "lines", name: "best so far", x: xs, y: ys, line: { shape: "hv", color: COLORS.best, width: 2 }, hovertemplate: "best after trial %{x}: %{y:.5g}<extra></extra>" });
    }
    const logY = $("history-log").checked && complete.every((t) => t.values[k] > 0) && prunedValued.every((t) => lastIntermediate(t) > 0);
    const ytitle = directions.length === 1 ? `value (${directions[0]})` : `objective ${k} (${directions[k]})`;
    Plotly.react("plot-history", traces, layout({
      xaxis: { title: { text: "trial" }, rangemode: "tozero" },
      yaxis: { title: { text: ytitle }, type: logY ? "log" : "linear" },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
    }), PLOT_CONFIG);
    const shown = complete.length + pruned.length + failed.length;
    hpod.setText("history-note", trials.size >= MAX_KEEP ? `last ${MAX_KEEP} trials` : `${shown} finished`);
  }

  /** Best full-data value against the CPU seconds spent in the objective (every rung,
   *  pruned trials and cache hits at zero included), in the order trials finished. */
  function renderCompute(rows) {
    const k = objective;
    const finished = rows.filter((t) => FINISHED.has(t.state) && t.state !== "dropped" && t.datetime_complete)
      .sort((a, b) => (a.datetime_complete < b.datetime_complete ? -1 : a.datetime_complete > b.datetime_complete ? 1 : a.number - b.number));
    const xs = [], ys = [], text = [];
    let spent = 0, best = null;
    for (const t of finished) {
      spent += t.cpu || 0;
      if (t.state === "complete" && t.values && t.values[k] !== null && (best === null || better(t.values[k], best))) best = t.values[k];
      if (best !== null) { xs.push(spent); ys.push(best); text.push(`trial ${t.number}`); }
    }
    const traces = directions.length === 1 && xs.length
      ? [{ type: "scatter", mode: "lines+markers", name: "best so far", meta: "compute", x: xs, y: ys, text, line: { shape: "hv", color: COLORS.best, width: 2 }, marker: { size: 4 }, hovertemplate: "%{x:.3g} CPU s (%{text}): best %{y:.5g}<extra></extra>" }]
      : [];
    Plotly.react("plot-compute", traces, layout({
      xaxis: { title: { text: "CPU seconds in the objective" }, rangemode: "tozero" },
      yaxis: { title: { text: directions.length === 1 ? `best value (${directions[0]})` : "single objective only" } },
    }), PLOT_CONFIG);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    return value >= 100 ? `${value.toFixed(0)} s` : value >= 1 ? `${value.toFixed(1)} s` : `${(value * 1000).toFixed(0)} ms`;
  }

  /** The efficiency report (status.efficiency) and the plan in force (status.plan). */
  function renderEfficiency() {
    const e = status.efficiency;
    if (!e) { $("efficiency").hidden = true; return; }
    $("efficiency").hidden = false;
    hpod.setText("eff-compute", `${seconds(e.cpu_seconds)} CPU`);
    const full = e.full_evaluation_cpu_seconds;
    hpod.setText("eff-full", full === null ? "–" : `${seconds(full)} CPU` + (e.compute_ratio ? ` (${e.compute_ratio.toFixed(2)}× spent)` : ""));
    hpod.setText("eff-cache", `${e.cache_hits}` + (e.cache_partial_hits ? ` (+${e.cache_partial_hits} partial)` : ""));
    const where = Object.entries(e.pruned_at || {}).map(([at, n]) => `${n} at ${at}`).join(", ");
    hpod.setText("eff-pruned", `${e.pruned}` + (where ? ` (${where})` : ""));
    hpod.setText("eff-data", e.data_fraction === null ? "–" : e.data_fraction.toFixed(2));
    // The parts of a trial's time (hpod.daemon.timeline): hpod's own, then the waits.
    const t = e.time_per_trial;
    const ms = (v) => (t ? (v < 0.01 ? `${(v * 1000).toFixed(1)} ms` : seconds(v)) : "–");
    hpod.setText("eff-overhead", t ? `${ms(t.overhead)} (daemon ${ms(t.daemon)}, transport ${ms(t.transport)})` : "–");
    hpod.setText("eff-queue", t ? ms(t.queue_wait) : "–");
    hpod.setText("eff-pack", t ? ms(t.pack_wait) : "–");
    hpod.setText("eff-evaluation", t ? ms(t.evaluation) : "–");
    const plan = status.plan;
    hpod.setText("eff-plan", plan
      ? `${plan.sampler} sampler · ${plan.pruner} pruner · data ${plan.ladder.map((f) => `${Math.round(f * 100)}%`).join(" → ")} · ${plan.pack} per task`
      : "");
  }

  /**
   * The strategy timeline (status.strategy): the current strategy and why, then every kept
   * decision, newest first, with what its window earned. Re-read on `strategy.chosen`.
   */
  function renderStrategy() {
    const s = status.strategy;
    if (!s || !s.current) { $("strategy").hidden = true; return; }
    $("strategy").hidden = false;
    const next = s.next_decision_at === null || s.next_decision_at === undefined ? "" : ` · next decision at ${s.next_decision_at} told`;
    hpod.setText("strategy-now", `${s.current} (${s.source}; setting ${s.setting})${next}`);
    hpod.setText("strategy-reason", s.reason || "");
    const planText = (p) => (p ? `${p.sampler} · ${p.pruner} · ${p.ladder.map((f) => `${Math.round(f * 100)}%`).join(" → ")}` : "–");
    const rows = [...s.decisions].reverse().map((d, i) => el("tr", { class: `source-${d.source}` },
      el("td", { class: "num" }, d.told),
      el("td", {}, d.strategy),
      el("td", {}, d.source),
      el("td", {}, i === 0 ? planText(s.plan) : ""),
      el("td", { class: "num" }, d.reward === null || d.reward === undefined ? "–" : num(d.reward))));
    $("strategy-decisions").tBodies[0].replaceChildren(...rows);
  }

  /**
   * What the study took from past studies (status.transfer): each source, its similarity,
   * the configurations transferred and dropped, and whether it still agrees. Hidden when the
   * study took nothing and skipped nothing. Re-read on `study.transfer`.
   */
  function renderTransfer() {
    const t = status.transfer;
    const sources = (t && t.sources) || [];
    const skipped = (t && t.skipped) || [];
    if (!sources.length && !skipped.length) { $("transfer").hidden = true; return; }
    $("transfer").hidden = false;
    const setting = Array.isArray(t.setting) ? t.setting.join(", ") : t.setting;
    hpod.setText("transfer-now", `${t.transferred} transferred · ${t.held} held · ${t.dropped} dropped (setting ${setting})`);
    const notes = skipped.map((s) => `skipped ${s.study}: ${s.reason}`);
    hpod.setText("transfer-reason", [t.reason || "", ...notes].filter(Boolean).join(" · "));
    const rows = sources.map((s) => el("tr", { class: `transfer-${s.state}` },
      el("td", {}, el("a", { href: `/study/${encodeURIComponent(s.study)}` }, s.study)),
      el("td", { class: "num" }, num(s.similarity)),
      el("td", { class: "num" }, s.transferred),
      el("td", { class: "num" }, s.dropped || 0),
      el("td", {}, s.paused ? `${s.state}, paused` : s.state),
      el("td", { class: "num" }, s.correlation === null || s.correlation === undefined ? "–" : `${num(s.correlation)} over ${s.pairs}`)));
    $("transfer-sources").tBodies[0].replaceChildren(...rows);
  }

  function renderIntermediate(rows) {
    const reporting = rows.filter((t) => t.intermediate.length > 0).slice(-INTERMEDIATE_MAX);
    $("intermediate-empty").hidden = reporting.length > 0;
    $("plot-intermediate").hidden = reporting.length === 0;
    if (!reporting.length) return;
    const shownStates = new Set();
    const traces = reporting.map((t) => {
      const first = !shownStates.has(t.state);
      shownStates.add(t.state);
      return {
        type: "scatter", mode: t.intermediate.length <= 12 ? "lines+markers" : "lines", name: t.state, legendgroup: t.state, showlegend: first,
        meta: "trial", x: t.intermediate.map((p) => p[0]), y: t.intermediate.map((p) => p[1]),
        line: { color: COLORS[t.state] || COLORS.waiting, width: 1.5, dash: t.state === "running" ? "dot" : "solid" },
        marker: { size: 4 }, opacity: t.state === "complete" ? 0.55 : 0.9,
        hovertemplate: `trial ${t.number} (${t.state})<br>step %{x}: %{y:.5g}<extra></extra>`,
      };
    });
    const logY = $("intermediate-log").checked && reporting.every((t) => t.intermediate.every((p) => p[1] === null || p[1] > 0));
    Plotly.react("plot-intermediate", traces, layout({ xaxis: { title: { text: "step" } }, yaxis: { title: { text: "intermediate value" }, type: logY ? "log" : "linear" } }), PLOT_CONFIG);
    hpod.setText("intermediate-note", `${reporting.length} trials${reporting.length === INTERMEDIATE_MAX ? " (latest)" : ""}`);
  }

  function renderPareto(rows) {
    if (directions.length < 2) return;
    $("pareto-panel").hidden = false;
    $("intermediate-panel").classList.remove("full");
    const complete = rows.filter((t) => t.state === "complete" && t.values);
    const front = new Set((status.best_trials || []).map((t) => t.number));
    const onFront = complete.filter((t) => front.has(t.number)).sort((a, b) => a.values[0] - b.values[0]);
    const others = complete.filter((t) => !front.has(t.number));
    const trace = (list, name, color, size, mode) => ({
      type: "scatter", mode, name, meta: name === "Pareto front" ? "front" : "dominated",
      x: list.map((t) => t.values[0]), y: list.map((t) => t.values[1]),
      marker: { color, size }, line: { color, shape: "hv", width: 1 },
      text: list.map((t) => `trial ${t.number}<br>${hoverParams(t)}`),
      hovertemplate: "%{text}<br>(%{x:.5g}, %{y:.5g})<extra></extra>",
    });
    Plotly.react("plot-pareto", [
      trace(others, "dominated", "#b8c2d3", 6, "markers"),
      trace(onFront, "Pareto front", COLORS.fail, 9, "markers+lines"),
    ], layout({
      xaxis: { title: { text: `objective 0 (${directions[0]})` } },
      yaxis: { title: { text: `objective 1 (${directions[1]})` } },
    }), PLOT_CONFIG);
    hpod.setText("pareto-note", `${onFront.length} of ${complete.length} complete trials${directions.length > 2 ? "; first two objectives shown" : ""}`);
  }

  function dimension(name, param, rows) {
    const values = rows.map((t) => t.params[name]);
    if (param.type === "categorical") {
      const choices = param.choices.map((c) => String(c));
      return { label: name, values: values.map((v) => choices.indexOf(String(v))), tickvals: choices.map((_, i) => i), ticktext: choices, range: [0, Math.max(1, choices.length - 1)] };
    }
    if (param.log) {
      // Log-scaled parameters are drawn on log10 axes, labelled in their own units.
      const ticks = logTicks(param.low, param.high);
      return { label: `${name} (log)`, values: values.map((v) => Math.log10(v)), range: [Math.log10(param.low), Math.log10(param.high)], tickvals: ticks.map(Math.log10), ticktext: ticks.map(tickText) };
    }
    if (param.type === "int" && (param.high - param.low) / (param.step || 1) <= 10) {
      const ticks = [];
      for (let v = param.low; v <= param.high; v += param.step || 1) ticks.push(v);
      return { label: name, values, range: [param.low, param.high], tickvals: ticks, ticktext: ticks.map(String) };
    }
    return { label: name, values, range: [param.low, param.high] };
  }

  function tickText(v) {
    const abs = Math.abs(v);
    const short = Number(v.toPrecision(3));
    return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? short.toExponential() : String(short);
  }

  /** 1-2-5 steps of each decade within [low, high] (the ends when fewer than three fit). */
  function logTicks(low, high) {
    const ticks = [];
    for (let d = Math.floor(Math.log10(low)); d <= Math.ceil(Math.log10(high)); d += 1) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** d;
        if (v >= low * (1 - 1e-9) && v <= high * (1 + 1e-9)) ticks.push(Number(v.toPrecision(6)));
      }
    }
    if (ticks.length < 3) return [low, ...ticks.filter((t) => t !== low && t !== high), high];
    return ticks;
  }

  function renderParallel(rows) {
    const k = objective;
    const complete = rows.filter((t) => t.state === "complete" && t.values && t.values[k] !== null);
    $("parallel-empty").hidden = complete.length > 0;
    $("plot-parallel").hidden = complete.length === 0;
    if (!complete.length) return;
    const names = Object.keys(space).filter((n) => complete.every((t) => n in t.params));
    const omitted = Object.keys(space).length - names.length;
    const values = complete.map((t) => t.values[k]);
    const dims = names.map((n) => dimension(n, space[n], complete));
    dims.push({ label: directions.length === 1 ? "value" : `objective ${k}`, values });
    Plotly.react("plot-parallel", [{
      type: "parcoords", meta: "trials", dimensions: dims,
      line: { color: values, colorscale: "Viridis", reversescale: directions[k] === "minimize", showscale: true, colorbar: { thickness: 12, title: { text: "value", side: "right" } } },
      labelfont: { size: 12 }, tickfont: { size: 11 },
    }], { ...BASE_LAYOUT, height: 360, margin: { l: 60, r: 60, t: 48, b: 24 } }, PLOT_CONFIG);
    hpod.setText("parallel-note", `${complete.length} complete trials${omitted ? `; ${omitted} conditional parameter(s) left out` : ""}`);
  }

  function renderImportance(answer) {
    const empty = $("importance-empty");
    const names = Object.keys(answer.importances || {});
    if (!answer.ready || !names.length) {
      empty.textContent = answer.reason ? `Not yet: ${answer.reason}.` : "No importances yet.";
      empty.hidden = false;
      $("plot-importance").hidden = true;
      hpod.setText("importance-note", "");
      return;
    }
    empty.hidden = true;
    $("plot-importance").hidden = false;
    names.sort((a, b) => answer.importances[a] - answer.importances[b]);
    Plotly.react("plot-importance", [{
      type: "bar", orientation: "h", meta: "importance", x: names.map((n) => answer.importances[n]), y: names,
      marker: { color: COLORS.complete }, hovertemplate: "%{y}: %{x:.3f}<extra></extra>",
    }], layout({
      margin: { l: 110, r: 16, t: 8, b: 44 },
      height: Math.max(200, 60 + 28 * names.length),
      xaxis: { title: { text: "importance (share)" }, range: [0, 1] },
      yaxis: { automargin: true },
    }), PLOT_CONFIG);
    hpod.setText("importance-note", `from ${answer.complete_trials} complete trials (mean decrease in impurity)`);
  }

  // --- rendering: tables -------------------------------------------------------------

  function valuesText(t) {
    if (t.values) return t.values.map((v) => num(v)).join(", ");
    if (t.state === "pruned") { const v = lastIntermediate(t); return v === null ? "–" : `${num(v)} (last step)`; }
    return "–";
  }

  function stateCell(t) {
    const badge = el("span", { class: `badge state-${t.state}`, title: t.error || null }, t.state === "fail" ? "failed" : t.state);
    if (!t.transferred) return badge;
    // A configuration carried over from a past study (transfer): say from which.
    return el("span", {}, badge, el("span", { class: "muted transferred", title: `transferred from study ${t.transferred}` }, ` from ${t.transferred}`));
  }

  function renderTrialsTable(rows) {
    const latest = rows.slice(-TABLE_ROWS).reverse();
    const now = Date.now();
    const body = latest.map((t) => {
      const running = t.state === "running" && t.datetime_start;
      const dur = running ? (now - new Date(t.datetime_start).getTime()) / 1000 : t.duration;
      return el("tr", { class: `state-${t.state}`, dataset: { trial: t.number } },
        el("td", { class: "num" }, t.number),
        el("td", {}, stateCell(t)),
        el("td", { class: "num" }, valuesText(t)),
        el("td", { class: "num" }, running ? `${hpod.duration(dur)}…` : hpod.duration(dur)),
        el("td", {}, t.datetime_complete ? hpod.clock(t.datetime_complete) : "–"),
        el("td", { class: "params" }, hpod.paramsText(t.params), t.error ? el("div", { class: "error-text", title: t.error }, String(t.error).split("\n")[0]) : null));
    });
    $("trials").tBodies[0].replaceChildren(...body);
    hpod.setText("trials-value-head", directions.length === 1 ? "Value" : "Values");
    hpod.setText("trials-note", rows.length > TABLE_ROWS ? `latest ${TABLE_ROWS} of ${status.n_trials}` : `${status.n_trials} trials`);
  }

  function renderBest() {
    const head = $("best").tHead;
    const body = $("best").tBodies[0];
    if (status.best) {
      hpod.setText("best-title", `Best parameters (trial ${status.best.number}, value ${num(status.best.value)})`);
      head.replaceChildren(el("tr", {}, el("th", {}, "Parameter"), el("th", { class: "num" }, "Value")));
      body.replaceChildren(...Object.entries(status.best.params).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(v, 6)))));
    } else if (status.best_trials && status.best_trials.length) {
      hpod.setText("best-title", `Pareto front (${status.best_trials.length} trials)`);
      const params = Object.keys(space);
      head.replaceChildren(el("tr", {}, el("th", { class: "num" }, "#"), ...directions.map((d, i) => el("th", { class: "num" }, `obj ${i} (${d.slice(0, 3)})`)), ...params.map((p) => el("th", {}, p))));
      body.replaceChildren(...status.best_trials.slice(0, 50).map((t) => el("tr", {},
        el("td", { class: "num" }, t.number),
        ...t.values.map((v) => el("td", { class: "num" }, num(v))),
        ...params.map((p) => el("td", {}, p in t.params ? num(t.params[p]) : "–")))));
    } else {
      head.replaceChildren();
      body.replaceChildren();
    }
    $("best-empty").hidden = Boolean(status.best || (status.best_trials && status.best_trials.length));
  }

  function renderObjectiveSelect() {
    const select = $("objective-select");
    if (directions.length < 2 || select.options.length) return;
    select.replaceChildren(...directions.map((d, i) => el("option", { value: i }, `objective ${i} (${d})`)));
    select.hidden = false;
    select.addEventListener("change", () => {
      objective = Number(select.value);
      renderAll();
      loadImportance().catch(console.warn);
    });
  }

  function renderAll() {
    if (!status) return;
    const rows = sortedTrials();
    renderHeader();
    renderCards();
    renderActions();
    renderEfficiency();
    renderStrategy();
    renderTransfer();
    renderObjectiveSelect();
    renderBest();
    renderTrialsTable(rows);
    if (!hasPlotly()) {
      for (const id of ["plot-compute", "plot-history", "plot-intermediate", "plot-parallel", "plot-importance"]) {
        $(id).replaceChildren(el("p", { class: "empty" }, "Plotly.js is not available on this daemon (pip install plotly)."));
      }
      $("importance-empty").hidden = true;
      return;
    }
    renderHistory(rows);
    renderCompute(rows);
    renderIntermediate(rows);
    renderPareto(rows);
    renderParallel(rows);
    const complete = (status.counts || {}).complete || 0;
    if (complete !== completeSeen) {
      completeSeen = complete;
      importanceSoon();
    }
  }

  // --- live ----------------------------------------------------------------------------

  function onEvent(event) {
    if (event.study !== NAME && !(event.event === "mode.changed" && event.study === null)) return;
    hpod.logActivity(event);
    switch (event.event) {
      case "trial.completed":
      case "trial.pruned":
      case "trial.failed":
        meter.add();
        applyEvent(event);
        refreshSoon();
        break;
      case "study.completed":
      case "study.paused":
      case "study.resumed":
      case "study.budget_changed":
      case "strategy.chosen":
      case "study.transfer":
        refreshSoon();
        break;
      case "mode.changed":
        if (event.study === NAME && status) {
          status.mode = event.mode;
          renderHeader();
          renderActions();
          refreshSoon(); // the plan shown in the efficiency panel follows the mode
        }
        break;
      default:
        break;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    hpod.setText("study-name", NAME);
    hpod.setText("crumb-name", NAME);
    setupActions();
    for (const id of ["history-log", "intermediate-log"]) $(id).addEventListener("change", renderAll);
    hpod.connectEvents(`study=${encodeURIComponent(NAME)}`, onEvent, () => resync().catch(console.warn));
    start().catch((err) => showError(`Cannot read the study: ${err.message}`));
    hpod.whileVisible(() => { if (status && status.running && status.in_flight > 0) refreshSoon(); }, INFLIGHT_POLL_MS);
    setInterval(() => { if (status) hpod.setText("card-rate", hpod.rateText(meter)); }, 5000);
  });
})();
