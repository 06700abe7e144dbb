// The shop page's script: every action is one call to the JSON API, and every
// answer re-draws the cart and the "served by" badge, so the learner sees which
// instance answered and what that instance knew.
"use strict";
const $ = (sel) => document.querySelector(sel);
const money = (c) => "€" + Math.floor(c / 100) + "." + String(c % 100).padStart(2, "0");

// One stable colour per instance id (a hash of the name picks the hue).
function colour(id) {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${(h * 47) % 360} 65% 42%)`;
}

function paintBadge(id) {
  const badge = $("#badge");
  badge.textContent = id;
  badge.style.background = colour(id);
}

function logRequest(method, path, status, servedBy, summary) {
  const li = document.createElement("li");
  const dot = document.createElement("span");
  dot.className = "dot";
  dot.style.background = colour(servedBy || "?");
  li.append(dot, `${method} ${path} → ${status} by ${servedBy || "?"}: ${summary}`);
  $("#log").prepend(li);
}

function showNotices(notices, isError) {
  const list = $("#notices");
  list.replaceChildren();
  for (const text of notices || []) {
    const li = document.createElement("li");
    if (isError) li.className = "error";
    li.textContent = text;
    list.append(li);
  }
}

function drawCart(cart) {
  const list = $("#cart");
  list.replaceChildren();
  for (const line of cart.lines) {
    const li = document.createElement("li");
    li.dataset.sku = line.sku;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = line.name;
    const qty = document.createElement("span");
    qty.className = "qty";
    const dec = Object.assign(document.createElement("button"), { className: "dec", textContent: "−" });
    const inc = Object.assign(document.createElement("button"), { className: "inc", textContent: "+" });
    qty.append(dec, String(line.qty), inc);
    const total = Object.assign(document.createElement("span"), { className: "line-total", textContent: money(line.line_total_cents) });
    const remove = Object.assign(document.createElement("button"), { className: "remove", textContent: "×" });
    li.append(name, qty, total, remove);
    list.append(li);
  }
  $("#total").textContent = money(cart.total_cents);
}

// The headers this stage shows its work in (the page's data-log-headers),
// noted next to each request in the log.
const logHeaders = (document.body.dataset.logHeaders || "").split(" ").filter(Boolean);
function headerNotes(response) {
  return logHeaders
    .map((name) => response.headers.get(name))
    .filter(Boolean)
    .join(" · ");
}

// Stages add widgets to the page; each may ask to hear about every answer.
const listeners = [];

// A fresh name for one user action (an Idempotency-Key).
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// One call to the JSON API: paints the badge, logs the call, tells the
// widgets. Resolves to {status, data, response}; a network failure is
// shown and resolves to status 0. `key` names a change, so that sending it
// again is safe.
async function api(method, path, body, key) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (key) options.headers["Idempotency-Key"] = key;
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    showNotices(["The shop could not be reached: " + e.message], true);
    return { status: 0, data: {}, response: null };
  }
  const servedBy = response.headers.get("X-Served-By");
  if (servedBy) paintBadge(servedBy);
  let data = {};
  try { data = await response.json(); } catch (e) { /* 204, or not JSON */ }
  const notes = headerNotes(response);
  const summary = !response.ok
    ? data.error || "error"
    : Array.isArray(data.lines)
      ? `${data.lines.reduce((n, l) => n + l.qty, 0)} item(s)`
      : "ok";
  logRequest(method, path, response.status, servedBy, summary + (notes ? " · " + notes : ""));
  for (const listener of listeners) listener({ method, path, response, data });
  return { status: response.status, data, response };
}

// A cart call: the answer re-draws the cart, or says why not. A change
// carries one Idempotency-Key for the user's action; when no answer came
// (no connection, 502, 503), it is sent once more with the same key after
// the pause the shop asked for: the shop applies it once either way.
async function call(method, path, body) {
  const key = method === "GET" ? undefined : newKey();
  let { status, data, response } = await api(method, path, body, key);
  if (status === 0 || status === 502 || status === 503) {
    const pause = Number((response && response.headers.get("Retry-After")) || 1);
    showNotices([(data.message || "No answer from the shop.") + " Trying again…"], true);
    await new Promise((resolve) => setTimeout(resolve, Math.min(pause, 5) * 1000));
    ({ status, data } = await api(method, path, body, key));
  }
  if (status === 0) return;
  if (status < 200 || status >= 300) {
    showNotices([data.message || `HTTP ${status}`], true);
    return;
  }
  drawCart(data);
  showNotices(data.notices || [], false);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  const line = button.closest("#cart li");
  const sku = button.dataset.sku || (line && line.dataset.sku);
  if (button.classList.contains("size")) call("POST", "/api/cart/items", { sku, qty: 1 });
  else if (button.classList.contains("inc")) call("POST", "/api/cart/items", { sku, qty: 1 });
  else if (button.classList.contains("dec")) {
    const qty = parseInt(line.querySelector(".qty").textContent.replace(/[^0-9]/g, ""), 10) - 1;
    if (qty > 0) call("PUT", `/api/cart/items/${encodeURIComponent(sku)}`, { qty });
    else call("DELETE", `/api/cart/items/${encodeURIComponent(sku)}`);
  } else if (button.classList.contains("remove")) call("DELETE", `/api/cart/items/${encodeURIComponent(sku)}`);
  else if (button.id === "clear") call("DELETE", "/api/cart");
  else if (button.id === "refresh") call("GET", "/api/cart");
});

function applyFilter() {
  const text = $("#filter").value.trim().toLowerCase();
  const garment = $("#garment").value;
  for (const card of document.querySelectorAll(".card")) {
    const show = (!garment || card.dataset.garment === garment) && (!text || card.dataset.text.includes(text));
    card.hidden = !show;
  }
}
$("#filter").addEventListener("input", applyFilter);
$("#garment").addEventListener("change", applyFilter);
paintBadge($("#badge").dataset.instance);

// What a stage's widget script may use.
window.shop = {
  $,
  api,
  refreshCart: () => call("GET", "/api/cart"),
  showNotices,
  onResponse: (listener) => listeners.push(listener),
};
