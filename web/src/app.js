// The Outpost hub's dashboard: plain DOM, a hash router, the admin API with
// the operator's token (kept in sessionStorage, sent as a Bearer header),
// charts by uPlot. Every page is rebuilt from the API on each visit; pages
// that show live state poll it.
import uPlot from "uplot";

const API = "/api/v1/admin";
const TOKEN_KEY = "outpost.token";
const main = document.getElementById("main");
const who = document.getElementById("who");

let session = null; // {token, name, role}
let timer = null; // the current page's refresh
// Aborted on every navigation, so a late answer for the page left behind
// never draws over the new one.
let navigation = new AbortController();

// ---------------------------------------------------------------- helpers

// h("a", {href: "#/x"}, "text", child...): an element; strings become text
// nodes (never HTML), null/false children are skipped.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, token } = {}) {
  const signal = navigation.signal;
  const headers = { Authorization: `Bearer ${token || session?.token || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    signal,
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (signal.aborted) throw new DOMException("navigated away", "AbortError");
  if (!res.ok) throw new ApiError(res.status, data?.error || `${res.status} ${res.statusText}`);
  return data;
}

const canOperate = () => session && (session.role === "operator" || session.role === "admin");

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—");
function fmt(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  return Number(v).toFixed(digits);
}
const pct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(2)} %`);
function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function badge(text, tone) {
  return h("span", { class: `badge ${tone || ""}` }, text);
}
const stateTone = {
  completed: "ok", committed: "ok", running: "warn", paused: "warn", pending: "muted",
  offered: "warn", installing: "warn", halted: "bad", aborted: "bad", failed: "bad",
  rolled_back: "bad",
};

function table(caption, headers, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headers.map((x) =>
      h("th", { scope: "col", class: x.startsWith("#") ? "num" : null }, x.replace(/^#/, ""))))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
      h("td", { class: headers[i].startsWith("#") ? "num" : null }, c))))));
}

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e));
}

function page(title, ...content) {
  document.title = `${title} · Outpost hub`;
  main.replaceChildren(h("h1", {}, title), ...content);
}

// A uPlot chart in a <figure>. xs: numbers (unix seconds when time), series:
// [{label, values}]. Sized to its container.
function chart(caption, xs, series, { time = true, xLabel } = {}) {
  const fig = h("figure", { "aria-label": caption }, h("figcaption", {}, caption));
  const hasData = xs.length > 0 && series.some((s) => s.values.some((v) => v !== null));
  if (!hasData) {
    fig.append(h("p", { class: "muted" }, "No samples yet."));
    return fig;
  }
  const colors = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce"];
  const opts = {
    width: 440,
    height: 220,
    scales: { x: { time } },
    axes: [{ label: xLabel }, {}],
    series: [{ label: time ? "time" : xLabel || "x" },
      ...series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], width: 2,
        spanGaps: true }))],
  };
  const holder = h("div", {});
  fig.append(holder);
  // After layout, so the chart takes its figure's width.
  requestAnimationFrame(() => {
    opts.width = Math.max(300, holder.clientWidth || 440);
    new uPlot(opts, [xs, ...series.map((s) => s.values)], holder);
  });
  return fig;
}

function every(ms, fn) {
  clearInterval(timer);
  timer = setInterval(fn, ms);
}

// ---------------------------------------------------------------- login

function loginPage(message) {
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off",
    required: true, size: 48 });
  const status = h("div", { "aria-live": "polite" }, message ? errorBox(message) : null);
  const form = h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await signIn(input.value.trim());
      location.hash = location.hash && location.hash !== "#/login" ? location.hash : "#/fleet";
      route();
    } catch (e) {
      status.replaceChildren(errorBox(e.status === 401 ? "That token is unknown or revoked." : e));
    }
  } }, h("label", { for: "token" }, "API token", input), h("button", { type: "submit" }, "Sign in"));
  page("Sign in",
    h("p", {}, "Paste an API token (", h("code", {}, "outpost-hub admin create-token"),
      "). A viewer token shows the fleet; operator and admin tokens may also change it."),
    form, status);
  input.focus();
}

async function signIn(token) {
  const me = await api(`${API}/whoami`, { token });
  session = { token, name: me.name, role: me.role };
  sessionStorage.setItem(TOKEN_KEY, token);
  renderWho();
}

function signOut() {
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  renderWho();
  location.hash = "#/login";
}

