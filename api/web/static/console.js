// Streamgate admin console: plain JavaScript against the public API, no build step.
//
// The session is the playground's cookie login (HttpOnly `sg_access`, CSRF header on writes).
// Live streams: a snapshot from `GET /v1/admin/streams`, then every change pushed on the hub's
// admin channel `tenants/<tenant id>` (EventSource): nothing is polled. Every other tab is one
// of the documented admin routes: /v1/admin/users, /v1/tokens, limits, usage, audit, tenants.
import {
  $, allPages, api, button, changeThenReload, code, confirmAction, cookie, el, fillSelect, query,
  refresh, report, request, status, subscribe, td, time,
} from "./console/core.js";
import { loadUsage, resizeCharts } from "./console/usage.js";

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
    auditPage: 1,
  };

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

  const userLabel = (id) => (state.users.get(id) || {}).email || id || "";

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
    const { es, track } = subscribe("tenants/" + state.tenantId, state.lastId, (id) => { state.lastId = id; });
    state.es = es;
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
    await changeThenReload("users-error", () => api("PATCH", `/v1/admin/users/${encodeURIComponent(u.id)}`, { ...change, reason }), loadUsers);
    return true;
  }

  async function userPost(u, action, text, ok) {
    const reason = await confirmAction("Are you sure?", text, ok);
    if (reason === null) return;
    await changeThenReload("users-error", () => api("POST", `/v1/admin/users/${encodeURIComponent(u.id)}/${action}`, { reason }), loadUsers);
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
    await changeThenReload("tokens-error", () => api("DELETE", `/v1/admin/tokens/${encodeURIComponent(t.jti)}`, { reason }), loadTokens);
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
        el("td", { textContent: limits.defaults[key].toLocaleString() }), el("td", { className: "effective", textContent: limits.effective[key].toLocaleString() }));
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
    await changeThenReload("tenants-error", () => api("PATCH", `/v1/admin/tenants/${encodeURIComponent(t.id)}`, { disabled, reason }), loadTenants);
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
    users: loadUsers, tokens: loadTokens, limits: loadLimits, usage: () => loadUsage(tenantParam()),
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
    $("usage-days").addEventListener("change", guard("usage-error", () => loadUsage(tenantParam())));
    $("audit-form").addEventListener("submit", (e) => { e.preventDefault(); loadAudit(false).catch((err) => report("audit-error", err)); });
    $("audit-more").addEventListener("click", guard("audit-error", () => loadAudit(true)));
    $("tenant-form").addEventListener("submit", createTenant);
    addEventListener("resize", resizeCharts);
    start().catch((err) => gate(err.message || "The console could not start."));
  });
})();
