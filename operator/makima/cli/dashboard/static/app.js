// makima dashboard: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
// Routes: #/ (directives), #/d/NAMESPACE/NAME (a directive), #/d/NAMESPACE/NAME/STEP (with a step open).
// Live data arrives as server-sent events from this process, which watches Kubernetes.
"use strict";

const PHASES = ["Pending", "Planning", "Executing", "Completing", "Completed", "Paused", "Failed"];
const STEP_PHASES = ["Pending", "Ready", "Running", "Succeeded", "Failed", "Skipped"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  config: null,
  sources: [],       // open EventSources of the current view
  timers: [],
  view: null,        // what the current view needs to update itself
};

// ---- small DOM helpers (text only: nothing from the API is parsed as HTML) ------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the page's CSP, unlike a style attribute
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) node.append(c);
  return node;
}

function phaseBadge(phase, id) {
  return el("span", { class: `phase phase-${phase}`, id, "data-phase": phase, text: phase });
}

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return `${value.toFixed(1)} s`;
  return `${Math.floor(value / 60)}m${Math.round(value % 60)}s`;
}

function duration(start, end) {
  if (!start) return "";
  const a = Date.parse(start), b = end ? Date.parse(end) : Date.now();
  return seconds(Math.max(0, (b - a) / 1000));
}

function notice(message) {
  const box = document.getElementById("notice");
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = message;
}

function setConn(kind, text) {
  const c = document.getElementById("conn");
  c.className = `conn ${kind}`;
  c.textContent = text;
}

function q(params) {
  return new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")).toString();
}

function stream(path, params, handlers) {
  const source = new EventSource(`${path}?${q(params)}`);
  source.onopen = () => setConn("live", "live");
  source.onerror = () => setConn("down", "reconnecting");
  for (const [event, fn] of Object.entries(handlers)) {
    source.addEventListener(event, (e) => fn(JSON.parse(e.data)));
  }
  state.sources.push(source);
  return source;
}

function teardown() {
  for (const s of state.sources) s.close();
  for (const t of state.timers) clearInterval(t);
  state.sources = [];
  state.timers = [];
  state.view = null;
  notice(null);
}

