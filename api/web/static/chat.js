// The chat page: the session, the conversations in the sidebar (`/v1/conversations`, stored on
// the server), the settings, sending a message (each reply a channel-mode stream, followed by
// transcript.js) and the user's channel `users/<id>`: a reply started on another tab or device
// is shown with the prompt and settings it was really asked with. A reply still running when
// the page loads is followed again from its log.
"use strict";

(() => {
  const { $, api, session, subscribe } = window.Streamgate;
  const T = window.SGTranscript;
  const ATTACH_DELAY_MS = 250; // lets a replayed history settle before attaching to a stream
  const MAX_REOPENS = 3; // a closed user channel is re-opened at most this often, then we stop

  const state = {
    me: null,
    conversations: [],
    conv: null, // the open conversation, as GET /v1/conversations/<id> returns it; null: a draft
    loading: Promise.resolve(),
    mine: new Set(), // streams this tab started
    sending: false,
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
    T.closeStream();
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
    T.closeStream();
    state.conv = null;
    history.replaceState(null, "", location.pathname);
    showHeader("New conversation", false); // the settings stay as they are: a starting point
    $("attach-note").hidden = true;
    T.clearTranscript();
    T.resetStats();
    renderList();
    $("prompt").focus();
  }

  function openConversation(id) {
    state.loading = (async () => {
      T.closeStream();
      const conv = await api("GET", "/v1/conversations/" + encodeURIComponent(id));
      state.conv = conv;
      history.replaceState(null, "", "#c=" + encodeURIComponent(conv.id));
      showHeader(conv.title, true);
      settingsOf(conv);
      $("attach-note").hidden = true;
      T.clearTranscript();
      T.resetStats();
      for (const turn of conv.turns) {
        T.addUserMessage(turn.content);
        const el = T.addReply(turn.stream_id);
        const reply = turn.reply || { status: "failed", text: "" };
        if (reply.status === "running") {
          // Still being written (a reload, or sent from elsewhere): follow it from its log.
          T.follow(turn.stream_id, el, { replayUntil: reply.usage.completion_tokens, resumed: true });
        } else {
          T.showReply(el, reply.text || "");
          T.endReply(el, reply.status, reply);
        }
      }
      renderList();
      T.keepNewestInView();
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
    if (state.sending || (T.current() && !T.current().done) || !content.trim()) return;
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
      T.setStatus("connecting");
      const accepted = await api("POST", `/v1/conversations/${state.conv.id}/turns`, {
        content,
        model: settings.model || undefined,
      });
      state.mine.add(accepted.stream.id);
      $("prompt").value = "";
      $("attach-note").hidden = true;
      T.resetStats();
      T.addUserMessage(content);
      const el = T.addReply(accepted.stream.id);
      T.keepNewestInView();
      T.follow(accepted.stream.id, el, { sentAt });
      await loadList();
      const saved = state.conversations.find((c) => c.id === state.conv.id);
      if (saved) { state.conv.title = saved.title; showHeader(saved.title, true); }
    } catch (err) {
      if (!T.current() || T.current().done) T.setStatus("idle");
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
    $("app-view").dataset.userChannel = "closed";
    for (const timer of state.pendingAttach.values()) clearTimeout(timer);
    state.pendingAttach.clear();
  }

  function busy(id) {
    const cur = T.current();
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
    T.closeStream();
    state.conv = null;
    history.replaceState(null, "", location.pathname);
    showHeader("A reply started elsewhere", false);
    settingsOf({ ...(record.settings || {}), model: record.model, system_prompt: null });
    T.clearTranscript();
    T.resetStats();
    for (const message of record.messages || []) {
      const text = typeof message.content === "string" ? message.content : JSON.stringify(message.content);
      if (message.role === "assistant") {
        T.showReply(T.addReply(null), text);
      } else {
        T.addUserMessage(text, message.role === "system" ? "system" : "user");
        if (message.role === "system") $("system-prompt").value = text;
      }
    }
    const el = T.addReply(id);
    const attachNote = $("attach-note");
    attachNote.textContent = "Attached to a reply started on another tab or device: its prompt and settings are shown; it replays from the start.";
    attachNote.hidden = false;
    renderList();
    loadList().catch(() => {});
    T.keepNewestInView();
    T.follow(id, el, { replayUntil: record.usage.completion_tokens });
  }

  function openUserChannel() {
    closeUserChannel();
    const remember = (id) => { state.userLastId = id; };
    const { es, track } = subscribe("users/" + state.me.id, state.userLastId, remember);
    state.userES = es;
    // "open" once replies started on other tabs and devices can reach this page.
    $("app-view").dataset.userChannel = "connecting";
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
    for (const name of Object.keys(T.TERMINAL)) {
      es.addEventListener(name, (e) => {
        track(e);
        const id = JSON.parse(e.data).stream_id;
        clearTimeout(state.pendingAttach.get(id));
        state.pendingAttach.delete(id);
      });
    }
    es.onopen = () => {
      state.userReopens = 0;
      if (es === state.userES) $("app-view").dataset.userChannel = "open";
    };
    es.onerror = async () => {
      if (es !== state.userES) return;
      $("app-view").dataset.userChannel = es.readyState === EventSource.CLOSED ? "closed" : "connecting";
      if (es.readyState !== EventSource.CLOSED) return;
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
    $("new-conversation").addEventListener("click", () => { closeSidebarOnPhone(); newConversation(); });
    $("rename").addEventListener("click", renameConversation);
    $("delete").addEventListener("click", deleteConversation);
    $("toggle-sidebar").addEventListener("click", toggleSidebar);
    T.init({
      ended: () => {
        refreshUsage();
        if (state.conv) loadList().catch(() => {});
      },
    });
    ctl = session({ started, stopped });
  });
})();
