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

// Stage 3: how much of the 4096-byte cookie budget the cart uses.
function drawMeter(bytesHeader) {
  const meter = $("#meter");
  if (!meter || bytesHeader === null) return;
  const bytes = parseInt(bytesHeader, 10);
  meter.hidden = false;
  meter.classList.toggle("full", bytes > 3600);
  meter.innerHTML = "";
  const label = document.createElement("span");
  label.textContent = `Cookie: ${bytes} / 4096 bytes`;
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("div");
  fill.style.width = `${Math.min(100, (100 * bytes) / 4096).toFixed(1)}%`;
  bar.append(fill);
  meter.append(label, bar);
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

async function call(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    showNotices(["The shop could not be reached: " + e.message], true);
    return;
  }
  const servedBy = response.headers.get("X-Served-By");
  if (servedBy) paintBadge(servedBy);
  let data = {};
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    showNotices([data.message || `HTTP ${response.status}`], true);
    logRequest(method, path, response.status, servedBy, data.error || "error");
    return;
  }
  drawCart(data);
  drawMeter(response.headers.get("X-Cart-Cookie-Bytes"));
  const notices = data.notices || [];
  // Stage 3 says what happened to the cart cookie; stages 4-5 to the session.
  const cartCookie = response.headers.get("X-Cart-Cookie");
  const session = response.headers.get("X-Session");
  const dataPath = response.headers.get("X-Data-Path");  // stage 5: where the data came from
  const cookieNote = [cartCookie ? "cookie " + cartCookie : session ? "session " + session : "", dataPath || ""]
    .filter(Boolean).join(" · ");
  showNotices(notices, false);
  const items = data.lines.reduce((n, l) => n + l.qty, 0);
  logRequest(method, path, response.status, servedBy, `${items} item(s)${cookieNote ? " · " + cookieNote : ""}`);
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

// Stage 5's account panel. Earlier stages have no /api/me (404): the panel
// stays hidden. Each call is logged with its X-Data-Path, so reading the
// profile twice shows the cache miss, then the hit.
async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const servedBy = response.headers.get("X-Served-By");
  if (servedBy) paintBadge(servedBy);
  let data = {};
  try { data = await response.json(); } catch (e) { /* 204, or not JSON */ }
  const dataPath = response.headers.get("X-Data-Path");
  // The probe for accounts in stages 1-4 is not worth a log line.
  if (response.status !== 404) logRequest(method, path, response.status, servedBy, data.error || dataPath || "ok");
  if (!response.ok && response.status !== 401 && response.status !== 404) showNotices([data.message || `HTTP ${response.status}`], true);
  return { status: response.status, data };
}

async function showAccount() {
  const { status, data } = await api("GET", "/api/me");
  if (status === 404) return;
  $("#account").hidden = false;
  const signedIn = status === 200;
  $("#auth").hidden = signedIn;
  $("#signed-in").hidden = !signedIn;
  $("#who").textContent = signedIn ? `Logged in as ${data.name} (${data.email})` : "Not logged in: your cart is anonymous.";
}

$("#auth").addEventListener("submit", async (event) => {
  event.preventDefault();
  const act = event.submitter && event.submitter.dataset.act;
  const body = { email: $("#email").value, password: $("#password").value };
  if (act === "signup") body.name = $("#name").value;
  const { status } = await api("POST", act === "signup" ? "/api/signup" : "/api/login", body);
  if (status === 200 || status === 201) { $("#password").value = ""; await showAccount(); call("GET", "/api/cart"); }
});
$("#profile").addEventListener("click", showAccount);
$("#logout").addEventListener("click", async () => { await api("POST", "/api/logout"); await showAccount(); call("GET", "/api/cart"); });
showAccount();

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