async function postAction(ns, name, action, step) {
  const resp = await fetch(`/api/action?${q({ namespace: ns, name, action, step })}`, {
    method: "POST",
    headers: { "X-Makima-Dashboard": "1" },
  });
  let body = {};
  try { body = await resp.json(); } catch (e) { body = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) {
    const err = new Error(body.error || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

// ---- router ----------------------------------------------------------------------------------

function route() {
  teardown();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren();
  if (parts[0] === "d" && parts.length >= 3) {
    crumbs.append(el("a", { href: `#/?namespace=${encodeURIComponent(parts[1])}`, text: parts[1] }), " / ", parts[2]);
    directiveView(parts[1], parts[2], parts[3] || null);
  } else {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    listView(params.get("namespace") || state.config.namespace, params.get("phase") || "");
  }
}

// ---- the list --------------------------------------------------------------------------------

function listView(namespace, phaseFilter) {
  const view = document.getElementById("view");
  const nsInput = el("input", { id: "ns", value: namespace, size: 18, "aria-label": "namespace" });
  const phaseSelect = el("select", { id: "phase-filter", "aria-label": "phase" },
    el("option", { value: "", text: "all phases" }),
    PHASES.map((p) => el("option", { value: p, text: p, selected: p === phaseFilter })));
  const go = () => { location.hash = `#/?${q({ namespace: nsInput.value.trim(), phase: phaseSelect.value })}`; };
  nsInput.addEventListener("change", go);
  phaseSelect.addEventListener("change", go);
  const tbody = el("tbody", { id: "directive-rows" });
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("label", { for: "ns", text: "namespace" }), nsInput,
      el("label", { for: "phase-filter", text: "phase" }), phaseSelect,
      el("span", { class: "muted small", id: "count" })),
    el("table", { id: "directives" },
      el("thead", {}, el("tr", {}, ["name", "title", "phase", "progress", "pull request", "age"].map((h) => el("th", { text: h })))),
      tbody));
  const rows = new Map();

  function render() {
    const shown = [...rows.values()]
      .filter((r) => !phaseFilter || r.phase === phaseFilter)
      .sort((a, b) => a.name.localeCompare(b.name));
    tbody.replaceChildren(...shown.map(rowOf));
    if (!shown.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: 6, text: rows.size ? "no directive in this phase" : `no directives in namespace ${namespace}` })));
    }
    document.getElementById("count").textContent = `${shown.length} of ${rows.size}`;
  }

  function rowOf(r) {
    const pct = r.total ? Math.round((100 * r.done) / r.total) : 0;
    return el("tr", { "data-name": r.name },
      el("td", {}, el("a", { href: `#/d/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`, text: r.name })),
      el("td", { text: r.title }),
      el("td", {}, phaseBadge(r.phase), r.paused && r.phase !== "Paused" ? el("span", { class: "muted small", text: " (pausing)" }) : null),
      el("td", {}, el("span", { class: "bar", title: `${r.done}/${r.total}` }, el("span", { style: `width:${pct}%` })),
        el("span", { class: "bar-text", text: r.total ? `${r.done}/${r.total}` : "–" })),
      el("td", {}, r.prUrl ? el("a", { href: r.prUrl, target: "_blank", rel: "noopener noreferrer", text: r.prUrl.replace(/^.*\//, "#") }) : el("span", { class: "muted", text: "–" })),
      el("td", { class: "age", "data-created": r.created || "", text: age(r.created) }));
  }

  stream("/api/watch/directives", { namespace }, {
    directives: (d) => { notice(null); rows.clear(); for (const r of d.items) rows.set(r.name, r); render(); },
    directive: (r) => { rows.set(r.name, r); render(); },
    removed: (r) => { rows.delete(r.name); render(); },
    problem: (p) => notice(p.message),
  });
  state.timers.push(setInterval(() => {
    for (const td of tbody.querySelectorAll("td.age")) td.textContent = age(td.dataset.created);
  }, 5000));
}

// ---- a directive -----------------------------------------------------------------------------

function directiveView(namespace, name, openStep) {
  const view = document.getElementById("view");
  const msg = el("span", { id: "action-msg", class: "action-msg", role: "status" });
  const act = (action, label) => el("button", {
    id: `btn-${action}`, type: "button", text: label,
    onclick: async (e) => {
      e.target.disabled = true;
      msg.className = "action-msg"; msg.textContent = `${label}…`;
      try {
        const body = await postAction(namespace, name, action);
        msg.className = "action-msg ok"; msg.textContent = body.message;
      } catch (err) {
        msg.className = "action-msg err";
        msg.textContent = err.status === 403 ? `Refused: ${err.message}` : err.message;
      } finally { e.target.disabled = false; }
    },
  });
  const head = el("div", { class: "head" }, el("h1", { text: name }), el("span", { id: "d-phase-slot" }),
    el("span", { class: "title", id: "d-title" }), el("span", { class: "muted small", id: "d-progress" }));
  const svgRoot = svg("svg", { class: "dag", id: "dag", role: "img", "aria-label": `step graph of ${name}` });
  const dagWrap = el("div", { class: "dag-wrap", id: "dag-wrap" }, svgRoot);
  const zoom = { value: 1 };
  const zoomLabel = el("span", { class: "muted small", text: "100%" });
  const setZoom = (z) => { zoom.value = z; zoomLabel.textContent = `${Math.round(z * 100)}%`; sizeSvg(); };
  const legend = el("span", { class: "legend" }, STEP_PHASES.map((p) => el("span", {}, el("i", { style: `background:var(--${p.toLowerCase()})` }), p)));
  const side = el("div", { id: "side" });
  const stepPanel = el("div", { class: "panel step-panel", id: "step-panel", hidden: !openStep });
  view.replaceChildren(
    head,
    el("div", { class: "actions" }, act("pause", "Pause"), act("resume", "Resume"), act("retry", "Retry failed steps"), msg),
    el("div", { class: "grid" },
      el("div", {},
        el("div", { class: "dag-tools" },
          el("button", { type: "button", text: "−", title: "zoom out", onclick: () => setZoom(Math.max(0.2, zoom.value / 1.25)) }),
          el("button", { type: "button", text: "+", title: "zoom in", onclick: () => setZoom(Math.min(3, zoom.value * 1.25)) }),
          el("button", { type: "button", text: "fit", onclick: () => fit() }), zoomLabel, legend),
        dagWrap,
        stepPanel),
      side));

  const data = { directive: null, steps: new Map(), layout: null, selected: openStep, log: null, events: [] };
  state.view = data;

  function sizeSvg() {
    if (!data.layout) return;
    svgRoot.setAttribute("width", Math.ceil(data.layout.width * zoom.value));
    svgRoot.setAttribute("height", Math.ceil(data.layout.height * zoom.value));
  }

  function fit(floor) {
    if (!data.layout) return;
    const w = dagWrap.clientWidth - 4;
    setZoom(Math.max(floor || 0.2, Math.min(1, w / data.layout.width)));
  }

  function renderHeader() {
    const d = data.directive;
    if (!d) return;
    if (d.deleted) { notice(`directive ${namespace}/${name} does not exist (or was deleted)`); return; }
    const slot = document.getElementById("d-phase-slot");
    slot.replaceChildren(phaseBadge(d.phase, "d-phase"));
    document.getElementById("d-title").textContent = d.title;
    document.getElementById("d-progress").textContent = d.total ? `${d.done}/${d.total} steps` : "";
    document.getElementById("btn-pause").hidden = d.paused;
    document.getElementById("btn-resume").hidden = !d.paused;
    document.getElementById("btn-retry").disabled = !d.failed && ![...data.steps.values()].some((s) => s.phase === "Failed" || s.phase === "Skipped");
    renderSide();
  }

  function renderSide() {
    const d = data.directive;
    if (!d || d.deleted) return;
    const pr = d.pullRequest || {};
    const kv = (pairs) => el("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    const gens = data.generations || [];
    side.replaceChildren(
      el("div", { class: "panel", id: "pr-panel" }, el("h2", { text: "pull request" }),
        kv([
          ["url", pr.url ? el("a", { href: pr.url, target: "_blank", rel: "noopener noreferrer", text: pr.url }) : "not yet"],
          ["branch", pr.branch ? el("code", { text: pr.branch }) : null],
          ["draft", pr.draft ? "yes" : "no"],
          ["base", el("code", { text: d.baseBranch })],
          ["repository", d.repository ? el("code", { text: d.repository }) : null],
        ])),
      el("div", { class: "panel", id: "plan-panel" }, el("h2", { text: "plan" }),
        kv([
          ["generation", String(d.planGeneration)],
          ["planning task", d.planningTask ? el("a", { href: "#", id: "planning-task", class: "mono", text: d.planningTask, onclick: (e) => { e.preventDefault(); openTask("planning task", d.planningTask); } }) : null],
          ["completion task", d.completionTask ? el("a", { href: "#", id: "completion-task", class: "mono", text: d.completionTask, onclick: (e) => { e.preventDefault(); openTask("completion task", d.completionTask); } }) : null],
          ["started", d.startedAt ? `${age(d.startedAt)} ago` : null],
          ["message", d.message],
        ]),
        gens.length ? el("ul", { class: "gens" }, gens.map((g) => el("li", {}, `generation ${g.generation}: `, el("span", { class: "muted", text: `${g.steps.length} step(s): ${g.steps.slice(0, 12).join(", ")}${g.steps.length > 12 ? ", …" : ""}` })))) : null),
      el("div", { class: "panel", id: "conditions-panel" }, el("h2", { text: "conditions" }),
        el("table", {}, el("tbody", {}, (d.conditions || []).map((c) => el("tr", {},
          el("td", { text: c.type }), el("td", { text: c.status }), el("td", { class: "small", text: `${c.reason || ""}${c.message ? ": " + c.message : ""}` })))))),
      el("div", { class: "panel", id: "events-panel" }, el("h2", { text: "recent events" }),
        data.eventsProblem ? el("div", { class: "muted small", text: data.eventsProblem }) : null,
        el("table", {}, el("tbody", {}, data.events.slice(0, 15).map((e) => el("tr", {},
          el("td", { class: "small", text: e.last ? age(e.last) : "" }), el("td", { class: "small", text: e.reason }),
          el("td", { class: "small", text: e.message })))))));
  }

  function nodeGroup(n, pos) {
    const w = data.layout.nodeWidth, h = data.layout.nodeHeight;
    const label = n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name;
    const g = svg("g", {
      class: `node${data.selected === n.name ? " selected" : ""}`,
      "data-step": n.name, "data-phase": n.phase, transform: `translate(${pos.x},${pos.y})`, tabindex: 0,
    },
      svg("title", { text: `${n.name}: ${n.title} (${n.phase})` }),
      svg("rect", { width: w, height: h }),
      svg("rect", { class: "stripe", width: 5, height: h - 2, x: 1, y: 1 }),
      svg("text", { x: 12, y: 16, text: label }),
      svg("text", { class: "sub", x: 12, y: 30, text: subLabel(n) }));
    g.addEventListener("click", () => selectStep(n.name));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter") selectStep(n.name); });
    return g;
  }

  function subLabel(n) {
    const bits = [n.phase];
    if (n.attempts > 1) bits.push(`attempt ${n.attempts}`);
    if (n.phase === "Running" && n.startedAt) bits.push(duration(n.startedAt));
    else if (n.startedAt && n.finishedAt) bits.push(duration(n.startedAt, n.finishedAt));
    return bits.join(" · ");
  }

  function renderGraph() {
    const L = data.layout;
    if (!L) return;
    svgRoot.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
    sizeSvg();
    const pos = new Map(L.nodes.map((p) => [p.name, p]));
    const w = L.nodeWidth, h = L.nodeHeight;
    const edges = svg("g", { class: "edges" }, L.edges.map(([from, to]) => {
      const a = pos.get(from), b = pos.get(to);
      const x1 = a.x + w, y1 = a.y + h / 2, x2 = b.x, y2 = b.y + h / 2, mx = (x1 + x2) / 2;
      return svg("path", { class: "edge", "data-from": from, "data-to": to, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" });
    }));
    const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L8,4 L0,8 z", fill: "#aab1bf" })));
    const nodes = svg("g", { class: "nodes" }, [...data.steps.values()].filter((n) => pos.has(n.name)).map((n) => nodeGroup(n, pos.get(n.name))));
    svgRoot.replaceChildren(defs, edges, nodes);
    markHotEdges();
  }

  function markHotEdges() {
    for (const p of svgRoot.querySelectorAll("path.edge")) {
      const to = data.steps.get(p.dataset.to);
      p.classList.toggle("hot", !!to && to.phase === "Running");
    }
  }

  function updateNode(n) {
    const prev = data.steps.get(n.name);
    data.steps.set(n.name, n);
    const g = svgRoot.querySelector(`g.node[data-step="${CSS.escape(n.name)}"]`);
    if (!g) { renderGraph(); return; }
    g.setAttribute("data-phase", n.phase);
    g.querySelector("title").textContent = `${n.name}: ${n.title} (${n.phase})`;
    g.querySelector("text.sub").textContent = subLabel(n);
    markHotEdges();
    if (data.selected === n.name) renderStep(prev);
  }

  // ---- the step panel ------------------------------------------------------------------------

  function selectStep(stepName) {
    const target = `#/d/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/${encodeURIComponent(stepName)}`;
    history.replaceState(null, "", target);
    data.selected = stepName;
    for (const g of svgRoot.querySelectorAll("g.node")) g.classList.toggle("selected", g.dataset.step === stepName);
    closeLog();
    stepPanel.hidden = false;
    renderStep(null, true);
  }

  function closeLog() {
    if (data.log) { data.log.source.close(); state.sources = state.sources.filter((s) => s !== data.log.source); }
    data.log = null;
  }

  async function renderStep(prev, fresh) {
    const n = data.steps.get(data.selected);
    if (!n) { stepPanel.replaceChildren(el("div", { class: "muted", text: `no step ${data.selected} (yet)` })); return; }
    const taskChanged = !prev || prev.task !== n.task || prev.attempts !== n.attempts;
    if (fresh || !stepPanel.querySelector("pre.log")) {
      stepPanel.replaceChildren(
        el("h3", {}, `${n.name} `, el("span", { id: "s-phase-slot" })),
        el("div", { class: "muted", id: "s-title", text: n.title }),
        el("dl", { class: "kv", id: "s-kv" }),
        el("div", { class: "actions" }, el("button", {
          type: "button", id: "btn-retry-step", text: "Retry this step",
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              const body = await postAction(namespace, name, "retry", n.name);
              msg.className = "action-msg ok"; msg.textContent = body.message;
            } catch (err) {
              msg.className = "action-msg err";
              msg.textContent = err.status === 403 ? `Refused: ${err.message}` : err.message;
            } finally { e.target.disabled = false; }
          },
        })),
        el("h2", { class: "small muted", text: "attempts" }),
        el("table", { id: "attempts" }, el("tbody", {})),
        el("h2", { class: "small muted", text: "events" }),
        el("table", { id: "s-events" }, el("tbody", {})),
        el("h2", { class: "small muted", text: "log" }),
        el("pre", { class: "log", id: "log" }));
    }
    const cur = data.steps.get(data.selected);
    document.getElementById("s-phase-slot").replaceChildren(phaseBadge(cur.phase, "s-phase"));
    document.getElementById("btn-retry-step").hidden = !(cur.phase === "Failed" || cur.phase === "Skipped");
    const kv = document.getElementById("s-kv");
    kv.replaceChildren(...[
      ["depends on", cur.dependsOn.join(", ") || "–"], ["order", String(cur.orderIndex)], ["generation", String(cur.generation)],
      ["attempts", String(cur.attempts)], ["branch", cur.branch], ["commit", cur.commit ? cur.commit.slice(0, 12) : null],
      ["duration", cur.startedAt ? duration(cur.startedAt, cur.finishedAt) : null], ["message", cur.message],
    ].filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    if (fresh || taskChanged || (prev && prev.phase !== cur.phase)) loadAttempts(cur);
    if (cur.task && (fresh || taskChanged || !data.log)) openLog(cur);
  }

  async function loadAttempts(n) {
    const tbody = document.querySelector("#attempts tbody");
    if (!tbody) return;
    try {
      const resp = await fetch(`/api/step?${q({ namespace, name, step: n.name })}`);
      const body = await resp.json();
      if (!resp.ok) { tbody.replaceChildren(el("tr", {}, el("td", { class: "muted", text: body.error }))); return; }
      const rows = body.attempts.map((a) => el("tr", { "data-attempt": a.attempt },
        el("td", { text: `#${a.attempt}` }), el("td", {}, phaseBadge(a.outcome === "succeeded" ? "Succeeded" : a.outcome === "failed" ? "Failed" : "Running")),
        el("td", { text: seconds(a.duration) }), el("td", { class: "mono", text: a.commit ? a.commit.slice(0, 10) : "" }),
        el("td", { class: "small", text: a.message || "" })));
      if (body.problem) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted small", text: body.problem })));
      if (!rows.length) rows.push(el("tr", {}, el("td", { class: "muted", text: "not started yet" })));
      tbody.replaceChildren(...rows);
      const events = document.querySelector("#s-events tbody");
      if (events) events.replaceChildren(...body.events.map((e) => el("tr", {},
        el("td", { class: "small", text: e.last ? age(e.last) : "" }), el("td", { class: "small", text: e.reason }),
        el("td", { class: "small", text: e.message }))));
    } catch (e) { /* the next change reloads it */ }
  }

  function followLog(pre, params) {
    const source = stream("/api/watch/log", { namespace, name, ...params }, {
      lines: (d) => {
        const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(d.lines.join("\n") + "\n");
        if (stick) pre.scrollTop = pre.scrollHeight;
      },
      end: () => { source.close(); },
      problem: (p) => pre.append(`[dashboard] ${p.message}\n`),
    });
    data.log = { task: params.task, source };
  }

  function openLog(n) {
    const pre = document.getElementById("log");
    if (!state.config.logs) { pre.textContent = state.config.logsHint; return; }
    const same = data.log && data.log.task === n.task;
    if (same) return;
    if (data.log) pre.append(`--- attempt ${n.attempts} (task ${n.task}) ---\n`);
    else pre.textContent = "";
    closeLog();
    followLog(pre, { step: n.name, task: n.task });
  }

  // The planning or completion task's log, in the same panel.
  function openTask(label, taskId) {
    data.selected = null;
    history.replaceState(null, "", `#/d/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
    for (const g of svgRoot.querySelectorAll("g.node")) g.classList.remove("selected");
    closeLog();
    const pre = el("pre", { class: "log", id: "log" });
    stepPanel.hidden = false;
    stepPanel.replaceChildren(el("h3", { id: "task-heading", text: label }), el("div", { class: "muted mono", text: taskId }),
      el("h2", { class: "small muted", text: "log" }), pre);
    if (!state.config.logs) { pre.textContent = state.config.logsHint; return; }
    followLog(pre, { task: taskId });
  }

  // ---- the stream ----------------------------------------------------------------------------

  stream("/api/watch/directive", { namespace, name }, {
    directive: (d) => { data.directive = d; renderHeader(); },
    graph: (g) => {
      const first = !data.layout;
      data.steps = new Map(g.steps.map((s) => [s.name, s]));
      data.layout = g.layout;
      data.generations = g.generations;
      renderGraph();
      if (first) fit(0.7);  // a big graph opens readable, and scrolls; "fit" shows it whole
      renderHeader();
      if (data.selected) { stepPanel.hidden = false; renderStep(null, !stepPanel.querySelector("pre.log")); }
    },
    step: (s) => { updateNode(s); renderHeader(); },
    events: (e) => { data.events = e.items; data.eventsProblem = e.problem; renderSide(); },
    problem: (p) => notice(p.message),
  });
  state.timers.push(setInterval(() => {
    for (const n of data.steps.values()) {
      if (n.phase !== "Running") continue;
      const g = svgRoot.querySelector(`g.node[data-step="${CSS.escape(n.name)}"] text.sub`);
      if (g) g.textContent = subLabel(n);
    }
  }, 1000));
}

// ---- start -----------------------------------------------------------------------------------

async function main() {
  const resp = await fetch("/api/config");
  state.config = await resp.json();
  document.getElementById("server").textContent = state.config.server;
  window.addEventListener("hashchange", route);
  route();
}

main().catch((e) => notice(`the dashboard could not start: ${e}`));
