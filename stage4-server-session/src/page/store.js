// Stage 4's store badge: which store keeps the sessions, redrawn from
// X-Session-Store ("memcached; memory only …") after every answer that
// carries it.
"use strict";
(() => {
  const badge = shop.$("#session-store");
  shop.onResponse(({ response }) => {
    const label = response.headers.get("X-Session-Store");
    if (label === null) return;
    const cut = label.indexOf("; ");
    badge.hidden = false;
    badge.querySelector(".name").textContent = cut < 0 ? label : label.slice(0, cut);
    badge.querySelector(".trade-off").textContent = cut < 0 ? "" : label.slice(cut + 2);
  });
})();