function renderWho() {
  if (!session) return who.replaceChildren();
  who.replaceChildren(`${session.name} (${session.role})`,
    h("button", { class: "secondary", type: "button", onclick: signOut }, "Sign out"));
}

// ---------------------------------------------------------------- fleet

async function alertsPanel() {
  const panel = h("section", { class: "card", "aria-labelledby": "alerts-h" },
    h("h2", { id: "alerts-h" }, "Alerts"));
  try {
    const data = await api(`${API}/alerts?state=firing`);
    const alerts = data.alerts || [];
    panel.append(alerts.length
      ? h("ul", {}, alerts.map((a) => h("li", {}, badge(a.severity || "alert",
        a.severity === "critical" ? "bad" : "warn"), " ", a.summary || a.name || JSON.stringify(a),
        a.device_id ? [" — ", h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` },
          a.device_id)] : null)))
      : h("p", { class: "ok" }, "No alerts firing."));
  } catch (e) {
    panel.append(h("p", { class: "notice", role: "status" }, e.status === 404
      ? `Alerts unavailable: this hub has no alerts API (GET ${API}/alerts answered 404).`
      : `Alerts unavailable: ${e.message}`));
  }
  return panel;
}

function health(d) {
  if (d.status !== "active") return badge(d.status, "muted");
  if (!d.online) return badge("offline", "bad");
  if (d.update_state === "rolled_back" || d.update_state === "failed")
    return badge(d.update_state, "bad");
  if (d.update_state && !["committed", "idle", ""].includes(d.update_state))
    return badge(d.update_state, "warn");
  return badge("healthy", "ok");
}

async function fleetPage() {
  const [list, alerts] = await Promise.all([api(`${API}/devices`), alertsPanel()]);
  const devices = list.devices;
  const versions = new Map();
  const sites = new Map();
  for (const d of devices) {
    const v = d.current_release || "(none)";
    versions.set(v, (versions.get(v) || 0) + 1);
    const s = sites.get(d.site || "(no site)") || { n: 0, online: 0, versions: new Map() };
    s.n++;
    if (d.online) s.online++;
    s.versions.set(v, (s.versions.get(v) || 0) + 1);
    sites.set(d.site || "(no site)", s);
  }
  const unhealthy = devices.filter((d) => d.online && ["rolled_back", "failed"]
    .includes(d.update_state)).length;
  page("Fleet",
    h("div", { class: "cards", role: "list" },
      h("div", { role: "listitem" }, h("span", { class: "n", id: "n-devices" }, devices.length),
        h("span", { class: "l" }, "devices")),
      h("div", { role: "listitem" }, h("span", { class: "n ok", id: "n-online" }, list.online),
        h("span", { class: "l" }, "online")),
      h("div", { role: "listitem" }, h("span", { class: "n bad", id: "n-offline" },
        devices.length - list.online), h("span", { class: "l" }, "offline")),
      h("div", { role: "listitem" }, h("span", { class: "n warn" }, unhealthy),
        h("span", { class: "l" }, "need attention")),
      h("div", { role: "listitem" }, h("span", { class: "n" }, versions.size),
        h("span", { class: "l" }, "versions in the field"))),
    alerts,
    h("h2", {}, "Versions in the field"),
    table("Versions in the field", ["Release", "#Devices"],
      [...versions].sort((a, b) => b[1] - a[1]).map(([v, n]) => [v, n])),
    h("h2", {}, "By site"),
    table("Devices by site", ["Site", "#Devices", "#Online", "Versions"],
      [...sites].sort().map(([site, s]) => [site, s.n, s.online,
        [...s.versions].map(([v, n]) => `${v} × ${n}`).join(", ")])),
    h("h2", {}, "Devices"),
    table("Devices", ["Device", "Site", "Health", "Release", "Update", "Last seen"],
      devices.map((d) => [h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id),
        d.site, health(d), d.current_release || "—", d.update_state || "—", ago(d.last_seen_at)]),
      "No device has enrolled yet."));
  every(5000, () => route(true));
}

// ---------------------------------------------------------------- device

const DEVICE_METRICS = ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "request_rate",
  "error_rate", "temperature_c"];

// Series of [ms, value] pairs on one shared x axis (unix seconds).
function align(seriesMap, names) {
  const xs = [...new Set(names.flatMap((n) => (seriesMap[n] || []).map((p) => p[0])))]
    .sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const out = names.map((n) => {
    const values = new Array(xs.length).fill(null);
    for (const [t, v] of seriesMap[n] || []) values[index.get(t)] = v;
    return values;
  });
  return { xs: xs.map((t) => t / 1000), values: out };
}

async function devicePage(id) {
  const enc = encodeURIComponent(id);
  const [d, events, telemetry] = await Promise.all([
    api(`${API}/devices/${enc}`),
    api(`${API}/devices/${enc}/events`),
    api(`${API}/devices/${enc}/telemetry?metrics=${DEVICE_METRICS.join(",")}&window_s=3600`),
  ]);
  const s = telemetry.series;
  const latency = align(s, ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"]);
  const rate = align(s, ["request_rate"]);
  const errors = align(s, ["error_rate"]);
  const asPercent = (values) => values.map((v) => (v === null ? null : v * 100));
  const temp = align(s, ["temperature_c"]);
  const last = (n) => (s[n] && s[n].length ? s[n][s[n].length - 1][1] : null);
  const facts = d.facts || {};
  page(`Device ${d.id}`,
    h("div", { class: "cards" },
      h("div", {}, h("span", { class: "n" }, health(d)), h("span", { class: "l" },
        `last seen ${ago(d.last_seen_at)}`)),
      h("div", {}, h("span", { class: "n" }, fmt(last("latency_p95_ms"), 1)),
        h("span", { class: "l" }, "p95 latency (ms)")),
      h("div", {}, h("span", { class: "n" }, fmt(last("request_rate"), 1)),
        h("span", { class: "l" }, "requests/s")),
      h("div", {}, h("span", { class: "n" }, pct(last("error_rate"))),
        h("span", { class: "l" }, "errors")),
      h("div", {}, h("span", { class: "n" }, fmt(last("temperature_c"), 0)),
        h("span", { class: "l" }, "temperature (°C)"))),
    h("h2", {}, "Versions"),
    h("dl", { class: "facts" },
      h("dt", {}, "Running"), h("dd", { id: "current-release" }, d.current_release || "—"),
      h("dt", {}, "Previous"), h("dd", {}, d.previous_release || "—"),
      h("dt", {}, "Desired"), h("dd", {}, d.desired_release || "—"),
      h("dt", {}, "Pinned"), h("dd", {}, d.pinned_release || "—"),
      h("dt", {}, "Agent"), h("dd", {}, facts.agent_version || "—"),
      h("dt", {}, "Site"), h("dd", {}, d.site || "—"),
      h("dt", {}, "Hardware"), h("dd", {}, [facts.arch, (facts.accelerators || []).join?.(", "),
        facts.make, facts.model].filter(Boolean).join(" · ") || "—")),
    h("h2", {}, "Last hour"),
    h("div", { class: "charts" },
      chart("Latency percentiles (ms)", latency.xs, [
        { label: "p50", values: latency.values[0] }, { label: "p95", values: latency.values[1] },
        { label: "p99", values: latency.values[2] }]),
      chart("Throughput (requests/s)", rate.xs, [{ label: "requests/s", values: rate.values[0] }]),
      chart("Error rate (%)", errors.xs, [{ label: "errors %",
        values: asPercent(errors.values[0]) }]),
      chart("Temperature (°C)", temp.xs, [{ label: "°C", values: temp.values[0] }])),
    h("h2", {}, "Update history"),
    table("Update history", ["When (hub)", "State", "Release", "Reason"],
      events.events.map((e) => [when(e.hub_time), badge(e.state, stateTone[e.state]),
        e.release, e.reason || ""]), "No update reported yet."));
  every(10000, () => route(true));
}

// ---------------------------------------------------------------- releases

async function releasesPage() {
  const data = await api(`${API}/releases?yanked=true`);
  const status = h("div", { "aria-live": "polite" });
  const rows = data.releases.map((r) => [r.id, r.sequence, bytes(r.size), r.key_id,
    when(r.created_at), r.yanked ? badge("yanked", "bad") : badge("available", "ok"),
    canOperate() && !r.yanked ? h("a", { href: `#/rollouts/new/${encodeURIComponent(r.id)}` },
      `Roll out ${r.id}`) : ""]);
  page("Releases", status,
    table("Releases", ["Release", "#Sequence", "#Size", "Signed by", "Pushed", "Status", ""],
      rows, "No release pushed yet (outpost release push)."));
}

// ---------------------------------------------------------------- rollouts

function newRolloutPage(release) {
  if (!canOperate()) {
    return page("New rollout", h("p", { class: "notice" },
      "Starting a rollout needs an operator or admin token."));
  }
  const field = (label, name, value, extra = {}) => h("label", {}, label,
    h("input", { name, value, ...extra }));
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const waves = String(f.get("waves")).split(",").map((w) => w.trim()).filter(Boolean)
      .map((w) => (w.endsWith("%") ? w : Number(w)));
    const gates = {};
    for (const g of ["p95_regression_pct", "max_error_rate", "max_failures", "min_samples"]) {
      if (f.get(g) !== "") gates[g] = Number(f.get(g));
    }
    const body = { release, waves, soak_s: Number(f.get("soak_s")),
      deadline_s: Number(f.get("deadline_s")), gates };
    if (f.get("site")) body.selector = { site: f.get("site") };
    try {
      const r = await api(`${API}/rollouts`, { method: "POST", body });
      location.hash = `#/rollouts/${r.id}`;
    } catch (e) {
      status.replaceChildren(errorBox(e));
    }
  } },
  field("Waves", "waves", "1, 50%, 100%"),
  field("Soak (s)", "soak_s", "60", { type: "number", min: 0 }),
  field("Deadline (s)", "deadline_s", "1800", { type: "number", min: 1 }),
  field("p95 regression gate (%)", "p95_regression_pct", "50", { type: "number", min: 0 }),
  field("Error rate gate (0–1)", "max_error_rate", "0.05", { type: "number", min: 0, step: "any" }),
  field("Install failures allowed", "max_failures", "0", { type: "number", min: 0 }),
  field("Min. samples", "min_samples", "3", { type: "number", min: 0 }),
  field("Site (empty: every device)", "site", ""),
  h("button", { type: "submit" }, "Start rollout"));
  page(`Roll out ${release}`, form, status);
}

