// Stage 3's cookie meter: how much of the 4096 bytes a browser keeps for
// one cookie the cart uses, redrawn from X-Cart-Cookie-Bytes after every
// answer that carries it.
"use strict";
(() => {
  const LIMIT = 4096;
  const meter = shop.$("#meter");
  function draw(bytes) {
    meter.hidden = false;
    meter.classList.toggle("full", bytes > 0.9 * LIMIT);
    meter.querySelector(".label").textContent = `Cookie: ${bytes} / ${LIMIT} bytes`;
    meter.querySelector(".bar div").style.width = `${Math.min(100, (100 * bytes) / LIMIT).toFixed(1)}%`;
  }
  shop.onResponse(({ response }) => {
    const bytes = response.headers.get("X-Cart-Cookie-Bytes");
    if (bytes !== null) draw(parseInt(bytes, 10));
  });
})();
