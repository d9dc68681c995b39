/* global document, fetch */
// DOM helpers for the dashboard page. All run text reaches the page through `h()` as text nodes
// (textContent), never as HTML: model outputs are untrusted. The only HTML the page inserts is a
// comparison report that the server rendered with raw HTML disabled.

/**
 * Creates an element. `attrs`: `class`, `style` (object), `on<event>` (functions only), `dataset`
 * (object), anything else as an attribute. Children: strings become text nodes; null/false are
 * skipped; arrays are flattened.
 */
export function h(tag, attrs, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) {
      if (typeof v !== "function") throw new Error(`event handler ${k} must be a function`);
      el.addEventListener(k.slice(2), v);
    } else if (k === "innerHTML") throw new Error("h(): innerHTML is not allowed");
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (typeof c === "string" || typeof c === "number")
      el.appendChild(document.createTextNode(String(c)));
    else el.appendChild(c);
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** GET a JSON API endpoint; throws an Error with the server's message on failure. */
export async function getJson(path, params) {
  const qs = params
    ? "?" +
      Object.entries(params)
        .filter(([, v]) => v !== null && v !== undefined && v !== "")
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
        .join("&")
    : "";
  const res = await fetch(path + qs);
  let body;
  try {
    body = await res.json();
  } catch {
    throw new Error(`${path}: HTTP ${res.status}`);
  }
  if (!res.ok) throw new Error(body && body.error ? body.error : `${path}: HTTP ${res.status}`);
  return body;
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return x.toFixed(digits);
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** A line diff (parts from the server's `diff` package output) as coloured lines. */
export function diffView(parts, emptyNote) {
  const lines = [];
  for (const p of parts ?? []) {
    const cls = p.added ? "add" : p.removed ? "del" : "same";
    const sign = p.added ? "+ " : p.removed ? "− " : "  ";
    const text = p.value.endsWith("\n") ? p.value.slice(0, -1) : p.value;
    for (const line of text.split("\n")) lines.push(h("div", { class: `dl ${cls}` }, sign + line));
  }
  if (lines.length === 0) return h("div", { class: "muted" }, emptyNote ?? "(no text)");
  return h("div", { class: "diff" }, lines);
}

/** Previous / next buttons over a list of `total` items shown `limit` at a time from `offset`. */
export function pagerView(total, offset, limit, onPage) {
  if (total <= limit) return h("div", { class: "pager muted" }, `${total} shown`);
  return h(
    "div",
    { class: "pager" },
    h("button", { disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, "‹ prev"),
    h("span", {}, `${offset + 1}–${Math.min(total, offset + limit)} of ${total}`),
    h("button", { disabled: offset + limit >= total, onclick: () => onPage(offset + limit) }, "next ›"),
  );
}
