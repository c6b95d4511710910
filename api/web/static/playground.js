// Streamgate playground: plain JavaScript against the public API, no build step.
//
// Auth is the HttpOnly `sg_access` cookie from `POST /v1/auth/login {cookie: true}`; requests that
// change something send `X-CSRF-TOKEN` (the readable `csrf_access_token` cookie). An expired
// access token is renewed once with `POST /v1/auth/refresh` (the `sg_refresh` cookie).
// Generations run in channel mode: `POST /v1/streams`, then `EventSource` on
// `/v1/events?channel=streams/<id>`; the browser resumes dropped connections with Last-Event-ID.
// A tab also follows `users/<id>` and attaches to a stream another tab or device starts.
"use strict";

(() => {
  const TERMINAL = {
    "stream.completed": "completed",
    "stream.failed": "failed",
    "stream.cancelled": "cancelled",
    "stream.revoked": "revoked",
  };
  const ATTACH_DELAY_MS = 250; // lets a replayed history settle before attaching to a stream
  const MAX_REOPENS = 3; // a closed connection is re-opened at most this often, then we stop

  const $ = (id) => document.getElementById(id);
  const state = {
    me: null,
    current: null, // the stream shown: {id, es, sentAt, firstAt, lastAt, tokens, lastId, done, reopens}
    mine: new Set(), // streams this tab started
    sending: false,
    userES: null,
    userLastId: null,
    userReopens: 0,
    pendingAttach: new Map(),
    refreshing: null,
  };

  // --- HTTP ----------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super(messageOf(body) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function messageOf(body) {
    if (!body || typeof body !== "object") return typeof body === "string" ? body : "";
    if (body.error && body.error.message) return body.error.message; // OpenAI's shape
    return body.message || "";
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

  async function api(method, url, body, retried = false) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-TOKEN"] = cookie("csrf_access_token");
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && !retried && !url.startsWith("/v1/auth/")) {
      if (await refresh()) return api(method, url, body, true);
      if (state.me) signedOut("Your session ended; please log in again.");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }

  // --- session -------------------------------------------------------------------------------

  async function start() {
    let me;
    try {
      me = await api("GET", "/v1/auth/me");
    } catch (err) {
      if (err.status === 401 && (await refresh())) me = await api("GET", "/v1/auth/me");
      else throw err;
    }
    state.me = me;
    $("who-email").textContent = me.email;
    $("who-role").textContent = me.role;
    $("who-tenant").textContent = me.tenant ? me.tenant.slug : "";
    $("who").hidden = false;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    await loadModels();
    openUserChannel();
    const admin = (me.role === "admin" || me.role === "operator")
      && me.token && (me.token.scopes || []).includes("admin");
    $("admin-link").hidden = !admin; // the admin console is its own page: /console
  }

  function signedOut(message) {
    state.me = null;
    closeStream();
    closeUserChannel();
    $("who").hidden = true;
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    $("login-error").textContent = message || "";
  }

  async function logIn(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    $("login-submit").disabled = true;
    try {
      await api("POST", "/v1/auth/login", {
        tenant: $("login-tenant").value.trim(),
        email: $("login-email").value.trim(),
        password: $("login-password").value,
        cookie: true,
      });
      $("login-password").value = "";
      await start();
    } catch (err) {
      $("login-error").textContent = err.message || "Login failed.";
    } finally {
      $("login-submit").disabled = false;
    }
  }

  async function logOut() {
    try { await api("POST", "/v1/auth/logout", {}); } catch { /* cookies are cleared anyway */ }
    signedOut("");
  }

  async function loadModels() {
    const list = await api("GET", "/v1/models");
    const select = $("model");
    select.replaceChildren(...list.data.map((model) => new Option(model.id, model.id)));
  }

  // --- one stream ------------------------------------------------------------------------------

  function setStatus(status) {
    const el = $("status");
    el.textContent = status;
    el.dataset.status = status;
  }

  function note(text) { $("conn-note").textContent = text || ""; }

  function resetOutput() {
    $("output").textContent = "";
    $("ttft").textContent = "–";
    $("tokens").textContent = "0";
    $("tps").textContent = "–";
    $("stream-id").textContent = "–";
    $("attach-note").hidden = true;
    $("send-error").textContent = "";
    note("");
  }

  function closeStream() {
    const cur = state.current;
    if (cur && cur.es) cur.es.close();
  }

  async function send(event) {
    event.preventDefault();
    if (state.sending) return;
    closeStream();
    resetOutput();
    setStatus("connecting");
    state.sending = true;
    $("send").disabled = true;
    const sentAt = performance.now();
    try {
      const accepted = await api("POST", "/v1/streams", {
        model: $("model").value,
        messages: [{ role: "user", content: $("prompt").value }],
        max_tokens: Number($("max-tokens").value) || undefined,
      });
      state.mine.add(accepted.id);
      attach(accepted.id, { sentAt, eventsUrl: accepted.events_url });
    } catch (err) {
      setStatus("idle");
      $("send-error").textContent = err.message || "Could not start the stream.";
    } finally {
      state.sending = false;
      $("send").disabled = false;
    }
  }

  function attach(id, { sentAt = null, attached = false } = {}) {
    closeStream();
    if (attached) {
      resetOutput();
      const el = $("attach-note");
      el.textContent = "Attached to a stream started on another tab or device; replaying it from the start.";
      el.hidden = false;
    }
    const cur = {
      id, es: null, sentAt, attached, firstAt: null, lastAt: null, tokens: 0,
      lastId: null, done: false, reopens: 0,
    };
    state.current = cur;
    $("stream-id").textContent = id;
    $("stop").disabled = false;
    setStatus("running");
    open(cur);
  }

  function open(cur) {
    let url = "/v1/events?channel=" + encodeURIComponent("streams/" + cur.id);
    if (cur.lastId) url += "&last_event_id=" + encodeURIComponent(cur.lastId);
    const es = new EventSource(url, { withCredentials: true });
    cur.es = es;
    const track = (e) => { if (e.lastEventId) cur.lastId = e.lastEventId; };
    es.addEventListener("stream.started", track);
    es.addEventListener("ping", track);
    es.addEventListener("token", (e) => {
      track(e);
      if (cur !== state.current) return;
      const data = JSON.parse(e.data);
      const now = performance.now();
      if (cur.firstAt === null) {
        cur.firstAt = now;
        $("ttft").textContent = cur.sentAt === null ? "– (attached)" : `${Math.round(now - cur.sentAt)} ms`;
      }
      cur.lastAt = now;
      cur.tokens += data.count || 1;
      $("output").append(document.createTextNode(data.text));
      $("tokens").textContent = String(cur.tokens);
      const seconds = (cur.lastAt - cur.firstAt) / 1000;
      if (seconds > 0) $("tps").textContent = (cur.tokens / seconds).toFixed(1);
    });
    for (const [name, status] of Object.entries(TERMINAL)) {
      es.addEventListener(name, (e) => { track(e); finish(cur, status, JSON.parse(e.data)); });
    }
    es.onopen = () => { if (cur === state.current && !cur.done) note("Connected."); };
    es.onerror = () => onStreamError(cur);
  }

  function finish(cur, status, data) {
    if (cur.es) cur.es.close(); // terminal: never reconnect
    if (cur.done) return;
    cur.done = true;
    if (cur !== state.current) return;
    setStatus(status);
    $("stop").disabled = true;
    if (status === "revoked") note("Revoked by an administrator" + (data && data.reason ? `: ${data.reason}` : "."));
    else if (status === "failed") note("Failed: " + ((data && data.error && data.error.message) || "the generation failed."));
    else if (status === "cancelled") note("Stopped.");
    else if (status === "ended") note((data && data.message) || "The stream ended.");
    else note("");
  }

  async function onStreamError(cur) {
    if (cur.done || cur !== state.current) { if (cur.es) cur.es.close(); return; }
    if (cur.es.readyState === EventSource.CONNECTING) {
      note("Connection lost; resuming from the last event…"); // the browser sends Last-Event-ID
      return;
    }
    // CLOSED: the server refused the connection (401, 403, 410, 429...). Ask why, never loop.
    cur.es.close();
    let record = null;
    try {
      record = await api("GET", "/v1/streams/" + encodeURIComponent(cur.id));
    } catch (err) {
      finish(cur, "ended", { message: err.message });
      return;
    }
    if (record.status === "revoked") {
      finish(cur, "revoked", { reason: record.error && record.error.message });
    } else if (cur.reopens < MAX_REOPENS && !cur.done) {
      cur.reopens += 1; // e.g. the access cookie had expired and api() just refreshed it
      open(cur);
    } else {
      finish(cur, record.status === "running" ? "ended" : record.status, {});
    }
  }

  async function stop() {
    const cur = state.current;
    if (!cur || cur.done) return;
    $("stop").disabled = true;
    try {
      await api("DELETE", "/v1/streams/" + encodeURIComponent(cur.id));
    } catch (err) {
      $("send-error").textContent = err.message;
      $("stop").disabled = cur.done;
    }
  }

  // --- the user's channel: other tabs and devices ---------------------------------------------

  function closeUserChannel() {
    if (state.userES) state.userES.close();
    state.userES = null;
    for (const timer of state.pendingAttach.values()) clearTimeout(timer);
    state.pendingAttach.clear();
  }

  function openUserChannel() {
    closeUserChannel();
    let url = "/v1/events?channel=" + encodeURIComponent("users/" + state.me.id);
    if (state.userLastId) url += "&last_event_id=" + encodeURIComponent(state.userLastId);
    const es = new EventSource(url, { withCredentials: true });
    state.userES = es;
    const track = (e) => { if (e.lastEventId) state.userLastId = e.lastEventId; };
    es.addEventListener("ping", track);
    es.addEventListener("stream.started", (e) => {
      track(e);
      const data = JSON.parse(e.data);
      if (data.mode !== "channel") return; // a direct-mode stream belongs to its one connection
      const id = data.stream_id;
      const timer = setTimeout(() => {
        state.pendingAttach.delete(id);
        const cur = state.current;
        if (state.sending || state.mine.has(id) || (cur && cur.id === id)) return;
        if (cur && !cur.done) return; // busy with another stream: don't yank it away
        attach(id, { attached: true });
      }, ATTACH_DELAY_MS);
      state.pendingAttach.set(id, timer);
    });
    for (const name of Object.keys(TERMINAL)) {
      es.addEventListener(name, (e) => {
        track(e);
        const id = JSON.parse(e.data).stream_id;
        clearTimeout(state.pendingAttach.get(id));
        state.pendingAttach.delete(id);
      });
    }
    es.onopen = () => { state.userReopens = 0; };
    es.onerror = async () => {
      if (es !== state.userES || es.readyState !== EventSource.CLOSED) return;
      es.close();
      if (!state.me || state.userReopens >= MAX_REOPENS) return;
      if (await refresh()) {
        state.userReopens += 1;
        openUserChannel();
      } else {
        signedOut("Your session ended; please log in again."); // e.g. an admin revoked you
      }
    };
  }

  // --- wiring --------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", logIn);
    $("logout").addEventListener("click", logOut);
    $("prompt-form").addEventListener("submit", send);
    $("stop").addEventListener("click", stop);
    start().catch(() => signedOut(""));
  });
})();
