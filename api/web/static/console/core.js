// The admin console's shared pieces: HTTP against the public API (cookie session, CSRF header,
// one refresh on a 401), small DOM helpers and the confirmation dialog.

export const $ = (id) => document.getElementById(id);

// --- HTTP ----------------------------------------------------------------------------------

export class HttpError extends Error {
  constructor(status, body) {
    super(messageOf(body) || `HTTP ${status}`);
    this.status = status;
  }
}

export function messageOf(body) {
  if (!body || typeof body !== "object") return typeof body === "string" ? body : "";
  if (body.error && body.error.message) return body.error.message;
  const fields = body.errors && typeof body.errors === "object" ? Object.entries(body.errors) : [];
  const detail = fields.map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`).join("; ");
  return (body.message || "") + (detail && body.code === 422 ? ` (${detail})` : "");
}

// The cookie reader, the one-at-a-time token refresh and the hub subscription are the chat
// page's (common.js, loaded before this module), so both pages do them the same way.
export const { cookie, refresh, subscribe } = window.Streamgate;

// One request; resolves with {data, headers}. A 401 is retried once after a refresh.
export async function request(method, url, body, retried = false) {
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

export const api = async (method, url, body) => (await request(method, url, body)).data;

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  return q.toString();
}

// Every page of a paginated list (bounded).
export async function allPages(path, params, maxPages = 20) {
  const rows = [];
  for (let page = 1; page <= maxPages; page += 1) {
    const { data, headers } = await request("GET", `${path}?${query({ ...params, page, page_size: 100 })}`);
    rows.push(...data);
    const info = JSON.parse(headers.get("X-Pagination") || "{}");
    if (!info.next_page) break;
  }
  return rows;
}

export function report(id, err) { $(id).textContent = err ? err.message || String(err) : ""; }

// One change through the API (`call`): its error shown in `id` (or the last one cleared), then
// the list reloaded either way.
export async function changeThenReload(id, call, reload) {
  try {
    await call();
    report(id);
  } catch (err) {
    report(id, err);
  }
  await reload();
}

// --- small DOM helpers ---------------------------------------------------------------------

export function el(tag, props = {}, ...children) {
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
export function td(label, ...content) { return el("td", { dataset: { label } }, ...content); }

export function button(text, onClick, className = "small") {
  const b = el("button", { type: "button", className, textContent: text });
  b.addEventListener("click", () => onClick(b));
  return b;
}

export const code = (text) => el("code", { textContent: text });
export const time = (t) => (t ? new Date(t).toLocaleString() : "");

export function status(text) { return el("span", { className: "status", textContent: text, dataset: { status: text } }); }

export function fillSelect(select, options, keep = true) {
  const current = select.value;
  const first = select.options[0] && select.options[0].value === "" ? select.options[0] : null;
  select.replaceChildren(...(first ? [first] : []), ...options.map(([v, t]) => new Option(t, v)));
  if (keep && [...select.options].some((o) => o.value === current)) select.value = current;
}

// The confirmation dialog: resolves with the reason typed, or null when cancelled.
export function confirmAction(title, text, ok) {
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
