// The transcript of the chat page and the one reply it follows: messages, a reply rendered as
// Markdown while its stream's events arrive (`EventSource` on `/v1/events?channel=streams/<id>`;
// the browser resumes a dropped connection with Last-Event-ID), how it ended, the stats line,
// Stop, and an auto-scroll that follows the newest text until the reader scrolls up.
"use strict";

window.SGTranscript = (() => {
  const { $, api, subscribe } = window.Streamgate;
  const { render, copyButton } = window.SGMarkdown;
  const TERMINAL = {
    "stream.completed": "completed",
    "stream.failed": "failed",
    "stream.cancelled": "cancelled",
    "stream.revoked": "revoked",
  };
  const MAX_REOPENS = 3; // a closed connection is re-opened at most this often, then we stop
  const NEAR_BOTTOM_PX = 48;
  let current = null; // the reply followed: {id, es, el, text, sentAt, replayUntil, ...}
  let followNewest = true; // keep the newest text in view until the reader scrolls up
  let onEnded = () => {};

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
    if (followNewest) scrollToEnd();
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
    const cur = current;
    if (cur && cur.es) cur.es.close();
    current = null;
    running(false);
  }

  // Follow the stream `id` into the reply element `el`. Tokens before `replayUntil` are a
  // replay of what was already written: they are shown, not counted in tokens/s.
  function follow(id, el, { sentAt = null, replayUntil = 0, resumed = false } = {}) {
    if (current && current.es) current.es.close();
    const cur = {
      id, el, sentAt, replayUntil, resumed, es: null, text: "", tokens: 0, firstAt: null,
      liveAt: null, liveTokens: 0, lastId: null, done: false, reopens: 0, frame: 0,
    };
    current = cur;
    $("stream-id").textContent = id;
    setStatus("running");
    note(resumed ? "Resumed: replaying what was already written." : "");
    running(true);
    open(cur);
  }

  function open(cur) {
    const { es, track } = subscribe("streams/" + cur.id, cur.lastId, (id) => { cur.lastId = id; });
    cur.es = es;
    es.addEventListener("stream.started", track);
    es.addEventListener("ping", track);
    es.addEventListener("token", (e) => {
      track(e);
      if (cur !== current) return;
      onToken(cur, JSON.parse(e.data));
    });
    for (const [name, status] of Object.entries(TERMINAL)) {
      es.addEventListener(name, (e) => { track(e); finish(cur, status, JSON.parse(e.data)); });
    }
    es.onopen = () => { if (cur === current && !cur.done && !cur.resumed) note("Connected."); };
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
    if (cur !== current) return;
    setStatus(status);
    running(false);
    const flag = cur.el.querySelector(".meta .flag");
    note(status === "completed" ? "" : flag ? flag.textContent : "");
    grew();
    onEnded(status);
  }

  async function onStreamError(cur) {
    if (cur.done || cur !== current) { if (cur.es) cur.es.close(); return; }
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
    const cur = current;
    if (!cur || cur.done) return;
    $("stop").disabled = true;
    try {
      await api("DELETE", "/v1/streams/" + encodeURIComponent(cur.id));
    } catch (err) {
      $("send-error").textContent = err.message;
      $("stop").disabled = cur.done;
    }
  }


  function keepNewestInView() {
    followNewest = true;
    scrollToEnd();
  }

  // `ended(status)` runs after each followed reply ends (refresh usage, the list...).
  function init({ ended }) {
    onEnded = ended;
    $("stop").addEventListener("click", stop);
    $("jump").addEventListener("click", keepNewestInView);
    $("transcript").addEventListener("scroll", () => {
      followNewest = nearBottom();
      if (followNewest) $("jump").hidden = true;
    });
  }

  return {
    TERMINAL, init, clearTranscript, addUserMessage, addReply, showReply, endReply,
    keepNewestInView, resetStats, setStatus, closeStream, follow,
    current: () => current,
  };
})();
