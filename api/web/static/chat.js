// The chat page: conversations stored on the server (`/v1/conversations`), each reply a
// channel-mode stream read with `EventSource` on `/v1/events?channel=streams/<id>` (the browser
// resumes a dropped connection with Last-Event-ID). A reply that is still running when the page
// loads is followed from its log, and a tab also follows `users/<id>`: a reply started on another
// tab or device is shown with the prompt and settings it was really asked with.
"use strict";

(() => {
  const { $, api, session } = window.Streamgate;
  const { render, copyButton } = window.SGMarkdown;
  const TERMINAL = {
    "stream.completed": "completed",
    "stream.failed": "failed",
    "stream.cancelled": "cancelled",
    "stream.revoked": "revoked",
  };
  const ATTACH_DELAY_MS = 250; // lets a replayed history settle before attaching to a stream
  const MAX_REOPENS = 3; // a closed connection is re-opened at most this often, then we stop
  const NEAR_BOTTOM_PX = 48;

  const state = {
    me: null,
    conversations: [],
    conv: null, // the open conversation, as GET /v1/conversations/<id> returns it; null: a draft
    loading: Promise.resolve(),
    current: null, // the reply followed: {id, es, el, text, sentAt, replayUntil, ...}
    mine: new Set(), // streams this tab started
    sending: false,
    follow: true, // keep the newest text in view until the user scrolls up
    userES: null,
    userLastId: null,
    userReopens: 0,
    pendingAttach: new Map(),
  };

  // --- starting and ending a session -----------------------------------------------------------

  async function started(me) {
    state.me = me;
    $("app-view").hidden = false;
    const models = await api("GET", "/v1/models");
    $("model").replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    await loadList();
    const wanted = new URLSearchParams(location.hash.slice(1)).get("c");
    const first = state.conversations.find((c) => c.id === wanted) || state.conversations[0];
    if (first) await openConversation(first.id);
    else newConversation(); // the settings as the page has them (max tokens 256)
    openUserChannel();
    refreshUsage();
  }

  function stopped() {
    state.me = null;
    closeStream();
    closeUserChannel();
    $("app-view").hidden = true;
  }

  // --- the sidebar: conversations and usage ----------------------------------------------------

  async function loadList() {
    state.conversations = await api("GET", "/v1/conversations?page_size=100");
    renderList();
  }

  function renderList() {
    const openId = state.conv && state.conv.id;
    $("conversations").replaceChildren(...state.conversations.map((c) => {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      if (c.id === openId) li.setAttribute("aria-current", "true");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title;
      open.title = c.title;
      open.addEventListener("click", () => {
        closeSidebarOnPhone();
        openConversation(c.id);
      });
      li.append(open);
      return li;
    }));
  }

  function limitLeft(limits, key) {
    const left = ["user", "tenant"]
      .map((scope) => limits[scope][key])
      .filter((s) => s.limit > 0)
      .map((s) => s.remaining);
    return left.length ? Math.min(...left).toLocaleString() : "no limit";
  }

  async function refreshUsage() {
    try {
      const usage = await api("GET", "/v1/usage");
      $("usage-today").textContent = usage.today.total_tokens.toLocaleString();
      $("usage-left").textContent = limitLeft(usage.limits, "tpd");
      $("usage-rpm").textContent = limitLeft(usage.limits, "rpm");
    } catch { /* the panel keeps its last figures */ }
  }

  function closeSidebarOnPhone() {
    $("app-view").dataset.sidebar = "closed";
    $("toggle-sidebar").setAttribute("aria-expanded", "false");
  }

  function toggleSidebar() {
    const open = $("app-view").dataset.sidebar !== "open";
    $("app-view").dataset.sidebar = open ? "open" : "closed";
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  }

  // --- a conversation --------------------------------------------------------------------------

  function settingsOf(source) {
    $("system-prompt").value = source.system_prompt || "";
    $("temperature").value = source.temperature ?? "";
    $("top-p").value = source.top_p ?? "";
    $("max-tokens").value = source.max_tokens ?? "";
    if (source.model && [...$("model").options].some((o) => o.value === source.model)) {
      $("model").value = source.model;
    }
  }

  function readSettings() {
    const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
    return {
      model: $("model").value || null,
      system_prompt: $("system-prompt").value.trim() ? $("system-prompt").value : null,
      temperature: number("temperature"),
      top_p: number("top-p"),
      max_tokens: number("max-tokens"),
    };
  }

  function showHeader(title, saved) {
    $("conv-title").textContent = title;
    $("conv-title").title = title;
    $("rename").disabled = !saved;
    $("delete").disabled = !saved;
    document.title = title + " · Streamgate chat";
  }

  function newConversation() {
    closeStream();
    state.conv = null;
    history.replaceState(null, "", location.pathname);
    showHeader("New conversation", false); // the settings stay as they are: a starting point
    $("attach-note").hidden = true;
    clearTranscript();
    resetStats();
    renderList();
    $("prompt").focus();
  }

  function openConversation(id) {
    state.loading = (async () => {
      closeStream();
      const conv = await api("GET", "/v1/conversations/" + encodeURIComponent(id));
      state.conv = conv;
      history.replaceState(null, "", "#c=" + encodeURIComponent(conv.id));
      showHeader(conv.title, true);
      settingsOf(conv);
      $("attach-note").hidden = true;
      clearTranscript();
      resetStats();
      for (const turn of conv.turns) {
        addUserMessage(turn.content);
        const el = addReply(turn.stream_id);
        const reply = turn.reply || { status: "failed", text: "" };
        if (reply.status === "running") {
          // Still being written (a reload, or sent from elsewhere): follow it from its log.
          follow(turn.stream_id, el, { replayUntil: reply.usage.completion_tokens, resumed: true });
        } else {
          showReply(el, reply.text || "");
          endReply(el, reply.status, reply);
        }
      }
      renderList();
      state.follow = true;
      scrollToEnd();
    })().catch((err) => { $("send-error").textContent = err.message; });
    return state.loading;
  }

  async function renameConversation() {
    if (!state.conv) return;
    const title = prompt("Rename the conversation:", state.conv.title);
    if (title === null || !title.trim()) return;
    try {
      const saved = await api("PATCH", "/v1/conversations/" + state.conv.id, { title: title.trim() });
      state.conv.title = saved.title;
      showHeader(saved.title, true);
      await loadList();
    } catch (err) {
      $("send-error").textContent = err.message;
    }
  }

  async function deleteConversation() {
    if (!state.conv || !confirm(`Delete "${state.conv.title}"? This cannot be undone.`)) return;
    try {
      await api("DELETE", "/v1/conversations/" + state.conv.id);
      await loadList();
      if (state.conversations.length) await openConversation(state.conversations[0].id);
      else newConversation();
    } catch (err) {
      $("send-error").textContent = err.message;
    }
  }

  // --- the transcript --------------------------------------------------------------------------

  function clearTranscript() {
    $("transcript").replaceChildren($("empty"));
    $("empty").hidden = false;
    $("jump").hidden = true;
  }

  function addUserMessage(text, role = "user") {
    $("empty").hidden = true;
    const wrap = document.createElement("div");
    wrap.className = "msg " + role;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = role === "system" ? "System: " + text : text; // never parsed as HTML
    wrap.append(bubble);
    $("transcript").append(wrap);
  }

  function addReply(streamId) {
    $("empty").hidden = true;
    const el = document.createElement("div");
    el.className = "msg reply";
    if (streamId) el.dataset.streamId = streamId;
    const body = document.createElement("div");
    body.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    el.append(body, meta);
    el.rawText = "";
    $("transcript").append(el);
    return el;
  }

  function showReply(el, text) {
    el.rawText = text;
    render(el.querySelector(".body"), text);
  }

  // The reply's footer once it ended: why it stopped, and a Copy button for its text.
  function endReply(el, status, info) {
    const meta = el.querySelector(".meta");
    const notes = [];
    const error = info && info.error;
    if (status === "completed" && info.finish_reason === "length") {
      notes.push(["Truncated at max tokens", "flag"]);
    } else if (status === "failed") {
      const tooLong = error && error.code === "context_length_exceeded";
      const why = (error && error.message) || "the generation failed.";
      notes.push([(tooLong ? "Prompt too long for this model: " : "Failed: ") + why, "flag bad"]);
    } else if (status === "cancelled") {
      notes.push(["Stopped", "flag"]);
    } else if (status === "revoked") {
      const reason = info && (info.reason || (error && error.message));
      notes.push(["Revoked by an administrator" + (reason ? ": " + reason : ""), "flag bad"]);
    } else if (status === "ended") {
      notes.push([(info && info.message) || "The stream ended.", "flag bad"]);
    }
    const nodes = notes.map(([text, cls]) => {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      return span;
    });
    el.dataset.status = status;
    meta.replaceChildren(...nodes);
    if (el.rawText) meta.append(copyButton(() => el.rawText, "Copy reply"));
  }

  function nearBottom() {
    const t = $("transcript");
    return t.scrollHeight - t.scrollTop - t.clientHeight <= NEAR_BOTTOM_PX;
  }

  function scrollToEnd() {
    const t = $("transcript");
    t.scrollTop = t.scrollHeight;
    $("jump").hidden = true;
  }

  function grew() {
    if (state.follow) scrollToEnd();
    else $("jump").hidden = false;
  }

  // --- following one reply ---------------------------------------------------------------------

  function setStatus(status) {
    $("status").textContent = status;
    $("status").dataset.status = status;
  }

  function note(text) { $("conn-note").textContent = text || ""; }

  function resetStats() {
    setStatus("idle");
    $("ttft").textContent = "–";
    $("tokens").textContent = "0";
    $("tps").textContent = "–";
    $("stream-id").textContent = "–";
    $("send-error").textContent = "";
    note("");
    running(false);
  }

  function running(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    $("stop").disabled = !on;
  }

  function closeStream() {
    const cur = state.current;
    if (cur && cur.es) cur.es.close();
    state.current = null;
    running(false);
  }

  // Follow the stream `id` into the reply element `el`. Tokens before `replayUntil` are a
  // replay of what was already written: they are shown, not counted in tokens/s.
  function follow(id, el, { sentAt = null, replayUntil = 0, resumed = false } = {}) {
    if (state.current && state.current.es) state.current.es.close();
    const cur = {
      id, el, sentAt, replayUntil, resumed, es: null, text: "", tokens: 0, firstAt: null,
      liveAt: null, liveTokens: 0, lastId: null, done: false, reopens: 0, frame: 0,
    };
    state.current = cur;
    $("stream-id").textContent = id;
    setStatus("running");
    note(resumed ? "Resumed: replaying what was already written." : "");
    running(true);
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
      onToken(cur, JSON.parse(e.data));
    });
    for (const [name, status] of Object.entries(TERMINAL)) {
      es.addEventListener(name, (e) => { track(e); finish(cur, status, JSON.parse(e.data)); });
    }
    es.onopen = () => { if (cur === state.current && !cur.done && !cur.resumed) note("Connected."); };
    es.onerror = () => onStreamError(cur);
  }

  function onToken(cur, data) {
    const now = performance.now();
    const count = data.count || 1;
    if (cur.firstAt === null) {
      cur.firstAt = now;
      $("ttft").textContent = cur.sentAt === null
        ? (cur.resumed ? "– (resumed)" : "– (attached)")
        : `${Math.round(now - cur.sentAt)} ms`;
    }
    cur.tokens += count;
    if ((data.index ?? 0) + count > cur.replayUntil) {
      // Live tokens only: the clock starts at the first one that was not a replay.
      if (cur.liveAt === null) cur.liveAt = now;
      else cur.liveTokens += count;
      const seconds = (now - cur.liveAt) / 1000;
      // A rate over a few milliseconds says nothing: wait for a tenth of a second of tokens.
      if (seconds >= 0.1 && cur.liveTokens > 0) $("tps").textContent = (cur.liveTokens / seconds).toFixed(1);
    }
    if (cur.resumed && (data.index ?? 0) + count >= cur.replayUntil) note("");
    cur.text += data.text;
    cur.el.rawText = cur.text;
    $("tokens").textContent = String(cur.tokens);
    if (!cur.frame) {
      cur.frame = requestAnimationFrame(() => {
        cur.frame = 0;
        render(cur.el.querySelector(".body"), cur.text);
        grew();
      });
    }
  }

  function finish(cur, status, data) {
    if (cur.es) cur.es.close(); // terminal: never reconnect
    if (cur.done) return;
    cur.done = true;
    if (cur.frame) cancelAnimationFrame(cur.frame);
    cur.frame = 0;
    render(cur.el.querySelector(".body"), cur.text);
    endReply(cur.el, status, data || {});
    if (cur !== state.current) return;
    setStatus(status);
    running(false);
    const flag = cur.el.querySelector(".meta .flag");
    note(status === "completed" ? "" : flag ? flag.textContent : "");
    grew();
    refreshUsage();
    if (state.conv) loadList().catch(() => {});
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
      finish(cur, record.status === "running" ? "ended" : record.status, record);
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

  // --- sending ---------------------------------------------------------------------------------

  function changedSettings(conv, now) {
    const out = {};
    for (const [key, value] of Object.entries(now)) {
      if ((conv[key] ?? null) !== value && !(key === "model" && value === null)) out[key] = value;
    }
    return out;
  }

  async function send(event) {
    if (event) event.preventDefault();
    const content = $("prompt").value;
    if (state.sending || (state.current && !state.current.done) || !content.trim()) return;
    state.sending = true;
    $("send").disabled = true;
    $("send-error").textContent = "";
    const sentAt = performance.now();
    try {
      const settings = readSettings();
      if (!state.conv) {
        const made = await api("POST", "/v1/conversations", settings);
        state.conv = { ...made, turns: [] };
        history.replaceState(null, "", "#c=" + encodeURIComponent(made.id));
        showHeader(made.title, true);
      } else {
        const changes = changedSettings(state.conv, settings);
        if (Object.keys(changes).length) {
          Object.assign(state.conv, await api("PATCH", "/v1/conversations/" + state.conv.id, changes));
        }
      }
      setStatus("connecting");
      const accepted = await api("POST", `/v1/conversations/${state.conv.id}/turns`, {
        content,
        model: settings.model || undefined,
      });
      state.mine.add(accepted.stream.id);
      $("prompt").value = "";
      $("attach-note").hidden = true;
      resetStats();
      addUserMessage(content);
      const el = addReply(accepted.stream.id);
      state.follow = true;
      scrollToEnd();
      follow(accepted.stream.id, el, { sentAt });
      await loadList();
      const saved = state.conversations.find((c) => c.id === state.conv.id);
      if (saved) { state.conv.title = saved.title; showHeader(saved.title, true); }
    } catch (err) {
      if (!state.current || state.current.done) setStatus("idle");
      $("send-error").textContent = err.message || "Could not send the message.";
    } finally {
      state.sending = false;
      $("send").disabled = false;
    }
  }

  function onComposerKey(event) {
    if (event.key !== "Enter" || event.isComposing) return;
    if (event.shiftKey && !(event.ctrlKey || event.metaKey)) return; // a new line
    event.preventDefault();
    send();
  }

  // --- the user's channel: replies started on other tabs and devices ----------------------------

  function closeUserChannel() {
    if (state.userES) state.userES.close();
    state.userES = null;
    for (const timer of state.pendingAttach.values()) clearTimeout(timer);
    state.pendingAttach.clear();
  }

  function busy(id) {
    const cur = state.current;
    return state.sending || state.mine.has(id) || (cur && (cur.id === id || !cur.done));
  }

  async function attach(id) {
    await state.loading;
    if (busy(id)) return;
    // A reply in the open conversation: show it in place.
    if (state.conv) {
      const conv = await api("GET", "/v1/conversations/" + encodeURIComponent(state.conv.id));
      if (conv.turns.some((t) => t.stream_id === id)) {
        await openConversation(conv.id);
        return;
      }
    }
    const record = await api("GET", "/v1/streams/" + encodeURIComponent(id));
    if (busy(id) || record.status !== "running") return;
    // Anywhere else: the prompt and settings it was really asked with, then the live reply.
    closeStream();
    state.conv = null;
    history.replaceState(null, "", location.pathname);
    showHeader("A reply started elsewhere", false);
    settingsOf({ ...(record.settings || {}), model: record.model, system_prompt: null });
    clearTranscript();
    resetStats();
    for (const message of record.messages || []) {
      const text = typeof message.content === "string" ? message.content : JSON.stringify(message.content);
      if (message.role === "assistant") {
        showReply(addReply(null), text);
      } else {
        addUserMessage(text, message.role === "system" ? "system" : "user");
        if (message.role === "system") $("system-prompt").value = text;
      }
    }
    const el = addReply(id);
    const attachNote = $("attach-note");
    attachNote.textContent = "Attached to a reply started on another tab or device: its prompt and settings are shown; it replays from the start.";
    attachNote.hidden = false;
    renderList();
    loadList().catch(() => {});
    state.follow = true;
    scrollToEnd();
    follow(id, el, { replayUntil: record.usage.completion_tokens });
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
        attach(id).catch(() => {});
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
      if (await window.Streamgate.refresh()) {
        state.userReopens += 1;
        openUserChannel();
      } else {
        ctl.signedOut("Your session ended; please log in again."); // e.g. an admin revoked you
      }
    };
  }

  // --- wiring ----------------------------------------------------------------------------------

  let ctl = null;
  document.addEventListener("DOMContentLoaded", () => {
    $("prompt-form").addEventListener("submit", send);
    $("prompt").addEventListener("keydown", onComposerKey);
    $("stop").addEventListener("click", stop);
    $("new-conversation").addEventListener("click", () => { closeSidebarOnPhone(); newConversation(); });
    $("rename").addEventListener("click", renameConversation);
    $("delete").addEventListener("click", deleteConversation);
    $("toggle-sidebar").addEventListener("click", toggleSidebar);
    $("jump").addEventListener("click", () => { state.follow = true; scrollToEnd(); });
    $("transcript").addEventListener("scroll", () => {
      state.follow = nearBottom();
      if (state.follow) $("jump").hidden = true;
    });
    ctl = session({ started, stopped });
  });
})();
