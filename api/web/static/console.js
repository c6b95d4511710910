// Streamgate admin console: plain JavaScript against the public API, no build step.
//
// The session is the playground's cookie login (HttpOnly `sg_access`, CSRF header on writes).
// Live streams: a snapshot from `GET /v1/admin/streams`, then every change pushed on the hub's
// admin channel `tenants/<tenant id>` (EventSource): nothing is polled. Every other tab is one
// of the documented admin routes: /v1/admin/users, /v1/tokens, limits, usage, audit, tenants.
"use strict";

(() => {
  const TERMINAL = {
    "stream.completed": "completed",
    "stream.failed": "failed",
    "stream.cancelled": "cancelled",
    "stream.revoked": "revoked",
  };
  const TABS = ["live", "users", "tokens", "limits", "usage", "audit", "tenants"];
  const LIMIT_NAMES = { rpm: "Requests per minute", concurrent: "Concurrent streams", tpm: "Tokens per minute", tpd: "Tokens per day" };
  const RECENT_MAX = 50;
  const MAX_REOPENS = 3;
  const PALETTE = ["#3151d3", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#c2255c", "#5c940d"];

  const $ = (id) => document.getElementById(id);
  const state = {
    me: null,
    operator: false,
    tenantId: null, // the tenant the console shows (operators may switch)
    users: new Map(), // id -> user
    live: new Map(), // stream id -> {id, user_id, model, mode, created}
    ended: [], // newest first: {id, user_id, model, status, reason, by, ended}
    es: null,
    lastId: null,
    reopens: 0,
    renderQueued: false,
    refreshing: null,
    charts: [],
    auditPage: 1,
  };

  // --- HTTP ----------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super(messageOf(body) || `HTTP ${status}`);
      this.status = status;
    }
  }

  function messageOf(body) {
    if (!body || typeof body !== "object") return typeof body === "string" ? body : "";
    if (body.error && body.error.message) return body.error.message;
    const fields = body.errors && typeof body.errors === "object" ? Object.entries(body.errors) : [];
    const detail = fields.map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`).join("; ");
    return (body.message || "") + (detail && body.code === 422 ? ` (${detail})` : "");
  }

  function cookie(name) {
    const match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  function refresh() {
    if (!state.refreshing) {
      state.refreshing = fetch("/v1/auth/refresh", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-TOKEN": cookie("csrf_refresh_token") },
      })
        .then((r) => r.ok)
        .catch(() => false)
        .finally(() => { state.refreshing = null; });
    }
    return state.refreshing;
  }

  // One request; resolves with {data, headers}. A 401 is retried once after a refresh.
  async function request(method, url, body, retried = false) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-TOKEN"] = cookie("csrf_access_token");
    const response = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && !retried && (await refresh())) {
      return request(method, url, body, true);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return { data, headers: response.headers };
  }

  const api = async (method, url, body) => (await request(method, url, body)).data;

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    return q.toString();
  }

  // Every page of a paginated list (bounded).
  async function allPages(path, params, maxPages = 20) {
    const rows = [];
    for (let page = 1; page <= maxPages; page += 1) {
      const { data, headers } = await request("GET", `${path}?${query({ ...params, page, page_size: 100 })}`);
      rows.push(...data);
      const info = JSON.parse(headers.get("X-Pagination") || "{}");
      if (!info.next_page) break;
    }
    return rows;
  }

  function report(id, err) { $(id).textContent = err ? err.message || String(err) : ""; }

  // --- small DOM helpers ---------------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  // A table cell labelled with its column (the label shows when a narrow screen stacks rows).
  function td(label, ...content) { return el("td", { dataset: { label } }, ...content); }

  function button(text, onClick, className = "small") {
    const b = el("button", { type: "button", className, textContent: text });
    b.addEventListener("click", () => onClick(b));
    return b;
  }

  const code = (text) => el("code", { textContent: text });
  const time = (t) => (t ? new Date(t).toLocaleString() : "");
  const userLabel = (id) => (state.users.get(id) || {}).email || id || "";

  function status(text) { return el("span", { className: "status", textContent: text, dataset: { status: text } }); }

  function fillSelect(select, options, keep = true) {
    const current = select.value;
    const first = select.options[0] && select.options[0].value === "" ? select.options[0] : null;
    select.replaceChildren(...(first ? [first] : []), ...options.map(([v, t]) => new Option(t, v)));
    if (keep && [...select.options].some((o) => o.value === current)) select.value = current;
  }

  // The confirmation dialog: resolves with the reason typed, or null when cancelled.
  function confirmAction(title, text, ok) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    $("confirm-reason").value = "";
    return new Promise((resolve) => {
      const done = (value) => { dialog.onclose = null; resolve(value); };
      $("confirm-form").onsubmit = (event) => {
        event.preventDefault();
        const reason = $("confirm-reason").value.trim();
        if (!reason) { $("confirm-reason").reportValidity(); return; }
        dialog.onclose = null;
        dialog.close();
        resolve(reason);
      };
      $("confirm-cancel").onclick = () => dialog.close();
      dialog.onclose = () => done(null);
      dialog.showModal();
      $("confirm-reason").focus();
    });
  }

  // --- session and tabs ----------------------------------------------------------------------

  function gate(message, login = false) {
    $("gate-message").textContent = message;
    $("gate-login").hidden = !login;
    $("gate").hidden = false;
    $("console").hidden = true;
  }

  async function start() {
    // Logged out: say so without asking the server (no 401 in the browser's console).
    if (!cookie("csrf_access_token") && !(cookie("csrf_refresh_token") && (await refresh()))) {
      gate("You are not logged in.", true);
      return;
    }
    let me;
    try {
      me = await api("GET", "/v1/auth/me");
    } catch {
      gate("Your session has ended.", true);
      return;
    }
    state.me = me;
    $("who-email").textContent = me.email;
    $("who-role").textContent = me.role;
    $("who-tenant").textContent = me.tenant ? me.tenant.slug : "";
    $("who").hidden = false;
    const scopes = (me.token && me.token.scopes) || [];
    if (!["admin", "operator"].includes(me.role) || !scopes.includes("admin")) {
      gate(`The admin console is for tenant admins and operators; you are signed in as ${me.email} (${me.role}). The playground is yours.`);
      return;
    }
    state.operator = me.role === "operator";
    state.tenantId = me.tenant.id;
    $("gate").hidden = true;
    $("console").hidden = false;
    $("tab-tenants").hidden = !state.operator;
    $("live-tenant-label").hidden = !state.operator;
    if (state.operator) await loadTenantChoices();
    await loadUsers();
    startLive();
    const wanted = location.hash.slice(1);
    selectTab(TABS.includes(wanted) && !$("tab-" + wanted).hidden ? wanted : "live", false);
  }

  const visibleTabs = () => TABS.filter((name) => !$("tab-" + name).hidden);

  function selectTab(name, focus = true) {
    for (const tab of TABS) {
      const on = tab === name;
      $("tab-" + tab).setAttribute("aria-selected", String(on));
      $("tab-" + tab).tabIndex = on ? 0 : -1;
      $("panel-" + tab).hidden = !on;
    }
    if (focus) $("tab-" + name).focus();
    history.replaceState(null, "", "#" + name);
    report("console-error");
    const load = LOADERS[name] || (() => Promise.resolve());
    load()
      .then(() => { $("panel-" + name).dataset.loaded = "true"; })
      .catch((err) => report("console-error", err));
  }

  function onTabKey(event) {
    const tabs = visibleTabs();
    const at = tabs.indexOf(event.target.id.slice(4));
    const moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length]);
  }

  async function loadTenantChoices() {
    const tenants = await allPages("/v1/admin/tenants", {});
    fillSelect($("live-tenant"), tenants.map((t) => [t.id, t.slug]), false);
    $("live-tenant").value = state.tenantId;
    return tenants;
  }

  async function switchTenant() {
    state.tenantId = $("live-tenant").value;
    await loadUsers();
    startLive();
  }

  const tenantParam = () => (state.operator ? state.tenantId : undefined);

  // --- live streams: a snapshot, then the tenant's channel -------------------------------------

  function startLive() {
    if (state.es) state.es.close();
    state.es = null;
    state.live.clear();
    state.ended = [];
    state.lastId = null;
    state.reopens = 0;
    renderLive();
    api("GET", `/v1/admin/streams?${query({ tenant: tenantParam(), page_size: 100 })}`)
      .then((rows) => {
        for (const s of rows) {
          state.live.set(s.id, { id: s.id, user_id: s.user_id, model: s.model, mode: s.mode, created: Date.parse(s.started_at) });
        }
        renderLive();
      })
      .catch((err) => report("console-error", err))
      .finally(openFeed);
  }

  function setFeed(text, kind) {
    $("feed-status").textContent = text;
    $("feed-status").dataset.state = kind;
  }

  function openFeed() {
    let url = "/v1/events?channel=" + encodeURIComponent("tenants/" + state.tenantId);
    if (state.lastId) url += "&last_event_id=" + encodeURIComponent(state.lastId);
    const es = new EventSource(url, { withCredentials: true });
    state.es = es;
    const track = (e) => { if (e.lastEventId) state.lastId = e.lastEventId; };
    es.addEventListener("ping", track);
    es.addEventListener("stream.started", (e) => {
      track(e);
      const d = JSON.parse(e.data);
      if (!state.ended.some((x) => x.id === d.stream_id)) {
        state.live.set(d.stream_id, { id: d.stream_id, user_id: d.user_id, model: d.model, mode: d.mode, created: d.created * 1000 });
      }
      queueRender();
    });
    for (const [name, kind] of Object.entries(TERMINAL)) {
      es.addEventListener(name, (e) => {
        track(e);
        const d = JSON.parse(e.data);
        ended({ id: d.stream_id, user_id: d.user_id, model: d.model, status: kind, reason: d.reason || d.error_code || "", by: d.by, ended: Number(e.lastEventId.split("-")[0]) || Date.now() });
      });
    }
    es.onopen = () => { state.reopens = 0; setFeed("live: updates are pushed", "live"); };
    es.onerror = async () => {
      if (es !== state.es) return;
      if (es.readyState !== EventSource.CLOSED) { setFeed("reconnecting…", "connecting"); return; }
      es.close();
      setFeed("disconnected", "error");
      if (state.reopens < MAX_REOPENS && (await refresh())) {
        state.reopens += 1;
        openFeed();
      }
    };
  }

  function ended(item) {
    state.live.delete(item.id);
    state.ended = [item, ...state.ended.filter((x) => x.id !== item.id)].slice(0, RECENT_MAX);
    queueRender();
  }

  function queueRender() {
    if (state.renderQueued) return; // a replayed history arrives as many events at once
    state.renderQueued = true;
    requestAnimationFrame(() => { state.renderQueued = false; renderLive(); });
  }

  function renderLive() {
    const models = new Set([...state.live.values(), ...state.ended].map((s) => s.model).filter(Boolean));
    fillSelect($("live-model"), [...models].sort().map((m) => [m, m]));
    const user = $("live-user").value;
    const model = $("live-model").value;
    const keep = (s) => (!user || s.user_id === user) && (!model || s.model === model);
    const live = [...state.live.values()].filter(keep).sort((a, b) => b.created - a.created);
    $("live-rows").replaceChildren(...live.map((s) => el("tr", { dataset: { streamId: s.id } },
      td("Stream", code(s.id)), td("User", userLabel(s.user_id)), td("Model", s.model || ""),
      td("Mode", s.mode || ""), td("Started", time(s.created)),
      td("Actions", button("Revoke", (b) => revokeStream(s, b), "danger small revoke")))));
    $("live-empty").hidden = live.length > 0;
    const done = state.ended.filter(keep);
    $("ended-rows").replaceChildren(...done.map((s) => el("tr", { dataset: { streamId: s.id } },
      td("Stream", code(s.id)), td("User", userLabel(s.user_id)), td("Model", s.model || ""),
      td("Status", status(s.status)), td("Reason", s.reason || ""), td("Ended", time(s.ended)))));
    $("ended-empty").hidden = done.length > 0;
  }

  async function revokeStream(s, b) {
    const reason = await confirmAction("Revoke this stream?",
      `${s.id} of ${userLabel(s.user_id)} (${s.model}) stops at once; everyone watching it is told why.`, "Revoke");
    if (reason === null) return;
    b.disabled = true;
    try {
      const r = await api("POST", `/v1/admin/streams/${encodeURIComponent(s.id)}/revoke`, { reason });
      // Channel-mode streams are confirmed by the feed as well; a direct one only here.
      if (state.live.has(s.id)) ended({ ...s, status: "revoked", reason: r.revoke_reason || reason, ended: Date.now() });
    } catch (err) {
      report("console-error", err);
      b.disabled = false;
    }
  }

  // --- users ---------------------------------------------------------------------------------

  async function loadUsers() {
    const users = await allPages("/v1/admin/users", { tenant: tenantParam() });
    state.users = new Map(users.map((u) => [u.id, u]));
    const options = users.map((u) => [u.id, u.email]);
    for (const id of ["live-user", "limits-user", "audit-actor"]) fillSelect($(id), options);
    renderUsers();
    queueRender();
  }

  function renderUsers() {
    const rows = [...state.users.values()].map((u) => {
      const self = u.id === state.me.id;
      let role = u.role;
      if (u.role !== "operator") {
        role = el("select", { "aria-label": `Role of ${u.email}`, disabled: self });
        role.append(new Option("member", "member"), new Option("admin", "admin"));
        role.value = u.role;
        role.addEventListener("change", () => userAction(u, { role: role.value }, `Make ${u.email} ${role.value}?`, "Change role").then((ok) => { if (!ok) role.value = u.role; }));
      }
      const actions = el("div", { className: "actions" });
      if (!self) {
        actions.append(
          u.disabled
            ? button("Enable", () => userAction(u, { disabled: false }, `Enable ${u.email}?`, "Enable"))
            : button("Disable", () => userAction(u, { disabled: true }, `Disable ${u.email}? Their tokens and streams end.`, "Disable"), "danger small"),
          button("Sign out everywhere", () => userPost(u, "sign-out", `Sign ${u.email} out everywhere? Every session and token ends; the account stays enabled.`, "Sign out"), "secondary small"),
          button("Revoke", () => userPost(u, "revoke", `Revoke ${u.email}? The account is disabled, every token dies and their streams stop.`, "Revoke"), "danger small"));
      }
      return el("tr", { dataset: { userId: u.id } }, td("Email", u.email), td("Role", role),
        td("Status", status(u.disabled ? "disabled" : "active")), td("Actions", actions));
    });
    $("user-rows").replaceChildren(...rows);
  }

  async function userAction(u, change, text, ok) {
    const reason = await confirmAction("Change this user?", text, ok);
    if (reason === null) return false;
    try {
      await api("PATCH", `/v1/admin/users/${encodeURIComponent(u.id)}`, { ...change, reason });
      report("users-error");
    } catch (err) {
      report("users-error", err);
    }
    await loadUsers();
    return true;
  }

  async function userPost(u, action, text, ok) {
    const reason = await confirmAction("Are you sure?", text, ok);
    if (reason === null) return;
    try {
      await api("POST", `/v1/admin/users/${encodeURIComponent(u.id)}/${action}`, { reason });
      report("users-error");
    } catch (err) {
      report("users-error", err);
    }
    await loadUsers();
  }

  async function createUser(event) {
    event.preventDefault();
    try {
      await api("POST", "/v1/admin/users", {
        email: $("user-email").value.trim(), password: $("user-password").value,
        role: $("user-role").value, tenant_id: tenantParam(),
      });
      $("user-form").reset();
      report("users-error");
      await loadUsers();
    } catch (err) {
      report("users-error", err);
    }
  }

  // --- app tokens ----------------------------------------------------------------------------

  async function loadTokens() {
    if (!$("token-models").options.length) {
      const models = await api("GET", "/v1/models");
      fillSelect($("token-models"), models.data.map((m) => [m.id, m.id]));
    }
    const tokens = await api("GET", "/v1/tokens");
    $("token-rows").replaceChildren(...tokens.map((t) => {
      const live = !t.revoked_at && Date.parse(t.expires_at) > Date.now();
      return el("tr", { dataset: { jti: t.jti } }, td("Name", t.name), td("Scopes", (t.scopes || []).join(", ")),
        td("Models", t.models ? t.models.join(", ") : "all"), td("Expires", time(t.expires_at)),
        td("Status", status(t.revoked_at ? "revoked" : live ? "active" : "expired")),
        td("Actions", live ? button("Revoke", () => revokeToken(t), "danger small") : null));
    }));
  }

  async function issueToken(event) {
    event.preventDefault();
    const scopes = [...document.querySelectorAll("#token-form input[name=scope]:checked")].map((c) => c.value);
    const models = [...$("token-models").selectedOptions].map((o) => o.value);
    try {
      const issued = await api("POST", "/v1/tokens", {
        name: $("token-name").value.trim(), scopes, models: models.length ? models : null,
        expires_in_days: Number($("token-days").value),
      });
      $("token-secret-name").textContent = issued.name;
      $("token-secret").value = issued.token;
      $("token-secret-box").hidden = false;
      $("token-secret").focus();
      $("token-secret").select();
      report("tokens-error");
      await loadTokens();
    } catch (err) {
      report("tokens-error", err);
    }
  }

  async function revokeToken(t) {
    const reason = await confirmAction("Revoke this app token?", `${t.name} stops working everywhere at once; the streams it started are revoked.`, "Revoke");
    if (reason === null) return;
    try {
      await api("DELETE", `/v1/admin/tokens/${encodeURIComponent(t.jti)}`, { reason });
      report("tokens-error");
    } catch (err) {
      report("tokens-error", err);
    }
    await loadTokens();
  }

  // --- limits --------------------------------------------------------------------------------

  function limitsTable(table, limits, editable) {
    const head = el("tr", {}, el("th", { textContent: "Limit" }), el("th", { textContent: "Override" }),
      el("th", { textContent: "Default" }), el("th", { textContent: "In force" }));
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...Object.keys(LIMIT_NAMES).map((key) => {
      const value = limits.overrides[key];
      const input = el("input", { type: "number", min: "0", name: key, value: value ?? "", disabled: !editable,
        "aria-label": `${LIMIT_NAMES[key]} override`, placeholder: "default" });
      return el("tr", { dataset: { limit: key } }, el("td", { textContent: LIMIT_NAMES[key] }), el("td", {}, input),
        el("td", { textContent: String(limits.defaults[key]) }), el("td", { className: "effective", textContent: String(limits.effective[key]) }));
    })));
  }

  function limitsBody(table) {
    const body = {};
    for (const input of table.querySelectorAll("input")) body[input.name] = input.value === "" ? null : Number(input.value);
    return body;
  }

  async function loadLimits() {
    const tenant = await api("GET", `/v1/admin/tenants/${encodeURIComponent(state.tenantId)}/limits`);
    limitsTable($("tenant-limits"), tenant, state.operator);
    $("tenant-limits-save").hidden = !state.operator;
    $("tenant-limits-note").textContent = state.operator ? "" : "Only operators change a tenant's limits.";
    if (!$("limits-user").value && $("limits-user").options.length) $("limits-user").selectedIndex = 0;
    await loadUserLimits();
  }

  async function loadUserLimits() {
    const id = $("limits-user").value;
    if (!id) return;
    const limits = await api("GET", `/v1/admin/users/${encodeURIComponent(id)}/limits`);
    limitsTable($("user-limits"), limits, true);
  }

  async function saveLimits(event, path, table) {
    event.preventDefault();
    try {
      await api("PUT", path, limitsBody(table));
      report("limits-error");
      await loadLimits();
    } catch (err) {
      report("limits-error", err);
    }
  }

  // --- usage ---------------------------------------------------------------------------------

  function dayList(days) {
    const out = [];
    const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
    for (let i = days - 1; i >= 0; i -= 1) out.push(new Date(today - i * 86400000).toISOString().slice(0, 10));
    return out;
  }

  // Rows {day, <key>, value} -> series by key over the days (zeros where nothing happened).
  function seriesOf(rows, days, keyOf, valueOf) {
    const series = new Map();
    for (const row of rows) {
      const key = keyOf(row);
      if (!series.has(key)) series.set(key, new Array(days.length).fill(0));
      const at = days.indexOf(row.day);
      if (at >= 0) series.get(key)[at] += valueOf(row);
    }
    return series;
  }

  function drawChart(figure, days, series) {
    const plot = figure.querySelector(".plot");
    const names = [...series.keys()];
    const values = names.map((n) => series.get(n));
    const total = values.flat().reduce((a, b) => a + b, 0);
    figure.dataset.total = String(total);
    figure.dataset.series = JSON.stringify(names);
    plot.replaceChildren();
    const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { textContent: "Day" }),
      ...names.map((n) => el("th", { textContent: n })))),
    el("tbody", {}, ...days.map((day, i) => values.some((v) => v[i]) ? el("tr", {}, el("td", { textContent: day }),
      ...values.map((v) => el("td", { textContent: String(v[i]) }))) : null)));
    const details = figure.querySelector("details") || el("details", {}, el("summary", { textContent: "Data" }));
    details.replaceChildren(details.querySelector("summary"), el("div", { className: "scroll" }, table));
    figure.append(details);
    if (!names.length) {
      plot.append(el("p", { className: "muted small", textContent: "Nothing in this range." }));
      return;
    }
    const xs = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const ink = dark ? "#c9cede" : "#3a4052";
    const grid = dark ? "#30364a" : "#e6e8ef";
    const axis = { stroke: ink, grid: { stroke: grid }, ticks: { stroke: grid } };
    const chart = new uPlot({
      width: Math.max(240, plot.clientWidth), height: 220,
      scales: { x: { time: true } },
      axes: [{ ...axis }, { ...axis, size: 56 }],
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true } }))],
    }, [xs, ...values], plot);
    state.charts.push({ chart, plot });
  }

  async function loadUsage() {
    const days = dayList(Number($("usage-days").value));
    const from = days[0];
    const base = { from, tenant: tenantParam() };
    for (const { chart } of state.charts) chart.destroy();
    state.charts = [];
    const [byUser, byModel, byDay] = await Promise.all([
      allPages("/v1/admin/usage", { ...base, group_by: "user", per_day: "true" }),
      allPages("/v1/admin/usage", { ...base, group_by: "model", per_day: "true" }),
      allPages("/v1/admin/usage", { ...base, group_by: "day" }),
    ]);
    const tokens = (r) => r.total_tokens;
    drawChart($("chart-users"), days, seriesOf(byUser, days, (r) => r.user_email || r.user_id, tokens));
    drawChart($("chart-models"), days, seriesOf(byModel, days, (r) => r.model, tokens));
    const requests = seriesOf(byDay, days, () => "requests", (r) => r.streams);
    const refusals = seriesOf(byDay, days, () => "refusals", (r) => r.refusals || 0);
    drawChart($("chart-requests"), days, new Map([...requests, ...refusals]));
    report("usage-error");
  }

  function resizeCharts() {
    for (const { chart, plot } of state.charts) chart.setSize({ width: Math.max(240, plot.clientWidth), height: 220 });
  }

  // --- audit log -----------------------------------------------------------------------------

  async function loadAudit(more = false) {
    state.auditPage = more ? state.auditPage + 1 : 1;
    const params = {
      page: state.auditPage, page_size: 50, tenant: tenantParam(),
      action: $("audit-action").value.trim(), actor: $("audit-actor").value,
      target_id: $("audit-target").value.trim(), from: $("audit-from").value,
    };
    const { data, headers } = await request("GET", `/v1/admin/audit?${query(params)}`);
    const rows = data.map((a) => el("tr", {}, td("When", time(a.created_at)), td("Actor", a.actor_email || a.actor_id || "command line"),
      td("Action", code(a.action)), td("Target", `${a.target_type} `, code(a.target_id || "")), td("Reason", a.reason || "")));
    if (more) $("audit-rows").append(...rows);
    else $("audit-rows").replaceChildren(...rows);
    $("audit-more").hidden = !JSON.parse(headers.get("X-Pagination") || "{}").next_page;
    report("audit-error");
  }

  // --- tenants (operators) -------------------------------------------------------------------

  async function loadTenants() {
    const tenants = await loadTenantChoices();
    $("tenant-rows").replaceChildren(...tenants.map((t) => el("tr", { dataset: { tenantId: t.id } },
      td("Slug", t.slug), td("Name", t.name), td("Models", t.allowed_models ? t.allowed_models.join(", ") : "all"),
      td("Status", status(t.disabled ? "disabled" : "active")),
      td("Actions", t.id === state.me.tenant.id ? null : t.disabled
        ? button("Enable", () => tenantAction(t, false))
        : button("Disable", () => tenantAction(t, true), "danger small")))));
  }

  async function tenantAction(t, disabled) {
    const text = disabled ? `Disable ${t.slug}? Every token of it dies and its streams stop.` : `Enable ${t.slug}?`;
    const reason = await confirmAction(disabled ? "Disable this tenant?" : "Enable this tenant?", text, disabled ? "Disable" : "Enable");
    if (reason === null) return;
    try {
      await api("PATCH", `/v1/admin/tenants/${encodeURIComponent(t.id)}`, { disabled, reason });
      report("tenants-error");
    } catch (err) {
      report("tenants-error", err);
    }
    await loadTenants();
  }

  async function createTenant(event) {
    event.preventDefault();
    const models = $("tenant-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    try {
      await api("POST", "/v1/admin/tenants", { slug: $("tenant-slug").value.trim(), name: $("tenant-name").value.trim(), allowed_models: models.length ? models : null });
      $("tenant-form").reset();
      report("tenants-error");
      await loadTenants();
    } catch (err) {
      report("tenants-error", err);
    }
  }

  // --- wiring --------------------------------------------------------------------------------

  const LOADERS = {
    users: loadUsers, tokens: loadTokens, limits: loadLimits, usage: loadUsage,
    audit: () => loadAudit(false), tenants: loadTenants,
  };

  function guard(id, fn) { return (...args) => fn(...args).catch((err) => report(id, err)); }

  document.addEventListener("DOMContentLoaded", () => {
    for (const name of TABS) $("tab-" + name).addEventListener("click", () => selectTab(name));
    document.querySelector("[role=tablist]").addEventListener("keydown", onTabKey);
    $("live-user").addEventListener("change", renderLive);
    $("live-model").addEventListener("change", renderLive);
    $("live-tenant").addEventListener("change", guard("console-error", switchTenant));
    $("user-form").addEventListener("submit", createUser);
    $("token-form").addEventListener("submit", issueToken);
    $("token-copy").addEventListener("click", () => navigator.clipboard.writeText($("token-secret").value).catch(() => $("token-secret").select()));
    $("tenant-limits-form").addEventListener("submit", (e) => saveLimits(e, `/v1/admin/tenants/${encodeURIComponent(state.tenantId)}/limits`, $("tenant-limits")));
    $("user-limits-form").addEventListener("submit", (e) => saveLimits(e, `/v1/admin/users/${encodeURIComponent($("limits-user").value)}/limits`, $("user-limits")));
    $("limits-user").addEventListener("change", guard("limits-error", loadUserLimits));
    $("usage-days").addEventListener("change", guard("usage-error", loadUsage));
    $("audit-form").addEventListener("submit", (e) => { e.preventDefault(); loadAudit(false).catch((err) => report("audit-error", err)); });
    $("audit-more").addEventListener("click", guard("audit-error", () => loadAudit(true)));
    $("tenant-form").addEventListener("submit", createTenant);
    addEventListener("resize", resizeCharts);
    start().catch((err) => gate(err.message || "The console could not start."));
  });
})();