async function rolloutsPage() {
  const data = await api(`${API}/rollouts`);
  const list = [...data.rollouts].sort((a, b) => b.id - a.id);
  page("Rollouts",
    canOperate() ? h("p", {}, "Start one from ", h("a", { href: "#/releases" }, "Releases"), ".")
      : null,
    table("Rollouts", ["#Rollout", "Release", "State", "Wave", "Started", "Halt reason"],
      list.map((r) => [h("a", { href: `#/rollouts/${r.id}` }, `#${r.id}`), r.release,
        badge(r.state, stateTone[r.state]),
        `${r.current_wave + 1} of ${r.plan?.waves?.length ?? "?"}`, when(r.created_at),
        r.gates?.halt_reason || ""]), "No rollout yet."));
  every(5000, () => route(true));
}

function gateRows(r) {
  const plan = r.plan?.gates || {};
  const g = r.gates || {};
  // A threshold of 0 turns the latency and error gates off; install
  // failures are always gated ("at most N").
  const row = (name, measured, threshold, breached, unit = "", alwaysOn = false) => {
    const on = alwaysOn || Boolean(threshold);
    const missing = measured === undefined || measured === null;
    return [name, missing ? "—" : `${measured}${unit}`,
      on ? `${alwaysOn ? "at most " : ""}${threshold}${unit}` : "off",
      !on ? badge("off", "muted") : missing ? badge("no data", "muted")
        : breached ? badge("breached", "bad") : badge("within", "ok")];
  };
  const reg = g.p95_regression_pct;
  return [
    row("Install failures", g.failures ?? 0, plan.max_failures ?? 0,
      (g.failures ?? 0) > (plan.max_failures ?? 0), "", true),
    row("p95 latency regression", reg === undefined ? null : fmt(reg, 1), plan.p95_regression_pct,
      reg > plan.p95_regression_pct, " %"),
    row("Error rate", g.wave_error_rate === undefined ? null : fmt(g.wave_error_rate, 4),
      plan.max_error_rate, g.wave_error_rate > plan.max_error_rate),
    row("Output drift (PSI)", g.wave_drift_psi === undefined ? null : fmt(g.wave_drift_psi, 3),
      plan.max_drift_psi, g.wave_drift_psi > plan.max_drift_psi),
    // "max_offline": null turns the gate off; 0 means none may fall silent.
    row("Devices silent after taking it", (g.offline_after_commit || []).length,
      plan.max_offline, (g.offline_after_commit || []).length > (plan.max_offline ?? 0), "",
      plan.max_offline !== null && plan.max_offline !== undefined),
    ["Telemetry samples", g.telemetry_samples ?? "—", `≥ ${plan.min_samples ?? 0}`, ""],
    ["p95 latency: wave / baseline (ms)",
      `${fmt(g.wave_p95_ms, 2)} / ${fmt(g.baseline_p95_ms, 2)}`, "", ""],
  ];
}

