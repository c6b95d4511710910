// Streamgate's web pages share this: the JSON client of the public API, the cookie session
// (log in, renew, log out) and the header. Plain JavaScript, no build step.
//
// Auth is the HttpOnly `sg_access` cookie from `POST /v1/auth/login {cookie: true}`; requests that
// change something send `X-CSRF-TOKEN` (the readable `csrf_access_token` cookie). An expired
// access token is renewed once with `POST /v1/auth/refresh` (the `sg_refresh` cookie). A page
// first asks `GET /v1/auth/status` (always a 200), so a logged-out visit logs no 401.
"use strict";

window.Streamgate = (() => {
  const $ = (id) => document.getElementById(id);
  let refreshing = null;
  let onSignedOut = () => {};

  class HttpError extends Error {
    constructor(status, body) {
      super(messageOf(body) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
      this.code = body && typeof body === "object" ? body.error_code || (body.error && body.error.code) : null;
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
    if (!refreshing) {
      refreshing = fetch("/v1/auth/refresh", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-TOKEN": cookie("csrf_refresh_token") },
      })
        .then((r) => r.ok)
        .catch(() => false)
        .finally(() => { refreshing = null; });
    }
    return refreshing;
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
      onSignedOut("Your session ended; please log in again.");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }

  // The session: who is logged in, or null (asked without an erroring request).
  async function currentUser() {
    let status = await api("GET", "/v1/auth/status");
    if (!status.authenticated && status.refreshable && (await refresh())) {
      status = await api("GET", "/v1/auth/status");
    }
    return status.authenticated ? api("GET", "/v1/auth/me") : null;
  }

  function showUser(me) {
    $("who-email").textContent = me ? me.email : "";
    $("who-role").textContent = me ? me.role : "";
    $("who-tenant").textContent = me && me.tenant ? me.tenant.slug : "";
    $("who").hidden = !me;
    // The admin console (its own page, /console) is for admins and operators with admin scope.
    const admin = !!me && (me.role === "admin" || me.role === "operator")
      && !!me.token && (me.token.scopes || []).includes("admin");
    const link = $("admin-link");
    if (link) link.hidden = !admin;
  }

  // Wires the login form and Log out; `started(me)` runs once a user is known, `stopped(msg)`
  // when the session ends (logged out, revoked, expired).
  function session({ started, stopped }) {
    const signedOut = (message) => {
      showUser(null);
      $("login-view").hidden = false;
      $("login-error").textContent = message || "";
      stopped(message);
    };
    onSignedOut = signedOut;
    const begin = async (me) => {
      showUser(me);
      $("login-view").hidden = true;
      await started(me);
    };
    $("login-form").addEventListener("submit", async (event) => {
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
        await begin(await api("GET", "/v1/auth/me"));
      } catch (err) {
        $("login-error").textContent = err.message || "Login failed.";
      } finally {
        $("login-submit").disabled = false;
      }
    });
    $("logout").addEventListener("click", async () => {
      try { await api("POST", "/v1/auth/logout", {}); } catch { /* cookies are cleared anyway */ }
      signedOut("");
    });
    currentUser()
      .then((me) => (me ? begin(me) : signedOut("")))
      .catch((err) => signedOut(err.message));
    return { signedOut };
  }

  // A hub subscription to `channel` (EventSource, cookie auth) that resumes after `lastId` when
  // there is one. `track(e)` hands each event's id to `remember`, so that the next subscription
  // resumes where this one stopped.
  function subscribe(channel, lastId, remember) {
    let url = "/v1/events?channel=" + encodeURIComponent(channel);
    if (lastId) url += "&last_event_id=" + encodeURIComponent(lastId);
    const es = new EventSource(url, { withCredentials: true });
    const track = (e) => { if (e.lastEventId) remember(e.lastEventId); };
    return { es, track };
  }

  return { $, api, HttpError, cookie, refresh, session, subscribe };
})();
