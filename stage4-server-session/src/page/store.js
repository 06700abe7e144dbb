// Stage 4's store badge: which store keeps the sessions, redrawn from
// X-Session-Store ("memcached; memory only …") after every answer that
// carries it, and what the store says of itself on /metrics (Memcached's
// evictions; the cache's hits and misses), fetched at most every 2 s.
"use strict";
(() => {
  const badge = shop.$("#session-store");
  const counters = badge.querySelector(".counters");
  // The /metrics lines worth a learner's eye, and how to say them.
  const said = {
    memcached_evictions_total: (n) => `${n} carts evicted by Memcached, without a word`,
    session_cache_hits_total: (n) => `${n} reads from the cache`,
    session_cache_misses_total: (n) => `${n} from the record`,
  };
  let fetchedAt = 0;
  async function showCounters() {
    if (Date.now() - fetchedAt < 2000) return;
    fetchedAt = Date.now();
    try {
      const response = await fetch("/metrics");
      if (!response.ok) return;
      const text = await response.text();
      const parts = [];
      for (const line of text.split("\n")) {
        const [name, value] = line.split(" ");
        if (said[name]) parts.push(said[name](value));
      }
      const instance = response.headers.get("X-Served-By") || "an instance";
      counters.textContent = parts.length ? `(${instance}: ${parts.join(", ")})` : "";
    } catch {
      // The counters are a help, not the shop: leave the last ones.
    }
  }
  shop.onResponse(({ response }) => {
    const label = response.headers.get("X-Session-Store");
    if (label === null) return;
    const cut = label.indexOf("; ");
    badge.hidden = false;
    badge.querySelector(".name").textContent = cut < 0 ? label : label.slice(0, cut);
    badge.querySelector(".trade-off").textContent = cut < 0 ? "" : label.slice(cut + 2);
    showCounters();
  });
})();