async function rolloutPage(id) {
  const r = await api(`${API}/rollouts/${encodeURIComponent(id)}`);
  const waves = r.plan?.waves || [];
  const status = h("div", { "aria-live": "polite" });
  const act = (action, label, cls, confirmText) => h("button", { type: "button", class: cls,
    onclick: async () => {
      if (confirmText && !window.confirm(confirmText)) return;
      try {
        await api(`${API}/rollouts/${r.id}/${action}`, { method: "POST" });
        route(true);
      } catch (e) {
        status.replaceChildren(errorBox(e));
      }
    } }, label);
  const live = ["pending", "running", "paused"].includes(r.state);
  const buttons = canOperate() ? h("div", { class: "actions", role: "group",
    "aria-label": "Rollout actions" },
  r.state === "running" || r.state === "pending" ? act("pause", "Pause", "secondary") : null,
  r.state === "paused" || r.state === "halted" ? act("resume", "Resume", "secondary") : null,
  r.state !== "completed" && r.state !== "aborted" ? act("abort", "Abort", "danger",
    `Abort rollout #${r.id}? Devices keep what they run.`) : null,
  r.state !== "aborted" ? act("rollback", "Roll back", "danger",
    `Roll back rollout #${r.id}? Every device goes back to its previous release.`) : null)
    : null;
  const perWave = waves.map((w, i) => {
    const devs = r.devices.filter((d) => d.wave === i);
    const done = devs.filter((d) => d.state === "committed").length;
    const bar = h("span", {});
    bar.style.width = `${devs.length ? (100 * done) / devs.length : 0}%`;
    return [`${i + 1}${i === r.current_wave && live ? " (current)" : ""}`, String(w), devs.length,
      done, h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0,
        "aria-valuemax": devs.length, "aria-valuenow": done,
        "aria-label": `wave ${i + 1}: ${done} of ${devs.length} committed` }, bar),
      devs.map((d) => `${d.device_id}: ${d.state}`).join(", ")];
  });
  const committed = r.counts?.committed || 0;
  page(`Rollout #${r.id} of ${r.release}`,
    h("p", {}, "State: ", h("strong", { id: "rollout-state" }, badge(r.state, stateTone[r.state])),
      ` · wave ${r.current_wave + 1} of ${waves.length} · `,
      h("span", { id: "rollout-committed" }, `${committed} of ${r.devices.length} committed`),
      ` · soak ${r.plan?.soak_s ?? "?"} s`),
    r.gates?.halt_reason ? h("p", { class: "error", role: "alert", id: "halt-reason" },
      `Halted: ${r.gates.halt_reason}`) : null,
    buttons, status,
    h("h2", {}, "Waves"),
    table("Waves", ["Wave", "Size", "#Devices", "#Committed", "Progress", "Devices"], perWave),
    h("h2", {}, "Gates"),
    table("Gates against thresholds", ["Gate", "Measured", "Threshold", "Verdict"], gateRows(r)),
    h("h2", {}, "History"),
    table("Rollout history", ["When", "Event"], (r.gates?.history || []).slice(-20).reverse()
      .map((e) => [when(e.at ?? e.time), e.message ?? e.event ?? JSON.stringify(e)]),
    "Nothing happened yet."));
  if (live) every(1500, () => route(true));
}

