// Stage 6's live panel: one WebSocket per page (see socket.rs for its
// messages). It watches the stock of every size the page shows, keeps the
// counter of the lesson (received against published, by each topic's
// update numbers), joins a room, and reconnects with jitter when its
// instance goes away.
"use strict";
(() => {
  const $ = shop.$;
  const money = (c) => "€" + Math.floor(c / 100) + "." + String(c % 100).padStart(2, "0");
  const sizeButtons = new Map();
  for (const button of document.querySelectorAll(".size")) sizeButtons.set(button.dataset.sku, button);
  const skus = Array.from(sizeButtons.keys());

  // Per topic: the first update number this page knew of (`base`), the
  // newest it knows was published (`latest`), the newest it received
  // (`seq`), and that update's stream id (`id`, streams mode), to resume from.
  const topics = new Map();
  let epoch = null;
  let received = 0;
  const flash = new Map();

  function position(topic) {
    let p = topics.get(topic);
    if (!p) {
      p = { base: null, latest: 0, seq: 0, id: null };
      topics.set(topic, p);
    }
    return p;
  }
  // The shop says an update numbered `seq` exists on `topic`.
  function known(topic, seq) {
    const p = position(topic);
    if (p.base === null) p.base = seq;
    p.latest = Math.max(p.latest, seq);
    return p;
  }
  function drawCounter() {
    let published = 0;
    for (const p of topics.values()) if (p.base !== null) published += p.latest - p.base;
    $("#received").textContent = received;
    $("#published").textContent = published;
    $("#missed").textContent = Math.max(0, published - received);
  }
  function newEpoch(next) {
    if (epoch !== null && epoch !== next) {
      // Redis lost its counters: numbers start again; so does the count.
      topics.clear();
      received = 0;
    }
    epoch = next;
  }

  function drawStock(sku, stock, priceCents) {
    const button = sizeButtons.get(sku);
    if (!button) return;
    if (stock <= 0) button.dataset.left = "sold out";
    else if (stock <= 5) button.dataset.left = `${stock} left`;
    else delete button.dataset.left;
    button.classList.toggle("sold-out", stock <= 0);
    button.disabled = stock <= 0;
    if (priceCents !== undefined && priceCents !== null) {
      flash.set(sku, priceCents);
      const card = button.closest(".card");
      const price = card && card.querySelector(".price");
      if (price) {
        if (!price.dataset.catalog) price.dataset.catalog = price.textContent;
        const sizes = Array.from(card.querySelectorAll(".size"))
          .filter((b) => flash.has(b.dataset.sku))
          .map((b) => `${b.textContent} ${money(flash.get(b.dataset.sku))}`);
        price.replaceChildren(price.dataset.catalog + " ", Object.assign(document.createElement("span"), {
          className: "flash", textContent: "⚡ " + sizes.join(", "),
        }));
      }
    }
    button.classList.remove("changed");
    void button.offsetWidth;
    button.classList.add("changed");
  }

  function setState(text, kind) {
    const state = $("#live-state");
    state.textContent = text;
    state.className = "live-state " + (kind || "");
  }

  let room = "";
  let roomName = "";
  let hello = null;
  function line(parts) {
    const li = document.createElement("li");
    li.append(...parts);
    const list = $("#messages");
    list.append(li);
    while (list.children.length > 100) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function onUpdate(message) {
    if (message.epoch) newEpoch(message.epoch);
    const p = known(message.topic, message.seq);
    if (message.seq <= p.seq) return; // seen already (a replay overlapping live delivery)
    p.seq = message.seq;
    if (message.id) p.id = message.id;
    received += 1;
    if (message.type === "stock") drawStock(message.sku, message.stock, message.price_cents);
    else if (message.type === "say") line([Object.assign(document.createElement("b"), { textContent: message.from }), ": " + message.text]);
    else if (message.type === "presence") {
      // A crowded room's update names only the latest few; the count is everyone.
      const who = message.who || [];
      const others = message.count - who.length;
      $("#presence").textContent = message.count
        ? `${message.count} here: ${who.join(", ")}${others > 0 ? ` and ${others} more` : ""}`
        : "nobody here";
    }
    drawCounter();
  }

  function onSnapshot(message) {
    newEpoch(message.epoch);
    for (const stock of message.stocks) {
      const p = known(`stock:${stock.sku}`, stock.seq);
      // Latest-value state: the snapshot replaces whatever was missed
      // (and, with streams, says where to resume from).
      if (stock.seq > p.seq || !p.id) {
        p.seq = Math.max(p.seq, stock.seq);
        if (stock.id) p.id = stock.id;
      }
      drawStock(stock.sku, stock.stock, stock.price_cents);
    }
    for (const r of message.rooms) {
      const p = known(`room:${r.room}`, r.seq);
      // Events are not latest-value state: a snapshot says how many there
      // were, not what was said. What the page never got is gone, unless
      // the stream can replay it (--fanout streams).
      const seen = Math.max(p.seq, p.noted || 0);
      if (r.seq > seen && p.seq > 0) {
        line([Object.assign(document.createElement("i"), { textContent: `(${r.seq - seen} room update(s) missed)` })]);
      }
      p.noted = Math.max(seen, r.seq);
      if (!p.id && r.id) p.id = r.id;
    }
    drawCounter();
  }

  // Every few seconds, the newest update numbers from the shop itself (by
  // HTTP, any instance): so that "published" counts what this page's
  // instance never told it about. The stock shown is left as the socket
  // drew it: a stale number is the lesson of --fanout local.
  async function pollPublished() {
    try {
      const response = await fetch(`/api/live/stock?skus=${encodeURIComponent(skus.join(","))}`, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      for (const stock of await response.json()) {
        if (epoch !== null) known(`stock:${stock.sku}`, stock.seq);
      }
      drawCounter();
    } catch (e) { /* the next poll will do */ }
  }
  setInterval(pollPublished, 5000);

  let socket = null;
  let attempt = 0;
  function since() {
    const out = {};
    for (const [topic, p] of topics) if (p.id && topic.startsWith("stock:")) out[topic] = p.id;
    return out;
  }
  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }
  function join() {
    if (!room) return;
    const p = topics.get(`room:${room}`);
    send({ type: "join", room, name: roomName || "guest", since: p && p.id ? p.id : undefined });
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/ws`);
    socket.onopen = () => {
      attempt = 0;
      send({ type: "watch", skus, since: since() });
      join();
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      switch (message.type) {
        case "hello":
          hello = message;
          newEpoch(message.epoch);
          setState(`${message.instance} · ${message.fanout}` + (message.live ? "" : " · paused"), message.live ? "on" : "paused");
          break;
        case "snapshot": onSnapshot(message); break;
        case "paused": setState(`${hello ? hello.instance : "?"} · live updates paused`, "paused"); break;
        case "live": setState(`${hello ? hello.instance : "?"} · ${hello ? hello.fanout : ""}`, "on"); break;
        case "lagged": setState(`${hello ? hello.instance : "?"} · caught up after lagging`, "paused"); break;
        case "error": shop.showNotices([message.message], true); break;
        default: if (message.topic) onUpdate(message);
      }
    };
    socket.onclose = (event) => {
      socket = null;
      // Full jitter between 100 ms and 2 s, growing with each failed try.
      const ceiling = Math.min(2000, 100 * 2 ** attempt);
      const pause = 100 + Math.random() * Math.max(0, ceiling - 100);
      attempt += 1;
      const why = { 1001: "instance leaving", 1008: "too many messages", 1013: "too slow" }[event.code] || "disconnected";
      setState(`${why}; reconnecting…`, "paused");
      setTimeout(connect, pause);
    };
  }
  connect();

  $("#room").addEventListener("change", () => {
    room = $("#room").value;
    roomName = $("#room-name").value.trim();
    $("#room-panel").hidden = !room;
    $("#messages").replaceChildren();
    $("#presence").textContent = "";
    if (room) join();
    else send({ type: "leave" });
  });
  $("#say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#say").value.trim();
    if (!text) return;
    send({ type: "say", text });
    $("#say").value = "";
  });

  // Buy now: one Idempotency-Key per press; sent once more with the same
  // key when no answer came, so a lost answer cannot buy twice.
  $("#checkout").addEventListener("click", async () => {
    const key = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + String(Math.random()).slice(2);
    let { status, data } = await shop.api("POST", "/api/checkout", undefined, key);
    if (status === 0 || status === 502 || status === 503) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      ({ status, data } = await shop.api("POST", "/api/checkout", undefined, key));
    }
    if (status === 200) {
      const items = data.bought.reduce((n, line) => n + line.qty, 0);
      shop.showNotices([`Bought ${items} item(s). Every page watching them sees the stock drop.`], false);
      shop.refreshCart();
    } else if (status !== 0) {
      shop.showNotices([data.message || `HTTP ${status}`], true);
    }
  });
})();
