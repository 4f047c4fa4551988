// The irisgate dashboard: the rollouts list and one page per rollout, drawn from the gate's
// own API with plain DOM calls (no framework, no build step, nothing from a CDN).
//
// Why it is shaped this way:
// - The rollout page follows GET /v1/rollouts/{id}/stream (server-sent events carrying
//   exactly what GET /v1/rollouts/{id} answers), the same stream the CLI's --watch reads,
//   and redraws on every event; the list polls GET /v1/rollouts, which changes slowly.
// - Text from the API only ever becomes text nodes (never HTML), and the page runs under a
//   Content-Security-Policy with no inline script: a model name or a reason cannot run.
// - The API token lives in sessionStorage (this tab only, never in a URL) and is sent only
//   as a bearer header on the command POSTs; reading needs no token.
// - Charts are small inline SVGs built from the decisions' evidence: every analysis
//   records the canary's and stable's window, every shadow/watch judgement its pairs.
// - Evidence keys this page does not know are shown as they are (key/value or JSON), so
//   a newer gate never breaks an older dashboard.
"use strict";

(() => {
  const API = "../v1/rollouts"; // relative to /ui/: works behind a path prefix too
  const TOKEN_KEY = "irisgate.apiToken";
  const LIST_POLL_MS = 2000;
  const TERMINAL = new Set(["succeeded", "rolled_back", "failed", "aborted"]);
  const STAGE = { validating: 0, shadow: 1, progressing: 2, promoting: 3, watching: 4, succeeded: 5 };
  const SHOWN_EVIDENCE = new Set([
    "checks", "measurement", "totals", "paired", "hooks", "judged", "early", "passed_on",
  ]);
  const STATUS_TEXT = { 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Content" };
  const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched

  let stopView = () => {}; // ends the current view's timer or stream
  const openDetails = new Set(); // <details> a person opened, kept open across redraws

  // --- DOM helpers -------------------------------------------------------------------
  function setProps(el, props) {
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "disabled" || key === "hidden" || key === "checked") el[key] = Boolean(value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  const $ = (selector) => document.querySelector(selector);

  // A <details> that stays open across redraws (the page is rebuilt on every event).
  function details(key, summary, ...content) {
    const el = h("details", { open: openDetails.has(key) }, h("summary", {}, summary), ...content);
    el.addEventListener("toggle", () => (el.open ? openDetails.add(key) : openDetails.delete(key)));
    return el;
  }

  function table(headers, rows, props) {
    return h("table", props,
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows));
  }

  function kvTable(pairs) {
    return h("table", { class: "kv" }, h("tbody", {},
      pairs.map(([key, value]) => h("tr", {}, h("th", { scope: "row" }, key), h("td", {}, value)))));
  }

  // --- formatting --------------------------------------------------------------------
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const num = (x, digits = 4) =>
    !isNum(x) ? "–" : Math.abs(x) >= 1000 ? Math.round(x).toLocaleString("en") : String(Number(x.toPrecision(digits)));
  const pct = (x) => (isNum(x) ? `${num(100 * x, 3)} %` : "–");
  const ms = (seconds) => (isNum(seconds) ? `${num(1000 * seconds, 3)} ms` : "–");
  const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString("en-GB", { hour12: false }) : "–");

  function age(iso, now = Date.now()) {
    const seconds = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
    if (!Number.isFinite(seconds)) return "?";
    if (seconds < 60) return `${seconds}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, "0")}s`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${String(Math.floor(seconds % 3600 / 60)).padStart(2, "0")}m`;
    return `${Math.floor(seconds / 86400)}d${String(Math.floor(seconds % 86400 / 3600)).padStart(2, "0")}h`;
  }

  const ageSpan = (iso) => h("span", { "data-since": iso }, age(iso));

  function refreshAges() {
    for (const el of document.querySelectorAll("[data-since]")) el.textContent = age(el.dataset.since);
  }

  function phaseLabel(r) {
    return `${String(r.phase).replaceAll("_", " ")}${r.paused ? " · paused" : ""}`;
  }

  const badge = (text, kind) => h("span", { class: `badge ${kind}` }, text);
  const outcomeBadge = (outcome) => (outcome ? badge(outcome, `outcome-${outcome}`) : "–");

  // The stable the rollout began with: ``previous_version`` where the gate sends it
  // (``stable_version`` then names the stable the rollout leaves behind).
  const fromVersion = (r) => r.previous_version ?? r.stable_version ?? "–";

  function stepText(r) {
    const steps = r.steps || [];
    if (r.step_index < 0 || !steps.length) return `–/${steps.length}`;
    const shown = Math.min(r.step_index, steps.length - 1);
    return `${shown + 1}/${steps.length} (${steps[shown]} %)`;
  }

  function weightBar(weight) {
    return s("svg", { class: "weightbar", viewBox: "0 0 100 8", "aria-hidden": "true" },
      s("rect", { class: "track", x: 0, y: 0, width: 100, height: 8, rx: 2 }),
      s("rect", { class: "fill", x: 0, y: 0, width: Math.max(0, Math.min(100, weight)), height: 8, rx: 2 }));
  }

  // The unit of a check's numbers, from its name (the gate's check names; others plain).
  function checkFormat(name) {
    if (/^latency_p[\d.]+_ceiling$/.test(name)) return (x) => (isNum(x) ? `${num(x, 3)} ms` : "–");
    if (/^latency_p/.test(name)) return (x) => (isNum(x) ? `×${num(x, 3)}` : "–");
    if (/(rate|shift|disagreement|accuracy)/.test(name)) return pct;
    return (x) => num(x);
  }

  const interval = (bounds, format) =>
    Array.isArray(bounds) ? `[${bounds[0] === null ? "−∞" : format(bounds[0])}, ${bounds[1] === null ? "∞" : format(bounds[1])}]` : "–";

  // --- API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, statusText, detail) {
      super(`${status} ${statusText || STATUS_TEXT[status] || ""}: ${detail}`);
      this.status = status;
    }
  }

  async function failure(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = Array.isArray(body.detail)
        ? body.detail.map((i) => `${(i.loc || []).join(".")}: ${i.msg}`).join("; ")
        : String(body.detail ?? detail);
    } catch {
      // not JSON: the status says enough
    }
    return new ApiError(response.status, response.statusText, detail);
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  async function command(id, name, query = "", body = undefined) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Error("enter the API token (GATE_API_TOKEN) above first");
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(`${API}/${encodeURIComponent(id)}/${name}${query}`, {
      method: "POST", headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // --- page chrome -------------------------------------------------------------------
  function showBanner(text) {
    const banner = $("#banner");
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideBanner() {
    $("#banner").hidden = true;
  }

  function initToken() {
    const input = $("#token-input");
    const state = $("#token-state");
    const show = () => {
      const has = Boolean(sessionStorage.getItem(TOKEN_KEY));
      state.textContent = has ? "token set for this tab" : "no token: read only";
      state.className = has ? "ok" : "muted";
    };
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault(); // never a GET with the token in the URL
      const token = input.value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      input.value = "";
      show();
    });
    $("#token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      show();
    });
    show();
  }

  // --- the list ----------------------------------------------------------------------
  function rolloutsTable(rollouts) {
    if (!rollouts.length) {
      return h("p", { class: "muted" }, "No rollouts. Start one with ",
        h("code", {}, "irisgate rollouts create"), " or POST /v1/rollouts.");
    }
    const sorted = [...rollouts].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    return table(["Rollout", "Model", "Versions", "Phase", "Weight", "Step", "Age", "Message"],
      sorted.map((r) => h("tr", { "data-rollout": r.id, class: TERMINAL.has(r.phase) ? "ended" : "active" },
        h("td", {}, h("a", { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.id)),
        h("td", {}, r.model),
        h("td", {}, `${fromVersion(r)} → ${r.candidate?.version ?? "?"}`),
        h("td", {}, badge(phaseLabel(r), `phase-${r.phase}`)),
        h("td", { class: "weight" }, weightBar(r.canary_weight), ` ${r.canary_weight} %`),
        h("td", {}, stepText(r)),
        h("td", {}, ageSpan(r.created_at)),
        h("td", { class: "message" }, r.message))),
      { class: "rollouts" });
  }

  function showList() {
    document.title = "Rollouts · irisgate";
    const activeOnly = h("input", { type: "checkbox", id: "active-only" });
    const body = h("div", { id: "rollouts" }, h("p", { class: "muted" }, "Loading…"));
    const updated = h("span", { class: "muted" });
    $("#view").replaceChildren(
      h("div", { class: "heading" }, h("h1", {}, "Rollouts"),
        h("label", { class: "filter" }, activeOnly, " active only"), updated),
      body);
    let timer = 0;
    let alive = true;
    const schedule = (delay) => {
      clearTimeout(timer);
      timer = setTimeout(load, delay);
    };
    async function load() {
      const active = activeOnly.checked;
      try {
        const rollouts = await getJSON(active ? `${API}?active=true` : API);
        if (!alive || active !== activeOnly.checked) return;
        hideBanner();
        body.replaceChildren(rolloutsTable(rollouts));
        updated.textContent = `updated ${clock(new Date().toISOString())}`;
      } catch (error) {
        if (alive) showBanner(`Cannot list rollouts: ${error.message}`);
      } finally {
        if (alive) schedule(LIST_POLL_MS);
      }
    }
    activeOnly.addEventListener("change", () => schedule(0));
    load();
    stopView = () => {
      alive = false;
      clearTimeout(timer);
    };
  }

  // --- one rollout: what each section shows --------------------------------------------
  function timeline(r) {
    const spec = r.analysis || {};
    const reached = Math.max(STAGE[r.phase] ?? -1, ...r.decisions.map((d) => STAGE[d.phase] ?? -1));
    const stages = [{ label: "accuracy gate", done: reached > 0, current: r.phase === "validating" }];
    if (spec.shadow_s > 0 || r.decisions.some((d) => d.phase === "shadow")) {
      stages.push({ label: "shadow", done: reached > 1, current: r.phase === "shadow" });
    }
    (r.steps || []).forEach((weight, i) => stages.push({
      label: `${weight} %`,
      done: reached > 2 || (reached === 2 && r.step_index > i),
      current: r.phase === "progressing" && r.step_index === i,
    }));
    stages.push({ label: "promote", done: Boolean(r.promoted), current: r.phase === "promoting" });
    if (spec.watch_s > 0) {
      stages.push({ label: "watch", done: r.phase === "succeeded", current: r.phase === "watching" });
    }
    const unhappy = (TERMINAL.has(r.phase) && r.phase !== "succeeded") || r.phase === "rolling_back";
    const stopped = unhappy ? stages.find((stage) => !stage.done) : undefined;
    if (stopped) stopped.failed = true;
    return h("ol", { class: "timeline", "aria-label": "steps" },
      stages.map((stage) => h("li", {
        class: stage.failed ? "failed" : stage.current ? "current" : stage.done ? "done" : "todo",
        "aria-current": stage.current ? "step" : undefined,
      }, stage.label)),
      TERMINAL.has(r.phase) ? h("li", { class: `end phase-${r.phase}` }, r.phase.replaceAll("_", " ")) : null);
  }

  function checksTable(checks) {
    return table(
      ["Check", "Traffic", "Outcome", "Estimate", "Pass interval", "Margin", "Fail interval", "Fails above", "n canary / stable", "Detail"],
      checks.map((c) => {
        const f = checkFormat(c.name);
        return h("tr", { class: `check outcome-${c.outcome}`, "data-check": c.name },
          h("th", { scope: "row" }, c.name), h("td", {}, c.traffic ?? "live"),
          h("td", {}, outcomeBadge(c.outcome)), h("td", {}, f(c.estimate)),
          h("td", {}, interval(c.interval, f)), h("td", {}, f(c.margin)),
          h("td", {}, interval(c.fail_interval, f)), h("td", {}, f(c.fail_above)),
          h("td", {}, `${num(c.n_canary)} / ${isNum(c.n_stable) ? num(c.n_stable) : "–"}`),
          h("td", { class: "detail" }, c.detail, c.needs ? h("div", { class: "muted" }, `needs ${c.needs}`) : null));
      }),
      { class: "checks" });
  }

  // A latency quantile of a Prometheus-style cumulative histogram (``le`` -> count), as
  // histogram_quantile interpolates it: the gate compares this quantile.
  function quantile(buckets, q) {
    const sorted = Object.entries(buckets || {}).map(([le, n]) => [Number(le), n]).sort((a, b) => a[0] - b[0]);
    const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
    if (!(total > 0)) return null;
    const rank = q * total;
    let [lower, below] = [0, 0];
    for (const [bound, count] of sorted) {
      if (count >= rank) {
        if (!Number.isFinite(bound)) return lower; // in +Inf: the highest finite bound
        return count === below ? bound : lower + (bound - lower) * ((rank - below) / (count - below));
      }
      [lower, below] = [bound, count];
    }
    return lower;
  }

  function classMix(counts) {
    const total = Object.values(counts || {}).reduce((a, b) => a + b, 0);
    if (!total) return "–";
    return Object.entries(counts).sort().map(([name, n]) => `${name} ${pct(n / total)}`).join(" · ");
  }

  function measurementTable(m, q) {
    const rows = [];
    const add = (label, w) => {
      if (!w) return;
      rows.push(h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, num(w.requests)),
        h("td", {}, num(w.server_errors)), h("td", {}, w.requests ? pct(w.server_errors / w.requests) : "–"),
        h("td", {}, ms(quantile(w.latency_buckets, q))), h("td", {}, ms(w.p99_s)),
        h("td", {}, classMix(w.class_counts))));
    };
    add("stable", m.stable);
    add("canary", m.canary);
    if (m.generated) {
      add("stable (generated)", m.generated.stable);
      add("canary (generated)", m.generated.canary);
    }
    return table(["", "Requests", "Server errors", "Error rate", `p${num(q * 100)}`, "p99", "Predicted classes"],
      rows, { class: "stats" });
  }

  function flipMatrix(flips) {
    const entries = Object.entries(flips || {}).map(([key, n]) => [...key.split("->"), n]);
    if (!entries.length) return null;
    const classes = [...new Set(entries.flatMap(([a, b]) => [a, b]))].sort();
    const count = (a, b) => entries.find(([x, y]) => x === a && y === b)?.[2] ?? 0;
    return h("figure", { class: "flips" }, h("figcaption", {}, "Flip matrix: stable's class (rows) → the candidate's (columns)"),
      table(["", ...classes], classes.map((a) => h("tr", {}, h("th", { scope: "row" }, a),
        classes.map((b) => h("td", { class: a === b ? "same" : count(a, b) ? "flip" : "" }, num(count(a, b))))))));
  }

  function pairedTable(p) {
    const labelled = p.labelled_rows > 0;
    return h("div", { class: "paired" },
      kvTable([
        ["Replayed requests", num(p.requests)],
        ["Paired rows", num(p.rows)],
        ["Disagreements", `${num(p.disagreements)} (${p.rows ? pct(p.disagreements / p.rows) : "–"})`],
        ["Candidate errors", `${num(p.candidate_errors)}${p.requests ? ` (${pct(p.candidate_errors / p.requests)})` : ""}`],
        ["Not comparable / skipped", `${num(p.not_comparable)} / ${num(p.skipped)}`],
        ["Mean probability shift", p.shift_rows ? num(p.shift_sum / p.shift_rows) : "–"],
        ["Candidate latency (mean)", p.requests ? `${num(p.latency_ms_sum / p.requests, 3)} ms` : "–"],
        ["Labelled rows", labelled
          ? `${num(p.labelled_rows)}: candidate ${pct(p.candidate_correct / p.labelled_rows)}, stable ${pct(p.stable_correct / p.labelled_rows)} right; only stable ${num(p.only_stable_correct)}, only candidate ${num(p.only_candidate_correct)}`
          : "none yet"],
      ]),
      flipMatrix(p.flips));
  }

  function hooksTable(hooks) {
    return table(["Hook", "Type", "Result", "Status", "Reason", "Duration"],
      hooks.map((hook) => h("tr", { class: hook.ok ? "hook-ok" : "hook-refused" },
        h("th", { scope: "row" }, hook.name ?? "?"), h("td", {}, hook.type ?? "–"),
        h("td", {}, badge(hook.ok ? "ok" : "refused", hook.ok ? "outcome-pass" : "outcome-fail")),
        h("td", {}, hook.status ?? "–"), h("td", { class: "detail" }, hook.reason ?? ""),
        h("td", {}, isNum(hook.duration_ms) ? `${num(hook.duration_ms, 3)} ms` : "–"))),
      { class: "hooks" });
  }

  // Evidence this page has no view for (and the settings): plain values as key/value, a
  // list of plain values on one line, anything deeper as JSON behind a toggle.
  function otherEvidence(evidence, key, shown = SHOWN_EVIDENCE) {
    const entries = Object.entries(evidence || {}).filter(([name]) => !shown.has(name));
    if (!entries.length) return null;
    const plain = (v) => v === null || typeof v !== "object";
    const flat = entries.filter(([, v]) => plain(v) || (Array.isArray(v) && v.every(plain)));
    const deep = entries.filter((entry) => !flat.includes(entry));
    const text = (v) => (isNum(v) ? num(v, 6) : Array.isArray(v) ? v.map(text).join(", ") || "none" : String(v));
    return h("div", { class: "other" },
      flat.length ? kvTable(flat.map(([name, v]) => [name, text(v)])) : null,
      deep.map(([name, v]) => details(`${key}:${name}`, name, h("pre", {}, JSON.stringify(v, null, 2)))));
  }

  function analysisCard(d, index, q) {
    const e = d.evidence;
    const judged = e.judged;
    const about = [
      judged ? `judged step ${judged.step_index + 1} at ${judged.canary_weight} %` : d.phase,
      e.early ? "decided early" : null,
      e.passed_on ? `passed on ${e.passed_on} traffic` : null,
    ].filter(Boolean).join(" · ");
    return h("article", { class: `analysis outcome-${d.outcome}`, "data-decision": index },
      h("header", {}, h("span", { class: "time" }, clock(d.at)), outcomeBadge(d.outcome),
        h("strong", {}, d.action), h("span", { class: "muted" }, about)),
      h("p", { class: "reason" }, d.reason),
      checksTable(e.checks),
      e.measurement ? details(`m${index}`, `Window statistics (${num(e.measurement.window_s, 3)} s)`, measurementTable(e.measurement, q)) : null,
      e.totals ? details(`t${index}`, "Rollout so far", measurementTable(e.totals, q)) : null,
      e.paired ? details(`p${index}`, "Paired evidence (same requests)", pairedTable(e.paired)) : null,
      Array.isArray(e.hooks) && e.hooks.length ? hooksTable(e.hooks) : null,
      otherEvidence(e, `a${index}`));
  }

  function whyItFailed(r) {
    const failed = [...r.decisions].reverse().find((d) => d.outcome === "fail");
    const unhappy = TERMINAL.has(r.phase) && r.phase !== "succeeded";
    if (!failed && !unhappy) return null;
    const checks = (failed?.evidence?.checks || []).filter((c) => c.outcome === "fail");
    const title = r.phase === "rolled_back" || r.phase === "rolling_back" ? "Why it was rolled back"
      : r.phase === "failed" ? "Why it failed" : r.phase === "aborted" ? "Why it ended" : "Latest failed analysis";
    return h("section", { class: "why", id: "why" }, h("h2", {}, title),
      h("p", { class: "reason" }, unhappy ? r.message : failed.reason),
      failed && unhappy && failed.reason !== r.message ? h("p", { class: "muted" }, `failed analysis at ${clock(failed.at)}: ${failed.reason}`) : null,
      checks.length ? checksTable(checks) : null);
  }

  function evidenceBlock(d, index) {
    const e = d.evidence || {};
    if (!Object.keys(e).length) return null;
    return h("div", {},
      Array.isArray(e.hooks) && e.hooks.length ? hooksTable(e.hooks) : null,
      Array.isArray(e.checks) ? h("p", { class: "muted" }, "checks: see Analyses above") : null,
      otherEvidence(e, `h${index}`));
  }

  function history(r) {
    return table(["At", "Phase", "Action", "Outcome", "Weight", "Reason"],
      r.decisions.map((d, i) => {
        const more = evidenceBlock(d, i);
        return h("tr", { class: `decision outcome-${d.outcome ?? "none"}` },
          h("td", { class: "time" }, clock(d.at)), h("td", {}, d.phase), h("td", {}, d.action),
          h("td", {}, outcomeBadge(d.outcome)), h("td", {}, `${d.canary_weight} %`),
          h("td", { class: "detail" }, d.reason, more ? details(`d${i}`, "evidence", more) : null));
      }).reverse(),
      { class: "history" });
  }

  function allHooks(r) {
    const rows = r.decisions.flatMap((d) => (Array.isArray(d.evidence?.hooks) ? d.evidence.hooks.map((hook) => ({ ...hook, at: d.at, action: d.action })) : []));
    if (!rows.length) return null;
    return h("section", { id: "hooks" }, h("h2", {}, "Hook results"),
      table(["At", "Decision", "Hook", "Type", "Result", "Status", "Reason", "Duration"],
        rows.reverse().map((hook) => h("tr", { class: hook.ok ? "hook-ok" : "hook-refused" },
          h("td", { class: "time" }, clock(hook.at)), h("td", {}, hook.action),
          h("th", { scope: "row" }, hook.name ?? "?"), h("td", {}, hook.type ?? "–"),
          h("td", {}, badge(hook.ok ? "ok" : "refused", hook.ok ? "outcome-pass" : "outcome-fail")),
          h("td", {}, hook.status ?? "–"), h("td", { class: "detail" }, hook.reason ?? ""),
          h("td", {}, isNum(hook.duration_ms) ? `${num(hook.duration_ms, 3)} ms` : "–"))),
        { class: "hooks" }));
  }

  // --- charts ------------------------------------------------------------------------
  function series(r) {
    const q = r.analysis?.latency_quantile ?? 0.95;
    const out = { weight: [], errStable: [], errCanary: [], latStable: [], latCanary: [], mix: [], disagreement: [] };
    // The candidate's share of traffic: after a promotion it is the stable and answers
    // everything (canary_weight drops to 0 then, which would read like a rollback).
    let promoted = false;
    for (const d of r.decisions) {
      const t = Date.parse(d.at);
      if (d.action === "promoted" || d.action === "watch") promoted = true;
      if (d.action === "rolled-back" || d.action === "aborted") promoted = false;
      out.weight.push([t, promoted ? 100 : d.canary_weight]);
      const m = d.evidence?.measurement;
      if (m?.stable && m?.canary) {
        if (m.stable.requests > 0) out.errStable.push([t, m.stable.server_errors / m.stable.requests]);
        if (m.canary.requests > 0) out.errCanary.push([t, m.canary.server_errors / m.canary.requests]);
        const [ls, lc] = [quantile(m.stable.latency_buckets, q), quantile(m.canary.latency_buckets, q)];
        if (ls !== null) out.latStable.push([t, 1000 * ls]);
        if (lc !== null) out.latCanary.push([t, 1000 * lc]);
        out.mix.push({ t, stable: m.stable.class_counts || {}, canary: m.canary.class_counts || {} });
      }
      const p = d.evidence?.paired;
      if (p?.rows > 0) out.disagreement.push([t, p.disagreements / p.rows]);
    }
    const end = TERMINAL.has(r.phase) ? Date.parse(r.updated_at) : Math.max(Date.now(), Date.parse(r.updated_at));
    const stableNow = r.promoted && r.stable_version === r.candidate?.version;
    out.weight.push([end, stableNow ? 100 : r.canary_weight]);
    out.span = [Date.parse(r.created_at), end];
    return out;
  }

  const W = 420, H = 170, L = 46, R = 8, T = 10, B = 24;

  function frame(title, body, legend) {
    return h("figure", { class: "chart" }, h("figcaption", {}, title), body,
      legend ? h("div", { class: "legend" }, legend.map(([name, cls]) => h("span", { class: `key ${cls}` }, name))) : null);
  }

  // Every chart spans the rollout's whole life (``span``), so their times line up.
  function lineChart({ title, lines, format, span, refs = [], stepped = false, yMax, empty = "no analysis yet" }) {
    const points = lines.flatMap((line) => line.points);
    if (!points.length) return frame(title, h("p", { class: "muted empty" }, empty));
    let [x0, x1] = [Math.min(span[0], ...points.map((p) => p[0])), Math.max(span[1], ...points.map((p) => p[0]))];
    if (x1 - x0 < 1000) [x0, x1] = [x0 - 5000, x1 + 5000];
    const values = points.map((p) => p[1]).concat(refs.map((ref) => ref.value));
    const y0 = Math.min(0, ...values);
    let y1 = yMax ?? Math.max(...values) * 1.15;
    if (!(y1 > y0)) y1 = y0 + 1;
    const x = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
    const y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    for (let i = 0; i <= 4; i += 1) {
      const v = y0 + ((y1 - y0) * i) / 4;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s("text", { class: "tick", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, format(v)));
    }
    svg.append(s("text", { class: "tick", x: L, y: H - 6 }, clock(new Date(x0).toISOString())),
      s("text", { class: "tick", x: W - R, y: H - 6, "text-anchor": "end" }, clock(new Date(x1).toISOString())));
    for (const ref of refs) {
      svg.append(s("line", { class: `ref ${ref.cls || ""}`, x1: L, x2: W - R, y1: y(ref.value), y2: y(ref.value) }),
        s("text", { class: "reflabel", x: W - R - 2, y: y(ref.value) - 3, "text-anchor": "end" }, ref.label));
    }
    for (const line of lines) {
      if (!line.points.length) continue;
      let path = "";
      line.points.forEach(([t, v], i) => {
        path += i === 0 ? `M${x(t)},${y(v)}` : stepped ? `H${x(t)}V${y(v)}` : `L${x(t)},${y(v)}`;
      });
      svg.append(s("path", { class: `line ${line.cls}`, d: path }));
      for (const [t, v] of line.points) {
        svg.append(s("circle", { class: `dot ${line.cls}`, cx: x(t), cy: y(v), r: 2.5 },
          s("title", {}, `${line.name} ${format(v)} at ${clock(new Date(t).toISOString())}`)));
      }
    }
    return frame(title, svg, lines.length > 1 ? lines.map((line) => [line.name, line.cls]) : null);
  }

  // Predicted-class mix per analysis: stable's and the canary's answers side by side.
  function mixChart(mix) {
    const title = "Predicted classes per analysis (stable | canary)";
    if (!mix.length) return frame(title, h("p", { class: "muted empty" }, "no analysis yet"));
    const shown = mix.slice(-10);
    const classes = [...new Set(shown.flatMap((m) => [...Object.keys(m.stable), ...Object.keys(m.canary)]))].sort();
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    const slot = (W - L - R) / shown.length;
    const bar = Math.min(18, slot / 3);
    const y = (v) => T + (1 - v) * (H - T - B);
    for (const v of [0, 0.5, 1]) {
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s("text", { class: "tick", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, `${v * 100} %`));
    }
    shown.forEach((m, i) => {
      const centre = L + slot * (i + 0.5);
      [["stable", m.stable, centre - bar - 1], ["canary", m.canary, centre + 1]].forEach(([role, counts, left]) => {
        const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
        let top = 0;
        classes.forEach((name, k) => {
          const share = (counts[name] || 0) / total;
          svg.append(s("rect", { class: `c${k % 6} ${role}`, x: left, width: bar, y: y(top + share), height: y(top) - y(top + share) },
            s("title", {}, `${role} ${name} ${pct(share)} at ${clock(new Date(m.t).toISOString())}`)));
          top += share;
        });
      });
      svg.append(s("text", { class: "tick", x: centre, y: H - 6, "text-anchor": "middle" }, clock(new Date(m.t).toISOString()).slice(0, 5 + 3 * (shown.length <= 5))));
    });
    return frame(title, svg, classes.map((name, k) => [name, `c${k % 6}`]));
  }

  function charts(r) {
    const data = series(r);
    const spec = r.analysis || {};
    const q = spec.latency_quantile ?? 0.95;
    const msFormat = (v) => `${num(v, 2)} ms`;
    return h("section", { class: "charts", id: "charts" },
      lineChart({ title: "Candidate's share of traffic (100 % once promoted)", lines: [{ name: "candidate share", cls: "canary", points: data.weight }], format: (v) => `${Math.round(v)} %`, span: data.span, stepped: true, yMax: 100 }),
      lineChart({
        title: "Server-error rate per analysis window",
        lines: [{ name: "stable", cls: "stable", points: data.errStable }, { name: "canary", cls: "canary", points: data.errCanary }],
        format: pct,
        span: data.span,
        refs: isNum(spec.max_error_rate) ? [{ value: spec.max_error_rate, label: "ceiling", cls: "ceiling" }] : [],
      }),
      lineChart({
        title: `Latency p${num(q * 100)} per analysis window`,
        lines: [{ name: "stable", cls: "stable", points: data.latStable }, { name: "canary", cls: "canary", points: data.latCanary }],
        format: msFormat,
        span: data.span,
      }),
      mixChart(data.mix),
      lineChart({
        title: "Shadow / watch: disagreement on the same requests",
        lines: [{ name: "disagreement", cls: "paired", points: data.disagreement }],
        format: pct,
        span: data.span,
        refs: isNum(spec.shadow_disagreement_margin) ? [{ value: spec.shadow_disagreement_margin, label: "margin", cls: "ceiling" }] : [],
        empty: spec.shadow_s > 0 || spec.watch_s > 0 ? "no paired requests judged yet" : "this rollout has no shadow phase or watch",
      }));
  }

  // --- one rollout: the page -----------------------------------------------------------
  function summary(r) {
    const spec = r.analysis || {};
    return kvTable([
      ["Model", r.model],
      ["Versions", `stable ${fromVersion(r)} → candidate ${r.candidate?.version ?? "?"}`],
      ["Weight", h("span", { class: "weight" }, weightBar(r.canary_weight), " ", h("strong", { id: "weight" }, `${r.canary_weight} %`),
        r.promoted && r.phase === "succeeded" ? h("span", { class: "muted" }, " (promoted: the candidate is the stable now)") : null)],
      ["Step", `${stepText(r)} of ${(r.steps || []).join(" → ")} %`],
      ["Counts", `failures ${r.failures}/${spec.failure_limit ?? "?"}, inconclusive ${r.inconclusive}/${spec.inconclusive_limit ?? "?"}, errors ${r.errors}/${spec.error_limit ?? "?"}`],
      ["Message", h("span", { id: "message" }, r.message)],
      ["Age", h("span", {}, ageSpan(r.created_at), h("span", { class: "muted" }, ` · updated ${clock(r.updated_at)}`))],
    ]);
  }

  function showRollout(id) {
    document.title = `Rollout ${id} · irisgate`;
    const view = $("#view");
    const url = `${API}/${encodeURIComponent(id)}`;
    let current = null;
    let source = null;
    let retry = 0;
    let alive = true;
    let live = "connecting";
    let note = null; // the last command's result: { ok, text }
    let busy = false;
    let abortArmedUntil = 0;
    view.replaceChildren(h("p", { class: "muted" }, `Connecting to rollout ${id}…`));

    async function run(label, name, query = "", body = undefined) {
      busy = true;
      render();
      try {
        const state = await command(id, name, query, body);
        current = { ...current, ...state }; // the stream brings the decisions shortly
        note = { ok: true, text: `${label}: done at ${clock(new Date().toISOString())} — ${phaseLabel(state)}` };
      } catch (error) {
        const hint = error.status === 401 ? " (is the API token right?)" : "";
        note = { ok: false, text: `${label} refused: ${error.message}${hint}` };
        if (!sessionStorage.getItem(TOKEN_KEY)) $("#token-input").focus();
      } finally {
        busy = false;
        render();
      }
    }

    function controls(r) {
      const ended = TERMINAL.has(r.phase);
      const promotable = ["progressing", "shadow", "watching"].includes(r.phase);
      const armed = Date.now() < abortArmedUntil;
      const button = (text, enabled, onclick, cls = "") =>
        h("button", { type: "button", class: cls, disabled: busy || !enabled, onclick }, text);
      return h("section", { class: "controls", "aria-label": "commands" },
        button("Pause", !ended && !r.paused, () => run("Pause", "pause")),
        button("Resume", !ended && r.paused, () => run("Resume", "resume")),
        button("Promote: next step", promotable, () => run("Promote next step", "promote")),
        button("Promote: full", promotable, () => run("Promote full", "promote", "?full=true")),
        r.held_by ? button(`Approve ${r.held_by}`, !ended, () => run("Approve", "approve", "", { type: r.held_by }), "approve") : null,
        button(armed ? "Confirm abort" : "Abort", !ended && !["promoting", "rolling_back"].includes(r.phase), () => {
          if (Date.now() < abortArmedUntil) {
            abortArmedUntil = 0;
            run("Abort", "abort");
          } else {
            abortArmedUntil = Date.now() + 5000; // a second click within 5 s aborts
            render();
            setTimeout(() => alive && render(), 5100);
          }
        }, "danger"),
        note ? h("p", { class: note.ok ? "note ok" : "note error", role: note.ok ? "status" : "alert", id: "command-result" }, note.text) : null);
    }

    function render() {
      if (!alive || !current) return;
      const r = current;
      const q = r.analysis?.latency_quantile ?? 0.95;
      const analyses = r.decisions.map((d, i) => [d, i]).filter(([d]) => Array.isArray(d.evidence?.checks)).reverse();
      const scroll = window.scrollY;
      view.replaceChildren(...[
        h("div", { class: "heading" },
          h("h1", {}, "Rollout ", h("code", {}, r.id)),
          h("span", { id: "phase", class: `badge phase-${r.phase}` }, phaseLabel(r)),
          r.held_by ? h("span", { id: "held", class: "badge held" }, `held: ${r.held_by}`) : null,
          h("span", { id: "live", class: `live ${live}` }, live),
          h("a", { href: "#/", class: "back" }, "← all rollouts")),
        h("div", { class: "top" }, summary(r), controls(r)),
        timeline(r),
        whyItFailed(r),
        h("h2", {}, "Canary vs stable over time"),
        charts(r),
        allHooks(r),
        h("section", { id: "analyses" }, h("h2", {}, `Analyses (${analyses.length})`),
          analyses.length ? analyses.map(([d, i]) => analysisCard(d, i, q)) : h("p", { class: "muted" }, "No analysis yet: the canary steps have not been judged.")),
        h("section", { id: "history" }, h("h2", {}, `Decisions (${r.decisions.length})`), history(r)),
        h("section", { id: "settings" }, details("settings", "Analysis settings",
          otherEvidence(r.analysis, "settings", new Set()))),
      ].filter(Boolean));
      window.scrollTo(0, scroll);
    }

    function setLive(state) {
      live = state;
      const el = $("#live");
      if (el) {
        el.textContent = state;
        el.className = `live ${state}`;
      }
    }

    function connect() {
      source = new EventSource(`${url}/stream`);
      source.addEventListener("open", () => setLive("live"));
      source.addEventListener("rollout", (event) => {
        current = JSON.parse(event.data);
        hideBanner();
        live = TERMINAL.has(current.phase) ? "ended" : "live";
        if (live === "ended") source.close(); // a terminal rollout changes no more
        render();
      });
      source.addEventListener("error", async () => {
        if (!alive || source.readyState !== EventSource.CLOSED) {
          setLive("reconnecting"); // the browser connects again by itself
          return;
        }
        // refused (404, 5xx): say why, and try again unless there is no such rollout
        try {
          current = await getJSON(url);
          render();
          if (!TERMINAL.has(current.phase)) retry = setTimeout(connect, 3000);
        } catch (error) {
          showBanner(`Rollout ${id}: ${error.message}`);
          if (error.status !== 404) retry = setTimeout(connect, 5000);
        }
      });
    }

    connect();
    stopView = () => {
      alive = false;
      clearTimeout(retry);
      if (source) source.close();
    };
  }

  // --- routes --------------------------------------------------------------------------
  function route() {
    stopView();
    stopView = () => {};
    hideBanner();
    const match = /^#\/rollouts\/([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
    if (match) showRollout(match[1]);
    else showList();
  }

  initToken();
  window.addEventListener("hashchange", route);
  setInterval(refreshAges, 1000);
  route();
})();