// ---------------------------------------------------------------- compare

const COMPARED = [
  ["latency_p50_ms", "p50 latency (ms)", (v) => fmt(v, 2)],
  ["latency_p95_ms", "p95 latency (ms)", (v) => fmt(v, 2)],
  ["latency_p99_ms", "p99 latency (ms)", (v) => fmt(v, 2)],
  ["error_rate", "Error rate", pct],
  ["throughput_rps", "Throughput (requests/s per device)", (v) => fmt(v, 1)],
  ["drift_psi", "Output drift (PSI)", (v) => fmt(v, 3)],
];

// Averages points ([t, v], t in seconds since the switch) into `n` buckets
// over [0, span].
function buckets(points, span, n) {
  const sums = new Array(n).fill(0);
  const counts = new Array(n).fill(0);
  for (const [t, v] of points) {
    const i = Math.min(n - 1, Math.floor((t / span) * n));
    sums[i] += v;
    counts[i]++;
  }
  return sums.map((s, i) => (counts[i] ? s / counts[i] : null));
}

async function comparePage(params) {
  const data = await api(`${API}/releases?yanked=true`);
  const ids = data.releases.map((r) => r.id);
  const a = params.get("a") || ids[1] || "";
  const b = params.get("b") || ids[0] || "";
  const pick = (name, value) => h("label", {}, name === "a" ? "Before (A)" : "After (B)",
    h("select", { name }, ids.map((id) => h("option", { value: id, selected: id === value }, id))));
  const form = h("form", { class: "inline", onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    location.hash = `#/compare?a=${encodeURIComponent(f.get("a"))}&b=${encodeURIComponent(
      f.get("b"))}`;
  } }, pick("a", a), pick("b", b), h("button", { type: "submit" }, "Compare"));
  const out = h("div", { "aria-live": "polite" });
  page("Compare releases", form, out);
  if (!a || !b || a === b) {
    out.append(h("p", { class: "muted" }, "Pick two different releases."));
    return;
  }
  let c;
  try {
    c = await api(`${API}/releases/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  } catch (e) {
    out.append(errorBox(e));
    return;
  }
  if (!c.devices.length) {
    out.append(h("p", { class: "notice" },
      `No device has run both ${a} and ${b}: nothing to compare on the same devices.`));
    return;
  }
  const ra = c.releases[a];
  const rb = c.releases[b];
  const delta = (x, y) => (x && y !== null && x !== null ? `${(((y - x) / x) * 100).toFixed(1)} %`
    : "—");
  out.append(
    h("p", {}, `On the same ${c.devices.length} device(s): ${c.devices.join(", ")}.`),
    table("Release comparison", ["Metric", `A: ${a}`, `B: ${b}`, "Change"],
      COMPARED.map(([key, label, f]) => [label, f(ra[key]), f(rb[key]), delta(ra[key], rb[key])])),
    h("h2", {}, "After each deployment"),
    h("p", { class: "muted" }, "x: seconds since each device switched to the release."),
    h("div", { class: "charts" }, [
      ["latency_p50_ms", "p50 latency (ms)"], ["latency_p95_ms", "p95 latency (ms)"],
      ["latency_p99_ms", "p99 latency (ms)"], ["error_rate", "Error rate (%)"],
      ["request_rate", "Throughput (requests/s)"], ["drift_psi", "Output drift (PSI)"],
    ].map(([metric, label]) => {
      const scale = metric === "error_rate" ? 100 : 1;
      const pa = (c.series[a][metric] || []).map(([t, v]) => [t, v * scale]);
      const pb = (c.series[b][metric] || []).map(([t, v]) => [t, v * scale]);
      const span = Math.max(1, ...pa.map((p) => p[0]), ...pb.map((p) => p[0]));
      const n = 30;
      const xs = Array.from({ length: n }, (_, i) => Math.round(((i + 0.5) * span) / n));
      return chart(`${label}: ${a} vs ${b}`, xs, [
        { label: a, values: buckets(pa, span, n) }, { label: b, values: buckets(pb, span, n) }],
      { time: false, xLabel: "seconds since switch" });
    })));
}

// ---------------------------------------------------------------- router

async function route(refresh = false) {
  const hash = location.hash || "#/fleet";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (!refresh) {
    clearInterval(timer);
    navigation.abort();
    navigation = new AbortController();
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", false);
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
  }
  if (!session) return loginPage();
  if (parts[0] === "login") {
    location.hash = "#/fleet";
    return;
  }
  try {
    const render = {
      fleet: () => fleetPage(),
      devices: () => devicePage(parts[1]),
      releases: () => releasesPage(),
      rollouts: () => (parts[1] === "new" ? newRolloutPage(parts[2])
        : parts[1] ? rolloutPage(parts[1]) : rolloutsPage()),
      compare: () => comparePage(new URLSearchParams(query || "")),
    }[parts[0]];
    if (!render) return page("Not found", h("p", {}, "No such page."));
    await render();
  } catch (e) {
    if (e.name === "AbortError") return;
    if (e.status === 401) return signOut();
    if (refresh) return; // keep the last good page; the next poll retries
    page("Error", errorBox(e));
  }
}

window.addEventListener("hashchange", () => route());
(async () => {
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      await signIn(saved);
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  route();
})();
